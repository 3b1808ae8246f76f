"""lm-eval tasks in promptgap (``lm-eval:NAME``): per-request parity with lm-eval's own run, splits, and refusals.

The reference is lm-eval itself: ``simple_evaluate`` with its HFLM on the same model, the same YAML and the same
local files. Fixture tasks (tests/fixtures/lm_eval) read their data through ``dataset_path: json`` with paths
relative to the working folder, as lm-eval resolves them, so these tests run from the fixture folder.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from harness.artifact import PromptArtifact
from harness.errors import UserError
from harness.parity import hf_model, run_lm_eval
from harness.registry import get_task, get_tasks
from tasks.lm_eval_task import LmEvalTask, name_kind, task_manager

FIXTURES = Path(__file__).parent / "fixtures" / "lm_eval"
TOL = 1e-4


@pytest.fixture(autouse=True)
def in_fixture_folder(monkeypatch) -> None:
    monkeypatch.chdir(FIXTURES)


@pytest.fixture(scope="module")
def hflm(lm):
    return hf_model(lm)


def lm_eval_tm():
    return task_manager((FIXTURES,), defaults=False)


def assert_parity(ours, ref, kind: str) -> None:
    """Per request within TOL nats, the same greedy flags, and lm-eval's acc and acc_norm for every document."""
    assert len(ours) == len(ref.lls) > 0
    for o, lls, greedy, acc, i in zip(ours, ref.lls, ref.greedy, ref.acc, range(len(ours)), strict=True):
        assert len(o.choice_loglik) == len(lls)
        for a, b in zip(o.choice_loglik, lls, strict=True):
            assert abs(a - b) < TOL, f"{o.example_id}: {a} vs lm-eval {b}"
        assert o.choice_greedy == greedy
        assert o.correct == bool(acc), o.example_id
        if ref.acc_norm is not None:
            assert o.correct_norm == bool(ref.acc_norm[i]), o.example_id
    if kind == "continuation":  # lm-eval's acc for a loglikelihood task is the greedy flag
        assert all(o.correct == o.greedy_match for o in ours)


CASES = [
    ("pgfx_capitals", "raw"),  # one context, four continuations; acc and acc_norm
    ("pgfx_capitals_described", "raw"),  # a description before every context; process_docs drops a row
    ("pgfx_capitals_described", "chat"),  # the description is the system turn
    ("pgfx_blanks", "raw"),  # WinoGrande-style: one context per choice
    ("pgfx_blanks", "chat"),
    ("pgfx_antonyms", "raw"),  # output_type loglikelihood
]


@pytest.mark.parametrize(("name", "fmt"), CASES)
def test_fixture_tasks_match_lm_eval_per_request(scorer, hflm, name, fmt) -> None:
    task = get_task(f"lm-eval:{name}", lm_eval_include=FIXTURES)
    examples = task.all_examples()
    ours = scorer.score(PromptArtifact(format=fmt), examples, task.kind)
    ref = run_lm_eval(hflm, [name], lm_eval_tm(), chat=fmt == "chat").reference(name)
    assert ref.doc_ids == list(range(len(examples)))
    assert [e.id for e in examples] == [f"validation:{i}" for i in ref.doc_ids]
    assert_parity(ours, ref, task.kind)
    if name == "pgfx_capitals":  # the YAML names acc_norm, and lm-eval computed it
        assert ref.acc_norm is not None and "acc_norm" in task.metrics


def test_a_bundled_yaml_pointed_at_shared_data(scorer, hflm, shared_data, tmp_path) -> None:
    """lm-eval's own winogrande YAML, only its data moved to ../shared/data by an include folder."""
    import lm_eval

    bundled = Path(lm_eval.__file__).parent / "tasks" / "winogrande" / "default.yaml"
    (tmp_path / "winogrande.yaml").write_text(
        f"include: {bundled}\ntask: winogrande\ndataset_path: json\ndataset_name: null\n"
        f"dataset_kwargs:\n  data_files:\n    train: {shared_data / 'winogrande' / 'train_s.jsonl'}\n"
        f"    validation: {shared_data / 'winogrande' / 'dev.jsonl'}\n")
    task = get_task("lm-eval:winogrande", lm_eval_include=tmp_path)
    assert name_kind("lm-eval:winogrande", tmp_path) == "task"
    examples = task.all_examples()[:40]
    ours = scorer.score(PromptArtifact(format="raw"), examples, task.kind)
    ref = run_lm_eval(hflm, ["winogrande"], task_manager((tmp_path,), defaults=False), limit=40)
    assert_parity(ours, ref.reference("winogrande"), task.kind)
    # the same contexts as promptgap's built-in WinoGrande task
    builtin = get_task("winogrande", data_dir=shared_data / "winogrande").all_examples()[:40]
    assert [(e.contexts, e.continuations, e.gold) for e in examples] == \
        [(e.contexts, e.continuations, e.gold) for e in builtin]
    split = task.split(0)
    assert len(split.train) == 640 and len(split.dev) + len(split.test) == 1267
    prov = task.provenance()
    assert prov["lm_eval"]["task"] == "winogrande" and prov["lm_eval"]["version"] == lm_eval.__version__
    assert {Path(s["path"]).name for s in prov["sources"]} >= {"dev.jsonl", "train_s.jsonl", "winogrande.yaml"}


