"""The run report: a synthetic run folder with per-example values chosen so that every reported number is known."""

from __future__ import annotations

import json
import math
import random
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import scipy.stats
import torch

import harness.report as report
from harness.artifact import PromptArtifact
from harness.cli import report_run
from harness.data import ids_hash
from harness.plan import CellKey
from harness.run_folder import CellRecord, Evidence, RunFolder, SplitRecord
from harness.terminal import print_headlines

N_BOOT = 500
N_TEST = 30
RUN_ID = "synth"
# the fraction of the ceiling's per-example log-likelihood gain each condition gets (R on loglik, exactly)
SHARE = {"base-chat": 0.0, "half": 0.5, "most": 0.75, "broken": 0.25, "soft": 1.0}
# examples 0..k-1 of each seed's test split are correct: R on accuracy = (k - 10) / (25 - 10)
CORRECT_UPTO = {"base-chat": 10, "half": 17, "most": 22, "broken": 12, "soft": 25}
TEXTS = ["half", "most", "broken"]
ERROR = "RuntimeError: synthetic failure in seed 1"


CHOICES = 8


def gold_nll(cond: str, i: int, seed: int, weights: dict[str, tuple[float, float]] | None = None) -> float:
    # multiples of 1/64: sums and halvings are exact in floating point, so R is exactly SHARE in every replicate;
    # every value lies in [0.75, 2.0], inside (ln 2, ln 8): gold can be the argmax of 8 choices, or not (a weight
    # condition's, at a share up to 2, in [0.25, 2.0]: above 0, as a correct example's must be)
    base = 1.25 + ((i + seed) % 7) / 8
    gain = 0.25 + ((i + 2 * seed) % 5) / 16
    return base - (weights[cond][0] if weights and cond in weights else SHARE[cond]) * gain


def choice_logliks(nll: float, correct: bool) -> tuple[list[float], int]:
    """Eight choice log-likelihoods whose softmax gives the gold choice (0) exactly ``nll``, with gold the argmax
    when ``correct``: the per-line values the audit recomputes."""
    if correct:  # the others share the rest equally, each below gold since nll < ln 8
        return [0.0] + [math.log((math.exp(nll) - 1) / (CHOICES - 1))] * (CHOICES - 1), 0
    # one other choice takes the rest (above gold since nll > ln 2); exp(-1000) is 0 in floating point
    return [0.0, math.log(math.exp(nll) - 1)] + [-1000.0] * (CHOICES - 2), 1


def _split_hash(ids: dict[str, list[str]]) -> str:
    # as harness.data.Split.hash: the hash of the three parts' hashes
    return ids_hash([f"{p}={ids_hash(ids[p])}" for p in ("train", "dev", "test")])


MANIFEST = {
    "run_id": RUN_ID, "command": "promptgap run configs/synth.toml --run-id synth", "config": "configs/synth.toml",
    "started": "2025-01-01T00:00:00+00:00", "finished": "2025-01-01T00:10:00+00:00",
    "code": {"version": "0.1.0", "commit": "abc123", "dirty": False, "changed": []},
    "versions": {"promptgap": "0.1.0", "python": "3.11.9", "torch": "2.13.0"},
    "machine": {"platform": "Linux", "cpu_count": 2, "torch_threads": 2},
    "models": {"org/tiny": {"name": "org/tiny", "source": "folder", "dtype": "float32", "device": "cpu",
                            "folder": {"files": {"model.safetensors": {"bytes": 10, "sha256": "f" * 64}}},
                            "tokenizer": {"bos_token": "<s>", "bos_token_id": 1, "adds_bos": True}}},
    "tasks": {"antonyms": {"task": "antonyms", "sources": [{"hub": "synthetic", "fingerprint": "0" * 16}]}},
    "invocations": [{"started": "2025-01-01T00:00:00+00:00", "finished": "2025-01-01T00:10:00+00:00",
                     "command": "promptgap run configs/synth.toml --run-id synth",
                     "code": {"version": "0.1.0", "commit": "abc123", "dirty": False, "changed": []}}],
}


