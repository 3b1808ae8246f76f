"""Sample-efficiency curves, transfer of fitted prompts, the leakage filter, two tasks of one family:
real runs on the embedded model with tiny budgets, checked against what the split files and the task data say."""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest
from test_executors import slurm  # noqa: F401  (the fixture: a Slurm cluster that answers, else a skip)

from harness.audit import audit
from harness.cli import report_run
from harness.config import load_config
from harness.data import leaks
from harness.errors import UserError
from harness.plan import CellKey
from harness.run_folder import RunFolder, load_run
from harness.runner import Runner
from harness.task import SplitSizes
from tasks.antonyms import Antonyms

ROOT = Path(__file__).resolve().parents[1]
MODEL = "smollm2-135m-instruct"
PACKAGED = (ROOT / "tasks" / "data" / "antonyms.tsv").read_text().splitlines()
SOFT = """[conditions.soft-prompt]
lr = 0.01
steps = 2
batch_size = 4
eval_every = 1
"""


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# --- bad input: one line, before any model ----------------------------------------------------------------------------
BASE = """
[run]
name = "bad"
n_boot = 100

[[tasks]]
name = "antonyms"
sizes = { train = [10, 20], dev = 10, test = 20 }

[[tasks]]
name = "antonyms"
as = "antonyms-b"
sizes = { train = 20, dev = 10, test = 20 }

[conditions.base-chat]
[conditions.handwritten]
format = "chat"

[transfer]
tasks = { antonyms = ["antonyms-b"] }
"""
LM_EVAL = str(ROOT / "tests" / "fixtures" / "lm_eval")


@pytest.mark.parametrize(("edit", "needle"), [
    (("train = [10, 20]", "train = [100, 400]"), "sizes.train = [100, 400]: task antonyms: asked for 430 examples "
                                                 "but only 387 exist"),
    (("train = [10, 20]", "train = [10, 10]"), "sizes.train = [10, 10]; give distinct whole numbers >= 1"),
    (('["antonyms-b"]', '["antonyms-c"]'), "tasks.antonyms: 'antonyms-c' is not a task of this run; tasks: "
                                           "antonyms, antonyms-b"),
    (('["antonyms-b"]', '["antonyms"]'), "antonyms -> antonyms: a task's own cells already score its artifacts"),
    (('as = "antonyms-b"\n', ""), "task antonyms is listed twice"),
    (('as = "antonyms-b"\n', 'as = "antonyms-b"\ndata = "antsynnet"\n'), "data = 'antsynnet' names a file in a data "
                                                                         "folder; set data_dir too"),
    (('as = "antonyms-b"\n', f'as = "antonyms-b"\ndata = "nosuch"\ndata_dir = "{ROOT}/tests/fixtures/antonyms_fv"\n'),
     "data = 'nosuch' is not one of its data choices: function_vectors"),
    (("[conditions.handwritten]", "[conditions.train-50]\noptimizer = \"handwritten\"\n[conditions.handwritten]"),
     "condition 'train-50' starts like a train-size or transfer folder"),
    (("[transfer]\n", "[transfer]\nmodels = true\n"), "models = true scores text artifacts on the run's other models, "
                                                      "but the run has one model"),
    # another kind: a continuation task's prompt sent to a multiple-choice task
    (('name = "antonyms"\nas = "antonyms-b"\nsizes = { train = 20, dev = 10, test = 20 }',
      f'name = "boolq"\nas = "antonyms-b"\ndata_dir = "{ROOT}/tests/fixtures/boolq"\nsizes = {{ train = 2, dev = 2, '
      f'test = 2 }}'), "antonyms (continuation) -> antonyms-b (multiple_choice): a prompt transfers only between tasks "
                       "of the same kind"),
    # a marker placement sent to a continuation task without a marker (an lm-eval task has none)
    (('[conditions.handwritten]\nformat = "chat"', SOFT + 'placement = "marker"'),
     None),
])
def test_bad_curve_and_transfer_input_is_one_line_before_any_model(tmp_path, monkeypatch, edit, needle) -> None:
    text = BASE.replace(*edit)
    if needle is None:  # the marker case: the target is an lm-eval continuation task (no marker)
        monkeypatch.chdir(LM_EVAL)  # the fixture YAML's data path is relative, as lm-eval resolves it
        text = text.replace('name = "antonyms"\nas = "antonyms-b"\nsizes = { train = 20, dev = 10, test = 20 }',
                            f'name = "lm-eval:pgfx_antonyms"\nas = "antonyms-b"\nlm_eval_include = "{LM_EVAL}"')
        needle = "soft-prompt puts its soft prompt in place of the marker 'antonyms' of antonyms, but antonyms-b has " \
                 "no marker"
    with pytest.raises(UserError) as e:
        load_config(write(tmp_path / "c.toml", text))
    assert needle in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_a_marker_placement_transfers_to_a_task_with_the_same_marker(tmp_path) -> None:
    text = BASE.replace('[conditions.handwritten]\nformat = "chat"', SOFT + 'placement = "marker"')
    cfg = load_config(write(tmp_path / "c.toml", text))
    # without a [ratio] base, every condition transfers (the base, when named, does not: it is the target's own)
    assert cfg.transfer is not None and cfg.transfer.conditions == ["base-chat", "soft-prompt"]
    assert cfg.transfer.tasks == {"antonyms": ["antonyms-b"]} and cfg.transfer.across_models == []