def test_splits_follow_lm_evals_splits() -> None:
    plain = get_task("lm-eval:pgfx_capitals", lm_eval_include=FIXTURES).split(0)
    # training docs -> train; validation -> dev and test, carved with the seed
    assert {e.id.split(":")[0] for e in plain.train} == {"train"} and len(plain.train) == 12
    assert {e.id.split(":")[0] for e in plain.dev + plain.test} == {"validation"}
    assert len(plain.dev) + len(plain.test) == 16
    # a labelled test split is the test split
    labelled = get_task("lm-eval:pgfx_capitals_test_split", lm_eval_include=FIXTURES).split(0)
    assert [e.id for e in labelled.test] == [f"test:{i}" for i in range(6)]
    # hidden test labels (-1): test is carved from validation, exactly as without a test split
    hidden = get_task("lm-eval:pgfx_capitals_hidden_test", lm_eval_include=FIXTURES).split(0)
    assert hidden.hashes == plain.hashes
    with pytest.raises(UserError, match="has no labels"):
        get_task("lm-eval:pgfx_capitals_hidden_test", lm_eval_include=FIXTURES).all_examples()
    # another seed, another split; the same seed, the same split
    assert get_task("lm-eval:pgfx_capitals", lm_eval_include=FIXTURES).split(1).hash != plain.hash
    assert get_task("lm-eval:pgfx_capitals", lm_eval_include=FIXTURES).split(0).hash == plain.hash


def test_split_hash_is_stable_across_processes() -> None:
    code = ("from harness.registry import get_task; import sys; "
            "print(get_task('lm-eval:pgfx_capitals_described', lm_eval_include=sys.argv[1]).split(0).hash)")
    hashes = {subprocess.run([sys.executable, "-c", code, str(FIXTURES)], capture_output=True, text=True,
                             cwd=FIXTURES, check=True).stdout.strip() for _ in range(2)}
    here = get_task("lm-eval:pgfx_capitals_described", lm_eval_include=FIXTURES).split(0).hash
    assert hashes == {here}


def test_a_group_expands_into_its_subtasks() -> None:
    tasks = get_tasks("lm-eval:pgfx_suite", lm_eval_include=FIXTURES)
    assert [t.name for t in tasks] == ["lm-eval:pgfx_capitals", "lm-eval:pgfx_blanks", "lm-eval:pgfx_antonyms"]
    assert all(isinstance(t, LmEvalTask) and t.group == "pgfx_suite" for t in tasks)
    assert [t.kind for t in tasks] == ["multiple_choice", "multiple_choice", "continuation"]
    with pytest.raises(UserError, match="is an lm-eval group of 3 tasks"):
        get_task("lm-eval:pgfx_suite", lm_eval_include=FIXTURES)


@pytest.mark.parametrize(("name", "needle"), [
    ("pgfx_mutual_info", "acc_mutual_info"),
    ("pgfx_multi_gold", "several gold answers"),
    ("pgfx_unlabelled", "no split with labels"),
])
def test_unsupported_tasks_are_refused_with_the_reason(name, needle) -> None:
    with pytest.raises(UserError, match=needle) as e:
        get_task(f"lm-eval:{name}", lm_eval_include=FIXTURES).split(0)
    assert "\n" not in str(e.value)


def test_name_kind_without_lm_evals_full_index() -> None:
    assert name_kind("lm-eval:pgfx_multi_gold", FIXTURES / "refused") == "task"  # the include folder's own index
    with pytest.raises(UserError, match="acc_mutual_info"):  # what the YAML alone shows is refused right away
        name_kind("lm-eval:pgfx_mutual_info", FIXTURES / "refused")
    assert name_kind("lm-eval:pgfx_suite", FIXTURES) == "group"
    assert name_kind("lm-eval:arc_easy") == "task"  # a text scan of lm-eval's bundled YAML files
    assert name_kind("lm-eval:mmlu") == "group"


def test_bad_names_and_folders() -> None:
    with pytest.raises(UserError, match="does not exist"):
        get_task("lm-eval:pgfx_capitals", lm_eval_include=FIXTURES / "nowhere")
    with pytest.raises(UserError, match="give an lm-eval task or group name"):
        get_task("lm-eval:")
    with pytest.raises(UserError, match="has no effect on an lm-eval task"):
        get_task("lm-eval:pgfx_capitals", data_dir=FIXTURES)
    with pytest.raises(UserError, match="applies to lm-eval:NAME tasks only"):
        get_task("antonyms", lm_eval_include=FIXTURES)


