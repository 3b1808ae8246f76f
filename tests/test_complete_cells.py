"""A cell is complete or it is not done: a lost tensor file, a short scores file, a deleted artifact.json or a cut
cell.json make the cell damaged in `check`, `status`, the report and `--resume` alike (the one completeness test,
``RunFolder.cell_state``); `--resume` recomputes exactly the damaged cells; cells written before cell.json listed
its files are legacy, judged by what they have.

One real run (the embedded model, a 4-step soft prompt) is made once for the module, in a subprocess as a user runs
it (so its job has ended, as after a real run), and each test damages its own copy.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from harness.artifact import PromptArtifact
from harness.audit import audit
from harness.cli import main, report_run
from harness.errors import UserError
from harness.executors import status
from harness.runner import Runner

CONFIG = """
[run]
name = "complete"
seeds = [0]
n_boot = 200
threads = 1

[[tasks]]
name = "antonyms"
sizes = { train = 16, dev = 8, test = 12 }

[conditions.base-chat]
[conditions.handwritten]
format = "chat"
[conditions.soft-prompt]
lr = 0.01
steps = 4
batch_size = 4
eval_every = 2

[ratio]
base = "base-chat"
texts = ["handwritten"]
ceiling = "soft-prompt"
"""
CELLS = Path("cells/smollm2-135m-instruct/antonyms/seed-0")
CONDITIONS = ("base-chat", "handwritten", "soft-prompt")
RECORDS = "Cell records agree with the config, and every cell of the matrix has one"
TENSORS = "artifact/tensors.safetensors"


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """The finished run folder, made once by `promptgap run` in a subprocess."""
    root = tmp_path_factory.mktemp("complete")
    (root / "c.toml").write_text(CONFIG)
    env = {**os.environ, "PROMPTGAP_PROGRESS": "0"}
    done = subprocess.run([sys.executable, "-m", "harness.cli", "run", str(root / "c.toml"), "--run-id", "r",
                           "--results", str(root / "results"), "--reports", str(root / "reports")],
                          env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return root / "results" / "r"


@pytest.fixture
def run(finished, tmp_path) -> Path:
    """This test's copy of the finished run, as results/r under tmp_path (the config beside it)."""
    shutil.copy(finished.parents[1] / "c.toml", tmp_path / "c.toml")
    return Path(shutil.copytree(finished, tmp_path / "results" / "r"))


def resume(run: Path) -> None:
    Runner(run.parents[1] / "c.toml", run_id="r", resume=True, results_root=run.parent).run()


def records(run: Path) -> dict[str, bytes]:
    """Each cell's cell.json as bytes: a recomputed cell writes a new one (its finish time and job differ)."""
    return {c: (run / CELLS / c / "cell.json").read_bytes() for c in CONDITIONS}


def states(run: Path) -> dict[str, tuple[str, str | None]]:
    return {s.key.condition: (s.state, s.error) for s in status(run)}


def records_problems(run: Path) -> list[str]:
    item = next(i for i in audit(run, with_report=False).items if i.title == RECORDS)
    assert item.status == "fail", item
    return item.problems


