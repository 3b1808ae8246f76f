"""What a run shows, per model × task (× train size): the statistics of its usable conditions, and the headline a
reader acts on; across train sizes, the sample-efficiency curves; across tasks and models, the transfer matrix; and
from each trial's curves, the overfitting flags.

One place computes what the markdown report, ``verdict.json`` and the terminal's headline table all say: for each
distinct text prompt (conditions whose per-example scores are identical collapse into one row), R on the deciding
metric with its interval and Holm-adjusted p, the gain over the base, the cost of the fit, the verdict and the flags
that qualify it (duplicate, uninformative metric, one seed, family size). Numbers come from ``harness.stats`` on the
per-example ``scores.jsonl`` lines, read through ``harness.run_folder``.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from harness.errors import UserError
from harness.run_folder import Cell, CellKey, Run, is_number
from harness.stats import FLAG_WORDS, RECOVERY_THRESHOLD, Analysis, Estimate, analyze_records, format_p

VERDICT_SHORT = {
    "text-closes-gap": "recovers most of the gap",
    "soft-only": "recovers less than half of the gap",
    "inconclusive": "undecided",
    "neither": "no clear gain from the ceiling or the prompt",
    "uninformative": "uninformative",
    "same-as-base": "the base in effect",
}


@dataclass
class Cost:
    """What fitting a condition took, averaged over its seeds (None: not recorded)."""

    fit_seconds: float | None = None
    score_seconds: float | None = None
    fit_tokens: float | None = None
    fit_grad_tokens: float | None = None
    prompt_tokens: float | None = None
    trainable_params: float | None = None

    @classmethod
    def of(cls, cells: Sequence[Cell]) -> Cost:
        def mean(name: str) -> float | None:
            vals = [getattr(c.record, name) for c in cells if c.record is not None]
            return sum(vals) / len(vals) if vals and all(is_number(v) for v in vals) else None

        return cls(**{k: mean(k) for k in cls.__dataclass_fields__})

    def text(self) -> str:
        parts = []
        if self.fit_seconds is not None:
            parts.append(f"fit {_duration(self.fit_seconds)}")
        if self.fit_tokens is not None:
            parts.append(f"{_count(self.fit_tokens)} tok" if self.fit_tokens else "no model calls")
        size = []
        if self.trainable_params:
            size.append(f"{_count(self.trainable_params)} params")
        if self.prompt_tokens is not None:
            size.append(f"+{_count(self.prompt_tokens)} prompt tok")
        return ", ".join(parts) + ("; " + ", ".join(size) if size else "") if parts or size else "not recorded"

    def to_json(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def _duration(s: float) -> str:
    return f"{s:.1f} s" if s < 60 else f"{s / 60:.1f} min"


def _count(x: float) -> str:
    x = float(x)
    if x >= 1e6:
        return f"{x / 1e6:.1f} M"
    if x >= 1e4:
        return f"{x / 1e3:.0f} k"
    return f"{x:.0f}"


@dataclass
class Group:
    """One (model, task, train size): which conditions the statistics use, the analysis, and why R may be missing."""

    model: str
    task: str
    cells: dict[str, list[Cell]]  # condition -> its cells, one per seed
    usable: list[str]  # conditions ok in every seed: the only ones in the statistics
    analysis: Analysis | None
    has_base: bool  # differences are from the configured base (else the table shows means only)
    r_reason: str | None  # why R cannot be computed for any text condition; None when it can
    stats_error: str | None = None
    per_token: bool = False  # continuation task: gold NLL is per token
    costs: dict[str, Cost] = field(default_factory=dict)
    same_tokens: dict[str, bool] = field(default_factory=dict)  # condition -> continuation tokens equal the base's
    train_size: int | None = None  # a point of a sample-efficiency curve

    @property
    def name(self) -> str:
        return f"{self.model} / {self.task}" + (f" / train {self.train_size}" if self.train_size is not None else "")

    @property
    def ll_unit(self) -> str:
        return "nats per token" if self.per_token else "nats per example"


def failure(cells: Sequence[Cell]) -> str:
    """Why a condition is not usable: each failing seed with its status and message."""
    return "; ".join(f"seed {c.seed}: {c.status}" + (f" ({c.error})" if c.error else "") for c in cells if not c.ok)


def _chance(cells: dict[str, list[Cell]], usable: list[str], per_token: bool) -> dict[str, float] | None:
    """Chance on each metric for a multiple-choice task with k_i choices: accuracy mean(1/k_i), gold
    log-likelihood mean(-ln k_i). Continuations have no chance level."""
    if per_token or not usable:
        return None
    ks = [len(x.get("choice_loglik") or []) for c in cells[usable[0]] for x in c.lines]
    if not ks or min(ks) < 2:
        return None
    return {"accuracy": sum(1 / k for k in ks) / len(ks), "loglik": -sum(math.log(k) for k in ks) / len(ks)}


def analyze_group(run: Run, model: str, task: str, n_boot: int, train_size: int | None = None) -> Group:
    cells = {c: [run.cell(model, task, s, c, train_size) for s in run.seeds] for c in run.conditions}
    usable = [c for c in run.conditions if cells[c] and all(x.ok for x in cells[c])]
    base, ceiling = run.base, run.ceiling
    if base is None:
        r_reason = "the config has no [ratio] section naming a base, so there is nothing to measure gains from"
    elif ceiling is None:
        r_reason = ("the config names no ceiling condition ([ratio] ceiling is unset), so there is no gap to measure "
                    "a recovery against")
    elif base not in usable:
        r_reason = f"the base {base!r} did not succeed for every seed ({failure(cells.get(base, []))})"
    elif ceiling not in usable:
        r_reason = f"the ceiling {ceiling!r} did not succeed for every seed ({failure(cells.get(ceiling, []))})"
    else:
        r_reason = None
    has_base = base in usable
    per_token = any("greedy_match" in r for c in usable for x in cells[c] for r in x.lines[:1])
    group = Group(model, task, cells, usable, None, has_base, r_reason, per_token=per_token,
                  costs={c: Cost.of(cells[c]) for c in run.conditions}, train_size=train_size)
    if not usable:
        group.stats_error = "no condition succeeded for every seed"
        return group
    if has_base:
        ref = {(x.seed, r["example_id"]): r.get("choice_ntokens") for x in cells[base] for r in x.lines}
        group.same_tokens = {c: all(ref.get((x.seed, r["example_id"])) == r.get("choice_ntokens") for x in cells[c]
                                    for r in x.lines) for c in usable}
    records = {c: {x.seed: x.lines for x in cells[c]} for c in usable}
    ref_name = base if has_base else usable[0]
    if len(records) == 1:
        # the statistics need a second condition; a copy of the only one gives its mean and interval unchanged
        records[f"{ref_name} (copy)"] = records[ref_name]
    use_ceiling = ceiling if r_reason is None else None
    texts = [t for t in run.texts if t in usable] if use_ceiling else []
    try:
        group.analysis = analyze_records(records, base=ref_name, ceiling=use_ceiling, texts=texts, n_boot=n_boot,
                                         chance=_chance(cells, usable, per_token),
                                         deciding=(run.config.get("ratio") or {}).get("metric") or "loglik")
    except UserError as e:
        group.stats_error = str(e)
        group.r_reason = group.r_reason or f"the statistics could not be computed ({e})"
    return group


def analyze_groups(run: Run, n_boot: int) -> list[Group]:
    """Every (model, task, train size) of the run, in matrix order."""
    return [analyze_group(run, m, t, n_boot, n) for m, t, n in run.groups()]


# --- the headline --------------------------------------------------------------------------------------------------
@dataclass
class Row:
    """One distinct text prompt: the conditions that share it, and what the run says about it."""

    texts: list[str]  # the first is the row's name; the others scored identically on every example
    verdict: str | None  # None: no verdict (the condition failed)
    reason: str
    r: dict[str, Any] | None  # value, lo, hi, method, p, p_adjusted (deciding metric)
    delta: Estimate | None  # text - base on the deciding metric
    delta_clear: int = 0
    cost: Cost = field(default_factory=Cost)
    flags: list[str] = field(default_factory=list)
    n_needed: int | None = None

    @property
    def name(self) -> str:
        return " = ".join(self.texts)


@dataclass
class Headline:
    model: str
    task: str
    metric: str | None  # the deciding metric
    rows: list[Row]
    ceiling_line: str  # what the ceiling does, or why there is no verdict
    notes: list[str]
    family: int = 0
    ceiling_gain: Estimate | None = None
    beaten_by: list[str] = field(default_factory=list)
    n_boot: int = 0


def _metric_name(g: Group, metric: str) -> str:
    if metric == "accuracy":
        return "greedy exact match" if g.per_token else "accuracy"
    return f"gold log-likelihood ({g.ll_unit})"


def _est_text(e: Estimate, d: int = 3) -> str:
    return f"{e.value:+.{d}f} [{e.ci.lo:+.{d}f}, {e.ci.hi:+.{d}f}]"


def headline(run: Run, g: Group) -> Headline:
    """The first screen for one model × task."""
    a = g.analysis
    if a is None or g.r_reason is not None or a.ceiling is None:
        why = g.r_reason or g.stats_error or "no statistics"
        rows = [Row([t], None, f"no verdict: {why}", None, None, cost=g.costs.get(t, Cost())) for t in run.texts]
        return Headline(g.model, g.task, None, rows, f"No verdict: {why}.", [])
    metric = a.deciding
    m = a.metrics[metric]
    gain = m.conditions[a.ceiling].diff
    assert gain is not None
    ceiling_cost = g.costs.get(a.ceiling, Cost())
    line = (f"Ceiling **{a.ceiling}** over base **{a.base}** on {_metric_name(g, metric)}: {_est_text(gain)} "
            f"({'clearly positive' if m.ceiling_gain_clear else 'not clearly positive'}); cost: "
            f"{ceiling_cost.text()}.")
    notes: list[str] = []
    flag = m.conditions[a.ceiling].flag
    if flag:
        line += f" The ceiling is **{FLAG_WORDS[flag]}** on this metric, so it shows no gap to recover."
    beaten = [c for c in g.usable if c in m.conditions and m.conditions[c].beats_ceiling]
    if beaten:
        vs = {c: m.conditions[c].vs_ceiling for c in beaten}
        notes.append("A stronger trained condition exists: " + "; ".join(
            f"**{c}** beats the designated ceiling by {_est_text(e)}" for c, e in vs.items() if e is not None)
            + f". R against {a.ceiling!r} understates the real gap; \"recovers less than half\" means less than "
              f"half of what {a.ceiling!r} gains, and the verdicts claim no more.")

    rows: list[Row] = []
    split: list[tuple[str, str, str]] = []  # (text, metric, its verdict there) where the metrics disagree
    for t in run.texts:
        if t not in g.usable:
            rows.append(Row([t], None, f"no verdict: its cell did not succeed for every seed ({failure(g.cells[t])})",
                            None, None, cost=g.costs.get(t, Cost())))
            continue
        twin = a.duplicates.get(t)
        if twin in a.texts:
            row = next(r for r in rows if twin in r.texts)
            row.texts.append(t)
            continue
        v = a.verdicts[t]
        r = m.ratios[t]
        c = m.conditions[t]
        r_json = None if r.value is None or r.decision is None else {
            "value": r.value, "lo": r.decision.lo, "hi": r.decision.hi, "method": r.decision.method, "p": r.decision_p,
            "p_adjusted": r.p_adjusted}
        flags = []
        if twin == a.base:
            flags.append(f"= {a.base} (identical scores)")
        for name, mm in a.metrics.items():
            if mm.conditions[t].flag:
                flags.append(f"{_metric_name(g, name).split(' (')[0]}: {mm.conditions[t].flag}")
        for name, other in v.by_metric.items():  # the same rules on the metric that does not decide, when they differ
            if name != v.metric and other not in (v.label, "uninformative", "inconclusive"):
                flags.append(f"**{_metric_name(g, name).split(' (')[0]} says {other}**")
                split.append((t, name, other))
        rows.append(Row([t], v.label, v.reason, r_json, c.diff, c.clear, g.costs.get(t, Cost()), flags, v.n_needed))
    for row in rows:  # identical prompts share one row; their costs may differ
        if len(row.texts) > 1:
            row.flags.insert(0, f"{len(row.texts)} conditions, identical scores")
    if split:
        notes.append("The metrics disagree: " + "; ".join(
            f"**{t}** is {a.verdicts[t].label} on {_metric_name(g, metric).split(' (')[0]} but {lab} on "
            f"{_metric_name(g, k).split(' (')[0]}" for t, k, lab in split)
            + ". The verdict follows the deciding metric; a prompt that raises the gold answer's likelihood without "
              "changing what the model answers has not closed the gap for a user who reads the answers.")
    notes += _noise_floors(run, g, metric)
    family = len(m.family)
    if a.n_seeds == 1:
        notes.append("One seed: each verdict holds for this one trained ceiling and this one run of each search, "
                     "not for the methods in general; run more seeds to see their spread.")
        for row in rows:
            row.flags.append("one seed")
    if family > 1:
        notes.append(f"Multiplicity: {family} distinct text prompts are judged against the ceiling on "
                     f"{_metric_name(g, metric).split(' (')[0]}; their tests of R = {RECOVERY_THRESHOLD} are "
                     f"Holm-corrected at {1 - a.confidence:.0%} (the p in the table is adjusted).")
        for row in rows:
            if row.r is not None and row.r.get("p_adjusted") is not None:
                row.flags.append(f"family of {family} (Holm)")
    for name in (n for n in a.metrics if n != metric):
        flagged = [(t, a.metrics[name].conditions[t].flag) for t in dict.fromkeys([a.ceiling, *a.texts])
                   if t in a.metrics[name].conditions and a.metrics[name].conditions[t].flag]
        if flagged:
            by_flag: dict[str, list[str]] = {}
            for t, f in flagged:
                by_flag.setdefault(f, []).append(t)
            notes.append(f"{_metric_name(g, name).split(' (')[0].capitalize()} cannot rank these prompts here ("
                         + "; ".join(f"{FLAG_WORDS[f]}: {', '.join(ts)}" for f, ts in by_flag.items())
                         + f"); the verdicts are decided on {_metric_name(g, metric).split(' (')[0]}.")
    return Headline(g.model, g.task, metric, rows, line, notes, family, gain, beaten, a.n_boot)


def _noise_floors(run: Run, g: Group, metric: str) -> list[str]:
    """For each `paraphrases` condition: the spread of its paraphrases' gains on test, each scored in its own cell."""
    a = g.analysis
    assert a is not None
    conditions = run.config.get("conditions") or {}
    out = []
    for parent in dict.fromkeys(c.get("variant_of") for c in conditions.values() if c.get("variant_of")):
        variants = [c for c, spec in conditions.items() if spec.get("variant_of") == parent and c in g.usable]
        diffs = sorted(((a.metrics[metric].conditions[c].diff, c) for c in variants
                        if a.metrics[metric].conditions[c].diff is not None), key=lambda d: d[0].value)
        if len(diffs) < 2:
            continue
        mid = diffs[(len(diffs) - 1) // 2]
        (lo, lo_name), (hi, hi_name) = diffs[0], diffs[-1]
        out.append(f"Noise floor of hand-writing: the {len(diffs)} instructions of **{parent}** (each scored on test "
                   f"in its own cell) gain {_est_text(lo)} ({lo_name}, least) to {_est_text(hi)} "
                   f"({hi_name}, most) over the base, median {_est_text(mid[0])}, on "
                   f"{_metric_name(g, metric).split(' (')[0]}; {parent} itself is the one chosen on dev. A text "
                   f"optimizer's gain inside this spread is no more than a choice of wording.")
    return out


def headline_table(h: Headline, mark: Callable[[str], str] = lambda s: s) -> tuple[list[str], list[list[str]]]:
    """The headline table's header and cells as text; ``mark`` emphasises the verdict (markdown, rich)."""
    metric = "gold log-lik" if h.metric == "loglik" else "accuracy"
    rows = []
    for r in h.rows:
        r_text = "—"
        if r.r is not None:
            r_text = f"{r.r['value']:.3f} [{r.r['lo']:.3f}, {r.r['hi']:.3f}]"
            if r.r.get("p_adjusted") is not None:
                r_text += f", p {format_p(r.r['p_adjusted'], h.n_boot, max(1, h.family))}"
        verdict = r.reason if r.verdict is None else mark(r.verdict)
        if r.verdict == "inconclusive" and r.n_needed:
            verdict += f" (~{r.n_needed} examples would settle it)"
        elif r.verdict == "uninformative":
            verdict += f": {r.reason}"
        rows.append([r.name, r_text, _est_text(r.delta) if r.delta is not None else "—", r.cost.text(), verdict,
                     "; ".join(r.flags) or "—"])
    return (["text prompt", f"R on {metric} [95% CI]", f"Δ {metric} vs base [95% CI]", "cost", "verdict", "flags"],
            rows)


def verdict_json(run: Run, groups: list[Group], stamp: dict[str, Any], audit: Any) -> dict[str, Any]:
    """The headline as data, for pipelines; ``verdict.schema.json`` (package data) describes it."""
    out: dict[str, Any] = {"schema": "promptgap-verdict/1", "run_id": run.run_id, "written": stamp["written"],
                           "code": stamp["code"], "audit": {"passed": audit.passed,
                                                            "failed": [i.title for i in audit.failed]}, "groups": []}
    for g in groups:
        h = headline(run, g)
        a = g.analysis
        out["groups"].append({
            "model": g.model, "task": g.task, **({"train_size": g.train_size} if g.train_size is not None else {}),
            "base": run.base, "ceiling": run.ceiling, "metric": h.metric,
            "n_seeds": a.n_seeds if a else None, "n_examples": a.n_examples if a else None,
            "confidence": a.confidence if a else None, "correction": "holm", "family_size": h.family,
            "ceiling_gain": _est_json(h.ceiling_gain), "ceiling_beaten_by": h.beaten_by,
            "no_verdict_reason": g.r_reason or g.stats_error,
            "rows": [{"texts": r.texts, "verdict": r.verdict, "reason": r.reason, "R": r.r,
                      "delta": _est_json(r.delta), "flags": r.flags, "n_needed": r.n_needed, "cost": r.cost.to_json()}
                     for r in h.rows]})
    return out


def _est_json(e: Estimate | None) -> dict[str, float] | None:
    return None if e is None else {"value": e.value, "lo": e.ci.lo, "hi": e.ci.hi}


# --- sample-efficiency curves ----------------------------------------------------------------------------------------
REACH = 0.9  # the share of the largest train size's gain a curve's point must reach


@dataclass
class CurvePoint:
    """One condition at one train size, on the deciding metric: its mean, its paired gain over the base and R
    (from that size's group analysis), and the share of its largest-size gain it reaches (paired over the same test
    examples: ``R`` of the point against the condition at the largest size, over the base)."""

    size: int
    mean: Estimate | None
    gain: Estimate | None
    r: Any = None  # RatioStats: R against the ceiling at this size (text conditions)
    share: Any = None  # RatioStats: (point − base) / (largest size − base)


@dataclass
class Curve:
    """Every condition of one model × task across its train sizes."""

    model: str
    task: str
    metric: str
    sizes: list[int]
    groups: list[Group]
    points: dict[str, list[CurvePoint]]
    reach: dict[str, tuple[int | None, str]]  # condition -> (smallest size reaching REACH of its gain, in words)
    per_token: bool = False

    @property
    def name(self) -> str:
        return f"{self.model} / {self.task}"


def _lines(cells: Sequence[Cell]) -> dict[int, list[dict[str, Any]]]:
    return {c.seed: c.lines for c in cells}


def curves(run: Run, groups: Sequence[Group], n_boot: int) -> list[Curve]:
    """The sample-efficiency curve of each model × task with several train sizes, from its groups' analyses."""
    metric = (run.config.get("ratio") or {}).get("metric") or "loglik"
    out = []
    for m in run.models:
        for t in run.tasks:
            gs = [g for g in groups if g.model == m and g.task == t and g.train_size is not None]
            if len(gs) < 2 or run.base is None:
                continue
            sizes = [g.train_size for g in gs if g.train_size is not None]
            largest = gs[-1]
            points: dict[str, list[CurvePoint]] = {}
            reach: dict[str, tuple[int | None, str]] = {}
            for c in run.conditions:
                if c == run.base:
                    continue
                pts = []
                for g in gs:
                    a = g.analysis
                    cs = a.metrics[metric].conditions.get(c) if a is not None and c in g.usable else None
                    r = a.metrics[metric].ratios.get(c) if a is not None and cs is not None else None
                    pts.append(CurvePoint(g.train_size or 0, cs.mean if cs else None, cs.diff if cs else None, r))
                points[c] = pts
                reach[c] = _reach(run, largest, gs, c, pts, metric, n_boot)
            out.append(Curve(m, t, metric, sizes, gs, points, reach, largest.per_token))
    return out


def _reach(run: Run, largest: Group, gs: Sequence[Group], c: str, pts: list[CurvePoint], metric: str,
           n_boot: int) -> tuple[int | None, str]:
    """The smallest train size whose point estimate of the gain reaches ``REACH`` of the largest size's, with the
    gain's interval there and the share of the largest-size gain it is (paired bootstrap over the test examples)."""
    top = pts[-1].gain
    base_cells = largest.cells.get(run.base or "", [])
    if top is None or not base_cells or not all(x.ok for x in base_cells):
        return None, "not defined: the condition or the base did not succeed at the largest train size"
    if top.value <= 0:
        return None, f"not defined: no gain at the largest train size ({_est_text(top)})"
    for p, g in zip(pts, gs, strict=True):
        if p.gain is None or p.gain.value < REACH * top.value:
            continue
        share = None
        if g is not largest:
            records = {"base": _lines(base_cells), "point": _lines(g.cells[c]), "largest": _lines(largest.cells[c])}
            try:
                share = analyze_records(records, base="base", ceiling="largest", texts=["point"], n_boot=n_boot,
                                        deciding=metric).metrics[metric].ratios["point"]
            except UserError:
                share = None
        p.share = share
        text = f"train {p.size}: gain {_est_text(p.gain)}"
        if share is not None and share.value is not None and share.ci is not None:
            text += f", {share.value:.2f} [{share.ci.lo:.2f}, {share.ci.hi:.2f}] of the train-{pts[-1].size} gain"
        elif share is not None:
            text += f" (its share of the train-{pts[-1].size} gain is undefined: that gain is not clearly positive)"
        else:
            text += " (the largest size itself)"
        return p.size, text
    return None, "not reached"  # unreachable: the largest size reaches its own gain


# --- transfer --------------------------------------------------------------------------------------------------------
@dataclass
class TransferRow:
    condition: str
    transferred: Any  # ConditionStats of the transferred artifact on the target (diff: gain over the target's base)
    own: Any  # ConditionStats of the target's own condition on the same examples, or None
    r: Any  # RatioStats of the transferred artifact against the target's own ceiling, or None
    r_own: Any
    same_tokens: bool = True


@dataclass
class TransferBlock:
    """The artifacts of one source (model, task, seed, train size) scored on one target (model, task)."""

    source_model: str
    source_task: str
    target_model: str
    target_task: str
    seed: int
    train_size: int | None
    n_test: int  # the target's test split
    removed: dict[str, int]  # by the leakage filter, by rule
    n_scored: int
    rows: list[TransferRow]
    analysis: Analysis | None
    ceiling: str | None
    missing: list[str]  # transfer cells or target cells not ok, with why
    error: str | None = None

    @property
    def name(self) -> str:
        src = f"{self.source_model} / {self.source_task}"
        tgt = " / ".join(x for x in ((self.target_model if self.target_model != self.source_model else None),
                                     self.target_task) if x)
        size = f", train {self.train_size}" if self.train_size is not None else ""
        return f"{src} -> {tgt} (seed {self.seed}{size})"


def transfers(run: Run, n_boot: int) -> list[TransferBlock]:
    """Each block of transfer cells against the target's own base, ceiling and conditions, paired on the test
    examples the transfer scored (the target's test less what the leakage filter removed)."""
    metric = (run.config.get("ratio") or {}).get("metric") or "loglik"
    blocks: dict[tuple[Any, ...], list[Cell]] = {}
    for cell in run.transfer_cells():
        k = cell.key
        blocks.setdefault((k.model, k.task, k.scored_model, k.scored_task, k.seed, k.train_size), []).append(cell)
    out = []
    for (sm, st, tm, tt, seed, size), cells in blocks.items():
        sizes = run.sizes(tt)
        own_size = size if size in sizes else sizes[-1]

        def own(c: str, tm: str = tm, tt: str = tt, seed: int = seed, own_size: int | None = own_size) -> Cell | None:
            return run.cells.get(CellKey(tm, tt, seed, c, own_size))

        ok = [c for c in cells if c.ok]
        missing = [f"{c.key.condition}: {c.status}" + (f" ({c.error})" if c.error else "") for c in cells if not c.ok]
        first = next((c for c in ok if c.record is not None), None)
        removed = dict(first.record.removed or {}) if first is not None and first.record is not None else {}
        sf = run.split_of(cells[0].key)
        block = TransferBlock(sm, st, tm, tt, seed, size, len(sf.ids["test"]) if sf else 0, removed,
                              len(first.lines) if first else 0, [], None, None, missing)
        out.append(block)
        base = own(run.base) if run.base else None
        if base is None or not base.ok or not ok:
            block.error = (f"the target's base {run.base!r} did not succeed" if run.base
                           else "the config names no base ([ratio] base)") if ok else "no transfer cell succeeded"
            continue
        ids = {str(x["example_id"]) for x in ok[0].lines}

        def subset(cell: Cell, ids: set[str] = ids) -> dict[int, list[dict[str, Any]]]:
            return {cell.seed: [x for x in cell.lines if str(x["example_id"]) in ids]}

        records: dict[str, Any] = {"base": subset(base)}
        ceiling = own(run.ceiling) if run.ceiling else None
        if ceiling is not None and ceiling.ok:
            records["ceiling"] = subset(ceiling)
            block.ceiling = run.ceiling
        names: dict[str, tuple[str, str | None]] = {}
        for cell in ok:
            c = cell.key.condition
            records[f"{c} ->"] = {cell.seed: cell.lines}
            mine = own(c)
            names[c] = (f"{c} ->", f"{c} (own)" if mine is not None and mine.ok and c != run.ceiling else None)
            if names[c][1]:
                records[f"{c} (own)"] = subset(mine)
        texts = [n for pair in names.values() for n in pair if n]
        try:
            a = analyze_records(records, base="base", ceiling="ceiling" if "ceiling" in records else None,
                                texts=texts if "ceiling" in records else None, n_boot=n_boot, deciding=metric)
        except UserError as e:
            block.error = str(e)
            continue
        block.analysis = a
        ref = {str(x["example_id"]): x.get("choice_ntokens") for x in records["base"][seed]}
        mm = a.metrics[metric]
        for cell in ok:
            c = cell.key.condition
            t_name, o_name = names[c]
            block.rows.append(TransferRow(
                c, mm.conditions[t_name], mm.conditions[o_name] if o_name else
                (mm.conditions["ceiling"] if c == run.ceiling and "ceiling" in mm.conditions else None),
                mm.ratios.get(t_name), mm.ratios.get(o_name) if o_name else None,
                all(ref.get(str(x["example_id"])) == x.get("choice_ntokens") for x in cell.lines)))
    return out


# --- overfitting -----------------------------------------------------------------------------------------------------
@dataclass
class FitCheck:
    """One trial's train and dev curves (log.json): the dev-selected step, the losses there, and the warnings."""

    label: str  # the trial (lr, init, length) or "search"
    winner: bool
    selected: int | None
    evaluations: int
    train_loss: float | None  # mean train loss over the steps up to the selected evaluation
    dev_loss: float | None
    warnings: list[str]

    @property
    def gap(self) -> float | None:
        return None if self.train_loss is None or self.dev_loss is None else self.dev_loss - self.train_loss


def fit_checks(log: dict[str, Any] | None) -> list[FitCheck]:
    """Every trial of a trained or searched condition's log with train and dev curves: prompt training's
    ``trials`` (each with its curve; ``winner`` marks the chosen one), or a search's single ``curves``."""
    if not log or not isinstance(log.get("curves"), list):
        return []
    if isinstance(log.get("trials"), list) and all(isinstance(t, dict) for t in log["trials"]):
        winner = log.get("winner") or {}
        trials = [(", ".join(f"{k} {t.get(k)}" for k in ("length", "lr", "init") if t.get(k) is not None),
                   t.get("curve") or [], t.get("best_step"), t.get("status", "ok"),
                   all(t.get(k) == winner.get(k) for k in ("length", "lr", "init"))) for t in log["trials"]]
    else:
        trials = [("search", log["curves"], log.get("best_step"), "ok", True)]
    return [_fit_check(*t) for t in trials if t[3] == "ok"]


def _fit_check(label: str, curve: list[dict[str, Any]], selected: Any, status: str, winner: bool) -> FitCheck:
    train: dict[int, float] = {}  # step -> train loss (a search logs a point per step; training one per evaluation)
    evals: list[tuple[int, float, float | None]] = []  # (step, dev loss, mean train loss since the last evaluation)
    windows: list[list[float]] = []  # the train losses behind each evaluation's mean
    since: list[float] = []
    for p in curve:
        step = p.get("step")
        if not is_number(step):
            continue
        if is_number(p.get("train_loss")) and int(step) not in train:
            train[int(step)] = float(p["train_loss"])
            since.append(float(p["train_loss"]))
        if is_number(p.get("dev_loss")):
            evals.append((int(step), float(p["dev_loss"]), sum(since) / len(since) if since else None))
            windows.append(since)
            since = []
    check = FitCheck(label, winner, int(selected) if is_number(selected) else None, len(evals), None, None, [])
    at = next((e for e in evals if e[0] == check.selected), None)
    if at is None or len(evals) < 2:
        return check
    check.dev_loss, check.train_loss = at[1], at[2]
    if at is evals[0]:
        check.warnings.append(f"the dev-selected step is the first evaluation (step {at[0]}"
                              + (", before any training" if at[0] == 0 else "")
                              + "): nothing learned on train improved dev")
    after = evals[evals.index(at):]
    first_train = next((e[2] for e in after if e[2] is not None), None)
    last = after[-1]
    if len(after) > 1 and first_train is not None and last[2] is not None and last[2] < first_train \
            and last[1] > at[1] and _falls(windows[evals.index(next(e for e in after if e[2] is not None))],
                                           windows[len(evals) - 1]):
        check.warnings.append(f"after step {at[0]} train loss falls ({first_train:.3f} -> {last[2]:.3f}) while dev "
                              f"loss rises ({at[1]:.3f} -> {last[1]:.3f}, step {last[0]})")
    return check


def _falls(before: list[float], later: list[float]) -> bool:
    """Whether the later window's mean train loss is below the earlier one's by more than minibatch noise: two
    standard errors of the difference of the means, when both windows hold several steps (a search logs every step;
    a window of one point, as training logs, cannot tell noise and is taken as it is)."""
    if len(before) < 2 or len(later) < 2:
        return True
    se = math.sqrt(statistics.variance(before) / len(before) + statistics.variance(later) / len(later))
    return statistics.fmean(before) - statistics.fmean(later) > 2 * se


def overfitting(g: Group) -> dict[str, list[tuple[int, list[FitCheck]]]]:
    """Per condition of a group, per seed, the fit checks of its trials (conditions whose log has curves)."""
    out: dict[str, list[tuple[int, list[FitCheck]]]] = {}
    for c, cells in g.cells.items():
        per_seed = [(x.seed, fit_checks(x.log)) for x in cells if x.log]
        per_seed = [(s, checks) for s, checks in per_seed if checks]
        if per_seed:
            out[c] = per_seed
    return out