def test_unknown_name_builds_the_full_index_and_suggests(monkeypatch) -> None:
    with pytest.raises(UserError, match=r"unknown lm-eval task 'pgfx_capitalz'.*close: pgfx_capitals") as e:
        get_task("lm-eval:pgfx_capitalz", lm_eval_include=FIXTURES)
    assert "\n" not in str(e.value)


def test_example_json_round_trip_of_scores(scorer) -> None:
    """The scores line of an lm-eval multiple-choice task holds correct_norm; a continuation task's does not."""
    mc = get_task("lm-eval:pgfx_capitals", lm_eval_include=FIXTURES)
    line = scorer.score(PromptArtifact(), mc.all_examples()[:1], mc.kind)[0].to_json()
    assert isinstance(line["correct_norm"], bool)
    ll = get_task("lm-eval:pgfx_antonyms", lm_eval_include=FIXTURES)
    line = scorer.score(PromptArtifact(), ll.all_examples()[:1], ll.kind)[0].to_json()
    assert "correct_norm" not in line and "greedy_match" in line
    json.dumps(line)


# --- run configs ------------------------------------------------------------------------------------------------
def write_config(tmp_path: Path, task_lines: str) -> Path:
    cfg = tmp_path / "lmeval.toml"
    cfg.write_text(f'[run]\nname = "lmeval"\n\n[[tasks]]\n{task_lines}\n\n[conditions.base-raw]\n'
                   f'[conditions.handwritten]\nformat = "raw"\n')
    return cfg


def test_a_run_config_expands_a_group_and_every_condition_gets_the_same_split(tmp_path) -> None:
    import csv
    import os

    from harness.cli import main
    from harness.config import load_config

    include = os.path.relpath(FIXTURES, tmp_path)  # relative to the config file
    cfg = write_config(tmp_path, f'name = "lm-eval:pgfx_suite"\nlm_eval_include = "{include}"\n'
                                 f'sizes = {{ train = 4, dev = 2, test = 6 }}')
    tasks = load_config(cfg).tasks
    assert [t.name for t in tasks] == ["lm-eval:pgfx_capitals", "lm-eval:pgfx_blanks", "lm-eval:pgfx_antonyms"]
    assert {t.lm_eval_include for t in tasks} == {str(FIXTURES)} and {t.lm_eval_group for t in tasks} == {"pgfx_suite"}
    assert main(["run", str(cfg), "--run-id", "r", "--results", str(tmp_path / "results"),
                 "--reports", str(tmp_path / "reports")]) == 0
    rows = list(csv.DictReader((tmp_path / "results" / "r" / "summary.csv").open()))
    assert len(rows) == 6 and {r["status"] for r in rows} == {"ok"}
    for name in ("lm-eval:pgfx_capitals", "lm-eval:pgfx_blanks", "lm-eval:pgfx_antonyms"):
        hashes = {r["split_hash"] for r in rows if r["task"] == name}
        assert hashes == {get_task(name, lm_eval_include=FIXTURES).split(0, _sizes(4, 2, 6)).hash}
        assert {r["n"] for r in rows if r["task"] == name} == {"6"}


def _sizes(train: int, dev: int, test: int):
    from harness.task import SplitSizes

    return SplitSizes(train=train, dev=dev, test=test)


def test_config_check_of_a_task_name_does_not_build_lm_evals_index(tmp_path) -> None:
    cfg = write_config(tmp_path, 'name = "lm-eval:arc_easy"')
    code = ("import sys; from harness.config import load_config; from tasks.lm_eval_task import _PROCESS; "
            "c = load_config(sys.argv[1]); print(c.tasks[0].name, len(_PROCESS.managers), len(_PROCESS.loaded))")
    out = subprocess.run([sys.executable, "-c", code, str(cfg)], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["lm-eval:arc_easy", "0", "0"]


@pytest.mark.parametrize(("lines", "needle"), [
    ('name = "lm-eval:pgfx_capitals"\nlm_eval_include = "nowhere"', "does not exist"),
    ('name = "lm-eval:pgfx_capitals"\ndata_dir = "."', "data_dir has no effect on an lm-eval task"),
    ('name = "antonyms"\nlm_eval_include = "."', "lm_eval_include applies to lm-eval:NAME tasks only"),
    ('name = "lm-eval:pgfx_mutual_info"\nlm_eval_include = "INCLUDE"', "acc_mutual_info"),
])
def test_config_errors_name_the_entry(tmp_path, lines, needle) -> None:
    from harness.config import load_config

    cfg = write_config(tmp_path, lines.replace("INCLUDE", str(FIXTURES)))
    with pytest.raises(UserError, match="tasks\\]\\] #1") as e:
        load_config(cfg)
    assert needle in str(e.value) and "\n" not in str(e.value)