def test_config_json_of_a_run_without_the_new_keys_is_unchanged(tmp_path) -> None:
    text = BASE.split("[[tasks]]\nname = \"antonyms\"\nas")[0].replace("train = [10, 20]", "train = 20")
    data = load_config(write(tmp_path / "c.toml", text + '[conditions.base-chat]\n')).to_json()
    assert set(data) == {"run", "models", "tasks", "conditions", "ratio"}
    assert data["tasks"] == [{"name": "antonyms", "data_dir": None, "sizes": {"train": 20, "dev": 10, "test": 20}}]
    old = {"model": MODEL, "task": "antonyms", "seed": 0, "condition": "handwritten"}  # an older cell.json's key
    assert CellKey.from_json(old).to_json() == old and CellKey.from_json(old).parts() == (
        MODEL, "antonyms", "seed-0", "handwritten")


# --- the leakage filter and the mirror rule ---------------------------------------------------------------------------
def test_leakage_filter_removes_a_planted_duplicate_and_a_planted_reversed_pair() -> None:
    task = Antonyms()
    row = lambda a, b: task.to_example({"word1": a, "word2": b}, f"{a}-{b}")  # noqa: E731
    fitted = [row("hot", "cold"), row("big", "small")]
    test = [row("hot", "cold"), row("small", "big"), row("tall", "short"), row("cold", "warm")]
    seen = {e.content_key for e in fitted}
    removed = leaks([(e.id, e.content_key, e.mirror_keys) for e in test], seen)
    assert removed == {"hot-cold": "same", "small-big": "mirror"}  # the duplicate, the reversed pair; nothing else


# --- a curve: every train size a prefix of one split ------------------------------------------------------------------
CURVE = f"""
[run]
name = "curve"
n_boot = 200
threads = 1

[[tasks]]
name = "antonyms"
sizes = {{ train = [3, 6], dev = 3, test = 6 }}

[conditions.base-chat]
{SOFT}"""