def test_a_soft_prompt_without_its_tensors_is_damaged_everywhere(run, tmp_path, capsys, caplog) -> None:
    (run / CELLS / "soft-prompt" / TENSORS).unlink()
    problems = records_problems(run)
    assert any(f"soft-prompt: damaged ({TENSORS} is missing)" in p for p in problems), problems
    assert main(["check", str(run)]) == 1

    got = states(run)
    assert got["soft-prompt"][0] == "damaged" and f"{TENSORS} is missing" in got["soft-prompt"][1]
    assert got["base-chat"] == ("done", None) and got["handwritten"] == ("done", None)
    capsys.readouterr()
    assert main(["status", str(run)]) == 0
    out = capsys.readouterr().out
    assert "1 damaged" in out
    assert f"damaged smollm2-135m-instruct / antonyms / seed 0 / soft-prompt: {TENSORS} is missing" in out

    # scoring the artifact alone: refused in one line before any model loads, never the base prompt in disguise
    assert main(["eval", "--task", "antonyms", "--artifact", str(run / CELLS / "soft-prompt" / "artifact"),
                 "--out", str(tmp_path / "out.jsonl")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "tensors.safetensors is missing" in err and "soft_prompt" in err, err
    assert not (tmp_path / "out.jsonl").exists()

    before = records(run)
    with caplog.at_level(logging.WARNING, logger="harness.runner"):
        resume(run)
    after = records(run)
    assert [c for c in CONDITIONS if before[c] != after[c]] == ["soft-prompt"]
    assert [r.getMessage() for r in caplog.records if "recomputing" in r.getMessage()] == [
        f"recomputing smollm2-135m-instruct / antonyms / seed 0 / soft-prompt: damaged ({TENSORS} is missing)"]
    assert (run / CELLS / "soft-prompt" / TENSORS).exists()
    assert audit(run, with_report=False).passed


def test_resume_repairs_a_short_scores_file_and_a_deleted_artifact_json(run, finished) -> None:
    scores = run / CELLS / "base-chat" / "scores.jsonl"
    scores.write_text("".join(scores.read_text().splitlines(keepends=True)[:9]))  # 9 of 12 lines
    (run / CELLS / "handwritten" / "artifact" / "artifact.json").unlink()
    problems = records_problems(run)
    assert any("base-chat: damaged (scores.jsonl is " in p and "cut short" in p for p in problems), problems
    assert any("handwritten: damaged (artifact/artifact.json is missing)" in p for p in problems), problems
    got = states(run)
    assert got["base-chat"][0] == got["handwritten"][0] == "damaged" and got["soft-prompt"][0] == "done"

    before = records(run)
    resume(run)
    after = records(run)
    assert [c for c in CONDITIONS if before[c] != after[c]] == ["base-chat", "handwritten"]
    assert (run / "summary.csv").read_bytes() == (finished / "summary.csv").read_bytes()
    assert scores.read_bytes() == (finished / CELLS / "base-chat" / "scores.jsonl").read_bytes()
    assert audit(run, with_report=False).passed


def test_a_truncated_cell_json_is_damaged_in_status_and_report(run, tmp_path, capsys) -> None:
    record = run / CELLS / "handwritten" / "cell.json"
    record.write_bytes(record.read_bytes()[:200])
    got = states(run)
    assert got["handwritten"][0] == "damaged" and got["handwritten"][1].startswith("cell.json unreadable")
    capsys.readouterr()
    main(["status", str(run)])
    out = capsys.readouterr().out
    assert "cell.json unreadable" in out and "ended without writing" not in out

    md = report_run(run, tmp_path / "reports", n_boot=200).read_text()
    assert "- seed 0, handwritten: **damaged**" in md and "cell.json unreadable" in md
    assert "no cell.json" not in md and "**missing**" not in md
    assert any("handwritten: damaged (cell.json unreadable" in p for p in records_problems(run))


def test_a_file_changed_in_place_or_a_lost_cell_json_is_damaged(run) -> None:
    evidence = run / CELLS / "soft-prompt" / "evidence.json"
    text = evidence.read_text()
    evidence.write_text(text.replace('"times": 1', '"times": 2', 1))  # same size, other bytes
    assert evidence.read_text() != text
    (run / CELLS / "base-chat" / "cell.json").unlink()  # the folder is there, its record is not
    got = states(run)
    assert got["soft-prompt"][0] == "damaged" and got["soft-prompt"][1].startswith(
        "evidence.json changed since the cell was written")
    assert got["base-chat"][0] == "damaged" and got["base-chat"][1].startswith("cell.json is missing")
    problems = records_problems(run)
    assert any("base-chat: damaged (cell.json is missing)" in p for p in problems), problems


def test_a_legacy_cell_is_judged_by_what_it_has_and_kept(run, capsys) -> None:
    for c in CONDITIONS:  # as written before cell.json listed its files
        path = run / CELLS / c / "cell.json"
        path.write_text(json.dumps({k: v for k, v in json.loads(path.read_text()).items() if k != "files"}, indent=2))
    result = audit(run, with_report=False)
    assert result.passed, [i.problems for i in result.failed]
    assert "3 legacy cell(s)" in next(i for i in result.items if i.title == RECORDS).evidence
    assert {s.key.condition: (s.state, s.legacy) for s in status(run)} == dict.fromkeys(CONDITIONS, ("done", True))
    capsys.readouterr()
    main(["status", str(run)])
    assert "3 legacy cell(s)" in capsys.readouterr().out

    before = records(run)
    resume(run)
    assert records(run) == before  # nothing recomputed

    # judged by what they have: a short scores file, a lost tensor file
    scores = run / CELLS / "base-chat" / "scores.jsonl"
    scores.write_text("".join(scores.read_text().splitlines(keepends=True)[:9]))
    (run / CELLS / "soft-prompt" / TENSORS).unlink()
    got = states(run)
    assert got["base-chat"] == ("damaged", "scores.jsonl has 9 line(s), cell.json n = 12 (cut short?); "
                                           "`promptgap run --resume` recomputes it")
    assert got["soft-prompt"][0] == "damaged" and got["soft-prompt"][1].startswith(f"{TENSORS} is missing")
    assert got["handwritten"][0] == "done"


def test_a_garbage_split_file_or_manifest_names_the_way_forward(run, capsys) -> None:
    argv = ["run", str(run.parents[1] / "c.toml"), "--run-id", "r", "--resume", "--results", str(run.parent),
            "--reports", str(run.parents[1] / "reports")]
    split = run / "splits" / "antonyms" / "seed-0.json"
    split.write_text("{}")  # JSON, but no split
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and str(split) in err and "delete it and resume" in err, err
    split.unlink()  # the way forward it names: the split is rebuilt from the seed and the data
    before = records(run)
    resume(run)
    assert records(run) == before and audit(run, with_report=False).passed

    (run / "manifest.json").write_text("{ not json")
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "manifest.json" in err and "delete it" in err, err
    (run / "manifest.json").unlink()
    resume(run)
    assert records(run) == before and json.loads((run / "manifest.json").read_text())["invocations"]


def test_an_artifact_whose_record_names_tensors_refuses_to_load_without_them(tmp_path) -> None:
    import torch

    saved = PromptArtifact(format="chat", soft_prompt=torch.ones(2, 4), condition="soft").save(tmp_path / "a")
    assert json.loads((saved / "artifact.json").read_text())["tensors"] == {"soft_prompt": [2, 4]}
    assert PromptArtifact.load(saved).n_soft == 2
    (saved / "tensors.safetensors").unlink()
    with pytest.raises(UserError, match="tensors.safetensors is missing, but .* names tensors soft_prompt"):
        PromptArtifact.load(saved)
    text = PromptArtifact(format="chat", instruction="Opposite:").save(tmp_path / "t")
    assert "tensors" not in json.loads((text / "artifact.json").read_text())  # a text artifact's JSON as before
