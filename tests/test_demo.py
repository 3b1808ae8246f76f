"""The main job as the demo: `promptgap demo` runs a matrix, writes its report and prints its headline; `init`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jsonschema

from harness.cli import main
from harness.config import load_config

ROOT = Path(__file__).resolve().parents[1]


def test_demo_smoke_runs_the_main_job_and_prints_its_headline(tmp_path) -> None:
    """The same path as `make demo`, on a tiny budget: a matrix, R, verdicts, a report, the headline table."""
    env = {**os.environ, "PROMPTGAP_PROGRESS": "0", "COLUMNS": "200"}
    out = subprocess.run([sys.executable, "-m", "harness.cli", "demo", "--smoke", "--run-id", "d"], cwd=tmp_path,
                         env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr
    assert "text prompt" in out.stdout and "R on gold log-lik" in out.stdout
    # at least one verdict the data decide (not a degenerate one): the terse instruction recovers less than half
    assert "soft-only" in out.stdout
    assert "same-as-base" in out.stdout  # the few-shot search kept no demo: named, not counted as a finding
    verdict = json.loads((tmp_path / "reports" / "d" / "verdict.json").read_text())
    schema = json.loads((ROOT / "harness" / "schemas" / "verdict.schema.json").read_text())
    jsonschema.validate(verdict, schema)
    labels = {r["texts"][0]: r["verdict"] for r in verdict["groups"][0]["rows"]}
    assert labels["dspy-fewshot"] == "same-as-base" and "soft-only" in labels.values()
    assert verdict["audit"]["passed"]
    check = subprocess.run([sys.executable, "-m", "harness.cli", "check", "results/d"], cwd=tmp_path, env=env,
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stdout


def test_init_writes_a_config_that_runs(tmp_path, capsys) -> None:
    path = tmp_path / "study.toml"
    assert main(["init", str(path)]) == 0
    cfg = load_config(path)  # every key, name and role of the starter passes the checks
    assert cfg.ratio["ceiling"] == "soft-prompt" and "my-instruction" in cfg.conditions
    assert main(["init", str(path)]) == 2  # never overwrites
    assert "exists; give another path" in capsys.readouterr().err