def test_each_smaller_train_set_is_a_prefix_and_dev_and_test_are_identical(tmp_path) -> None:
    config = write(tmp_path / "c.toml", CURVE)
    run_dir = Runner(config, run_id="c", results_root=tmp_path / "results").run()
    split = json.loads((run_dir / "splits" / "antonyms" / "seed-0.json").read_text())
    # the split made once at the largest size: the task's own split with train = 6
    full = Antonyms().split(0, SplitSizes(train=6, dev=3, test=6))
    assert split["train"] == [e.id for e in full.train] and split["train_sizes"] == [3, 6]
    assert split["dev"] == [e.id for e in full.dev] and split["test"] == [e.id for e in full.test]
    tests, devs = set(), set()
    for n in (3, 6):
        cell_dir = run_dir / "cells" / MODEL / "antonyms" / "seed-0" / f"train-{n}" / "soft-prompt"
        record = json.loads((cell_dir / "cell.json").read_text())
        evidence = json.loads((cell_dir / "evidence.json").read_text())
        read = set(evidence["fit_reads"])
        # what the renderer saw while training: exactly the first n train pairs, and dev
        assert read & set(split["train"]) == set(split["train"][:n]) and read - set(split["train"]) == set(
            split["dev"])
        assert record["n_train"] == n and record["train_size"] == n
        tests.add(tuple(json.loads(x)["example_id"] for x in (cell_dir / "scores.jsonl").read_text().splitlines()))
        devs.add(tuple(sorted(read - set(split["train"]))))
    assert tests == {tuple(split["test"])} and len(devs) == 1
    header = (run_dir / "summary.csv").read_text().splitlines()[0]
    assert header.startswith("model,task,condition,seed,train_size,split_hash,")
    result = audit(run_dir, report=tmp_path / "none.md")
    assert result.passed, [(i.title, i.problems) for i in result.failed]


# --- two antonym lists in one run: aliases, a curve, transfer, the leakage filter -------------------------------------
TRANSFER = """
[run]
name = "transfer"
n_boot = 300
threads = 1

[[tasks]]
name = "antonyms"
as = "antonyms-fv"
data = "function_vectors"
data_dir = "{data}"
sizes = {{ train = [4, 8], dev = 3, test = 4 }}

[[tasks]]
name = "antonyms"
as = "antonyms-antsynnet"
data = "antsynnet"
data_dir = "{data}"
sizes = {{ train = 4, dev = 2, test = "all" }}

[conditions.base-chat]
[conditions.handwritten]
format = "chat"
{soft}
[ratio]
base = "base-chat"
texts = ["handwritten"]
ceiling = "soft-prompt"

[transfer]
tasks = {{ antonyms-fv = ["antonyms-antsynnet"] }}
"""
SOURCE_SIZES = SplitSizes(train=8, dev=3, test=4)
TARGET_POOL = 14


@pytest.fixture(scope="module")
def lists(tmp_path_factory) -> dict:
    """A data folder with both antonym files: the source from the packaged list, the target from real AntSynNET rows
    with a source train pair planted verbatim and a source dev pair planted reversed, where the target's test falls."""
    data = tmp_path_factory.mktemp("antonyms")
    (data / "function_vectors_antonym.tsv").write_text("\n".join(PACKAGED[:20]) + "\n")
    source = Antonyms(data)
    source.choose_data("function_vectors")
    split = source.split(0, SOURCE_SIZES)
    (a, b), (c, d) = (split.train[0].fields["word1"], split.train[0].fields["word2"]), \
        (split.dev[0].fields["word1"], split.dev[0].fields["word2"])
    words = {w for line in PACKAGED for w in line.split("\t")}
    real = [r.split("\t") for r in (Path(__file__).resolve().parents[2] / "shared" / "data" / "antonyms" /
                                    "antsynnet_antonyms.tsv").read_text().splitlines()[1:200]]
    filler = [r for r in real if not {r[0], r[1]} & words][: TARGET_POOL - 2]
    # the target's split carves dev (2) then train (4) from a seeded shuffle: the planted rows go where test falls
    order = list(range(TARGET_POOL))
    random.Random(0).shuffle(order)
    slots = [i for i in range(TARGET_POOL) if i not in order[:6]][:2]
    rows = [r[:2] for r in filler]
    rows.insert(slots[0], [a, b])
    rows.insert(slots[1], [d, c])
    (data / "antsynnet_antonyms.tsv").write_text("word1\tword2\tpos\tsplit\n" + "".join(
        f"{x}\t{y}\tnoun\ttrain\n" for x, y in rows))
    return {"data": data, "duplicate": f"{a}-{b}", "reversed": f"{d}-{c}", "source": split}


