"""One cell path: `promptgap eval` and a run's cell fit and score through ``harness.cell.fit_and_score`` and write the
same records; and no import circle among the command line, the runner and the executors."""

from __future__ import annotations

import ast
import json
from pathlib import Path

from harness import cell as cell_path
from harness.cli import main
from harness.runner import Runner

ROOT = Path(__file__).resolve().parents[1]

ONE_CONDITION = """
[run]
name = "one"
seeds = [1]

[[tasks]]
name = "antonyms"

[conditions.handwritten]
format = "chat"
"""


def test_eval_and_a_run_cell_write_the_same_records_through_one_function(tmp_path, monkeypatch, capsys) -> None:
    calls = []

    def spy(*args, **kwargs):  # the real function, its calls noted
        scored = real(*args, **kwargs)
        calls.append((args[4], args[5], scored))  # record, evidence, result
        return scored

    real = cell_path.fit_and_score
    monkeypatch.setattr(cell_path, "fit_and_score", spy)
    out = tmp_path / "eval.jsonl"
    # eval's test split and a run's without [tasks] sizes are the task's default split of the seed
    assert main(["eval", "--task", "antonyms", "--condition", "handwritten", "--set", "format=chat", "--seed", "1",
                 "--split", "test", "--out", str(out)]) == 0
    config = tmp_path / "one.toml"
    config.write_text(ONE_CONDITION)
    run_dir = Runner(config, run_id="one", results_root=tmp_path / "results").run()
    capsys.readouterr()

    assert len(calls) == 2, "eval and the run cell each go through fit_and_score once"
    eval_lines = [json.loads(x) for x in out.read_text().splitlines()]
    (cell,) = run_dir.glob("cells/*/antonyms/seed-1/handwritten")
    run_lines = [json.loads(x) for x in (cell / "scores.jsonl").read_text().splitlines()]
    assert len(eval_lines) == 137 and eval_lines == run_lines  # same requests, same passes: the same bits
    (eval_record, eval_evidence, _), (run_record, run_evidence, _) = calls
    saved = json.loads((cell / "evidence.json").read_text())
    assert eval_evidence.to_json() == run_evidence.to_json() == saved
    on_disk = json.loads((cell / "cell.json").read_text())
    for field in ("split_hash", "n", "accuracy", "gold_nll", "format", "prompt_tokens", "n_train", "n_dev"):
        assert getattr(eval_record, field) == getattr(run_record, field) == on_disk[field], field


def imports(module: str) -> set[str]:
    """Every module ``harness/<module>.py`` imports, at its top or inside functions."""
    tree = ast.parse((ROOT / "harness" / f"{module}.py").read_text())
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
            out |= {f"{node.module}.{a.name}" for a in node.names}  # from harness import executors
    return out


def reaches(module: str) -> set[str]:
    """The harness modules ``harness.<module>`` imports, directly or through other harness modules."""
    seen: set[str] = set()
    todo = [module]
    while todo:
        for name in imports(todo.pop()):
            part = name.removeprefix("harness.")
            if name.startswith("harness.") and (ROOT / "harness" / f"{part}.py").exists() and part not in seen:
                seen.add(part)
                todo.append(part)
    return seen


def test_no_import_circle_among_cli_runner_and_executors() -> None:
    assert {"cli", "runner"}.isdisjoint(reaches("executors")), "executors receive the job; they import neither"
    assert "cli" not in reaches("runner")
    assert "runner" in reaches("cli") and "executors" in reaches("runner")  # one direction only
    assert "cli" not in reaches("cell") and "runner" not in reaches("cell")
