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
from harness.plan import CellKey
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
    board = json.loads((smoke / "reports" / "leaderboard-smoke-v2" / "leaderboard.json").read_text())
    jsonschema.validate(board, SCHEMA)
    assert board["audit"]["passed"] and board["suite"]["name"] == "smoke" and board["suite"]["version"] == 2
    assert board["reference"] == "handwritten"
    if board["averaged"]:  # the figure of mean R against fit tokens, beside the json
        assert (smoke / "reports" / "leaderboard-smoke-v2" / board["figure"]).stat().st_size > 1000
    assert (smoke / "reports" / "leaderboard-smoke-v2.md").read_text().startswith("# Leaderboard: suite smoke v2")
    run_dir = smoke / "results" / "bench-smoke-v2"
    assert audit(load_run(run_dir), with_report=False).passed
    cells = records(run_dir)
    assert len(cells) == 2 * 2 * 5 and all(r["fingerprint"]["hash"] for r in cells.values())
    candidates = ("soft-prompt", "prefix-tuning")
    assert board["ceiling_candidates"] == list(candidates)
    for task in board["tasks"]:
        # each task's ceiling: the candidate with the lowest mean dev gold NLL over the seeds, from cell.json
        dev = {c: np.mean([cells[(task, s, c)]["dev"]["gold_nll"] for s in (0, 1)]) for c in candidates}
        assert board["ceiling"][task] == min(candidates, key=dev.get)
        for s in (0, 1):
            # the harness's dev score is the one the training chose its winner on (log.json), computed by the
            # trainer's own dev evaluation in other batches: float32 sums in another order, ~1e-7 relative per
            # token, so 1e-5 nats holds it and still catches another split, prompt or checkpoint
            for c in candidates:
                log = json.loads((run_dir / "cells" / "smollm2-135m-instruct" / task / f"seed-{s}" / c /
                                  "log.json").read_text())
                assert cells[(task, s, c)]["dev"]["gold_nll"] == pytest.approx(log["winner"]["best_dev_loss"],
                                                                              abs=1e-5)
                assert cells[(task, s, c)]["dev"]["n"] == 8
    # R of each text on each task with a gap, by hand from scores.jsonl: mean(text - base) / mean(ceiling - base)
    # over every (seed, example), on the gold log-likelihood (-gold_nll). The same float64 numbers summed in another
    # order: ~1e-15 relative, so 1e-9 leaves room and still catches any wrong pairing or role
    assert board["averaged"], "the smoke suite's ceiling must clear its base on some task, or R is never tested"
    for task in board["averaged"]:
        ll = {}
        for c in ("base-chat", *candidates, "handwritten", "terse"):
            lines = [json.loads(x) for s in (0, 1) for x in
                     (run_dir / "cells" / "smollm2-135m-instruct" / task / f"seed-{s}" / c / "scores.jsonl").open()]
            ll[c] = -np.array([x["gold_nll"] for x in lines])
        gain = (ll[board["ceiling"][task]] - ll["base-chat"]).mean()
        for row in board["rows"]:
            want = (ll[row["condition"]] - ll["base-chat"]).mean() / gain
            assert row["tasks"][task]["r"] == pytest.approx(want, rel=1e-9)
    for row in board["rows"]:  # the mean over the tasks with a gap, a rank interval that holds the rank, and the
        # count of wins over the reference, which is itself not counted
        wins = row["above_reference"]
        assert wins is None if row["condition"] == "handwritten" else 0 <= wins <= len(board["tasks"])
        rs = [row["tasks"][t]["r"] for t in board["averaged"]]
        assert row["mean_r"] == pytest.approx(sum(rs) / len(rs), rel=1e-12)
        assert row["rank_ci"][0] <= row["rank"] <= row["rank_ci"][1]
    for task in board["no_gap"]:
        assert all(row["tasks"][task]["no_r"] == "no-gap" for row in board["rows"])


def test_add_computes_only_the_added_conditions_cells(smoke: Path) -> None:
    bench(smoke, "--add", "fewshot")
    run_dir = smoke / "results" / "bench-smoke-v2-with-fewshot"
    cells = records(run_dir)
    assert len(cells) == 2 * 2 * 6
    for (_, _, cond), r in cells.items():
        if cond == "fewshot":
            assert r.get("reused_from") is None
        else:
            assert r["reused_from"]["run"] == "bench-smoke-v2"
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["invocations"][-1]["reused"] == {"bench-smoke-v2": 20}
    board = json.loads((smoke / "reports" / "leaderboard-smoke-v2-with-fewshot" / "leaderboard.json").read_text())
    assert {r["condition"] for r in board["rows"]} == {"handwritten", "terse", "fewshot"}
    assert audit(load_run(run_dir), with_report=False).passed


