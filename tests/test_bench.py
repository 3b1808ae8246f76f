"""`promptgap bench`: the smoke suite end to end, its leaderboard, and cells reused from another run only when the
condition, its settings, the split and the scoring fingerprint all match (a mismatch is recomputed, never mixed)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import jsonschema
import numpy as np
import pytest

from harness.audit import audit
from harness.cli import main
from harness.errors import UserError
from harness.run_folder import RunFolder, load_run
from harness.suite import load_suite

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = json.loads((ROOT / "harness" / "schemas" / "leaderboard.schema.json").read_text())


def bench(root: Path, *extra: str) -> None:
    assert main(["bench", "--suite", "smoke", "--results", str(root / "results"), "--reports",
                 str(root / "reports"), *extra]) == 0


def records(run_dir: Path) -> dict[tuple[str, int, str], dict]:
    """(task, seed, condition) -> cell.json of every cell of the run."""
    out = {}
    for p in RunFolder(run_dir).cell_paths():
        r = json.loads((p / "cell.json").read_text())
        out[(r["task"], r["seed"], r["condition"])] = r
    return out


@pytest.fixture(scope="module")
def smoke(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("bench")
    bench(root)
    return root


def test_smoke_suite_writes_a_leaderboard_whose_numbers_are_the_cells(smoke: Path) -> None:
    board = json.loads((smoke / "reports" / "leaderboard-smoke-v1" / "leaderboard.json").read_text())
    jsonschema.validate(board, SCHEMA)
    assert board["audit"]["passed"] and board["suite"] == {"name": "smoke", "version": 1}
    assert (smoke / "reports" / "leaderboard-smoke-v1.md").read_text().startswith("# Leaderboard: suite smoke v1")
    run_dir = smoke / "results" / "bench-smoke-v1"
    assert audit(load_run(run_dir), with_report=False).passed
    cells = records(run_dir)
    assert len(cells) == 2 * 2 * 4 and all(r["fingerprint"]["hash"] for r in cells.values())
    # R of each text on each task with a gap, by hand from scores.jsonl: mean(text - base) / mean(ceiling - base)
    # over every (seed, example), on the gold log-likelihood (-gold_nll)
    assert board["averaged"], "the smoke suite's ceiling must clear its base on some task, or R is never tested"
    for task in board["averaged"]:
        ll = {}
        for c in ("base-chat", "soft-prompt", "handwritten", "terse"):
            lines = [json.loads(x) for s in (0, 1) for x in
                     (run_dir / "cells" / "smollm2-135m-instruct" / task / f"seed-{s}" / c / "scores.jsonl").open()]
            ll[c] = -np.array([x["gold_nll"] for x in lines])
        gain = (ll["soft-prompt"] - ll["base-chat"]).mean()
        for row in board["rows"]:
            want = (ll[row["condition"]] - ll["base-chat"]).mean() / gain
            assert row["tasks"][task]["r"] == pytest.approx(want, rel=1e-9)
    for row in board["rows"]:  # the mean over the tasks with a gap, and a rank interval that holds the rank
        rs = [row["tasks"][t]["r"] for t in board["averaged"]]
        assert row["mean_r"] == pytest.approx(sum(rs) / len(rs), rel=1e-12)
        assert row["rank_ci"][0] <= row["rank"] <= row["rank_ci"][1]
    for task in board["no_gap"]:
        assert all(row["tasks"][task]["no_r"] == "no-gap" for row in board["rows"])


def test_add_computes_only_the_added_conditions_cells(smoke: Path) -> None:
    bench(smoke, "--add", "fewshot")
    run_dir = smoke / "results" / "bench-smoke-v1-with-fewshot"
    cells = records(run_dir)
    assert len(cells) == 2 * 2 * 5
    for (_, _, cond), r in cells.items():
        if cond == "fewshot":
            assert r.get("reused_from") is None
        else:
            assert r["reused_from"]["run"] == "bench-smoke-v1"
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["invocations"][-1]["reused"] == {"bench-smoke-v1": 16}
    board = json.loads((smoke / "reports" / "leaderboard-smoke-v1-with-fewshot" / "leaderboard.json").read_text())
    assert {r["condition"] for r in board["rows"]} == {"handwritten", "terse", "fewshot"}
    assert audit(load_run(run_dir), with_report=False).passed


def test_a_changed_setting_is_recomputed_and_the_rest_kept(smoke: Path, tmp_path: Path) -> None:
    mine = tmp_path / "mine.toml"
    mine.write_text('[conditions.mine]\noptimizer = "handwritten"\ninstruction = "Say the opposite."\nformat = '
                    '"chat"\n')
    bench(smoke, "--add-config", str(mine))
    run_dir = smoke / "results" / "bench-smoke-v1-with-mine"
    before = records(run_dir)
    mine.write_text('[conditions.mine]\noptimizer = "handwritten"\ninstruction = "Antonym:"\nformat = "chat"\n')
    bench(smoke, "--add-config", str(mine))
    after = records(run_dir)
    for key, r in after.items():
        if key[2] == "mine":  # computed again, with the new setting
            assert r["settings"]["instruction"] == "Antonym:" and r["finished"] != before[key]["finished"]
        else:  # kept as they were
            assert r == before[key]


def test_a_changed_scoring_fingerprint_is_recomputed_not_reused(smoke: Path, tmp_path: Path) -> None:
    root = tmp_path / "copy"
    shutil.copytree(smoke / "results" / "bench-smoke-v1", root / "results" / "bench-smoke-v1")
    target = root / "results" / "bench-smoke-v1" / "cells" / "smollm2-135m-instruct" / "antonyms" / "seed-0" / "terse"
    r = json.loads((target / "cell.json").read_text())
    r["fingerprint"]["hash"] = "0" * 16  # as if other scoring code had made it
    (target / "cell.json").write_text(json.dumps(r))
    bench(root, "--add", "fewshot")
    cells = records(root / "results" / "bench-smoke-v1-with-fewshot")
    assert cells[("antonyms", 0, "terse")].get("reused_from") is None
    assert cells[("antonyms", 0, "terse")]["fingerprint"]["hash"] != "0" * 16
    assert cells[("antonyms", 1, "terse")]["reused_from"]["run"] == "bench-smoke-v1"
    bench(root)  # the suite's own folder: its stale cell is computed again in place, the others kept
    again = records(root / "results" / "bench-smoke-v1")
    assert again[("antonyms", 0, "terse")]["fingerprint"]["hash"] != "0" * 16
    assert again[("antonyms", 1, "terse")]["finished"] == records(smoke / "results" / "bench-smoke-v1")[
        ("antonyms", 1, "terse")]["finished"]


def test_bad_suite_input_is_a_one_line_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no such suite"):
        load_suite("nope")
    with pytest.raises(UserError, match="already has a condition"):
        load_suite("smoke", ["terse"])
    plain = tmp_path / "plain.toml"
    plain.write_text('[[tasks]]\nname = "antonyms"\n[conditions.base-chat]\n')
    with pytest.raises(UserError, match=r"no \[suite\] table"):
        load_suite(str(plain))