@pytest.fixture(scope="module")
def transfer_run(lists, tmp_path_factory) -> Path:
    if not (Path(__file__).resolve().parents[2] / "shared" / "data").exists():
        pytest.skip("real task data not found in ../shared/data")
    root = tmp_path_factory.mktemp("transfer")
    config = write(root / "c.toml", TRANSFER.format(data=lists["data"], soft=SOFT))
    return Runner(config, run_id="t", results_root=root / "results").run()


def _lines(cell_dir: Path) -> dict[str, dict]:
    return {x["example_id"]: x for x in map(json.loads, (cell_dir / "scores.jsonl").read_text().splitlines())}


def test_two_aliased_tasks_of_one_family_get_separate_cells(transfer_run) -> None:
    run = load_run(transfer_run)
    assert run.tasks == ["antonyms-fv", "antonyms-antsynnet"] and run.sizes("antonyms-fv") == [4, 8]
    seeds = transfer_run / "cells" / MODEL
    assert sorted(p.name for p in (seeds / "antonyms-fv" / "seed-0").iterdir()) == ["train-4", "train-8"]
    assert sorted(p.name for p in (seeds / "antonyms-antsynnet" / "seed-0").iterdir()) == [
        "base-chat", "handwritten", "soft-prompt"]
    splits = {p.parent.name: json.loads(p.read_text()) for p in (transfer_run / "splits").glob("*/seed-0.json")}
    assert set(splits) == {"antonyms-fv", "antonyms-antsynnet"}
    assert not set(splits["antonyms-fv"]["test"]) & set(splits["antonyms-antsynnet"]["test"])
    # each alias read its own file: the manifest hashes both
    sources = {t: [s["path"] for s in rec["sources"]] for t, rec in
               json.loads((transfer_run / "manifest.json").read_text())["tasks"].items()}
    assert [Path(p).name for p in sources["antonyms-fv"]] == ["function_vectors_antonym.tsv"]
    assert [Path(p).name for p in sources["antonyms-antsynnet"]] == ["antsynnet_antonyms.tsv"]
    assert all(c.ok for c in run.cells.values()) and len(run.cells) == 2 * 3 + 3 + 2 * 2