def test_a_changed_setting_is_recomputed_and_the_rest_kept(smoke: Path, tmp_path: Path) -> None:
    mine = tmp_path / "mine.toml"
    mine.write_text('[conditions.mine]\noptimizer = "handwritten"\ninstruction = "Say the opposite."\nformat = '
                    '"chat"\n')
    bench(smoke, "--add-config", str(mine))
    run_dir = smoke / "results" / "bench-smoke-v2-with-mine"
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
    shutil.copytree(smoke / "results" / "bench-smoke-v2", root / "results" / "bench-smoke-v2")
    target = root / "results" / "bench-smoke-v2" / "cells" / "smollm2-135m-instruct" / "antonyms" / "seed-0" / "terse"
    r = json.loads((target / "cell.json").read_text())
    r["fingerprint"]["hash"] = "0" * 16  # as if other scoring code had made it
    (target / "cell.json").write_text(json.dumps(r))
    bench(root, "--add", "fewshot")
    cells = records(root / "results" / "bench-smoke-v2-with-fewshot")
    assert cells[("antonyms", 0, "terse")].get("reused_from") is None
    assert cells[("antonyms", 0, "terse")]["fingerprint"]["hash"] != "0" * 16
    assert cells[("antonyms", 1, "terse")]["reused_from"]["run"] == "bench-smoke-v2"
    bench(root)  # the suite's own folder: its stale cell is computed again in place, the others kept
    again = records(root / "results" / "bench-smoke-v2")
    assert again[("antonyms", 0, "terse")]["fingerprint"]["hash"] != "0" * 16
    assert again[("antonyms", 1, "terse")]["finished"] == records(smoke / "results" / "bench-smoke-v2")[
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


def test_budget_tokens_stops_every_search_within_its_budget(smoke: Path) -> None:
    # 1500 tokens hold pez's first dev evaluation and a few steps on these tiny splits, and a few DSPy candidates
    budget = 1500
    bench(smoke, "--add", "pez", "--add", "dspy-fewshot", "--budget-tokens", str(budget))
    run_dir = smoke / "results" / f"bench-smoke-v2-budget-{budget}-with-pez-dspy-fewshot"
    stops = []
    for (_, _, cond), r in records(run_dir).items():
        if cond in ("pez", "dspy-fewshot"):
            assert r["status"] == "ok" and r["settings"]["budget_tokens"] == budget
            assert 0 < r["fit_tokens"] <= budget
            stops.append(json.loads((RunFolder(run_dir).cell_dir(CellKey.from_json(r)) / "log.json").read_text())
                         ["stopped"])
        else:  # the suite's own conditions do not search: unchanged, so copied
            assert r["reused_from"]["run"] == "bench-smoke-v2"
    assert any(s == f"budget_tokens ({budget})" for s in stops)  # the budget, not the search's own end, stopped some
    board = json.loads((smoke / "reports" / f"leaderboard-smoke-v2-budget-{budget}-with-pez-dspy-fewshot" /
                        "leaderboard.json").read_text())
    assert board["suite"]["budget_tokens"] == budget
    md = (smoke / "reports" / f"leaderboard-smoke-v2-budget-{budget}-with-pez-dspy-fewshot.md").read_text()
    assert f"`--budget-tokens {budget}`" in md and "(pez, dspy-fewshot)" in md
    assert all(row["cost"]["fit_tokens"] <= budget for row in board["rows"])


def test_a_suite_names_the_tasks_it_cannot_load_and_runs_the_rest(tmp_path: Path, monkeypatch) -> None:
    """The `standard` suite's situation offline, with a fixture lm-eval YAML standing in for a real task: arc_easy's
    data are on the hub (unreachable here), pgfx_capitals' are local files; the bench runs the one and names the
    other with why, in the terminal and on the leaderboard."""
    fixtures = ROOT / "tests" / "fixtures" / "lm_eval"
    monkeypatch.chdir(fixtures)  # the fixture YAML's data paths are relative to where lm-eval runs, as in lm-eval
    suite = tmp_path / "offline.toml"
    suite.write_text(f"""
[suite]
version = 1
[run]
seeds = [0]
n_boot = 200
[[tasks]]
name = "lm-eval:pgfx_capitals"
lm_eval_include = "{fixtures}"
sizes = {{ train = 6, dev = 4, test = 12 }}
[[tasks]]
name = "lm-eval:arc_easy"
[conditions.base-chat]
[conditions.handwritten]
format = "chat"
[conditions.soft-prompt]
steps = 2
eval_every = 1
batch_size = 2
[ratio]
base = "base-chat"
texts = ["handwritten"]
ceiling = "soft-prompt"
""")
    assert main(["bench", "--suite", str(suite), "--results", str(tmp_path / "results"), "--reports",
                 str(tmp_path / "reports")]) == 0
    cells = records(tmp_path / "results" / "bench-offline-v1")
    assert {task for task, _, _ in cells} == {"lm-eval:pgfx_capitals"} and len(cells) == 3
    board = json.loads((tmp_path / "reports" / "leaderboard-offline-v1" / "leaderboard.json").read_text())
    assert board["tasks"] == ["lm-eval:pgfx_capitals"] and list(board["suite"]["skipped"]) == ["lm-eval:arc_easy"]
    assert "arc_easy" in board["suite"]["skipped"]["lm-eval:arc_easy"]
    md = (tmp_path / "reports" / "leaderboard-offline-v1.md").read_text()
    assert "Not run here (the suite's other tasks ran): lm-eval:arc_easy (" in md


def test_the_standard_suite_plans_offline_and_says_what_it_cannot_load() -> None:
    # every standard task's data are on the hub: offline none loads, and the error names each with why
    with pytest.raises(UserError, match=r"no task could be loaded here \(lm-eval:arc_easy: .*lm-eval:piqa: "):
        load_suite("standard", model="smollm2-135m-instruct")


def test_the_fingerprint_ignores_comments_and_line_wrapping_but_not_code(tmp_path: Path) -> None:
    from harness.provenance import code_sha

    def sha(text: str) -> str:
        (tmp_path / "m.py").write_text(text)
        return code_sha(tmp_path / "m.py")

    base = sha('def f(x):\n    """Doc."""\n    return max(x, 1)  # at least one\n')
    assert sha('# a new comment\ndef f(x):\n    """Doc."""\n\n    return max(x, 1)\n') == base
    assert sha('def f(x):\n    """Doc."""\n    return max(x,\n               1)\n') == base  # re-wrapped
    assert sha('def f(x):\n    """Doc."""\n    return max(x, 2)\n') != base  # code
    assert sha('def f(x):\n    """Other doc."""\n    return max(x, 1)\n') != base  # a docstring is code here