def make_run(root: Path, *, seeds: tuple[int, ...] = (0, 1), ceiling: str | list[str] | None = "soft",
             failures: dict[tuple[str, int], str] | None = None, dirty: bool = False,
             extra: dict[str, Callable[[int, int], tuple[float, bool]]] | None = None,
             weights: dict[str, tuple[float, float]] | None = None) -> Path:
    """A run folder written through the run-folder module, as the runner writes it: model "org/tiny", task
    "antonyms", conditions of SHARE, with the evidence a clean run records. ``extra`` adds text conditions whose
    example ``i`` of seed ``s`` has (gold NLL, correct) = extra[name](i, s). ``weights`` adds weight-training
    conditions (name -> (share of the soft prompt's per-example gain, dev gold NLL)), every test example correct,
    and makes every trained condition a ceiling candidate with its dev score; "soft" then holds a soft prompt."""
    failures = {("broken", 1): ERROR} if failures is None else failures
    extra = extra or {}
    weights = weights or {}
    if weights:
        ceiling = ["soft", *weights]
    folder = RunFolder(root / "results" / RUN_ID)
    conditions = list(SHARE) + list(extra) + list(weights)
    texts = TEXTS + list(extra)
    folder.write_config({
        "run": {"name": "synth", "seeds": list(seeds), "n_boot": 10_000},
        "models": ["org/tiny"], "tasks": [{"name": "antonyms", "data_dir": None, "sizes": None}],
        "conditions": {c: {"optimizer": "handwritten" if c in texts else c, "settings": {}} for c in conditions},
        "ratio": {"base": "base-chat", "texts": texts, "ceiling": ceiling},
    })
    manifest = json.loads(json.dumps(MANIFEST))
    if dirty:
        manifest["invocations"][0]["code"] |= {"dirty": True, "changed": ["harness/scorer.py"]}
    folder.write_manifest(manifest)
    for seed in seeds:
        pool = [f"ex-{k}" for k in range(80)]
        random.Random(seed).shuffle(pool)
        ids = {"train": pool[:10], "dev": pool[10:15], "test": pool[15:15 + N_TEST]}
        split_hash = _split_hash(ids)
        folder.record_split(SplitRecord("antonyms", seed, split_hash, ids,
                                        {p: [ids_hash([i]) for i in v] for p, v in ids.items()}))
        for cond in conditions:
            key = CellKey("org/tiny", "antonyms", seed, cond)
            record = CellRecord(key, optimizer=cond, settings={}, split_hash=split_hash, n_train=10, n_dev=5,
                                fit_seconds=0.1, score_seconds=0.2, device="cpu", dtype="float32", threads=2,
                                code=MANIFEST["code"], finished="2025-01-01T00:05:00+00:00")
            if cond in texts:
                record.optimizer = "handwritten"
            evidence = Evidence(fit_reads={i: {"content": ids_hash([i]), "times": 1}
                                           for i in ids["train"] + ids["dev"]} if cond == "soft" else {})
            with folder.new_cell(key) as cell:
                error = failures.get((cond, seed))
                if error:
                    record.status, record.error = "error", error
                else:
                    lines = []
                    for i, ex in enumerate(ids["test"]):
                        nll, correct = (extra[cond](i, seed) if cond in extra
                                        else (gold_nll(cond, i, seed, weights), i < CORRECT_UPTO.get(cond, N_TEST)))
                        lls, pred = choice_logliks(nll, correct)
                        lines.append({"example_id": ex, "choice_loglik": lls, "choice_ntokens": [1] * CHOICES,
                                      "choice_greedy": [False] * CHOICES, "gold": 0, "pred": pred,
                                      "correct": correct, "gold_nll": nll, "model": "org/tiny",
                                      "task": "antonyms", "condition": cond, "split": "test",
                                      "split_hash": split_hash, "format": "chat"})
                        evidence.test_reads[ex] = {"content": ids_hash([ex]), "times": 1}
                        evidence.requests += [{"example_id": ex, "choice": k, "bos": 1, "text_bos": False,
                                               "n_context": 5, "n_continuation": 1} for k in range(CHOICES)]
                    cell.scores(lines)
                    record.status, record.format, record.instruction_role = "ok", "chat", "user"
                    record.n, record.accuracy, record.gold_nll = N_TEST, *(
                        sum(x[k] for x in lines) / N_TEST for k in ("correct", "gold_nll"))
                    meta: dict = {}
                    tensors: dict = {}
                    if weights and cond in ("soft", *weights):  # a ceiling candidate: scored on dev too
                        record.dev = {"n": 5, "gold_nll": 0.3 if cond == "soft" else weights[cond][1], "accuracy": 1.0}
                        tensors = {"soft_prompt": torch.zeros(2, 4)} if cond == "soft" else {
                            "adapter": {"m.lora_A.weight": torch.zeros(1, 4)},
                            "adapter_config": {"method": "full"} if cond == "full" else {"r": 1}}
                        evidence.fit_reads = {i: {"content": ids_hash([i]), "times": 1}
                                              for i in ids["train"] + ids["dev"]}
                        evidence.selection = {"ids": ids["dev"], "metric": "dev gold NLL"}
                        record.trainable_params = 8 if cond == "soft" else 4
                    if cond == "soft":
                        meta = {"nearest_tokens": [[" cold", " opposite"], [" word", "|pipe"]], "n_virtual_tokens": 2}
                        evidence.selection = {"ids": ids["dev"], "metric": "dev gold NLL"}
                        cell.log({"curves": [{"step": s, "train_loss": 2.0 / (s + 1), "dev_loss": 2.2 / (s + 1),
                                              "dev_accuracy": 0.1 * s} for s in range(5)]})
                    if cond == "most":
                        meta = {"proposals": ["Opposite:", "Give the antonym."]}
                    cell.artifact(PromptArtifact(
                        format="chat", instruction="" if cond in ("base-chat", "soft") else f"Antonym ({cond}):",
                        demos=["hot -> cold"] if cond == "half" else [], condition=cond, meta=meta, **tensors))
                cell.evidence(evidence)
                cell.finish(record)
    folder.write_summary()
    return folder.root


