"""Plugins: installed from their own folders, found through entry points, held to the rules by the harness."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "plugins" / "promptgap-paraphrase"
BAD = Path(__file__).parent / "fixtures" / "plugins" / "badplugins"

CONFIG = """
[run]
name = "plugins"
n_boot = 200

[[tasks]]
name = "antonyms"
sizes = { train = 4, dev = 6, test = 10 }

[conditions.base-chat]
[conditions.handwritten]
format = "chat"
[conditions.paraphrase-search]
candidates = 2
[conditions.peeks-at-test]
[conditions.scores-test]
[conditions.malformed]
[conditions.raises]

[ratio]
base = "base-chat"
texts = ["handwritten", "paraphrase-search"]
"""


@pytest.fixture(scope="module")
def plugin_env(tmp_path_factory) -> dict[str, str]:
    """The example plugin and the rule-breaking fixture, pip-installed into a folder put on the path."""
    target = tmp_path_factory.mktemp("site")
    for folder in (EXAMPLE, BAD):
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                        "--target", str(target), str(folder)], check=True, capture_output=True)
    path = os.pathsep.join([str(target), os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "PYTHONPATH": path, "PROMPTGAP_PROGRESS": "0", "HF_HUB_OFFLINE": "1"}


def promptgap(env: dict[str, str], *argv: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness.cli", *argv], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=900)


def test_installed_plugin_is_listed(plugin_env, tmp_path) -> None:
    out = promptgap(plugin_env, "list", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "paraphrase-search" in out.stdout and "peeks-at-test" in out.stdout


def test_plugin_runs_in_the_matrix_and_rule_breakers_fail_alone(plugin_env, tmp_path) -> None:
    (tmp_path / "c.toml").write_text(CONFIG)
    out = promptgap(plugin_env, "run", "c.toml", "--run-id", "p", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    rows = {r["condition"]: r for r in csv.DictReader((tmp_path / "results" / "p" / "summary.csv").open())}
    assert {c for c, r in rows.items() if r["status"] == "ok"} == {"base-chat", "handwritten", "paraphrase-search",
                                                                   "scores-test"}
    # the plugin's test numbers come from the same split as the built-ins'
    assert len({rows[c]["split_hash"] for c in rows}) == 1 and rows["paraphrase-search"]["n"] == "10"

    def error(condition: str) -> str:
        cell = tmp_path / "results" / "p" / "cells" / "smollm2-135m-instruct" / "antonyms" / "seed-0" / condition
        return json.loads((cell / "cell.json").read_text())["error"]

    for condition in ("peeks-at-test", "malformed", "raises"):  # each error names the plugin and its package
        assert error(condition).startswith(f"condition {condition} ({condition}, from promptgap-badplugins 0.0.1)")
    assert "task.split is not available to a condition" in error("peeks-at-test")
    assert "soft_prompt of shape [3, 7]; model smollm2-135m-instruct needs [n, 576]" in error("malformed")
    assert "RuntimeError: the search diverged" in error("raises")

    # `promptgap status` names each failed cell with the error its cell.json records
    status = promptgap(plugin_env, "status", "results/p", cwd=tmp_path)
    assert status.returncode == 0 and "7 cells: 4 done, 0 running, 3 failed, 0 pending" in status.stdout
    failed = {line.split(" / ")[-1].split(":")[0]: line for line in status.stdout.splitlines() if "failed " in line}
    assert set(failed) == {"peeks-at-test", "malformed", "raises"}
    assert "RuntimeError: the search diverged" in failed["raises"]

    # a plugin that scores the test split while fitting runs to the end, but the audit catches it, by name
    assert rows["scores-test"]["status"] == "ok"
    check = promptgap(plugin_env, "check", "results/p", cwd=tmp_path)
    assert check.returncode == 1, check.stdout
    assert "FAIL No test example was read while fitting" in check.stdout
    assert "seed 0 / scores-test: read 10 test example(s) while fitting" in check.stdout
    assert sum("while fitting, e.g." in line for line in check.stdout.splitlines()) == 1  # that cell alone

    report = (tmp_path / "reports" / "p.md").read_text()
    assert "**The validity audit fails** (No test example was read while fitting)" in report
    assert "| paraphrase-search (text) |" in report
    tried = json.loads((tmp_path / "results" / "p" / "cells" / "smollm2-135m-instruct" / "antonyms" / "seed-0" /
                        "paraphrase-search" / "artifact" / "artifact.json").read_text())["meta"]["tried"]
    assert len(tried) == 2 and min(tried, key=lambda t: t["dev_gold_nll"])["instruction"] in report


@pytest.fixture(scope="module")
def broken_plugin_env(tmp_path_factory) -> dict[str, str]:
    """A package whose entry point raises at import (a missing dependency, say), registered the way pip registers
    one: a dist-info folder with entry_points.txt on the path."""
    site = tmp_path_factory.mktemp("broken-site")
    (site / "explodes_plugin.py").write_text('raise RuntimeError("needs the frobnicate library")\n')
    info = site / "promptgap_explodes-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: promptgap-explodes\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[promptgap.optimizers]\nexplodes = explodes_plugin:Explodes\n")
    path = os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "PYTHONPATH": path, "PROMPTGAP_PROGRESS": "0", "HF_HUB_OFFLINE": "1"}


def one_line_naming_the_plugin(stderr: str) -> None:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    for part in ("explodes", "explodes_plugin:Explodes", "promptgap-explodes 0.1", "RuntimeError",
                 "needs the frobnicate library"):
        assert part in lines[0], lines[0]


def test_plugin_raising_at_import_is_named_and_list_goes_on(broken_plugin_env, tmp_path) -> None:
    out = promptgap(broken_plugin_env, "list", cwd=tmp_path)
    assert out.returncode == 2, out.stderr  # the rest is listed, and the broken plugin is an error
    one_line_naming_the_plugin(out.stderr)
    listed = {line.split("│")[1].strip() for line in out.stdout.splitlines() if line.count("│") >= 3}
    assert {"explodes", "base-raw", "handwritten", "antonyms"} <= listed
    assert "BROKEN" in next(line for line in out.stdout.splitlines() if "explodes" in line)

    out = promptgap(broken_plugin_env, "eval", "--task", "antonyms", "--condition", "explodes", "--out", "o.jsonl",
                    cwd=tmp_path)
    assert out.returncode == 2
    one_line_naming_the_plugin(out.stderr)
    assert not (tmp_path / "o.jsonl").exists()

    (tmp_path / "c.toml").write_text('[[tasks]]\nname = "antonyms"\n[conditions.explodes]\n')
    out = promptgap(broken_plugin_env, "run", "c.toml", "--run-id", "b", cwd=tmp_path)
    assert out.returncode == 2
    one_line_naming_the_plugin(out.stderr)
    assert not (tmp_path / "results" / "b").exists()