def test_transfer_removes_the_planted_pairs_and_scores_the_source_artifact(transfer_run, lists) -> None:
    run = load_run(transfer_run)
    target = run.splits[("antonyms-antsynnet", 0)]
    assert {lists["duplicate"], lists["reversed"]} <= set(target.ids["test"])
    task = Antonyms(lists["data"])
    task.choose_data("antsynnet")
    words = {e.id: (e.fields["word1"], e.fields["word2"]) for e in task.all_examples()}
    for n in (4, 8):
        source = lists["source"].prefix(n)
        pairs = {(e.fields["word1"], e.fields["word2"]) for e in (*source.train, *source.dev)}
        # independently of content keys: a test pair is out when it, or it reversed, is a source train or dev pair
        want = {i: "same" if words[i] in pairs else "mirror" for i in target.ids["test"]
                if words[i] in pairs or words[i][::-1] in pairs}
        assert want[lists["duplicate"]] == "same" and want[lists["reversed"]] == "mirror"
        for c in ("handwritten", "soft-prompt"):
            key = CellKey(MODEL, "antonyms-fv", 0, c, n, target_task="antonyms-antsynnet")
            cell = run.cells[key]
            assert cell.ok and cell.evidence.leakage["removed"] == want
            assert cell.record.removed == {"same": 1, "mirror": 1} and cell.record.n == len(target.ids["test"]) - 2
            assert [x["example_id"] for x in cell.lines] == [i for i in target.ids["test"] if i not in want]
            assert cell.record.source_artifact == run.folder.artifact_hash(key.source)
            # scored after its source was written
            assert datetime.fromisoformat(cell.record.finished) > datetime.fromisoformat(
                run.cells[key.source].record.finished)
        # the hand-written instruction is the same artifact on either list: transferred, it scores what the target's
        # own hand-written cell scores, example by example. Not to the bit: the transferred cell scores two fewer
        # examples, so its passes hold other rows (other padding, other kernel shapes), and float32 sums in another
        # order differ in their last bits; 1e-4 nats is the scorer's layout tolerance (test_scorer's batch sizes)
        moved = run.cells[CellKey(MODEL, "antonyms-fv", 0, "handwritten", n, target_task="antonyms-antsynnet")]
        own = {x["example_id"]: x for x in run.cell(MODEL, "antonyms-antsynnet", 0, "handwritten").lines}
        assert all(abs(a - b) < 1e-4 for x in moved.lines
                   for a, b in zip(x["choice_loglik"], own[x["example_id"]]["choice_loglik"], strict=True))
        soft = run.cells[CellKey(MODEL, "antonyms-fv", 0, "soft-prompt", n, target_task="antonyms-antsynnet")]
        assert soft.artifact.soft_prompt is not None and soft.artifact.soft_prompt.equal(
            run.cells[soft.key.source].artifact.soft_prompt)


def test_audit_and_report_on_curves_and_transfer(transfer_run, tmp_path) -> None:
    result = audit(transfer_run, report=tmp_path / "none.md")
    assert result.passed, [(i.title, i.problems) for i in result.failed]
    titles = {i.title: i for i in result.items}
    transfer = titles["Transfer cells scored their source's artifact, without the target examples the source was "
                      "fitted on"]
    # 4 transfer cells (2 conditions x 2 train sizes), each without the planted duplicate and the planted reversal
    assert transfer.status == "pass" and "(4 by context and answer, 4 by the task's mirror rule" in transfer.evidence
    md = report_run(transfer_run, tmp_path / "reports", n_boot=300).read_text()
    for section in ("## Sample efficiency", "## Transfer", "## Training curves and overfitting"):
        assert section in md
    assert "| condition | train 4 | train 8 | reaches 90% of its largest gain |" in md
    # the hand-written instruction reads no train example at either size: its flat curve is no finding
    assert re.search(r"\| handwritten \(text\) \|[^\n]*\| uses no train data \(it read no train example at any "
                     r"size\)", md)
    n_test = len(load_run(transfer_run).splits[("antonyms-antsynnet", 0)].ids["test"])
    assert f"Leakage filter: 2 of {n_test} target test examples removed (1 with the same context and answer as a " \
           f"source train or dev example, 1 mirroring one); {n_test - 2} scored." in md
    assert "### smollm2-135m-instruct / antonyms-fv -> antonyms-antsynnet (seed 0, train 8)" in md
    figures = {p.name for p in (tmp_path / "reports" / "t").iterdir()}
    assert "smollm2-135m-instruct--antonyms-fv-efficiency.png" in figures
    assert sum(name.endswith("-transfer.png") for name in figures) == 2
    verdict = json.loads((tmp_path / "reports" / "t" / "verdict.json").read_text())
    assert [(g["task"], g.get("train_size")) for g in verdict["groups"]] == [
        ("antonyms-fv", 4), ("antonyms-fv", 8), ("antonyms-antsynnet", None)]
    import jsonschema

    jsonschema.validate(verdict, json.loads((ROOT / "harness" / "schemas" / "verdict.schema.json").read_text()))


def _copy(run_dir: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(run_dir, tmp_path / "t"))