def build(tmp_path: Path, **kwargs) -> tuple[str, Path]:
    reports = tmp_path / "reports"
    md = report_run(make_run(tmp_path, **kwargs), reports, n_boot=N_BOOT)
    assert md == reports / f"{RUN_ID}.md"
    return md.read_text(), reports


def check_line(md: str, title: str) -> str:
    lines = [x for x in md.splitlines() if x.startswith("- ") and f"**{title}" in x]
    assert len(lines) == 1, title
    return lines[0]


def table_row(md: str, first_cell: str) -> str:
    rows = [x for x in md.splitlines() if x.startswith(f"| {first_cell} |")]
    assert rows, first_cell
    return rows[0]


def section(md: str, heading: str) -> str:
    start = md.index(f"\n## {heading}")
    end = md.find("\n## ", start + 1)
    return md[start:end if end > 0 else None]


RECORDS = "Cell records agree with the config"
CHECKS = [RECORDS, "Every cell used its seed's split", "Train, dev and test are disjoint by id and by content",
          "No test example was read while fitting", "Each test example was scored exactly once per cell",
          "Every request has the BOS count lm-eval's rule gives",
          "Every summary number recomputes from the per-example scores",
          "Searched and trained conditions selected on dev",
          "Every condition in the ratio rendered in the same format family",
          "Gold continuations have the same token counts", "Test scores of one model and task come from one device",
          "Provenance is recorded"]


