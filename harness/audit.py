"""The validity audit (`promptgap check`): every claim a run makes, re-derived from the files of its run folder.

Threat model: a buggy condition, a bug in promptgap, or an edited run folder (not a malicious plugin). Each item
recomputes its claim from what the harness recorded at the boundary (split files with content keys, the evidence
of what each condition read while fitting and how each test request was built, the per-example scores) rather
than from a flag someone set. Items that only the condition can know (what it selected on) are labelled
"reported by the condition"; the audit still checks them against the split and against what the condition read.

An item is ``pass``, ``fail``, ``warn`` (true but worth a reader's attention: a failed cell, a dirty code tree, a
report older than its run) or ``n/a``. The audit passes when no item fails.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from harness import provenance
from harness.data import leaks
from harness.plan import CellKey
from harness.run_folder import PARTS, Cell, Run, is_number, load_run

MAX_PROBLEMS = 12  # problems printed per item; the rest are counted
TOLERANCE = 1e-9  # relative: recomputed means and per-line values are the same floats, summed in the same order
REPORT_STAMP = re.compile(r"<!-- promptgap-report (\{.*?\}) -->")


@dataclass
class Item:
    title: str
    status: str  # pass, fail, warn, n/a
    evidence: str  # what was derived, from which files
    problems: list[str] = field(default_factory=list)
    reported: bool = False  # the claim rests on what the condition reported

    @property
    def source(self) -> str:
        return "reported by the condition, checked against the files" if self.reported else "re-derived from files"

    @property
    def shown(self) -> list[str]:
        """The problems printed (the report's checklist and `promptgap check`); the rest are counted."""
        return self.problems[:MAX_PROBLEMS]

    @property
    def hidden(self) -> int:
        return max(0, len(self.problems) - MAX_PROBLEMS)


@dataclass
class Audit:
    run_id: str
    items: list[Item]

    @property
    def passed(self) -> bool:
        return not self.failed

    @property
    def failed(self) -> list[Item]:
        return [i for i in self.items if i.status == "fail"]

    def summary(self) -> str:
        if self.passed:
            warns = [i for i in self.items if i.status == "warn"]
            return f"passed: {len(self.items)} items" + (f", {len(warns)} with warnings" if warns else "")
        return f"FAILED: {', '.join(i.title for i in self.failed)}"


def _item(title: str, problems: list[str], passed: str, checked: str, warnings: Iterable[str] = (),
          reported: bool = False) -> Item:
    """``passed`` is the evidence when nothing is wrong; otherwise what was checked and the problems, listed."""
    warnings = list(warnings)
    if problems:
        return Item(title, "fail", f"{checked}: {len(problems)} problem(s)", problems + warnings, reported)
    if warnings:
        return Item(title, "warn", passed, warnings, reported)
    return Item(title, "pass", passed, [], reported)


def _close(a: Any, b: Any) -> bool:
    return is_number(a) and is_number(b) and abs(a - b) <= TOLERANCE * max(1.0, abs(b))


def _removed(run: Run, key: CellKey) -> dict[str, str] | None:
    """A transfer cell's leakage filter, re-derived from the split files: the target test examples whose content
    key (or mirror key) is a content key of the source's train or dev at the cell's train size."""
    fitted, scored = run.fitted_split(key), run.split_of(key)
    if fitted is None or scored is None or fitted.content is None:
        return None
    return leaks(scored.items("test"), {*fitted.content["train"], *fitted.content["dev"]})


def _test_ids(run: Run, cell: Cell) -> list[str] | None:
    """The test ids the cell should have scored: its split's, less a transfer's removed examples."""
    sf = run.split_of(cell.key)
    if sf is None:
        return None
    removed = _removed(run, cell.key) if cell.key.is_transfer else {}
    return None if removed is None else [i for i in sf.ids["test"] if i not in removed]


def _test_content(run: Run, cell: Cell) -> set[str]:
    sf = run.split_of(cell.key)
    return set(sf.content["test"]) if sf and sf.content else set()


def _present(run: Run) -> list[Cell]:
    """The cells with a readable cell.json (a damaged cell's too: its record is still checked)."""
    return [c for c in run.cells.values() if c.record is not None]


def _says_ok(cell: Cell) -> bool:
    """The cell's record says ok. The audit re-derives such a cell's claims even when the completeness test found it
    damaged (which ``check_records`` fails), so that an edited file is also caught by what it breaks."""
    return cell.record is not None and cell.record.ok


def _scored(run: Run) -> list[Cell]:
    return [c for c in run.cells.values() if _says_ok(c)]


# --- the items -----------------------------------------------------------------------------------------------------
def check_splits(run: Run) -> Item:
    problems = []
    for sf in run.splits.values():
        if sf.hash != sf.computed_hash():
            problems.append(f"splits/{sf.task}/seed-{sf.seed}.json states hash {sf.hash} but its ids hash to "
                            f"{sf.computed_hash()}")
        if sf.content is not None and any(len(sf.content[p]) != len(sf.ids[p]) for p in PARTS):
            problems.append(f"splits/{sf.task}/seed-{sf.seed}.json: a content key list is not as long as its ids")
        if sf.train_sizes and max(sf.train_sizes) != len(sf.ids["train"]):
            problems.append(f"splits/{sf.task}/seed-{sf.seed}.json: train sizes {sf.train_sizes}, but its train "
                            f"part holds {len(sf.ids['train'])} ids (the largest size)")
    problems += [f"{t} seed {s}: no split file" for t in run.tasks for s in run.seeds if (t, s) not in run.splits]
    n = 0
    # the conditions of one matrix (model, task, seed, train size, transfer target) share one split
    hashes: dict[CellKey, dict[str, list[str]]] = {}
    for cell in _present(run):
        assert cell.record is not None
        n += 1
        h = cell.record.split_hash
        hashes.setdefault(replace(cell.key, condition="*"), {}).setdefault(h, []).append(cell.key.condition)
        sf = run.split_of(cell.key)
        if sf is not None and h != sf.hash:
            problems.append(f"{cell.label}: split_hash {h} but its split file gives {sf.hash}"
                            + (f" (train cut to {cell.key.train_size})" if cell.key.train_size is not None else ""))
        bad = sorted({str(x.get("split_hash")) for x in cell.lines} - {h})
        if bad:
            problems.append(f"{cell.label}: scores.jsonl lines carry split_hash {', '.join(bad)}, cell.json {h}")
    for group, by_hash in hashes.items():
        if len(by_hash) > 1:
            problems.append(f"{group.label}: conditions used different splits: "
                            + "; ".join(f"{h}: {', '.join(cs)}" for h, cs in by_hash.items()))
    curves = [f"{sf.task} {sf.train_sizes}" for sf in run.splits.values() if sf.train_sizes and sf.seed == run.seeds[0]]
    return _item("Every cell used its seed's split, the same for all conditions", problems,
                 f"{len(run.splits)} split file(s) re-hashed from their ids; the {n} cell(s) and their scores.jsonl "
                 f"lines carry that hash" + (f"; train sizes are prefixes of one split ({'; '.join(curves)}): each "
                                             f"size's hash recomputed from its cut" if curves else ""),
                 f"{len(run.splits)} split file(s) and {n} cell(s)")


def check_disjoint(run: Run) -> Item:
    problems, warnings = [], []
    for (task, seed), sf in run.splits.items():
        where = f"{task} seed {seed}"
        owner: dict[str, str] = {}
        for part in PARTS:
            for i in sf.ids[part]:
                if i in owner:
                    problems.append(f"{where}: id {i!r} is in {owner[i]} and in {part}" if owner[i] != part
                                    else f"{where}: id {i!r} repeats in {part}")
                else:
                    owner[i] = part
        if sf.content is None:
            warnings.append(f"{where}: the split file records no content keys (written by an older promptgap); "
                            f"only ids were compared")
            continue
        content_owner: dict[str, tuple[str, str]] = {}
        repeats: Counter[str] = Counter()
        for part in PARTS:
            for i, key in zip(sf.ids[part], sf.content[part], strict=False):
                first = content_owner.setdefault(key, (part, i))
                if first[0] != part:
                    problems.append(f"{where}: {part} example {i!r} has the same context and answer as "
                                    f"{first[0]} example {first[1]!r}")
                elif first[1] != i:
                    repeats[part] += 1
                    # a test or dev example counted twice weighs twice in every mean, interval and selection; a
                    # repeat in train (WinoGrande's train_s has two) only trains on it twice
                    if part != "train":
                        problems.append(f"{where}: {part} example {i!r} repeats the context and answer of {part} "
                                        f"example {first[1]!r}")
        if repeats.get("train"):
            warnings.append(f"{where}: {repeats['train']} train example(s) repeat another train example's context "
                            f"and answer (the task's data hold them twice)")
        # the task's own rule (a reversed antonym pair): not the same example, but worth a reader's attention
        mirrored = leaks(sf.items("test"), {*sf.content["train"], *sf.content["dev"]})
        mirrored = {i: r for i, r in mirrored.items() if r == "mirror"}
        if mirrored:
            warnings.append(f"{where}: {len(mirrored)} of {len(sf.ids['test'])} test example(s) mirror a train or "
                            f"dev example by the task's own rule (an antonym pair reversed), e.g. "
                            f"{next(iter(mirrored))!r}")
    sizes = sorted({tuple(len(sf.ids[p]) for p in PARTS) for sf in run.splits.values()})
    return _item("Train, dev and test are disjoint by id and by content", problems,
                 f"{len(run.splits)} split file(s), train/dev/test sizes "
                 f"{', '.join('/'.join(map(str, s)) for s in sizes) or 'none'}: no id in two parts or twice in one, "
                 f"no context and answer (content key) in two parts or twice in dev or test", f"the ids and content "
                 f"keys of "
                 f"{len(run.splits)} split file(s)", warnings)


def check_fit_reads(run: Run) -> Item:
    problems, warnings = [], []
    n = n_transfer = 0
    for cell in _present(run):
        test = set(_test_ids(run, cell) or [])
        if cell.evidence is None:
            problems.append(f"{cell.label}: no evidence.json; what the condition read while fitting is unknown")
            continue
        reads = cell.evidence.fit_reads
        if cell.key.is_transfer:  # it fits nothing; what its source read must not be a test example scored here
            n_transfer += 1
            if reads or cell.evidence.fit_bare_calls:
                problems.append(f"{cell.label}: a transfer cell fits nothing, yet it read {len(reads)} example(s) "
                                f"while fitting")
            source = run.cells.get(cell.key.source)
            sf = run.split_of(cell.key)
            if source is None or source.evidence is None or sf is None:
                continue
            scored = [(i, c, m) for i, c, m in sf.items("test") if i in test]
            read = {r.get("content") for r in source.evidence.fit_reads.values()}
            hit = sorted(i for i, c, m in scored if c in read or read & set(m))
            if hit:
                problems.append(f"{cell.label}: scores {len(hit)} example(s) whose context and answer (or its "
                                f"mirror) its source read while fitting, e.g. {hit[0]!r}")
            continue
        n += 1
        content = _test_content(run, cell)
        leaked = sorted(i for i in reads if i in test)
        if leaked:
            problems.append(f"{cell.label}: read {len(leaked)} test example(s) while fitting, e.g. {leaked[0]!r}")
        by_content = sorted(i for i, r in reads.items() if i not in test and r.get("content") in content)
        if by_content:
            problems.append(f"{cell.label}: read {len(by_content)} example(s) with a test example's context and "
                            f"answer under another id while fitting, e.g. {by_content[0]!r}")
        full = run.splits.get((cell.key.task, cell.key.seed))
        if cell.key.train_size is not None and full is not None:  # a curve's point fits on its prefix alone
            beyond = sorted(set(full.ids["train"][cell.key.train_size:]) & set(reads))
            if beyond:
                problems.append(f"{cell.label}: read {len(beyond)} train example(s) beyond its first "
                                f"{cell.key.train_size} while fitting, e.g. {beyond[0]!r}")
        if cell.evidence.fit_bare_calls:
            warnings.append(f"{cell.label}: {cell.evidence.fit_bare_calls} scorer call(s) with bare token requests "
                            f"name no example and cannot be checked")
    sizes = any(c.key.train_size is not None for c in _present(run))
    return _item("No test example was read while fitting", problems,
                 f"{n} cell(s): every example the harness rendered for a condition during fit (evidence.json "
                 f"fit_reads, recorded by the scorer and renderer) is outside the test split, by id and by content"
                 + ("; a cell of a train size read no train example beyond it" if sizes else "")
                 + (f"; {n_transfer} transfer cell(s) fitted nothing, and no example they score was read by their "
                    f"source (by content or mirror)" if n_transfer else ""),
                 f"evidence.json fit_reads of {n + n_transfer} cell(s) against the test ids and content keys",
                 warnings)


def check_test_once(run: Run) -> Item:
    problems = []
    n = 0
    for cell in _scored(run):
        test = _test_ids(run, cell)
        if test is None:
            problems.append(f"{cell.label}: no split file to compare with")
            continue
        n += 1
        ids = [str(x.get("example_id")) for x in cell.lines]
        counts = Counter(ids)
        dup = [i for i, k in counts.items() if k > 1]
        if dup:
            problems.append(f"{cell.label}: scores.jsonl holds {len(dup)} example(s) more than once, e.g. {dup[0]!r}")
        if set(ids) != set(test):
            problems.append(f"{cell.label}: scores.jsonl's example ids are not the split's test ids"
                            + (" less those the leakage filter removes" if cell.key.is_transfer else "") + " "
                            f"({len(set(ids) - set(test))} extra, {len(set(test) - set(ids))} missing)")
        if cell.evidence is None:
            problems.append(f"{cell.label}: no evidence.json; how often each test example was scored is unknown")
            continue
        reads = cell.evidence.test_reads
        twice = [i for i, r in reads.items() if r.get("times") != 1]
        if twice:
            problems.append(f"{cell.label}: {len(twice)} example(s) rendered {reads[twice[0]].get('times')} times "
                            f"while scoring test, e.g. {twice[0]!r}")
        if set(reads) != set(test):
            problems.append(f"{cell.label}: the examples scored at test time are not the split's test ids"
                            + (" less those the leakage filter removes" if cell.key.is_transfer else "") + " "
                            f"({len(set(reads) - set(test))} extra, {len(set(test) - set(reads))} missing)")
    n_transfer = sum(c.key.is_transfer for c in _scored(run))
    return _item("Each test example was scored exactly once per cell", problems,
                 f"{n} ok cell(s): the scorer rendered each test id once at test time (evidence.json test_reads) "
                 f"and scores.jsonl holds each test id once" + (
                     f"; for the {n_transfer} transfer cell(s), the target's test ids less those the leakage filter "
                     f"removes, re-derived from the split files" if n_transfer else ""),
                 f"test_reads and scores.jsonl ids of {n} ok cell(s)")


def check_bos(run: Run) -> Item:
    """lm-eval's rule (HFLM.tok_encode): the tokenizer's own default, except that text already starting with the
    BOS text gets none added. So a request leads with exactly one BOS when its text starts with the BOS text or
    the tokenizer adds one, and with none otherwise."""
    problems = []
    n_requests = 0
    counts: Counter[int] = Counter()
    models = (run.manifest.get("models") or {})
    for cell in _scored(run):
        facts = (models.get(cell.key.scored_model) or {}).get("tokenizer")
        if not facts or "adds_bos" not in facts:
            problems.append(f"{cell.label}: manifest.json records no tokenizer facts for {cell.key.scored_model}")
            continue
        if cell.evidence is None:
            problems.append(f"{cell.label}: no evidence.json; the requests' BOS tokens are unknown")
            continue
        per_example = Counter(str(r.get("example_id")) for r in cell.evidence.requests)
        for line in cell.lines:
            want = len(line.get("choice_loglik") or [])
            got = per_example.get(str(line.get("example_id")), 0)
            if got != want:
                problems.append(f"{cell.label}: example {line.get('example_id')!r} has {got} request(s) in "
                                f"evidence.json for {want} choice(s)")
        for r in cell.evidence.requests:
            n_requests += 1
            bos = r.get("bos")
            counts[bos] += 1
            want = 1 if (r.get("text_bos") or facts["adds_bos"]) else 0
            if bos != want:
                problems.append(f"{cell.label}: example {r.get('example_id')!r} choice {r.get('choice')}: {bos} "
                                f"leading BOS token(s), lm-eval's rule gives {want}")
    seen = ", ".join(f"{k} BOS: {v}" for k, v in sorted(counts.items()))
    return _item("Every request has the BOS count lm-eval's rule gives", problems,
                 f"{n_requests} test request(s) of {len(_scored(run))} ok cell(s) ({seen or 'none'}), each as "
                 f"the tokenizer's default (manifest.json) and the text's own BOS decide",
                 f"the leading BOS tokens of {n_requests} request(s) (evidence.json) against lm-eval's rule")


def check_requests(run: Run) -> Item:
    from harness import rederive

    r = rederive.check_requests(run)
    warnings = r.warnings + ([] if r.cells else ["no cell's requests could be re-derived here"])
    counts = f" ({r.unhashed} older row(s) by their token counts)" if r.unhashed else ""
    return _item("Every test score was read from its example's requests under the saved artifact", r.problems,
                 f"{r.rows + r.unhashed} score row(s) of {r.cells} cell(s){counts}: each row's request hash (the "
                 f"token ids its log-likelihoods were read from) equals the hash of its example's requests, "
                 f"re-rendered from the task data, the cell's saved artifact and the tokenizer (no model)",
                 f"the score rows of {r.cells} cell(s) against their re-rendered requests", warnings)


def rescore_item(run: Run, n: int) -> Item:
    """``promptgap check --rescore N``: the model scores N rows of every cell again."""
    from harness import rederive

    r = rederive.rescore(run, n)
    return _item("Re-scored test rows agree with the recorded log-likelihoods", r.problems,
                 f"{r.rows} row(s) of {r.cells} cell(s) (up to {n} each, drawn with seed {rederive.RESCORE_SEED}) "
                 f"scored again by the model in {r.dtype}: every choice within {r.tolerance:g} nats (largest "
                 f"difference {r.largest:.2g})", f"{r.rows} re-scored row(s) of {r.cells} cell(s)")


def _recompute(line: dict[str, Any]) -> dict[str, Any]:
    lls = [float(x) for x in line["choice_loglik"]]
    gold = int(line["gold"])
    if "greedy_match" in line:  # a continuation: one choice, per-token NLL, correct = greedy exact match
        greedy = bool(all(line["choice_greedy"]))
        return {"pred": 0, "correct": greedy, "greedy_match": greedy,
                "gold_nll": -lls[0] / int(line["choice_ntokens"][0])}
    pred = max(range(len(lls)), key=lambda i: (lls[i], -i))  # lm-eval's argmax: first on ties
    top = max(lls)
    log_z = top + math.log(sum(math.exp(x - top) for x in lls))
    return {"pred": pred, "correct": pred == gold, "gold_nll": log_z - lls[gold]}


def check_numbers(run: Run) -> Item:
    problems = []
    rows: dict[CellKey | None, dict[str, str]] = {_row_key(r): r for r in run.summary or []}
    n_lines = 0
    for cell in _scored(run):
        rec = cell.record
        assert rec is not None
        bad_lines = []
        for line in cell.lines:
            n_lines += 1
            try:
                want = _recompute(line)
            except (KeyError, TypeError, ValueError, IndexError, ZeroDivisionError) as e:
                bad_lines.append(f"example {line.get('example_id')!r}: fields missing or malformed ({e})")
                continue
            for k, v in want.items():
                if not (_close(line.get(k), v) if k == "gold_nll" else line.get(k) == v):
                    bad_lines.append(f"example {line.get('example_id')!r}: {k} = {line.get(k)!r}, its choice "
                                     f"log-likelihoods give {v!r}")
        problems += [f"{cell.label}: {p}" for p in bad_lines[:3]]
        if len(bad_lines) > 3:
            problems.append(f"{cell.label}: … {len(bad_lines) - 3} more line(s) inconsistent")
        n = len(cell.lines)
        if n == 0:
            problems.append(f"{cell.label}: scores.jsonl is empty")
            continue
        want_acc = sum(bool(x.get("correct")) for x in cell.lines) / n
        try:
            want_nll = sum(float(x["gold_nll"]) for x in cell.lines) / n
        except (KeyError, TypeError, ValueError):
            want_nll = math.nan
        if rec.n != n:
            problems.append(f"{cell.label}: cell.json n = {rec.n}, scores.jsonl has {n} lines")
        for k, want in (("accuracy", want_acc), ("gold_nll", want_nll)):
            if not _close(getattr(rec, k), want):
                problems.append(f"{cell.label}: cell.json {k} = {getattr(rec, k)!r}, scores.jsonl gives {want:.6f}")
        for k, want in (("model", cell.key.scored_model), ("task", cell.key.scored_task),
                        ("condition", cell.key.condition)):
            wrong = {x.get(k) for x in cell.lines} - {want}
            if wrong:
                problems.append(f"{cell.label}: scores.jsonl lines name {k} {', '.join(map(str, wrong))}")
        formats = {x.get("format") for x in cell.lines}
        if formats != {rec.format}:
            problems.append(f"{cell.label}: scores.jsonl formats {sorted(map(str, formats))}, cell.json {rec.format}")
    if run.summary is None:
        problems.append("summary.csv is missing")
    else:
        for cell in _present(run):
            rec = cell.record
            assert rec is not None
            row = rows.get(rec.key)
            if row is None:
                problems.append(f"{cell.label}: no summary.csv row")
                continue
            for k in ("status", "split_hash", "format", "n"):
                want = getattr(rec, k)
                if (row.get(k) or "") != ("" if want is None else str(want)):
                    problems.append(f"{cell.label}: summary.csv {k} = {row.get(k)!r}, cell.json {want!r}")
            for k in ("accuracy", "gold_nll"):
                want = getattr(rec, k)
                try:
                    same = (not row.get(k) and want is None) or _close(float(row[k]), want)
                except (TypeError, ValueError):
                    same = False
                if not same:
                    problems.append(f"{cell.label}: summary.csv {k} = {row.get(k)!r}, cell.json {want!r}")
        extra = set(rows) - {c.key for c in _present(run)}
        problems += [f"summary.csv row {k.label if k else '(unreadable key)'} has no cell"
                     for k in sorted(extra, key=str)]
    return _item("Every summary number recomputes from the per-example scores", problems,
                 f"{n_lines} scores.jsonl line(s) of {len(_scored(run))} ok cell(s): pred, correct and gold NLL "
                 f"recomputed from each line's choice log-likelihoods; cell.json n, accuracy and mean gold NLL are "
                 f"their means; summary.csv repeats cell.json", "scores.jsonl lines, cell.json and summary.csv")


def _row_key(row: dict[str, str]) -> CellKey | None:
    try:
        return CellKey.from_json(row)
    except (KeyError, TypeError, ValueError):
        return None


def check_records(run: Run) -> Item:
    problems, warnings = list(run.problems), []
    conditions = run.config.get("conditions") or {}
    for cell in run.cells.values():
        if cell.damaged:  # the completeness test (``RunFolder.cell_state``): which file, what is wrong
            problems.append(f"{cell.label}: damaged ({cell.error}); `promptgap run --resume` recomputes it")
        if cell.record is None:
            if not cell.damaged:
                problems.append(f"{cell.label}: missing (not run, or the run stopped before it)")
            continue
        problems += [f"{cell.label}: {p}" for p in cell.problems]
        spec = conditions.get(cell.key.condition) or {}
        if cell.record.optimizer != spec.get("optimizer"):
            problems.append(f"{cell.label}: cell.json optimizer {cell.record.optimizer!r}, config "
                            f"{spec.get('optimizer')!r}")
        if cell.record.settings != (spec.get("settings") or {}):
            problems.append(f"{cell.label}: cell.json settings {cell.record.settings} differ from the config's "
                            f"{spec.get('settings')}")
        if cell.record.status not in ("ok", "error"):
            problems.append(f"{cell.label}: status {cell.record.status!r}")
        elif not cell.record.ok and not cell.damaged:
            warnings.append(f"{cell.label}: {cell.status}" + (f" ({cell.error})" if cell.error else ""))
    problems += [f"{c.path}: a cell outside the config's matrix ({c.label})" for c in run.extra_cells]
    present = len(_present(run))
    legacy = sum(c.legacy for c in run.cells.values())
    axes = "".join([" × train sizes" if any(k.train_size is not None for k in run.cells) else "",
                    " + transfers" if any(k.is_transfer for k in run.cells) else ""])
    return _item("Cell records agree with the config, and every cell of the matrix has one", problems,
                 f"{present} of {len(run.cells)} cell(s) of models × tasks × seeds{axes} × conditions recorded, "
                 f"each with the config's optimizer and settings and whole (every file its cell.json lists, by size "
                 f"and sha256" + (f"; {legacy} legacy cell(s), written before cells listed their files, judged by "
                                  f"the files they have" if legacy else "") + ")"
                 + (f"; {len(warnings)} failed (listed; failed cells are excluded from the statistics)"
                    if warnings else ""),
                 f"{present} cell record(s) against config.json", warnings)


def check_selection(run: Run) -> Item:
    title = "Searched and trained conditions selected on dev"
    problems, notes = [], []
    n = 0
    for cell in _scored(run):
        if cell.key.is_transfer:  # fits nothing, selects nothing: its source's selection is checked on the source
            continue
        sel = cell.evidence.selection if cell.evidence else None
        sf = run.split_of(cell.key)
        if len(run.ceilings) > 1 and cell.key.condition in run.ceilings and sf is not None:
            # a task's ceiling is chosen on these numbers (findings.choose_ceiling): they must cover all of dev
            dev = (cell.record.dev if cell.record is not None else None) or {}
            if dev.get("n") != len(sf.ids["dev"]):
                problems.append(f"{cell.label}: a ceiling candidate's dev score covers {dev.get('n', 0)} example(s), "
                                f"not the split's {len(sf.ids['dev'])}: the ceiling cannot be chosen on dev")
        if sel is None:
            if cell.key.condition in run.ceilings:
                problems.append(f"{cell.label}: the ceiling reported no selection (FitContext.report_selection)")
            continue
        n += 1
        if sf is None:
            continue
        ids = [str(i) for i in sel.get("ids") or []]
        where = Counter(next((p for p in PARTS if i in set(sf.ids[p])), "outside the split") for i in ids)
        reads = cell.evidence.fit_reads if cell.evidence else {}
        unread = [i for i in ids if i not in reads]
        if where.get("test"):
            problems.append(f"{cell.label}: reports selecting on {where['test']} test example(s)")
        if unread:
            problems.append(f"{cell.label}: reports selecting on {len(unread)} example(s) it never read while "
                            f"fitting, e.g. {unread[0]!r}")
        if cell.key.condition in run.ceilings and set(where) != {"dev"}:
            problems.append(f"{cell.label}: the ceiling reports selecting on "
                            + ", ".join(f"{k}: {v}" for k, v in where.items()) + ", not on dev")
        notes.append(f"{cell.key.condition}: {sel.get('metric')} on " + ", ".join(f"{v} {k}" for k, v in where.items()))
    if n == 0 and not problems:
        return Item(title, "n/a", "no condition reported a selection (base and hand-written conditions select "
                    "nothing)", reported=True)
    summary = "; ".join(dict.fromkeys(notes))
    return _item(title, problems, f"{n} cell(s) reported what they selected on: {summary}; every reported id is a "
                 f"split id the condition read while fitting (evidence.json)", f"the selections {n} cell(s) reported",
                 reported=True)


def _compared(run: Run) -> list[str]:
    return [c for c in run.conditions if run.role(c)] or run.conditions


def _group_name(m: str, t: str, n: int | None) -> str:
    return f"{m} / {t}" + (f" / train {n}" if n is not None else "")


def check_formats(run: Run) -> Item:
    """The conditions compared in R must share a format family; others (base-raw beside base-chat) show what the
    format itself does, and are listed, not judged."""
    problems, summary = [], []
    compared = _compared(run)
    for m, t, n in run.groups():
        by_fmt: dict[str, list[str]] = {}
        for c in compared:
            for s in run.seeds:
                cell = run.cell(m, t, s, c, n)
                if _says_ok(cell) and c not in by_fmt.setdefault(str(cell.record.format), []):
                    by_fmt[str(cell.record.format)].append(c)
        if len(by_fmt) > 1:
            problems.append(f"{_group_name(m, t, n)}: mixed formats: " + "; ".join(f"{f}: {', '.join(cs)}"
                                                                                 for f, cs in by_fmt.items()))
        elif by_fmt:
            summary.append(f"{_group_name(m, t, n)}: all {next(iter(by_fmt))}")
    others = [c for c in run.conditions if c not in compared]
    if others:
        summary.append(f"not in the ratio, not judged: {', '.join(others)}")
    return _item("Every condition in the ratio rendered in the same format family", problems,
                 "; ".join(summary) or "no ok cells", "the format of every ok cell of the ratio's conditions")


def check_same_tokens(run: Run) -> Item:
    """Per-token NLLs and summed log-likelihoods compare only when each gold continuation is the same tokens in
    every compared condition; raw and chat tokenize continuations differently."""
    problems, checked = [], 0
    for m, t, n in run.groups():
        for s in run.seeds:
            counts = {c: {x.get("example_id"): x.get("choice_ntokens") for x in run.cell(m, t, s, c, n).lines}
                      for c in _compared(run) if _says_ok(run.cell(m, t, s, c, n))}
            if len(counts) < 2:
                continue
            first, *rest = counts
            for c in rest:
                differ = [i for i, k in counts[c].items() if counts[first].get(i) != k]
                checked += len(counts[c])
                if differ:
                    problems.append(f"{_group_name(m, t, n)} / seed {s}: {c} vs {first}: {len(differ)} example(s) "
                                    f"differ, e.g. {differ[0]}")
    return _item("Gold continuations have the same token counts in every condition of the ratio", problems,
                 f"{checked} example(s) compared: equal token counts", "choice_ntokens across the ratio's conditions")


def check_device(run: Run) -> Item:
    problems, summary = [], []
    for m in run.models:
        for t in run.tasks:
            used = {(c.record.device, c.record.dtype) for c in _scored(run)
                    if c.key.scored_model == m and c.key.scored_task == t and c.record is not None}
            if len(used) > 1:
                problems.append(f"{m} / {t}: test scores from " + ", ".join(f"{d} {dt}" for d, dt in sorted(
                    used, key=str)))
            elif used:
                d, dt = next(iter(used))
                summary.append(f"{m} / {t}: {d}, {dt}")
    return _item("Test scores of one model and task come from one device and dtype", problems,
                 "; ".join(summary) or "no ok cells", "device and dtype of the ok cells")


def check_transfer(run: Run) -> Item:
    """A transfer cell must score its source's artifact as the source saved it, on the target's test split less the
    examples the source was fitted on (its train and dev, by content key or the task's mirror rule)."""
    title = "Transfer cells scored their source's artifact, without the target examples the source was fitted on"
    cells = [c for c in _present(run) if c.key.is_transfer]
    if not cells:
        return Item(title, "n/a", "the run has no transfer cells")
    problems = []
    removed_total: Counter[str] = Counter()
    for cell in cells:
        assert cell.record is not None
        source = run.cells.get(cell.key.source)
        if not _says_ok(cell):
            continue
        if source is None or not _says_ok(source):
            problems.append(f"{cell.label}: ok, but its source cell is {source.status if source else 'missing'}")
            continue
        want = run.folder.artifact_hash(source.key)
        if cell.record.source_artifact != want:
            problems.append(f"{cell.label}: scored artifact {cell.record.source_artifact}, but its source's artifact "
                            f"is {want} (the source was computed again since; resume the run to rescore it)")
        copy = run.folder.artifact_hash(cell.key)
        if copy != cell.record.source_artifact:
            problems.append(f"{cell.label}: its artifact/ copy hashes to {copy}, not the {cell.record.source_artifact} "
                            f"it records")
        derived = _removed(run, cell.key)
        recorded = (cell.evidence.leakage or {}).get("removed") if cell.evidence else None
        if derived is None:
            problems.append(f"{cell.label}: the split files record no content keys; the leakage filter cannot be "
                            f"re-derived")
            continue
        if recorded != derived:
            problems.append(f"{cell.label}: evidence.json says the leakage filter removed {len(recorded or {})} "
                            f"example(s); the split files give {len(derived)}")
        counts = {rule: sum(r == rule for r in derived.values()) for rule in ("same", "mirror")}
        if cell.record.removed != counts:
            problems.append(f"{cell.label}: cell.json removed {cell.record.removed}, the split files give {counts}")
        removed_total.update(derived.values())
    return _item(title, problems, f"{len(cells)} transfer cell(s): each scored its source cell's artifact (same "
                 f"hash, copied byte for byte); the target test examples the source's train or dev holds were "
                 f"removed first ({removed_total['same']} by context and answer, {removed_total['mirror']} by the "
                 f"task's mirror rule, over all transfer cells), re-derived from the split files",
                 f"{len(cells)} transfer cell(s) against their sources and the split files")


def check_provenance(run: Run) -> Item:
    m = run.manifest
    problems, warnings = [], []
    if not m:
        return _item("Provenance is recorded", ["manifest.json is missing"], "", "manifest.json")
    for key in ("code", "versions", "machine", "models", "tasks", "invocations"):
        if not m.get(key):
            problems.append(f"manifest.json has no {key}")
    for name in run.models:
        rec = (m.get("models") or {}).get(name)
        if rec is None:
            if any(c.record is not None for c in run.cells.values() if c.key.model == name):
                problems.append(f"model {name}: not in manifest.json")
            continue
        hashed = [f for f in (rec.get("file"), *((rec.get("folder") or {}).get("files") or {}).values())
                  if isinstance(f, dict) and f.get("sha256")]
        if not hashed and rec.get("source") != "hub":
            problems.append(f"model {name}: no file content hash recorded")
        if rec.get("error") or (rec.get("folder") or {}).get("error"):
            warnings.append(f"model {name}: {rec.get('error') or rec['folder']['error']}")
    for task in run.tasks:
        rec = (m.get("tasks") or {}).get(task)
        if rec is None:
            problems.append(f"task {task}: not in manifest.json")
            continue
        for src in rec.get("sources") or []:
            path = src.get("path")
            if not path:
                continue
            if not Path(path).exists():
                warnings.append(f"task {task}: data file {path} is gone; its recorded sha256 is {src['sha256'][:16]}")
            elif provenance.file_sha256(path) != src.get("sha256"):
                warnings.append(f"task {task}: data file {path} changed since the run (sha256 differs)")
        if not rec.get("sources"):
            warnings.append(f"task {task}: no data sources recorded (a task that reads its rows without "
                            f"Task.read_rows / Task.hub_rows)")
    codes = {provenance.code_label(inv.get("code")) for inv in m.get("invocations") or []}
    cell_codes = {(c.record.code or {}).get("commit") for c in _present(run) if c.record is not None}
    for inv in m.get("invocations") or []:
        if (inv.get("code") or {}).get("dirty"):
            changed = ", ".join((inv["code"].get("changed") or [])[:5])
            warnings.append(f"run at {inv.get('started')} was made from a tree with uncommitted changes "
                            f"({changed}): the commit alone does not reproduce it")
    if len(cell_codes) > 1:
        warnings.append(f"cells were computed by {len(cell_codes)} different commits: "
                        + ", ".join(sorted(str(c)[:12] for c in cell_codes)))
    return _item("Provenance is recorded: code, libraries, machine, model and data file hashes", problems,
                 f"manifest.json: code {'; '.join(sorted(codes)) or 'not recorded'}; {len(m.get('models') or {})} "
                 f"model(s) and {len(m.get('tasks') or {})} task(s) with content hashes; data files re-hashed",
                 "manifest.json", warnings)


def report_stamp(text: str) -> dict[str, Any] | None:
    match = REPORT_STAMP.search(text)
    if match is None:
        return None
    try:
        return json.loads(match.group(1))
    except ValueError:
        return None


def check_report(run: Run, report: Path) -> Item:
    title = "The report is current"
    if not report.exists():
        return Item(title, "n/a", f"no report at {report}")
    stamp = report_stamp(report.read_text(encoding="utf-8"))
    if stamp is None:
        return _item(title, [], "", "", [f"{report} does not record the code that wrote it (written by an older "
                                         f"promptgap); regenerate it with `promptgap report {run.dir}`"])
    warnings = []
    run_code = ((run.manifest.get("invocations") or [{}])[-1].get("code") or {})
    rep_code = stamp.get("code") or {}
    rerendered = ""
    if rep_code.get("commit") != run_code.get("commit"):
        both = bool(rep_code.get("commit") and run_code.get("commit"))
        if both and provenance.is_ancestor(run_code["commit"], rep_code["commit"]):
            # re-rendered by later code from the same cells: what `promptgap report` is for
            rerendered = f" (re-rendered; the cells ran on {provenance.code_label(run_code)})"
        else:
            older = both and provenance.is_ancestor(rep_code["commit"], run_code["commit"])
            warnings.append(f"{report} was written by {provenance.code_label(rep_code)}, "
                            + ("older than " if older else "not ") + f"the code that last ran the cells "
                            f"({provenance.code_label(run_code)}); regenerate it with `promptgap report {run.dir}`")
    finished = [c.record.finished for c in _present(run) if c.record is not None and c.record.finished]
    written = stamp.get("written")
    if written and finished and datetime.fromisoformat(max(finished)) > datetime.fromisoformat(written):
        warnings.append(f"{report} was written at {written}, before the last cell finished ({max(finished)})")
    if rep_code.get("dirty"):
        warnings.append(f"{report} was written from a tree with uncommitted changes")
    return _item(title, [], f"{report}: written by {provenance.code_label(rep_code)}{rerendered} at {written}, "
                            f"after every cell",
                 "", warnings)


def audit(run_dir: str | Path | Run, report: Path | None = None, with_report: bool = True,
          rescore: int | None = None) -> Audit:
    """Every item, computed from the run folder. ``report``: the markdown to check for staleness (default
    ``reports/<run-id>.md``, when it exists); ``with_report=False`` leaves that item out (the audit that runs
    beside the report writer, ``harness.cli.report_run``). ``rescore``: also score that many test rows of each
    cell again with the model (`promptgap check --rescore N`)."""
    run = run_dir if isinstance(run_dir, Run) else load_run(run_dir)
    items = [check_records(run), check_splits(run), check_disjoint(run), check_fit_reads(run), check_test_once(run),
             check_bos(run), check_numbers(run), check_requests(run), check_selection(run), check_formats(run),
             check_same_tokens(run), check_device(run), check_transfer(run), check_provenance(run)]
    if rescore is not None:
        items.append(rescore_item(run, rescore))
    if with_report:
        items.append(check_report(run, report or Path("reports") / f"{run.run_id}.md"))
    return Audit(run.run_id, items)


def print_audit(result: Audit) -> None:
    from rich.console import Console
    from rich.markup import escape

    console = Console(highlight=False, soft_wrap=True)
    console.print(f"[bold]promptgap check {escape(result.run_id)}[/]")
    colour = {"pass": "green", "fail": "red", "warn": "yellow", "n/a": "dim"}
    for item in result.items:
        console.print(f"[{colour[item.status]}]{item.status.upper():4}[/] {escape(item.title)}"
                      + (" [dim](reported by the condition)[/]" if item.reported else ""))
        console.print(f"     {escape(item.evidence)}", style="dim")
        for p in item.shown:
            console.print(f"     - {escape(p)}")
        if item.hidden:
            console.print(f"     - … and {item.hidden} more")
    console.print(("[green]" if result.passed else "[red]") + escape(result.summary()) + "[/]")
