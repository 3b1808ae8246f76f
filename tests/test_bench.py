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
from harness.findings import choose_ceiling
from harness.plan import CellKey
from harness.run_folder import Cell, CellRecord, RunFolder, load_run
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


def test_the_audit_fails_a_ceiling_candidate_whose_dev_score_misses_dev(smoke: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "bench-smoke-v2"
    shutil.copytree(smoke / "results" / "bench-smoke-v2", run_dir)
    assert audit(load_run(run_dir), with_report=False).passed
    target = run_dir / "cells" / "smollm2-135m-instruct" / "opposites" / "seed-1" / "prefix-tuning" / "cell.json"
    r = json.loads(target.read_text())
    r["dev"]["n"] = 3  # as if it had been scored on part of dev
    target.write_text(json.dumps(r))
    checked = audit(load_run(run_dir), with_report=False)
    assert not checked.passed
    assert any("covers 3 example(s), not the split's 8" in p for i in checked.failed for p in i.problems)


def test_the_fingerprint_covers_the_helpers_a_condition_fits_with() -> None:
    from harness.provenance import scoring_fingerprint
    from harness.registry import get_task

    task = get_task("opposites")
    soft = set(scoring_fingerprint(task, "soft-prompt", "cpu", "float32")["modules"])
    # the condition's module and the training loop it imports, the task's and its spec loader, the scorer
    assert {"optimizers.soft_prompt", "optimizers.prompt_training", "tasks.opposites", "tasks.generic",
            "harness.scorer", "harness.forward"} <= soft
    assert "optimizers.dspy_bridge" in scoring_fingerprint(task, "dspy-mipro", "cpu", "float32")["modules"]
    assert not soft & {"harness.run_folder", "harness.report", "harness.config"}  # record keeping: no number


def test_a_new_version_of_a_suite_copies_what_still_matches(smoke: Path, tmp_path: Path) -> None:
    root = tmp_path / "v"
    shutil.copytree(smoke / "results" / "bench-smoke-v2", root / "results" / "bench-smoke-v2")
    suite = tmp_path / "smoke.toml"  # the same suite, version 3, with one condition's setting changed
    suite.write_text((ROOT / "harness" / "suites" / "smoke.toml").read_text().replace("version = 2", "version = 3")
                     .replace('instruction = "Opposite:"', 'instruction = "Antonym:"'))
    assert main(["bench", "--suite", str(suite), "--results", str(root / "results"), "--reports",
                 str(root / "reports")]) == 0
    for (_, _, cond), r in records(root / "results" / "bench-smoke-v3").items():
        if cond == "terse":
            assert r.get("reused_from") is None and r["settings"]["instruction"] == "Antonym:"
        else:
            assert r["reused_from"]["run"] == "bench-smoke-v2"


def test_a_ceiling_candidate_is_reused_only_with_its_dev_score(smoke: Path) -> None:
    from harness.runner import reusable

    donor = RunFolder(smoke / "results" / "bench-smoke-v2")
    key = CellKey("smollm2-135m-instruct", "antonyms", 0, "terse")
    record = donor.cell_state(key).record
    cfg = load_suite("smoke").cfg
    assert reusable(donor, key, cfg, record.split_hash, record.fingerprint) is None
    cfg.ratio["ceiling"] = ["soft-prompt", "terse"]  # as if a new version made it a ceiling candidate
    assert reusable(donor, key, cfg, record.split_hash, record.fingerprint) == ("no dev score, which a ceiling "
                                                                                "candidate here needs")


def test_an_added_weight_training_condition_joins_the_ceiling_candidates_not_the_ranked_texts(tmp_path) -> None:
    # lora and full-finetune train the model's weights (they declare produces = {"weights"}): no prompt to rank
    (tmp_path / "w.toml").write_text("[conditions.full-finetune]\nsteps = 4\n[conditions.mine]\noptimizer = "
                                     "\"handwritten\"\n")
    suite = load_suite("smoke", ["lora"], add_config=tmp_path / "w.toml")
    assert suite.cfg.ratio["ceiling"] == ["soft-prompt", "prefix-tuning", "lora", "full-finetune"]
    assert suite.cfg.ratio["texts"] == ["handwritten", "terse", "mine"]
    assert suite.run_id == "bench-smoke-v2-with-lora-full-finetune-mine"


def test_bad_suite_input_is_a_one_line_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no such suite"):
        load_suite("nope")
    with pytest.raises(UserError, match="already has a condition"):
        load_suite("smoke", ["terse"])
    plain = tmp_path / "plain.toml"
    plain.write_text('[[tasks]]\nname = "antonyms"\n[conditions.base-chat]\n')
    with pytest.raises(UserError, match=r"no \[suite\] table"):
        load_suite(str(plain))


def test_a_suite_reads_its_local_data_only_from_the_data_folder(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="every task of the suite reads local data.*sst2: its data are local files"):
        load_suite("lite")
    with pytest.raises(UserError, match="--data .*nope: no such folder"):
        load_suite("lite", data=tmp_path / "nope")
    (tmp_path / "sst2").mkdir()  # a data folder without the tasks' files: each is named, and nothing runs
    with pytest.raises(UserError, match=r"boolq: no folder .*boolq .*sst2: .*glue_sst2"):
        load_suite("lite", data=tmp_path)
    suite = load_suite("lite", data=ROOT.parent / "shared" / "data")  # the project's data: all five tasks load
    assert not suite.skipped and [t.alias or t.name for t in suite.cfg.tasks] == [
        "antonyms-fv", "antonyms-antsynnet", "sst2", "boolq", "winogrande"]
    assert suite.cfg.tasks[0].data_dir == str((ROOT.parent / "shared" / "data" / "antonyms").resolve())


def test_an_added_search_runs_at_the_suites_shared_budget(tmp_path: Path) -> None:
    extra = tmp_path / "extra.toml"
    extra.write_text('[conditions.my-gepa]\noptimizer = "dspy-gepa"\nbudget_tokens = 5000\n'
                     '[conditions.terse]\noptimizer = "handwritten"\ninstruction = "Opposite:"\n')
    suite = load_suite("lite", add=["dspy-gepa"], add_config=extra, data=ROOT.parent / "shared" / "data")
    settings = {c: spec.settings for c, spec in suite.cfg.conditions.items()}
    # lite.toml gives each of its searches 20,000 tokens; an added search without a budget of its own gets it too
    assert {settings[c]["budget_tokens"] for c in ("dspy-fewshot", "dspy-copro", "dspy-mipro", "pez", "gcg")} == {
        20000}
    assert settings["dspy-gepa"]["budget_tokens"] == 20000
    assert settings["my-gepa"]["budget_tokens"] == 5000  # its own table's budget stands
    assert "budget_tokens" not in settings["terse"]  # it does not search


def _cell(cond: str, seed: int, dev: dict | None, ok: bool = True) -> Cell:
    key = CellKey("m", "t", seed, cond)
    record = CellRecord(key=key, optimizer=cond, settings={}, split_hash="h", status="ok" if ok else "error", dev=dev)
    return Cell(key, record=record, status="ok" if ok else "error")


def test_choose_ceiling_takes_the_best_mean_dev_score_on_the_deciding_metric() -> None:
    cells = {  # soft: mean dev NLL 1.0, accuracy 0.5; prefix: NLL 1.1, accuracy 0.7; lora: failed on seed 1
        "soft": [_cell("soft", 0, {"n": 4, "gold_nll": 0.8, "accuracy": 0.5}),
                 _cell("soft", 1, {"n": 4, "gold_nll": 1.2, "accuracy": 0.5})],
        "prefix": [_cell("prefix", 0, {"n": 4, "gold_nll": 1.0, "accuracy": 0.75}),
                   _cell("prefix", 1, {"n": 4, "gold_nll": 1.2, "accuracy": 0.65})],
        "lora": [_cell("lora", 0, {"n": 4, "gold_nll": 0.1, "accuracy": 1.0}), _cell("lora", 1, None, ok=False)],
    }
    usable = ["soft", "prefix"]
    by_ll = choose_ceiling(["soft", "prefix", "lora"], cells, usable, "loglik")
    assert by_ll.name == "soft" and by_ll.chosen and by_ll.dev["lora"] is None
    assert by_ll.dev["soft"] == pytest.approx((0.5, 1.0)) and by_ll.dev["prefix"] == pytest.approx((0.7, 1.1))
    assert choose_ceiling(["soft", "prefix", "lora"], cells, usable, "accuracy").name == "prefix"
    # a tie goes to the first listed; an accuracy tie is broken by the gold NLL
    tie = {"a": [_cell("a", 0, {"n": 4, "gold_nll": 1.0, "accuracy": 0.5})],
           "b": [_cell("b", 0, {"n": 4, "gold_nll": 1.0, "accuracy": 0.5})],
           "c": [_cell("c", 0, {"n": 4, "gold_nll": 0.9, "accuracy": 0.5})]}
    assert choose_ceiling(["b", "a"], tie, ["a", "b"], "loglik").name == "b"
    assert choose_ceiling(["a", "b", "c"], tie, ["a", "b", "c"], "accuracy").name == "c"
    # the only candidate needs no dev score; none usable -> no ceiling
    only = choose_ceiling(["lora"], cells, ["lora"], "loglik")
    assert only.name == "lora" and not only.chosen
    assert choose_ceiling(["soft", "lora"], cells, [], "loglik").name is None


def test_budget_tokens_stops_every_search_within_its_budget(smoke: Path) -> None:
    # 900 tokens hold pez's first dev evaluation and a step or two on these tiny splits, and a few DSPy candidates
    budget = 900
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