def test_report_numbers_match_hand_computation(tmp_path) -> None:
    md, reports = build(tmp_path)
    order = [md.index(f"\n## {h}") for h in ("Headline", "Verdict in detail", "Conditions", "Gap-recovered ratio R",
                                              "Figures", "Final prompts", "Setup", "Validity checklist")]
    assert order == sorted(order)
    assert "Models: org/tiny; tasks: antonyms; seeds: 0, 1; 30 test examples per seed" in md

    # verdict: "most" gets 3/4 of the ceiling's gain on every example, so R = 0.75 in every replicate (> 0.5);
    # "half" gets exactly 1/2, so R's interval is [0.5, 0.5], which contains 0.5: inconclusive
    head = section(md, "Headline")
    assert "| most | 0.750 [0.750, 0.750], p <= 0.004 | +0.281 [" in head and "| **text-closes-gap** |" in head
    assert "| half | 0.500 [0.500, 0.500], p = 1 | +0.188 [" in head and "| **inconclusive** |" in head
    assert "family of 2 (Holm)" in head and "Holm-corrected at 5%" in head
    # two seeds: the note on the t-interval's one degree of freedom, and no row says "one seed"
    assert "- Two seeds: the t-interval over seeds" in head and "one seed" not in head
    verdict = section(md, "Verdict in detail")
    assert "- **most**: **text-closes-gap**: R's interval lies above 0.5" in verdict
    assert "- **half**: **inconclusive**" in verdict
    assert f"**broken**: no verdict; its cell did not succeed for every seed (seed 1: error ({ERROR}))" in verdict

    # R on accuracy by hand: (17 - 10) / (25 - 10) and (22 - 10) / (25 - 10), same in both seeds
    ratio = section(md, "Gap-recovered ratio R")
    assert re.search(r"\| half \| 0\.500 \[0\.500, 0\.500\] \(percentile\), p = 1; over seeds: t \[0\.500, "
                     r"0\.500\], p = 1 \| 0\.467 \[", ratio)
    # no replicate reaches 0.5: the p is below the bootstrap's resolution, 1/500, and says so
    assert re.search(r"\| most \| 0\.750 \[0\.750, 0\.750\] \(percentile\), p < 1/500; .* \| 0\.800 \[", ratio)
    assert "| broken | undefined: the condition did not succeed for every seed" in ratio
    # two seeds: each seed's gains and R, by hand (every example gets the same share of the ceiling's gain)
    assert "Per seed, on gold log-likelihood" in ratio and "| Δ half / R | Δ most / R |" in ratio

    # the table: means and differences by hand from the synthetic values
    def mean_nll(cond: str) -> float:
        return float(np.mean([gold_nll(cond, i, s) for s in (0, 1) for i in range(N_TEST)]))

    base_row = table_row(md, "base-chat (base)")
    assert "| chat | 0.3333 [" in base_row and f"| {mean_nll('base-chat'):.4f} |" in base_row
    most_row = table_row(md, "most (text)")
    assert "| 0.7333 [" in most_row  # 22/30
    assert "| +0.4000 [" in most_row  # (22 - 10) / 30
    assert f"| {mean_nll('base-chat') - mean_nll('most'):+.4f} [" in most_row
    # McNemar pooled over the 2 seeds: 12 examples per seed right only for "most", none the other way
    assert f"| {2 * 0.5**24:.3g} (b=24, c=0) |" in most_row
    assert "| fit 0.1 s | — | 2 × 30 |" in most_row

    # the failed cell: a row with its error, and the full message below the table; not in the statistics
    broken_row = table_row(md, "broken (text)")
    assert f"| error (seed 1): {ERROR} | 1/2 seeds ok |" in broken_row
    assert "seed 1, broken: **error** (`cells/org--tiny/antonyms/seed-1/broken`)" in md

    # prompts, meta and setup
    prompts = section(md, "Final prompts")
    assert "```text\nAntonym (half):\n```" in prompts and "```text\nhot -> cold\n```" in prompts
    assert '| 0 | `" cold"`, `" opposite"` |' in prompts and r'`"\|pipe"`' in prompts
    assert '1. `Opposite:`' in prompts and "`n_virtual_tokens`: `2`" in prompts
    setup = section(md, "Setup")
    assert "```bash\npromptgap run configs/synth.toml --run-id synth\n```" in setup
    assert "| antonyms | 0 | 10 | 5 | 30 |" in setup and "| torch | 2.13.0 |" in setup

    # checklist: everything holds; the failed cell is a warning, not a failure of the audit
    for title in CHECKS:
        assert check_line(md, title).startswith("- ⚠️" if title == RECORDS else "- ✅"), check_line(md, title)
    assert "org/tiny / antonyms / seed 1 / broken: error" in md
    # the synthetic cells' examples are not the antonyms data's split, and org/tiny has no tokenizer here: their
    # requests cannot be re-derived, which the audit says rather than passing them
    assert check_line(md, "Every test score was read from its example's requests").startswith("- ⚠️")
    assert "`promptgap check synth` when this report was written: **passed: 14 items, 2 with warnings**" in md
    assert "uncommitted changes**" not in md  # the synthetic run's code tree was clean

    # figures: PNGs that the markdown links to; nothing temporary left behind
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert len(links) == 4 and any(x.endswith("soft-curves.png") for x in links)
    assert {x.rsplit("-", 1)[1] for x in links} == {"metrics.png", "differences.png", "ratio.png", "curves.png"}
    for link in links:
        assert (reports / link).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in reports.iterdir()) == [RUN_ID, f"{RUN_ID}.md"]


