"""What a run shows, as data, per model × task (× train size): the statistics of its usable conditions, and the
headline a reader acts on; across train sizes, the sample-efficiency curves; across tasks and models, the transfer
matrix; from each trial's curves, the overfitting flags; and across a suite's tasks, the leaderboard (``board``).

One place computes what the markdown report, ``verdict.json`` and the terminal's headline table all say: for each
distinct text prompt (conditions whose per-example scores are identical collapse into one row), R on the deciding
metric with its interval and Holm-adjusted p, the gain over the base, the cost of the fit, the verdict and the flags
that qualify it (duplicate, uninformative metric, one seed, family size), and the notes under it. Verdicts, flags,
notes and the reasons a number is missing are kinds with the numbers they cite, never sentences: ``harness.wording``
words them. Numbers come from ``harness.stats`` on the per-example ``scores.jsonl`` lines, read through
``harness.run_folder``.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from scipy.special import ndtri

from harness.errors import UserError
from harness.plan import CellKey
from harness.run_folder import Cell, Run, is_number
from harness.stats import (
    Analysis,
    Estimate,
    Interval,
    Outcome,
    RatioStats,
    SuiteRow,
    SuiteStats,
    analyze,
    analyze_records,
    score_matrices,
    suite_means,
    verdict,
)


@dataclass
class Cost:
    """What fitting a condition took, averaged over its seeds (None: not recorded)."""

    fit_seconds: float | None = None
    score_seconds: float | None = None
    fit_tokens: float | None = None
    fit_grad_tokens: float | None = None
    prompt_tokens: float | None = None
    trainable_params: float | None = None
    # another LM's cost, apart from the task model's (a DSPy proposer: CellRecord.proposer), and a search's metric calls
    proposer_calls: float | None = None
    proposer_tokens: float | None = None  # its prompt and completion tokens
    metric_calls: float | None = None

    @classmethod
    def of(cls, cells: Sequence[Cell]) -> Cost:
        records = [c.record for c in cells if c.record is not None]
        return cls(**{k: _mean([_cost_value(r, k) for r in records]) for k in cls.__dataclass_fields__})

    @classmethod
    def averaged(cls, costs: Sequence[Cost]) -> Cost:
        """The mean of several costs (a suite's tasks), field by field."""
        return cls(**{k: _mean([getattr(c, k) for c in costs]) for k in cls.__dataclass_fields__})

    def to_json(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def _cost_value(record: Any, name: str) -> Any:
    """One cell's ``Cost`` field: the record's own, or, for the proposer's, from its ``proposer`` record."""
    if name == "proposer_calls":
        return (record.proposer or {}).get("calls")
    if name == "proposer_tokens":
        used = [(record.proposer or {}).get(k) for k in ("prompt_tokens", "completion_tokens")]
        return sum(used) if all(is_number(u) for u in used) else None
    return getattr(record, name)


def _mean(values: Sequence[Any]) -> float | None:
    """The mean, or None when a value is missing (not recorded)."""
    return sum(values) / len(values) if values and all(is_number(v) for v in values) else None


# why a group has no R (and so no verdict), or a headline row none: NoVerdict.kind
NO_VERDICT_KINDS = ("no-base", "no-ceiling", "base-failed", "ceiling-failed", "stats-failed", "no-usable",
                    "stats-error", "cell-failed", "no-statistics")


@dataclass(frozen=True)
class NoVerdict:
    """Why there is no R or no verdict: ``kind`` from ``NO_VERDICT_KINDS``, with the role ``condition`` and its
    ``cells`` (a failed role or row), or the statistics' ``error``."""

    kind: str
    condition: str | None = None
    cells: tuple[Cell, ...] = ()
    error: str | None = None


@dataclass
class Group:
    """One (model, task, train size): which conditions the statistics use, the analysis, and why R may be missing."""

    model: str
    task: str
    cells: dict[str, list[Cell]]  # condition -> its cells, one per seed
    usable: list[str]  # conditions ok in every seed: the only ones in the statistics
    analysis: Analysis | None
    has_base: bool  # differences are from the configured base (else the table shows means only)
    no_r: NoVerdict | None  # why R cannot be computed for any text condition; None when it can
    stats_error: NoVerdict | None = None  # why there are no statistics at all
    per_token: bool = False  # continuation task: gold NLL is per token
    costs: dict[str, Cost] = field(default_factory=dict)
    same_tokens: dict[str, bool] = field(default_factory=dict)  # condition -> continuation tokens equal the base's
    train_size: int | None = None  # a point of a sample-efficiency curve
    # trained conditions of other runs (`report --compare`) clearly above this group's ceiling on the same test
    # examples: "condition (run ID)" -> condition minus ceiling
    elsewhere: dict[str, Estimate] = field(default_factory=dict)
    ceiling: CeilingChoice | None = None  # which candidate is this group's ceiling, and why (``choose_ceiling``)
    three_way: ThreeWay | None = None  # prompt, soft prompt or fine-tune? (with both kinds of trained ceiling)

    @property
    def name(self) -> str:
        return f"{self.model} / {self.task}" + (f" / train {self.train_size}" if self.train_size is not None else "")

    @property
    def ll_unit(self) -> str:
        return "nats per token" if self.per_token else "nats per example"


def _chance(cells: dict[str, list[Cell]], usable: list[str], per_token: bool) -> dict[str, float] | None:
    """Chance on each metric for a multiple-choice task with k_i choices: accuracy mean(1/k_i), gold
    log-likelihood mean(-ln k_i). Continuations have no chance level."""
    if per_token or not usable:
        return None
    ks = [len(x.get("choice_loglik") or []) for c in cells[usable[0]] for x in c.lines]
    if not ks or min(ks) < 2:
        return None
    return {"accuracy": sum(1 / k for k in ks) / len(ks), "loglik": -sum(math.log(k) for k in ks) / len(ks)}


@dataclass(frozen=True)
class CeilingChoice:
    """A group's ceiling among the run's candidates ([ratio] ceiling): ``name``, None when no candidate can be it.
    ``dev``: with several candidates, each one's mean over the seeds of its dev scores (``CellRecord.dev``) as
    (accuracy, gold NLL), None where a seed's cell failed or recorded none."""

    name: str | None
    candidates: tuple[str, ...]
    dev: dict[str, tuple[float, float] | None] = field(default_factory=dict)

    @property
    def chosen(self) -> bool:
        """The ceiling was picked on dev among several (not the run's only one)."""
        return len(self.candidates) > 1 and self.name is not None


def choose_ceiling(candidates: Sequence[str], cells: dict[str, list[Cell]], usable: Sequence[str],
                   metric: str) -> CeilingChoice:
    """The ceiling of one task: the candidate with the best mean dev score over the task's seeds on the deciding
    ``metric`` (the gold log-likelihood; accuracy, ties by it), ties to the first listed. Only a candidate usable in
    every seed, each seed's cell with its dev score, can be chosen; the only candidate needs no dev score."""
    if len(candidates) == 1:
        return CeilingChoice(candidates[0] if candidates[0] in usable else None, tuple(candidates))
    dev: dict[str, tuple[float, float] | None] = {}
    for c in candidates:
        recs = [x.record.dev if x.record is not None else None for x in cells.get(c, [])]
        ok = c in usable and bool(recs) and all(r and is_number(r.get("gold_nll")) and is_number(r.get("accuracy"))
                                                for r in recs)
        dev[c] = (statistics.fmean(r["accuracy"] for r in recs), statistics.fmean(r["gold_nll"] for r in recs)) \
            if ok else None
    scored = [c for c in candidates if dev[c] is not None]

    def key(c: str) -> tuple[float, ...]:
        acc, nll = dev[c]
        return (acc, -nll) if metric == "accuracy" else (-nll,)

    return CeilingChoice(max(scored, key=key) if scored else None, tuple(candidates), dev)  # max: first of ties


# what a trained ceiling candidate trains, asked of its artifact (``PromptArtifact.parts``): a prompt in front of a
# frozen model (a soft prompt's input vectors, a key/value prefix), or the model's own weights
PROMPT_PARTS, WEIGHT_PARTS = frozenset({"soft", "prefix"}), frozenset({"weights"})


@dataclass(frozen=True)
class ThreeWay:
    """Prompt, soft prompt or fine-tune? Beside the deciding ceiling, a group whose ceiling candidates include both a
    trained prompt (model frozen) and trained weights: each side's candidate best on dev (``prompt``,
    ``weights``), every candidate's gain over the base (``gains``), R of every readable prompt against each side
    (``vs_prompt``, ``vs_weights``), and the trained prompt's share of each weight-training candidate's gain
    (``shares``), all on the deciding ``metric`` with paired-bootstrap intervals. Not Holm-corrected and no
    verdicts: the verdicts are the deciding ceiling's (``Group.analysis``)."""

    metric: str
    prompt: CeilingChoice
    weights: CeilingChoice
    trains: dict[str, str]  # candidate -> "prompt" or "weights"
    gains: dict[str, Estimate]
    clear: dict[str, bool]  # candidate -> its gain over the base is clear (``ConditionStats.clear``): R is defined
    vs_prompt: dict[str, RatioStats]
    vs_weights: dict[str, RatioStats]
    shares: dict[str, RatioStats]


def three_way(run: Run, g: Group, n_boot: int) -> ThreeWay | None:
    """The group's ``ThreeWay``, or None when its usable ceiling candidates do not include both kinds (or it has no
    usable base)."""
    base = run.base
    if base is None or base not in g.usable or g.analysis is None:
        return None
    trains: dict[str, str] = {}
    for c in run.ceilings:
        cells = g.cells.get(c) or []
        parts = [x.artifact.parts for x in cells if x.artifact is not None]
        if c in g.usable and len(parts) == len(cells):
            kind = "weights" if all(p & WEIGHT_PARTS for p in parts) else \
                "prompt" if all(p & PROMPT_PARTS and not p & WEIGHT_PARTS for p in parts) else None
            if kind:
                trains[c] = kind
    metric = g.analysis.deciding
    sides = {k: choose_ceiling([c for c in run.ceilings if trains.get(c) == k], g.cells, g.usable, metric)
             for k in ("prompt", "weights")}
    if any(not side.candidates or side.name is None for side in sides.values()):
        return None
    prompt, weights = sides["prompt"].name, sides["weights"].name
    assert prompt is not None and weights is not None
    records = {c: {x.seed: x.lines for x in g.cells[c]} for c in g.usable}
    texts = [t for t in run.texts if t in g.usable]

    def against(ceiling: str, names: list[str]) -> Analysis:
        return analyze_records({c: records[c] for c in dict.fromkeys([base, ceiling, *names])}, base=base,
                               ceiling=ceiling, texts=names, n_boot=n_boot, deciding=metric)

    on_prompt, on_weights = against(prompt, texts), against(weights, [*texts, prompt])
    overview = analyze_records({c: records[c] for c in dict.fromkeys([base, *trains])}, base=base, n_boot=n_boot,
                               deciding=metric)
    gains = {c: overview.metrics[metric].conditions[c].diff for c in trains}
    clear = {c: overview.metrics[metric].conditions[c].clear > 0 for c in trains}
    shares = {w: (on_weights if w == weights else against(w, [prompt])).metrics[metric].ratios[prompt]
              for w in trains if trains[w] == "weights"}
    return ThreeWay(metric, sides["prompt"], sides["weights"], trains,
                    {c: d for c, d in gains.items() if d is not None}, clear,
                    {t: on_prompt.metrics[metric].ratios[t] for t in texts},
                    {t: on_weights.metrics[metric].ratios[t] for t in texts}, shares)


def analyze_group(run: Run, model: str, task: str, n_boot: int, train_size: int | None = None) -> Group:
    cells = {c: [run.cell(model, task, s, c, train_size) for s in run.seeds] for c in run.conditions}
    usable = [c for c in run.conditions if cells[c] and all(x.ok for x in cells[c])]
    metric = (run.config.get("ratio") or {}).get("metric") or "loglik"
    choice = choose_ceiling(run.ceilings, cells, usable, metric) if run.ceilings else None
    base, ceiling = run.base, (choice.name if choice is not None else None)
    no_r: NoVerdict | None = None
    if base is None:
        no_r = NoVerdict("no-base")
    elif choice is None:
        no_r = NoVerdict("no-ceiling")
    elif base not in usable:
        no_r = NoVerdict("base-failed", base, tuple(cells.get(base, [])))
    elif ceiling is None:
        no_r = NoVerdict("ceiling-failed", " / ".join(run.ceilings),
                         tuple(x for c in run.ceilings for x in cells.get(c, [])))
    has_base = base in usable
    per_token = any("greedy_match" in r for c in usable for x in cells[c] for r in x.lines[:1])
    group = Group(model, task, cells, usable, None, has_base, no_r, per_token=per_token,
                  costs={c: Cost.of(cells[c]) for c in run.conditions}, train_size=train_size, ceiling=choice)
    if not usable:
        group.stats_error = NoVerdict("no-usable")
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
    use_ceiling = ceiling if no_r is None else None
    texts = [t for t in run.texts if t in usable] if use_ceiling else []
    try:
        group.analysis = analyze_records(records, base=ref_name, ceiling=use_ceiling, texts=texts, n_boot=n_boot,
                                         chance=_chance(cells, usable, per_token), deciding=metric)
    except UserError as e:
        group.stats_error = NoVerdict("stats-error", error=str(e))
        group.no_r = group.no_r or NoVerdict("stats-failed", error=str(e))
    return group


def analyze_groups(run: Run, n_boot: int, compare: Sequence[Run] = ()) -> list[Group]:
    """Every (model, task, train size) of the run, in matrix order. ``compare``: other runs whose trained
    conditions, scored on the same test examples, are weighed against each group's ceiling
    (`promptgap report --compare`)."""
    groups = [analyze_group(run, m, t, n_boot, n) for m, t, n in run.groups()]
    for g in groups:
        g.elsewhere = _stronger_elsewhere(g, compare, n_boot)
        g.three_way = three_way(run, g, n_boot)
    return groups


def _stronger_elsewhere(g: Group, others: Sequence[Run], n_boot: int) -> dict[str, Estimate]:
    """The trained conditions of other runs clearly above this group's ceiling on the deciding metric, paired on the
    same test examples (name with its run -> condition minus ceiling). A condition counts where it holds trained
    tensors and, for every seed of this group, scored exactly this group's test ids (same model and task)."""
    a = g.analysis
    if a is None or a.ceiling is None or g.no_r is not None or not others:
        return {}
    mine = {x.seed: x.lines for x in g.cells[a.ceiling]}
    ids = {s: {r["example_id"] for r in lines} for s, lines in mine.items()}
    out: dict[str, Estimate] = {}
    for other in others:
        for model, task, size in other.groups():
            if (model, task) != (g.model, g.task):
                continue
            for c in other.conditions:
                cells = [other.cells.get(CellKey(model, task, s, c, size)) for s in mine]
                if not all(x is not None and x.ok and x.artifact is not None and x.artifact.trainable_params > 0
                           and {r["example_id"] for r in x.lines} == ids[x.seed] for x in cells):
                    continue
                paired = analyze_records({"ceiling": mine, "other": {x.seed: x.lines for x in cells if x}},
                                         base="ceiling", n_boot=n_boot, seed=a.seed, deciding=a.deciding)
                stats = paired.metrics[a.deciding].conditions["other"]
                if stats.clear > 0 and stats.diff is not None:
                    where = f"run {other.run_id}" + (f", train {size}" if size is not None else "")
                    out[f"{c} ({where})"] = stats.diff
    return out


# --- the headline --------------------------------------------------------------------------------------------------
# a headline row's flags: Flag.kind
FLAG_KINDS = ("identical", "same-as-base", "metric-flag", "metric-says", "one-seed", "family")


@dataclass(frozen=True)
class Flag:
    """What qualifies a row: ``kind`` from ``FLAG_KINDS``; "identical": ``n`` conditions share the row;
    "same-as-base": ``value`` is the base; "metric-flag": ``metric`` is ``value`` (floor, saturated, chance);
    "metric-says": the rules give ``value`` on the ``metric`` that does not decide; "family": Holm over ``n``."""

    kind: str
    metric: str | None = None
    value: str | None = None
    n: int | None = None


@dataclass(frozen=True)
class BeatenCeiling:
    """Conditions clearly above the designated ceiling, by how much (condition minus ceiling)."""

    ceiling: str
    by: dict[str, Estimate]


@dataclass(frozen=True)
class MetricsDisagree:
    """Text prompts whose verdict on another metric differs: (text, its label on ``metric``, other metric, label)."""

    metric: str
    splits: list[tuple[str, str, str, str]]


@dataclass(frozen=True)
class NoiseFloor:
    """The spread of a `paraphrases` condition's instructions' gains over the base on test."""

    parent: str
    n: int
    lo: Estimate
    lo_name: str
    hi: Estimate
    hi_name: str
    median: Estimate
    metric: str


@dataclass(frozen=True)
class TwoSeeds:
    """The run has two seeds: the t-interval over them, which the verdicts use, has one degree of freedom."""


@dataclass(frozen=True)
class OneSeed:
    """The run has one seed: verdicts hold for its one fit of each condition."""


@dataclass(frozen=True)
class Multiplicity:
    """``family`` distinct text prompts tested on ``metric``, Holm-corrected at ``alpha``."""

    family: int
    metric: str
    alpha: float


@dataclass(frozen=True)
class CannotRank:
    """A metric that does not decide flags some prompts: flag -> the conditions it flags."""

    metric: str
    by_flag: dict[str, list[str]]
    deciding: str


@dataclass(frozen=True)
class Overfitting:
    """The chosen trials whose curves warn of overfitting or of a first-evaluation choice: (condition, seed,
    warnings)."""

    flagged: list[tuple[str, int, list[FitWarning]]]


@dataclass(frozen=True)
class StillImproving:
    """The chosen trials still improving when their budget ended: (condition, its role, seed, the warning). A
    ceiling that could go higher makes R overstated; a text search that could go further, its gain understated."""

    flagged: list[tuple[str, str | None, int, FitWarning]]


@dataclass(frozen=True)
class NotAssessable:
    """The chosen trials whose logs predate per-example dev losses: (condition, seed); no overfitting verdict."""

    trials: list[tuple[str, int]]


Note = (BeatenCeiling | MetricsDisagree | NoiseFloor | OneSeed | TwoSeeds | Multiplicity | CannotRank | Overfitting
        | StillImproving | NotAssessable)


@dataclass
class Row:
    """One distinct text prompt: the conditions that share it, and what the run says about it."""

    texts: list[str]  # the first is the row's name; the others scored identically on every example
    verdict: str | None  # None: no verdict (the condition failed)
    outcome: Outcome | None  # the deciding metric's outcome (None: no verdict, and ``no_verdict`` says why)
    metric: str  # the deciding metric ("" without a verdict)
    r: dict[str, Any] | None  # value, lo, hi, method, p, p_adjusted (deciding metric)
    delta: Estimate | None  # text - base on the deciding metric
    delta_clear: int = 0
    cost: Cost = field(default_factory=Cost)
    flags: list[Flag] = field(default_factory=list)
    n_needed: int | None = None
    no_verdict: NoVerdict | None = None
    seeds_needed: int | None = None

    @property
    def name(self) -> str:
        return " = ".join(self.texts)


@dataclass
class Headline:
    model: str
    task: str
    metric: str | None  # the deciding metric
    rows: list[Row]
    notes: list[Note]
    family: int = 0
    ceiling_gain: Estimate | None = None
    beaten_by: list[str] = field(default_factory=list)
    n_boot: int = 0
    no_verdict: NoVerdict | None = None  # why no row has a verdict
    base: str | None = None
    ceiling: str | None = None
    gain_clear: bool | None = None  # the ceiling's gain is clearly positive
    ceiling_flag: str | None = None  # the ceiling's flag on the deciding metric
    ceiling_cost: Cost = field(default_factory=Cost)
    per_token: bool = False


def headline(run: Run, g: Group) -> Headline:
    """The first screen for one model × task."""
    a = g.analysis
    if a is None or g.no_r is not None or a.ceiling is None:
        why = g.no_r or g.stats_error or NoVerdict("no-statistics")
        rows = [Row([t], None, None, "", None, None, cost=g.costs.get(t, Cost()), no_verdict=why) for t in run.texts]
        return Headline(g.model, g.task, None, rows, [], no_verdict=why, per_token=g.per_token)
    metric = a.deciding
    m = a.metrics[metric]
    gain = m.conditions[a.ceiling].diff
    assert gain is not None
    notes: list[Note] = []
    beaten = [c for c in g.usable if c in m.conditions and m.conditions[c].beats_ceiling]
    vs = {c: m.conditions[c].vs_ceiling for c in beaten}
    by = {**{c: e for c, e in vs.items() if e is not None}, **g.elsewhere}
    beaten += list(g.elsewhere)
    if by:
        notes.append(BeatenCeiling(a.ceiling, by))

    rows: list[Row] = []
    split: list[tuple[str, str, str, str]] = []  # where the metrics disagree
    for t in run.texts:
        if t not in g.usable:
            rows.append(Row([t], None, None, "", None, None, cost=g.costs.get(t, Cost()),
                            no_verdict=NoVerdict("cell-failed", t, tuple(g.cells[t]))))
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
            "p_adjusted": r.p_adjusted, "p_bound": r.decision_p_bound, "p_adjusted_bound": r.p_adjusted_bound}
        flags = []
        if twin == a.base:
            flags.append(Flag("same-as-base", value=a.base))
        for name, mm in a.metrics.items():
            if mm.conditions[t].flag:
                flags.append(Flag("metric-flag", metric=name, value=mm.conditions[t].flag))
        for name, other in v.by_metric.items():  # the same rules on the metric that does not decide, when they differ
            if name != v.metric and other not in (v.label, "uninformative", "inconclusive"):
                flags.append(Flag("metric-says", metric=name, value=other))
                split.append((t, v.label, name, other))
        rows.append(Row([t], v.label, v.outcome, v.metric, r_json, c.diff, c.clear, g.costs.get(t, Cost()), flags,
                        v.outcome.n_needed, seeds_needed=v.outcome.seeds_needed))
    for row in rows:  # identical prompts share one row; their costs may differ
        if len(row.texts) > 1:
            row.flags.insert(0, Flag("identical", n=len(row.texts)))
    if split:
        notes.append(MetricsDisagree(metric, split))
    notes += _noise_floors(run, g, metric)
    family = len(m.family)
    if a.n_seeds == 1:
        notes.append(OneSeed())
        for row in rows:
            row.flags.append(Flag("one-seed"))
    elif a.n_seeds == 2:
        notes.append(TwoSeeds())
    if family > 1:
        notes.append(Multiplicity(family, metric, 1 - a.confidence))
        for row in rows:
            if row.r is not None and row.r.get("p_adjusted") is not None:
                row.flags.append(Flag("family", n=family))
    for name in (n for n in a.metrics if n != metric):
        flagged = [(t, a.metrics[name].conditions[t].flag) for t in dict.fromkeys([a.ceiling, *a.texts])
                   if t in a.metrics[name].conditions and a.metrics[name].conditions[t].flag]
        if flagged:
            by_flag: dict[str, list[str]] = {}
            for t, f in flagged:
                assert f is not None
                by_flag.setdefault(f, []).append(t)
            notes.append(CannotRank(name, by_flag, metric))
    notes += fit_notes(run, g)
    return Headline(g.model, g.task, metric, rows, notes, family, gain, beaten, a.n_boot, base=a.base,
                    ceiling=a.ceiling, gain_clear=m.ceiling_gain_clear, ceiling_flag=m.conditions[a.ceiling].flag,
                    ceiling_cost=g.costs.get(a.ceiling, Cost()), per_token=g.per_token)


def _noise_floors(run: Run, g: Group, metric: str) -> list[Note]:
    """For each `paraphrases` condition: the spread of its paraphrases' gains on test, each scored in its own cell."""
    a = g.analysis
    assert a is not None
    conditions = run.config.get("conditions") or {}
    out: list[Note] = []
    for parent in dict.fromkeys(c.get("variant_of") for c in conditions.values() if c.get("variant_of")):
        variants = [c for c, spec in conditions.items() if spec.get("variant_of") == parent and c in g.usable]
        diffs = sorted(((d, c) for c in variants if (d := a.metrics[metric].conditions[c].diff) is not None),
                       key=lambda d: d[0].value)
        if len(diffs) < 2:
            continue
        (lo, lo_name), (hi, hi_name) = diffs[0], diffs[-1]
        k = len(diffs)
        mid = diffs[k // 2][0] if k % 2 else _median_gain(g, metric, diffs[k // 2 - 1][1], diffs[k // 2][1])
        out.append(NoiseFloor(parent, k, lo, lo_name, hi, hi_name, mid, metric))
    return out


def _median_gain(g: Group, metric: str, left: str, right: str) -> Estimate:
    """The median gain of an even count: the paired difference from the base of the mean of the two middle
    conditions' per-example scores, bootstrapped together (its interval is that of the median shown)."""
    a = g.analysis
    assert a is not None
    m = score_matrices({c: {x.seed: x.lines for x in g.cells[c]} for c in (a.base, left, right)})[metric]
    both = analyze({metric: {a.base: m[a.base], "median": (m[left] + m[right]) / 2}}, base=a.base,
                   n_boot=a.n_boot, seed=a.seed, confidence=a.confidence)
    gain = both.metrics[metric].conditions["median"].diff
    assert gain is not None
    return gain


def fit_notes(run: Run, g: Group) -> list[Note]:
    """The headline's word on the chosen trials' curves (details in their own section): overfitting, still
    improving, and logs too old to tell."""
    chosen = [(c, seed, x) for c, per_seed in overfitting(g).items() for seed, checks in per_seed for x in checks
              if x.winner]
    over = [(c, seed, ws) for c, seed, x in chosen
            if (ws := [w for w in x.warnings if w.kind in ("first-evaluation", "dev-rises")])]
    still = [(c, run.role(c), seed, w) for c, seed, x in chosen for w in x.warnings if w.kind == "still-improving"]
    old = [(c, seed) for c, seed, x in chosen if not x.assessable and not x.has("still-improving")]
    return ([Overfitting(over)] if over else []) + ([StillImproving(still)] if still else []) \
        + ([NotAssessable(old)] if old else [])


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


@dataclass(frozen=True)
class Reach:
    """Where a condition's gain first reaches ``REACH`` of its largest-size gain: ``kind`` "reached" (at ``size``,
    with its ``gain`` and its ``share`` of the largest size's gain; None at the largest size itself), "no-largest"
    (the condition or the base failed at the largest size), "no-gain" (``top``: no gain there), "no-train-data" (it
    read no train example at any size, so its curve is flat by construction) or "not-reached"."""

    kind: str
    size: int | None = None
    gain: Estimate | None = None
    share: RatioStats | None = None
    top: Estimate | None = None
    largest: int | None = None


@dataclass
class Curve:
    """Every condition of one model × task across its train sizes."""

    model: str
    task: str
    metric: str
    sizes: list[int]
    groups: list[Group]
    points: dict[str, list[CurvePoint]]
    reach: dict[str, Reach]  # condition -> where it reaches REACH of its largest-size gain
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
            reach: dict[str, Reach] = {}
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


def _reads_train(run: Run, cell: Cell) -> bool:
    """Whether a cell's fit read a train example, by what the harness recorded (evidence.json ``fit_reads``); a
    cell without that record, or with scorer calls that name no example, is taken to have read one."""
    ev = cell.evidence
    whole = run.splits.get((cell.key.task, cell.key.seed))
    if ev is None or whole is None or ev.fit_bare_calls:
        return True
    return bool(set(whole.ids["train"]) & set(ev.fit_reads))


def _reach(run: Run, largest: Group, gs: Sequence[Group], c: str, pts: list[CurvePoint], metric: str,
           n_boot: int) -> Reach:
    """The smallest train size whose point estimate of the gain reaches ``REACH`` of the largest size's, with the
    gain's interval there and the share of the largest-size gain it is (paired bootstrap over the test examples)."""
    top = pts[-1].gain
    base_cells = largest.cells.get(run.base or "", [])
    if top is None or not base_cells or not all(x.ok for x in base_cells):
        return Reach("no-largest")
    if not any(_reads_train(run, x) for g in gs for x in g.cells.get(c, [])):
        return Reach("no-train-data", top=top)  # the same at every size by construction: a share of 1.00 says nothing
    if top.value <= 0:
        return Reach("no-gain", top=top)
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
        return Reach("reached", p.size, p.gain, share, top, pts[-1].size)
    return Reach("not-reached")  # unreachable: the largest size reaches its own gain


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


# --- overfitting and still improving --------------------------------------------------------------------------------
FIT_ALPHA = 0.05  # one-sided: the chance a curve whose dev loss is noise around a constant is flagged as overfitting


@dataclass(frozen=True)
class FitWarning:
    """What a trial's curves warn of, with the numbers behind it. ``kind``:

    - "first-evaluation": the dev-selected ``step`` is the first evaluation (nothing learned generalised to dev);
    - "dev-rises": overfitting. From the selected ``step`` to the last evaluation (``last_step``) the mean dev loss
      rises ``dev_from`` -> ``dev_to``, by ``z`` standard errors of the paired per-example difference, beyond
      ``threshold``; and the train loss falls ``train_from`` -> ``train_to`` beyond its minibatch noise;
    - "still-improving": the selected step is the last evaluation (``last_step`` = ``step``, training ended by
      ``stopped``), or the last evaluation's dev loss is below the one before beyond noise (``z``) and not clearly
      above the selected one: a longer budget may do better.
    """

    kind: str
    step: int
    train_from: float | None = None
    train_to: float | None = None
    dev_from: float | None = None
    dev_to: float | None = None
    last_step: int | None = None
    z: float | None = None
    threshold: float | None = None
    stopped: str | None = None


@dataclass
class FitCheck:
    """One trial's train and dev curves (log.json): the dev-selected step, the losses there, and the warnings.
    ``assessable`` is False for a log written before per-example dev losses were kept: its dev rise has no noise
    scale, so it gets no overfitting verdict either way."""

    label: str  # the trial (lr, init, length) or "search"
    winner: bool
    selected: int | None
    evaluations: int
    train_loss: float | None  # mean train loss over the steps up to the selected evaluation
    dev_loss: float | None
    warnings: list[FitWarning]
    assessable: bool = True

    @property
    def gap(self) -> float | None:
        return None if self.train_loss is None or self.dev_loss is None else self.dev_loss - self.train_loss

    def has(self, kind: str) -> bool:
        return any(w.kind == kind for w in self.warnings)


def fit_checks(log: dict[str, Any] | None) -> list[FitCheck]:
    """Every trial of a trained or searched condition's log with train and dev curves: prompt training's
    ``trials`` (each with its curve; ``winner`` marks the chosen one), or a search's single ``curves``."""
    if not log or not isinstance(log.get("curves"), list):
        return []
    if isinstance(log.get("trials"), list) and all(isinstance(t, dict) for t in log["trials"]):
        winner = log.get("winner") or {}
        trials = [(", ".join(f"{k} {t.get(k)}" for k in ("length", "lr", "init") if t.get(k) is not None),
                   t.get("curve") or [], t.get("best_step"), t.get("status", "ok"),
                   all(t.get(k) == winner.get(k) for k in ("length", "lr", "init")), t.get("stopped"))
                  for t in log["trials"]]
    else:
        trials = [("search", log["curves"], log.get("best_step"), "ok", True, log.get("stopped"))]
    return [_fit_check(*t) for t in trials if t[3] == "ok"]


@dataclass
class _Evaluation:
    step: int
    dev_loss: float
    dev_losses: list[float] | None  # each dev example's gold NLL (None: not logged)
    window: list[float]  # the train losses of the steps since the evaluation before


def _fit_check(label: str, curve: list[dict[str, Any]], selected: Any, status: str, winner: bool,
               stopped: str | None = None) -> FitCheck:
    evals: list[_Evaluation] = []
    seen: set[int] = set()  # a step's train loss is logged on its step point and again on its evaluation
    since: list[float] = []
    for p in curve:
        step = p.get("step")
        if not is_number(step):
            continue
        if is_number(p.get("train_loss")) and int(step) not in seen:
            seen.add(int(step))
            since.append(float(p["train_loss"]))
        if is_number(p.get("dev_loss")):
            losses = p.get("dev_losses")
            evals.append(_Evaluation(int(step), float(p["dev_loss"]),
                                     [float(x) for x in losses] if isinstance(losses, list) and losses else None,
                                     since))
            since = []
    check = FitCheck(label, winner, int(selected) if is_number(selected) else None, len(evals), None, None, [])
    at = next((i for i, e in enumerate(evals) if e.step == check.selected), None)
    if at is None or len(evals) < 2:
        return check
    chosen, last = evals[at], evals[-1]
    check.dev_loss = chosen.dev_loss
    check.train_loss = statistics.fmean(chosen.window) if chosen.window else None
    # the per-example dev losses give the rise a noise scale: a log written before they were kept gets no verdict
    # (a window of one train step gives the fall none either, and ``_falls`` then sees none)
    check.assessable = all(e.dev_losses is not None for e in evals)
    if at == 0:
        check.warnings.append(FitWarning("first-evaluation", chosen.step))
    if at == len(evals) - 1:
        check.warnings.append(FitWarning("still-improving", chosen.step, dev_to=chosen.dev_loss,
                                         last_step=last.step, stopped=stopped))
        return check
    if not check.assessable:
        return check
    falling = _paired_z(last.dev_losses, evals[-2].dev_losses)  # type: ignore[arg-type]
    rise = _paired_z(last.dev_losses, chosen.dev_losses)  # type: ignore[arg-type]
    # still falling at the end, and not clearly above the chosen step: a curve coming back down from a bump well
    # above its best is not one that a longer budget would be expected to take below it
    if falling is not None and falling < -2 and rise is not None and rise <= 2:
        check.warnings.append(FitWarning("still-improving", chosen.step, dev_from=evals[-2].dev_loss,
                                         dev_to=last.dev_loss, last_step=last.step, z=falling, threshold=-2.0,
                                         stopped=stopped))
    threshold = rise_threshold(len(evals))
    # the train fall: from the window that ends at the chosen step (the first after it, when that is step 0)
    before = chosen.window or evals[at + 1].window
    if rise is not None and rise > threshold and _falls(before, last.window):
        check.warnings.append(FitWarning("dev-rises", chosen.step, statistics.fmean(before),
                                         statistics.fmean(last.window), chosen.dev_loss, last.dev_loss, last.step,
                                         rise, threshold))
    return check


def rise_threshold(evaluations: int, alpha: float = FIT_ALPHA) -> float:
    """How many standard errors the dev loss must rise from the chosen evaluation to the last one to count.

    Both ends are chosen by the data: the chosen evaluation is the minimum, so its dev loss is low by selection,
    and the last is where early stopping, after evaluations that did not improve, ended the curve. On curves whose
    dev loss is only noise, a rise beyond two standard errors from the minimum to the end is far more common than
    5%. The rise between the two exceeds c standard errors only if the rise of some one pair of the ``evaluations``
    does, so testing each of their k(k-1)/2 pairs at ``alpha`` over that count (Bonferroni) bounds the false flags
    at ``alpha`` wherever the minimum and the end fall. (Over the other evaluations alone, k - 1, it is not enough:
    tests/test_fit_flags.py's simulation fires 5.3% of the time with patience 3.)"""
    pairs = evaluations * (evaluations - 1) // 2
    return float(ndtri(1 - alpha / max(1, pairs)))


def _paired_z(later: list[float], earlier: list[float]) -> float | None:
    """The mean per-example difference later − earlier over its standard error (None: not defined)."""
    if len(later) != len(earlier) or len(later) < 2:
        return None
    d = [a - b for a, b in zip(later, earlier, strict=True)]
    se = statistics.stdev(d) / math.sqrt(len(d))
    mean = statistics.fmean(d)
    if se == 0:
        return None if mean == 0 else math.copysign(math.inf, mean)
    return mean / se


def _falls(before: list[float], later: list[float]) -> bool:
    """Whether the later window's mean train loss is below the earlier one's by more than minibatch noise: two
    standard errors of the difference of the means (each step's loss is on its own minibatch). Windows of fewer
    than two steps cannot tell a fall from noise, so they show none."""
    if len(before) < 2 or len(later) < 2:
        return False
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


# --- a suite's leaderboard -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BoardCell:
    """One text condition on one task: R on the deciding metric with its interval and verdict label, or why not."""

    r: float | None
    ci: Interval | None
    label: str | None  # the verdict (``stats.LABELS``); None without R
    no_r: str | None  # "no-gap" (the ceiling not clearly above the base, or itself uninformative), or a NoVerdict kind


@dataclass(frozen=True)
class BoardRow:
    name: str
    cells: dict[str, BoardCell]  # task -> its cell
    suite: SuiteRow  # mean R over the tasks with a gap, its interval, rank and rank interval
    cost: Cost  # averaged over the tasks (each a mean over seeds)
    reused: int  # of its cells, how many were copied from another run
    above_reference: int | None = None  # tasks where it is clearly above the suite's reference; None: it is it


@dataclass(frozen=True)
class BoardThreeWay:
    """Prompt, soft prompt or fine-tune? across a suite's tasks: each row's mean R against each task's best trained
    prompt (``vs_prompt``) and best weight training (``vs_weights``, whose rows also hold ``PROMPT_ROLE``: the
    trained prompt's share), each averaged over the tasks where that side's gain is clear; which condition each
    task's side is (``prompts``, ``weights``)."""

    prompts: dict[str, str]
    weights: dict[str, str]
    vs_prompt: SuiteStats
    vs_weights: SuiteStats


@dataclass(frozen=True)
class Board:
    """A suite's leaderboard as data: rows are text conditions (rank order), columns the run's tasks."""

    model: str
    metric: str
    base: str
    ceilings: dict[str, str | None]  # task -> its ceiling (``choose_ceiling``); None where no candidate could be
    tasks: list[str]
    gap: dict[str, bool]
    rows: list[BoardRow]
    stats: SuiteStats
    reference: str | None = None  # the readable prompt every row is compared with, task by task ([suite] reference)
    three_way: BoardThreeWay | None = None  # where the suite's ceiling candidates train both prompts and weights


CEILING_ROLE = "(ceiling)"  # a task's ceiling among a leaderboard's per-task scores
PROMPT_ROLE, WEIGHTS_ROLE = "(trained prompt)", "(weight training)"  # a task's best of each kind (``ThreeWay``)


def board(run: Run, groups: Sequence[Group], n_boot: int, reference: str | None = None) -> Board:
    """The leaderboard of ``run`` (one model, its [ratio] base, ceiling and texts), from the per-task ``groups``
    (``analyze_groups``) and ``stats.suite_means`` on the deciding metric's per-example scores. ``reference``: a
    condition (the hand-written prompt) each row is compared with on every task, by the same rules that make a
    difference from the base clear (``stats.analyze``: paired interval, McNemar for accuracy, the seeds' t)."""
    if len(run.models) != 1:
        raise UserError(f"{run.dir}: a leaderboard ranks conditions on one model; this run has {len(run.models)}")
    if run.base is None or not run.ceilings or not run.texts:
        raise UserError(f"{run.dir}: a leaderboard needs [ratio] base, ceiling and texts in the run's config")
    metric = (run.config.get("ratio") or {}).get("metric") or "loglik"
    per_task = {g.task: g for g in groups if g.train_size is None}
    gap: dict[str, bool] = {}
    scores: dict[str, dict[str, Any]] = {}
    cells: dict[str, dict[str, BoardCell]] = {t: {} for t in run.texts}
    ceilings = {task: g.ceiling.name if g.ceiling is not None else None for task, g in per_task.items()}
    for task, g in per_task.items():
        m = g.analysis.metrics.get(metric) if g.analysis is not None else None
        # a gap to recover: the ceiling clearly above the base, and itself informative on the metric (not at the
        # floor, saturated or no better than chance: then every R of the task is "uninformative", as its report says)
        gap[task] = bool(m is not None and m.ceiling_gain_clear and not m.conditions[g.analysis.ceiling].flag)
        usable = set(g.usable)
        if gap[task] and {g.analysis.base, g.analysis.ceiling} <= usable:
            records = {c: {x.seed: x.lines for x in g.cells[c]} for c in [*run.texts, run.base] if c in usable}
            # each task's own ceiling, under one role name (no condition can be named so: ``names.check_name``)
            records[CEILING_ROLE] = {x.seed: x.lines for x in g.cells[g.analysis.ceiling]}
            scores[task] = score_matrices(records)[metric]
        for t in run.texts:
            ratio = m.ratios.get(t) if m is not None and gap[task] else None
            if ratio is not None and ratio.value is not None:
                cells[t][task] = BoardCell(ratio.value, ratio.ci, verdict(g.analysis, t).label, None)
            else:
                why = (g.no_r.kind if g.no_r is not None else "no-gap" if not gap[task]
                       else "cell-failed" if t not in usable else "no-statistics")
                cells[t][task] = BoardCell(None, None, None, why)
    # a condition failed on some task with a gap has no mean over the tasks: it is listed without one
    texts = [t for t in run.texts if all(t in s for s in scores.values())]
    empty = SuiteStats([], [], [], n_boot, 0.95, 0)
    stats = suite_means(scores, base=run.base, ceiling=CEILING_ROLE, texts=texts, gap={t: True for t in scores},
                        n_boot=n_boot) if scores and texts else empty
    stats = dataclasses.replace(stats, no_gap=[t for t in per_task if not gap[t]])
    by_name = {r.name: r for r in stats.rows}
    rows = []
    for t in run.texts:
        srow = by_name.get(t, SuiteRow(t, None, None, None, None, {}))
        costs = [per_task[k].costs.get(t) for k in per_task]
        cost = Cost.averaged([c for c in costs if c is not None])
        reused = sum(1 for k in per_task for x in per_task[k].cells.get(t, [])
                     if x.record is not None and x.record.reused_from)
        above = None
        if reference is not None and t != reference:
            above = sum(_clearly_above(g, t, reference, metric, n_boot) for g in per_task.values())
        rows.append(BoardRow(t, cells[t], srow, cost, reused, above))
    rows.sort(key=lambda r: (r.suite.rank is None, r.suite.rank or 0, r.name))
    return Board(run.models[0], metric, run.base, ceilings, list(per_task), gap, rows, stats, reference,
                 _board_three_way(run, per_task, metric, n_boot))


def _board_three_way(run: Run, per_task: dict[str, Group], metric: str, n_boot: int) -> BoardThreeWay | None:
    """``BoardThreeWay`` over the tasks whose group has a ``ThreeWay`` on the board's metric; None without any."""
    found = {task: g.three_way for task, g in per_task.items() if g.three_way is not None
             and g.three_way.metric == metric}
    if not found or run.base is None:
        return None
    scores: dict[str, Any] = {}
    for task, t in found.items():
        g = per_task[task]
        records = {c: {x.seed: x.lines for x in g.cells[c]} for c in [*run.texts, run.base] if c in g.usable}
        for role, c in ((PROMPT_ROLE, t.prompt.name), (WEIGHTS_ROLE, t.weights.name)):
            records[role] = {x.seed: x.lines for x in g.cells[str(c)]}
        scores[task] = score_matrices(records)[metric]
    texts = [x for x in run.texts if all(x in sc for sc in scores.values())]
    prompts = {task: str(t.prompt.name) for task, t in found.items()}
    weights = {task: str(t.weights.name) for task, t in found.items()}

    def means(ceiling: str, names: list[str], clear: dict[str, bool]) -> SuiteStats:
        return suite_means(scores, base=str(run.base), ceiling=ceiling, texts=names, gap=clear, n_boot=n_boot)

    return BoardThreeWay(prompts, weights,
                         means(PROMPT_ROLE, texts, {k: found[k].clear[prompts[k]] for k in found}) if texts else
                         SuiteStats([], [], list(found), n_boot, 0.95, 0),
                         means(WEIGHTS_ROLE, [*texts, PROMPT_ROLE], {k: found[k].clear[weights[k]] for k in found}))


def _clearly_above(g: Group, text: str, reference: str, metric: str, n_boot: int) -> bool:
    """Whether ``text`` is clearly above ``reference`` on ``metric`` in this task (both usable in every seed)."""
    if text not in g.usable or reference not in g.usable:
        return False
    records = {c: {x.seed: x.lines for x in g.cells[c]} for c in (reference, text)}
    a = analyze(score_matrices(records), base=reference, texts=[text], n_boot=n_boot, deciding=metric)
    return a.metrics[metric].conditions[text].clear > 0
