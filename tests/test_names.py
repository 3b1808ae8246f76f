"""Names that become paths: unsafe condition names, task aliases and run ids are one-line errors (exit 2) before
anything is written, every shipped name is accepted, and no folder is replaced outside its root."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.atomic import atomic_dir
from harness.cli import main
from harness.config import load_config
from harness.errors import UserError
from harness.names import MAX_NAME, check_inside, is_safe_name
from harness.runner import Runner

REPO = Path(__file__).resolve().parents[1]

# one cheap condition: a config that slips through would run in seconds, not minutes
SMALL = """
[run]
name = "small"
n_boot = 100

[[tasks]]
name = "antonyms"
sizes = { train = 2, dev = 2, test = 2 }

[conditions.base-raw]
"""


def snapshot(folder: Path) -> dict[str, bytes | None]:
    """Every path below ``folder`` with its bytes (None for folders): what a test compares before and after."""
    return {str(p.relative_to(folder)): None if p.is_dir() else p.read_bytes() for p in sorted(folder.rglob("*"))}


@pytest.fixture
def work(tmp_path, monkeypatch) -> Path:
    """``tmp/work`` as the current folder, with a user's ``tmp/decoy/file.txt`` beside it that nothing may touch."""
    (tmp_path / "decoy").mkdir()
    (tmp_path / "decoy" / "file.txt").write_text("the user's own file\n")
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    return tmp_path / "work"


def run_cli(capsys, work: Path, config: str, *argv: str) -> tuple[int, str]:
    (work / "c.toml").write_text(config)
    code = main(["run", str(work / "c.toml"), "--results", str(work / "results"), "--reports",
                 str(work / "reports"), *argv])
    return code, capsys.readouterr().err


def assert_one_line_refusal(code: int, err: str, needle: str) -> None:
    assert code == 2, err
    assert err.startswith("promptgap: error: ") and err.count("\n") == 1, err
    assert needle in err, err


@pytest.mark.parametrize("name", [".", "..", "a/b", "../x", "../../../../../../../decoy", ".hidden", "-x",
                                  "a b", "x" * (MAX_NAME + 1)])
def test_unsafe_condition_names_are_refused_before_anything_is_written(capsys, work, name) -> None:
    before = snapshot(work.parent)
    config = SMALL + f'[conditions."{name}"]\noptimizer = "handwritten"\n'
    code, err = run_cli(capsys, work, config, "--run-id", "r")
    assert_one_line_refusal(code, err, "is not a safe name")
    after = snapshot(work.parent)
    del after["work/c.toml"]
    assert after == before  # no results folder, and the decoy beside the temporary folder untouched


def test_unsafe_task_alias_is_refused(capsys, work) -> None:
    code, err = run_cli(capsys, work, SMALL.replace('name = "antonyms"', 'name = "antonyms"\nas = ".."'),
                        "--run-id", "r")
    assert_one_line_refusal(code, err, "as = '..' is not a safe name")
    assert not (work / "results").exists()


@pytest.mark.parametrize("run_id", ["../x", "ABS", ".", "..", "x/y", "z/y", "../../decoy", "x" * 300, ""])
def test_unsafe_run_ids_are_refused_before_anything_is_written(capsys, work, run_id) -> None:
    run_id = str(work.parent / "abs") if run_id == "ABS" else run_id
    (work / "results").mkdir()
    before = snapshot(work.parent)
    code, err = run_cli(capsys, work, SMALL, "--run-id", run_id)
    assert_one_line_refusal(code, err, "run id")
    after = snapshot(work.parent)
    del after["work/c.toml"]
    assert after == before


def test_a_config_name_that_is_no_safe_name_needs_a_run_id(capsys, work) -> None:
    code, err = run_cli(capsys, work, SMALL.replace('name = "small"', 'name = "../up"'))
    assert_one_line_refusal(code, err, "set [run] name or give --run-id")
    assert not (work / "results").exists() and not (work.parent / "up").exists()