def test_a_changed_source_makes_its_transfer_cells_stale(transfer_run, tmp_path) -> None:
    copy = _copy(transfer_run, tmp_path)
    folder = RunFolder(copy)
    key = CellKey(MODEL, "antonyms-fv", 0, "soft-prompt", 4, target_task="antonyms-antsynnet")
    assert folder.finished(key)
    art = folder.cell_dir(key.source) / "artifact" / "artifact.json"
    art.write_text(art.read_text().replace('"format": "chat"', '"format": "chat" '))
    assert not folder.finished(key)  # resume would score it again
    item = next(i for i in audit(copy).items if i.title.startswith("Transfer cells"))
    assert item.status == "fail" and "the source was computed again since" in item.problems[0]


def test_an_edited_leakage_record_fails_the_audit(transfer_run, tmp_path) -> None:
    copy = _copy(transfer_run, tmp_path)
    key = CellKey(MODEL, "antonyms-fv", 0, "handwritten", 8, target_task="antonyms-antsynnet")
    path = RunFolder(copy).cell_dir(key) / "evidence.json"
    evidence = json.loads(path.read_text())
    evidence["leakage"]["removed"] = {}
    path.write_text(json.dumps(evidence))
    item = next(i for i in audit(copy).items if i.title.startswith("Transfer cells"))
    assert item.status == "fail" and "evidence.json says the leakage filter removed 0 example(s); the split files " \
                                      "give 2" in item.problems[0]