def test_clean_run_checklist_all_pass(tmp_path) -> None:
    md, _ = build(tmp_path, failures={})
    for title in CHECKS:
        assert check_line(md, title).startswith("- ✅"), check_line(md, title)
    assert "- **broken**: **" in section(md, "Verdict in detail")  # every text gets its verdict now


def _edit_json(path: Path, **changes) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def _test_id_in_train(run: Path) -> str:
    path = run / "splits" / "antonyms" / "seed-0.json"
    split = json.loads(path.read_text())
    _edit_json(path, train=split["train"] + [split["test"][0]])
    return split["test"][0]


def _split_hash_mismatch(run: Path) -> str:
    _edit_json(run / "cells" / "org--tiny" / "antonyms" / "seed-1" / "half" / "cell.json", split_hash="0" * 16)
    return "seed 1 / half: split_hash 0000000000000000"


def _mixed_formats(run: Path) -> str:
    for seed in (0, 1):
        cell = run / "cells" / "org--tiny" / "antonyms" / f"seed-{seed}" / "most"
        _edit_json(cell / "cell.json", format="raw")
        lines = [json.loads(x) | {"format": "raw"} for x in (cell / "scores.jsonl").read_text().splitlines()]
        (cell / "scores.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return "mixed formats: chat: base-chat, half, broken, soft; raw: most"


@pytest.mark.parametrize(("corrupt", "title"), [
    (_test_id_in_train, "Train, dev and test are disjoint by id and by content"),
    (_split_hash_mismatch, "Every cell used its seed's split"),
    (_mixed_formats, "Every condition in the ratio rendered in the same format family"),
])
def test_checklist_catches_corruption(tmp_path, corrupt, title) -> None:
    run = make_run(tmp_path, failures={})
    evidence = corrupt(run)
    md = report_run(run, tmp_path / "reports", n_boot=N_BOOT).read_text()
    assert check_line(md, title).startswith("- ❌")
    items = section(md, "Validity checklist")
    problems = items[items.index(f"**{title}"):].split("\n- ")[0]
    assert evidence in problems


def test_no_ceiling_says_r_cannot_be_computed(tmp_path) -> None:
    md, reports = build(tmp_path, ceiling=None, seeds=(0,))  # one seed: BCa intervals where defined
    verdict = section(md, "Verdict")
    assert "**R cannot be computed**: the config names no ceiling condition" in verdict
    assert "No verdict is given." in verdict
    # the differences from base are still stated: "most" gains 3/4 of the (unused) ceiling gain per example
    gain = np.mean([gold_nll("base-chat", i, 0) - gold_nll("most", i, 0) for i in range(N_TEST)])
    assert f"- most (text): gold log-likelihood {gain:+.4f} [" in verdict
    assert "(clearly higher than the base); accuracy +0.4000 [" in verdict
    assert f"McNemar p = {2 * 0.5**12:.3g})" in verdict
    assert "R is **undefined** for every text condition: the config names no ceiling" in md
    assert not re.search(r"\bR\b[^|\n]*= -?\d+\.\d{3} \[", md)  # no value with an interval is given for R anywhere
    assert (reports / RUN_ID).is_dir()


def test_failed_role_condition_says_why(tmp_path) -> None:
    md, _ = build(tmp_path, failures={("base-chat", 0): "ValueError: bad base"})
    assert ("**R cannot be computed**: the base 'base-chat' did not succeed for every seed "
            "(seed 0: error (ValueError: bad base))") in md
    assert "| Δ accuracy vs base [CI] |" in md and "| +0.4000 [" not in md  # no differences without a base
    md, _ = build(tmp_path, failures={("soft", 1): "OSError: disk full"})
    assert "**R cannot be computed**: the ceiling 'soft' did not succeed for every seed" in md
    assert check_line(md, RECORDS).startswith("- ⚠️") and "seed 1 / soft: error (OSError: disk full)" in md


def test_dirty_code_tree_is_named_at_the_top(tmp_path) -> None:
    md, _ = build(tmp_path, dirty=True)
    top = md.split("\n## Verdict")[0]
    assert "**This run was made from a code tree with uncommitted changes** (harness/scorer.py)" in top
    assert check_line(md, "Provenance is recorded").startswith("- ⚠️")


def test_failure_leaves_previous_report_whole(tmp_path, monkeypatch) -> None:
    md, reports = build(tmp_path)
    before = {p.relative_to(reports): p.read_bytes() for p in reports.rglob("*") if p.is_file()}

    def boom(*args, **kwargs) -> None:
        raise RuntimeError("figure failed")

    monkeypatch.setattr(report, "curves_figure", boom)
    with pytest.raises(RuntimeError, match="figure failed"):
        report_run(tmp_path / "results" / RUN_ID, reports, n_boot=N_BOOT)
    after = {p.relative_to(reports): p.read_bytes() for p in reports.rglob("*") if p.is_file()}
    assert after == before  # the old report and figures, byte for byte; no temp files
    assert not [p for p in reports.iterdir() if p.name.startswith(".")]


def test_headline_collapses_duplicates_and_names_uninformative_metrics(tmp_path) -> None:
    extra = {
        "copy": lambda i, s: (gold_nll("half", i, s), i < CORRECT_UPTO["half"]),  # the same prompt as "half"
        "floor": lambda i, s: (gold_nll("most", i, s), False),  # never right: accuracy at the floor
        # right on 4 of 30 (chance is 1/8) with a gold NLL around ln 8: no better than chance on either metric
        "guess": lambda i, s: (2.06 if i < 4 else 2.1, i < 4),
    }
    md, reports = build(tmp_path, failures={}, extra=extra)
    first = md.splitlines()[:40]
    rows = [x for x in first if x.startswith("| ") and not x.startswith("| text prompt")]
    # one row per distinct text prompt, within the first screen
    assert [x.split(" | ")[0] for x in rows] == ["| half = copy", "| most", "| broken", "| floor", "| guess"]
    half = next(x for x in rows if x.startswith("| half = copy"))
    assert "2 conditions, identical scores" in half
    floor = next(x for x in rows if x.startswith("| floor"))
    assert "accuracy: floor" in floor and "**text-closes-gap**" in floor  # the log-likelihood still decides
    guess = next(x for x in rows if x.startswith("| guess"))
    assert "**uninformative**: the text prompt 'guess' is no better than chance on gold log-likelihood" in guess
    assert "accuracy: chance" in guess and "gold log-likelihood: chance" in guess
    # the family: half (for both), most, broken, floor; guess is uninformative, copy shares half's vote
    assert "family of 4 (Holm)" in half and "family of" not in guess
    # the verdict's machine-readable twin validates against the schema in the repo, row for row
    import jsonschema

    schema = json.loads((Path(report.__file__).parent / "schemas" / "verdict.schema.json").read_text())
    data = json.loads((reports / RUN_ID / "verdict.json").read_text())
    jsonschema.validate(data, schema)
    [group] = data["groups"]
    assert [r["texts"] for r in group["rows"]] == [["half", "copy"], ["most"], ["broken"], ["floor"], ["guess"]]
    assert group["family_size"] == 4 and group["correction"] == "holm" and data["audit"]["passed"]
    assert {r["texts"][0]: r["verdict"] for r in group["rows"]}["guess"] == "uninformative"
    # plain text for pipelines: no markdown emphasis in flags or notes
    said = [f for r in group["rows"] for f in r["flags"]] + group["notes"]
    assert said and not any("**" in x for x in said)


def test_metrics_that_disagree_are_flagged_in_the_headline(tmp_path) -> None:
    # "likely" has the gold NLL of "most" (R = 0.75 on log-likelihood: text-closes-gap) but is right on 11 of 30
    # where the base is right on 10 and the ceiling on 25: R on accuracy = 1/15, soft-only by the same rules
    extra = {"likely": lambda i, s: (gold_nll("most", i, s), i < 11)}
    md, _ = build(tmp_path, failures={}, extra=extra)
    row = next(x for x in md.splitlines()[:40] if x.startswith("| likely"))
    # the verdict word names the metric that decides, and what the other says
    assert "| **text-closes-gap** on gold log-likelihood; soft-only on accuracy |" in row
    assert "accuracy says" not in row  # said once, in the verdict cell
    most = next(x for x in md.splitlines()[:40] if x.startswith("| most"))
    assert "says" not in most  # 22 of 30 right: R on accuracy = 12/15, text-closes-gap on both
    assert "The metrics disagree: **likely** is text-closes-gap on gold log-likelihood but soft-only on accuracy" in md


def test_three_seeds_show_per_seed_rows_and_the_wider_interval(tmp_path) -> None:
    shares = {0: 0.2, 1: 0.5, 2: 0.8}  # the text recovers a different share of the gap with each seed's fit
    extra = {"wobbly": lambda i, s: (gold_nll("base-chat", i, s) - shares[s] * (gold_nll("base-chat", i, s)
                                                                               - gold_nll("soft", i, s)), False)}
    md, _ = build(tmp_path, failures={}, seeds=(0, 1, 2), extra=extra)
    ratio = section(md, "Gap-recovered ratio R")
    assert "| 0 | +0.375 |" in ratio and "| 2 | +0.375 |" in ratio  # one row per seed
    row = table_row(ratio.split("Per seed")[1], "0")
    assert row.endswith("/ 0.200 |")  # wobbly's R in seed 0: exactly its share
    # the t-interval over the three seeds' R (0.2, 0.5, 0.8), by hand, is the wider and decides
    half = scipy.stats.t.ppf(0.975, 2) * 0.3 / math.sqrt(3)
    wide = f"[{0.5 - half:.3f}, {0.5 + half:.3f}]"
    assert f"over seeds: t {wide}" in table_row(ratio, "wobbly")
    assert f"| wobbly | 0.500 {wide}" in section(md, "Headline")


def test_the_terminal_says_what_the_markdown_headline_says_without_markup(tmp_path, capsys, monkeypatch) -> None:
    # the headline's words come from harness.wording once; markdown marks emphasis with **, the terminal in bold
    extra = {"likely": lambda i, s: (gold_nll("most", i, s), i < 11)}
    md, _ = build(tmp_path, failures={}, extra=extra)
    monkeypatch.setenv("COLUMNS", "400")  # wide enough that rich wraps no cell or note
    print_headlines(tmp_path / "results" / RUN_ID, n_boot=N_BOOT)
    out = capsys.readouterr().out
    assert "**" not in out
    headline_md = section(md, "Headline")
    notes = [x[2:].replace("**", "") for x in headline_md.splitlines() if x.startswith("- ")]
    assert notes and all(n in out for n in notes)
    ceiling = next(x for x in headline_md.splitlines() if x.startswith("Ceiling "))
    assert ceiling.replace("**", "") in out
    row = next(x for x in out.splitlines() if "likely" in x)
    assert "text-closes-gap on gold log-likelihood; soft-only on accuracy" in row


def test_prompt_soft_prompt_or_fine_tune_gives_each_r_and_the_soft_prompts_share(tmp_path) -> None:
    # per example, lora gains twice the soft prompt's gain and full 1.5 times: R against lora is SHARE / 2 and
    # against the soft prompt SHARE, in every replicate; the soft prompt recovers exactly 1/2 of lora's gain and
    # 1/1.5 of full's. lora is best on dev (0.1 < 0.2 < soft's 0.3), so it is also the deciding ceiling
    md, _ = build(tmp_path, failures={}, weights={"lora": (2.0, 0.1), "full": (1.5, 0.2)})
    three = section(md, "Prompt, soft prompt or fine-tune?")
    assert "Ceiling **lora** over base **base-chat**" in section(md, "Headline")
    assert "| lora (best on dev) | the model's weights |" in three and "| soft | a prompt (model frozen) |" in three
    assert "| full | the model's weights |" in three
    assert "The trained prompt **soft** recovers 0.500 [0.500, 0.500] of **lora**'s gain" in three
    assert "soft: " not in three and "full: 0.667 [0.667, 0.667]" in three
    assert "| most | 0.750 [0.750, 0.750] | 0.375 [0.375, 0.375] |" in three
    assert "| half | 0.500 [0.500, 0.500] | 0.250 [0.250, 0.250] |" in three
    assert "the readable prompt highest here, **most**" in three
    # one number of trainable parameters per condition (2 x 4 soft vectors, 1 x 4 adapter weights)
    assert re.search(r"\| soft \| a prompt \(model frozen\) \| \+[0-9.]+ \[[^]]+\] \| fit 0.1 s; 8 params \|", three)
    # without weight training there is no such section
    assert "Prompt, soft prompt or fine-tune?" not in build(tmp_path / "plain", failures={})[0]


def test_the_leaderboard_gives_each_rows_mean_r_against_both_kinds_of_trained_ceiling(tmp_path) -> None:
    from harness.findings import PROMPT_ROLE, analyze_groups, board
    from harness.run_folder import load_run
    from harness.wording import board_three_way

    run = load_run(make_run(tmp_path, failures={}, weights={"lora": (2.0, 0.1), "full": (1.5, 0.2)}))
    b = board(run, analyze_groups(run, N_BOOT), N_BOOT)
    assert b.three_way is not None and b.three_way.prompts == {"antonyms": "soft"}
    assert b.three_way.weights == {"antonyms": "lora"}
    # one task: the mean R is the task's R, exactly SHARE against the soft prompt and SHARE / 2 against lora
    vs_prompt = {r.name: r.mean_r for r in b.three_way.vs_prompt.rows}
    vs_weights = {r.name: r.mean_r for r in b.three_way.vs_weights.rows}
    assert vs_prompt == {"half": 0.5, "most": 0.75, "broken": 0.25}
    assert vs_weights == {"half": 0.25, "most": 0.375, "broken": 0.125, PROMPT_ROLE: 0.5}
    intro, header, rows = board_three_way(b.three_way)
    assert "antonyms: soft / lora" in intro and rows[0] == [PROMPT_ROLE, "1 (itself)", "0.50 [0.50, 0.50]"]
    assert rows[1][:2] == ["most", "0.75 [0.75, 0.75]"] and rows[1][2].startswith("0.38 [")
    # every replicate's R is 0.375 up to the rounding of a mean over 60 examples (a relative 1e-15 or so)
    ci = next(r.ci for r in b.three_way.vs_weights.rows if r.name == "most")
    assert abs(ci.lo - 0.375) < 1e-12 and abs(ci.hi - 0.375) < 1e-12