@pytest.mark.parametrize("config", sorted([*REPO.glob("configs/*.toml"), *REPO.glob("harness/configs/*.toml")]),
                         ids=lambda p: p.name)
def test_every_shipped_config_is_accepted(tmp_path, request, config) -> None:
    if "shared/data" in config.read_text():
        request.getfixturevalue("shared_data")  # skips where the real task data is not beside the repository
    cfg = load_config(config)
    runner = Runner(config, cfg=cfg, results_root=tmp_path / "results")  # its default run id: [run] name + time
    assert runner.run_dir.parent == tmp_path / "results"
    assert runner.run_id.startswith(cfg.name + "-")
    assert all(is_safe_name(c) for c in cfg.conditions)
    assert not (tmp_path / "results").exists()


def test_paraphrase_variants_and_lm_eval_names_are_safe(tmp_path) -> None:
    path = tmp_path / "p.toml"
    path.write_text(SMALL + '[conditions.para-phrases_2]\noptimizer = "paraphrases"\n'
                            'instructions = ["Opposite:", "Antonym:"]\n')
    assert [c for c in load_config(path).conditions if c.startswith("para")] == \
        ["para-phrases_2", "para-phrases_2.0", "para-phrases_2.1", "para-phrases_2.2"]
    for name in ("lm-eval:arc_easy", "lm-eval:mmlu", "lm-eval:bertaqa_en_mt_latxa-7b-v1.1",
                 "lm-eval:longproc_countdown_0.5k", "lm-eval:20_newsgroups"):
        assert is_safe_name(name, task=True)
    assert not is_safe_name("lm-eval:arc_easy")  # the prefix belongs to task names only
    assert not is_safe_name("lm-eval:../x", task=True)


def test_every_lm_eval_task_and_group_name_is_safe() -> None:
    lm_eval = pytest.importorskip("lm_eval")
    names = set()
    for yaml in Path(lm_eval.__file__).parent.glob("tasks/**/*.yaml"):
        for line in yaml.read_text(errors="replace").splitlines():
            key, _, value = line.strip().removeprefix("- ").partition(":")
            value = value.strip().strip("'\"")
            if key in ("task", "group") and value and not value.startswith(("!", "[", "{")) and " " not in value:
                names.add(value)
    assert len(names) > 1000
    assert [n for n in sorted(names) if not is_safe_name("lm-eval:" + n, task=True)] == []


def test_atomic_dir_replaces_nothing_outside_its_root(tmp_path) -> None:
    (tmp_path / "root").mkdir()
    (tmp_path / "keep").mkdir()
    (tmp_path / "keep" / "file.txt").write_text("x")
    before = snapshot(tmp_path)
    for final in (tmp_path / "root" / ".." / "keep", tmp_path / "root" / "", tmp_path / "root" / "a" / ".."):
        with pytest.raises(UserError, match="is not inside"), atomic_dir(final, root=tmp_path / "root"):
            pass
    with pytest.raises(UserError, match="is not inside"), atomic_dir(tmp_path / "keep" / ".."):
        pass  # without a root: strictly below its own parent folder
    assert snapshot(tmp_path) == before
    with pytest.raises(UserError, match="is not inside"):
        check_inside(tmp_path / "root", tmp_path / "rootless")  # a shared prefix of names is not inside


def test_a_cell_of_an_escaping_model_name_is_refused(tmp_path) -> None:
    from harness.plan import CellKey
    from harness.run_folder import RunFolder

    folder = RunFolder(tmp_path / "results" / "r")
    with pytest.raises(UserError, match="is not inside"):
        folder.cell_dir(CellKey("..", "..", 0, ".."))  # a model given as a folder path, slugged, can still be ..


def test_report_of_a_folder_given_as_dot_is_named_by_the_folder(tmp_path, monkeypatch) -> None:
    from harness.run_folder import RunFolder

    (tmp_path / "results" / "quick-1").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "results" / "quick-1")
    assert RunFolder(Path(".")).run_id == "quick-1"
    assert RunFolder(Path("sub/..")).run_id == "quick-1"