def test_killed_transfer_run_resumes_without_recomputing(transfer_run, lists, tmp_path) -> None:
    config = write(tmp_path / "c.toml", TRANSFER.format(data=lists["data"], soft=SOFT))
    env = {**os.environ, "PROMPTGAP_PROGRESS": "0", "OMP_NUM_THREADS": "1"}
    argv = [sys.executable, "-m", "harness.cli", "run", str(config), "--run-id", "t", "--results",
            str(tmp_path / "results"), "--reports", str(tmp_path / "reports")]
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    cells = tmp_path / "results" / "t" / "cells"
    deadline = time.time() + 600
    while time.time() < deadline and len(list(cells.glob("**/cell.json"))) < 5:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = {p: p.stat().st_mtime_ns for p in cells.glob("**/cell.json")}
    assert 5 <= len(before) < 13
    resumed = subprocess.run([*argv, "--resume"], env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    after = list(cells.glob("**/cell.json"))
    assert len(after) == 13 and {p: p.stat().st_mtime_ns for p in before} == before  # none recomputed
    for p in after:  # the resumed run equals the run that was never killed, cell by cell
        rel = p.parent.relative_to(cells)
        assert (p.parent / "scores.jsonl").read_bytes() == (transfer_run / "cells" / rel / "scores.jsonl").read_bytes()


def test_processes_run_transfer_cells_after_their_sources(transfer_run, lists, tmp_path) -> None:
    text = TRANSFER.format(data=lists["data"], soft=SOFT) + '\n[executor]\nworkers = 2\ngroup = "seed"\n'
    config = write(tmp_path / "c.toml", text)
    env = {**os.environ, "PROMPTGAP_PROGRESS": "0", "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-m", "harness.cli", "run", str(config), "--run-id", "p", "--executor",
                          "processes", "--results", str(tmp_path / "results"), "--reports",
                          str(tmp_path / "reports")], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    run_dir = tmp_path / "results" / "p"
    folder = RunFolder(run_dir)
    jobs = folder.jobs()
    waves = {j.id: {k.wave for k in j.cells} for j in jobs}
    assert sorted(map(sorted, waves.values())) == [[0], [0], [1]]  # no job mixes sources and transfers
    sources_done = max(datetime.fromisoformat(json.loads((folder.cell_dir(k) / "cell.json").read_text())["finished"])
                       for j in jobs for k in j.cells if k.wave == 0)
    [later] = [j for j in jobs if waves[j.id] == {1}]
    assert datetime.fromisoformat(later.submitted) >= sources_done
    for p in (run_dir / "cells").glob("**/scores.jsonl"):  # the bytes of the run in one process
        assert p.read_bytes() == (transfer_run / p.relative_to(run_dir)).read_bytes()


def test_text_artifacts_transfer_to_another_model(tmp_path) -> None:
    """The second model is the embedded model's own float32 folder under another name: the same weights, so the
    hand-written prompt scored there must give exactly the numbers of that model's own cell."""
    from harness.models import embedded_folder

    other = str(embedded_folder())
    text = f"""
[run]
name = "models"
models = ["{MODEL}", "{other}"]
n_boot = 100
threads = 1

[[tasks]]
name = "antonyms"
sizes = {{ train = 4, dev = 2, test = 5 }}

[conditions.base-chat]
[conditions.handwritten]
format = "chat"
{SOFT}
[transfer]
models = true
conditions = ["handwritten", "soft-prompt"]   # a soft prompt is trained for one model: it stays there
"""
    run_dir = Runner(write(tmp_path / "c.toml", text), run_id="m", results_root=tmp_path / "results").run()
    run = load_run(run_dir)
    moved = [k for k in run.cells if k.is_transfer]
    assert sorted((k.model == MODEL, k.condition) for k in moved) == [(False, "handwritten"), (True, "handwritten")]
    key = next(k for k in moved if k.model == MODEL)
    assert key.target_model == other and key.target_task is None and run.cells[key].ok
    own = {x["example_id"]: x["choice_loglik"] for x in run.cell(other, "antonyms", 0, "handwritten").lines}
    # to the bit: the same requests (same artifact, tokenizer and test) in the same passes, threads pinned to 1
    assert {x["example_id"]: x["choice_loglik"] for x in run.cells[key].lines} == own
    assert run.cells[key].record.removed == {"same": 0, "mirror": 0}  # the same task: its own test, nothing fitted on
    result = audit(run_dir, report=tmp_path / "none.md")
    assert result.passed, [(i.title, i.problems) for i in result.failed]


@pytest.mark.usefixtures("slurm")
def test_slurm_holds_transfer_cells_until_their_sources_end(transfer_run, lists, tmp_path) -> None:
    text = TRANSFER.format(data=lists["data"], soft=SOFT) + '\n[executor]\ngroup = "seed"\ntime = 30\n'
    config = write(tmp_path / "c.toml", text)
    env = {**os.environ, "PROMPTGAP_PROGRESS": "0", "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-m", "harness.cli", "run", str(config), "--run-id", "s", "--executor",
                          "slurm", "--results", str(tmp_path / "results"), "--reports", str(tmp_path / "reports")],
                         env=env, capture_output=True, text=True, cwd=tmp_path, timeout=1800)
    assert out.returncode == 0, out.stderr
    run_dir = tmp_path / "results" / "s"
    folder = RunFolder(run_dir)
    jobs = folder.jobs()
    sources = [j for j in jobs if all(k.wave == 0 for k in j.cells)]
    [later] = [j for j in jobs if all(k.wave == 1 for k in j.cells)]
    # sbatch was told: the transfer array waits for the source arrays to end
    arrays = sorted({j.id.split("_")[0] for j in sources})
    script = next((run_dir / "jobs" / "0").glob(f"{later.id.split('_')[0]}*submission.sh")).read_text()
    assert f"#SBATCH --dependency=afterany:{':'.join(arrays)}" in script, script
    workers = {w.job: w for w in folder.workers()}
    assert datetime.fromisoformat(workers[later.id].started) >= max(
        datetime.fromisoformat(workers[j.id].finished) for j in sources)
    for p in (run_dir / "cells").glob("**/scores.jsonl"):  # the bytes of the run in one process
        assert p.read_bytes() == (transfer_run / p.relative_to(run_dir)).read_bytes()
