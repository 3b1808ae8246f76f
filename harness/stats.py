"""Paired statistics over conditions scored on the same test examples: means, differences, the gap ratio R, verdicts,
as numbers and labels only (``harness.wording`` puts them into words).

Inputs
------
For one (model, task), per metric, per condition, a score matrix of shape ``(n_seeds, n_examples)``: row ``s`` holds
the per-example values for seed ``s``. Within a seed every condition is aligned on the same examples in the same
order; different seeds may use different test splits, but every seed must have the same number of examples (every
promptgap task fixes its split sizes, so this holds when all seeds are scored with the same ``--limit``). A 1-D array
is read as one seed. ``score_matrices`` builds these matrices from per-example records (eval JSONL lines) and checks
the alignment. Two metrics, both "higher is better":

* ``accuracy``: the per-example ``correct`` as 0/1;
* ``loglik``: the per-example gold log-likelihood, ``-gold_nll`` (nats; for continuation tasks per token).

Bootstrap
---------
One paired bootstrap serves every number: each replicate draws ONE set of example indices and applies it to every
condition and every metric at once, so differences and R keep their pairing. With several seeds it is hierarchical:
draw ``n_seeds`` seeds with replacement, then ``n_examples`` examples with replacement within each drawn seed, again
shared by all conditions. A replicate's statistic is the mean over all drawn (seed, example) cells, which (equal seed
sizes) is the mean of the drawn seeds' means. Point estimates are the plain means over all seeds and examples.

Intervals (two-sided, ``confidence`` = 0.95 by default): the percentile interval is always reported
(``Estimate.percentile``). The interval used for decisions (``Estimate.ci``) is BCa (bias-corrected and accelerated;
bias from the mid-rank of the estimate among the replicates, acceleration from the jackknife over examples, as
scipy.stats.bootstrap) when there is one seed and BCa is defined; otherwise it is the percentile interval with
``bca_skipped`` saying why (several seeds, all replicates equal, jackknife variance 0, ...).

The gap ratio
-------------
``R = (mean_text - mean_base) / (mean_ceiling - mean_base)``, from the per-example differences to the base. R is only
reported when the ceiling's gain is clearly positive, i.e. the lower bound of its difference-from-base ``ci`` is
> 0; otherwise ``RatioStats.value`` is None and ``undefined`` holds the numbers that say why. Replicates whose
ceiling gain is exactly 0 have no ratio; they are left out of R's interval and counted in ``RatioStats.n_excluded``.
Replicates with a negative ceiling gain are kept (they widen the interval, as they should).

Proportions, seeds, multiplicity
--------------------------------
Accuracy means get Wilson score intervals on the pooled counts (never [0, 0] at 0/n). With several seeds, every
difference and every R also gets a t-interval over the per-seed values (``SeedT``); decisions use the wider of it
and the bootstrap interval. R's test of 0.5 has a p-value from the same bootstrap and method as its interval; the
distinct text conditions judged on a metric are one family, Holm-corrected (statsmodels' ``multipletests``).

McNemar
-------
For accuracy, each non-base condition against the base: ``b`` = examples the condition gets right and the base gets
wrong, ``c`` = the reverse; p is the two-sided exact binomial test of ``b`` out of ``b + c`` at 0.5 (1.0 when there
are no discordant pairs). With several seeds the discordant counts are summed over seeds (each (seed, example) cell is
one pair) and the per-seed tests are reported too.

Caveats a reader should know
----------------------------
* Seeds' test splits may share examples. The hierarchical bootstrap treats the seeds' examples as independent draws,
  so with heavily overlapping splits its intervals are too narrow for the example-level part of the variance, and the
  pooled McNemar counts a shared example once per seed (its p is then optimistic). The per-seed numbers are exact.
* With few seeds (2-3), resampling seeds says little about between-seed variance; read the per-seed spread too.

The verdict rules are in ``verdict``'s docstring; ``ConditionStats.clear`` says when a difference is clear (for
accuracy the interval and the exact McNemar test must agree), ``ConditionStats.flag`` when a metric cannot inform.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.stats
from scipy.special import ndtr, ndtri
from scipy.stats import binomtest

from harness.errors import UserError

METRICS = ("accuracy", "loglik")
DEFAULT_N_BOOT = 10_000
RECOVERY_THRESHOLD = 0.5  # "the text recovers most of the gap" means R > this, with confidence
# cells of the per-chunk count matrix: bounds memory (~16 MB of float64) whatever n_boot and the data size are
_CHUNK_CELLS = 2_000_000
# spreads this small relative to the estimate are float rounding, not sampling variation
_TINY = 1e-12


# --- results ---------------------------------------------------------------------------------------------------------
# why BCa was not used for a bootstrap interval (the percentile interval was): BcaSkip.kind
BCA_SKIPS = ("several-seeds", "equal-replicates", "no-jackknife", "jackknife-undefined", "jackknife-zero",
             "outside-distribution", "acceleration", "degenerate-levels")


@dataclass(frozen=True)
class BcaSkip:
    """Why an interval is the percentile one and not BCa: ``kind`` from ``BCA_SKIPS``; ``acceleration`` is the value
    that was too large (kind "acceleration")."""

    kind: str
    acceleration: float | None = None


@dataclass(frozen=True)
class Interval:
    """A two-sided confidence interval; ``method`` is "bca", "percentile", "wilson" (a proportion) or "t" (over
    seeds); ``bca_skipped`` says why BCa was not used."""

    lo: float
    hi: float
    method: str
    bca_skipped: BcaSkip | None = None

    def contains(self, x: float) -> bool:
        return self.lo <= x <= self.hi

    @property
    def width(self) -> float:
        return self.hi - self.lo


@dataclass(frozen=True)
class Estimate:
    """A point estimate with its decision interval (BCa where stable) and its percentile interval (always)."""

    value: float
    ci: Interval
    percentile: Interval


@dataclass(frozen=True)
class SeedSpread:
    """Per-seed values of a mean, and their spread (sample std, ddof=1)."""

    per_seed: list[float]
    std: float
    min: float
    max: float


@dataclass(frozen=True)
class SeedT:
    """A t-interval over per-seed values (two or more seeds): the between-seed spread that a hierarchical bootstrap
    over a few seeds underestimates. ``p`` is the two-sided one-sample t-test against ``null``."""

    per_seed: list[float]
    value: float
    ci: Interval
    null: float
    p: float


@dataclass(frozen=True)
class McNemarSeed:
    seed_index: int  # the row of the score matrices, not the seed's value
    b: int
    c: int
    p: float


@dataclass(frozen=True)
class McNemar:
    """Exact McNemar test against the base: ``b`` = condition right & base wrong, ``c`` = condition wrong & base right.

    ``b``, ``c`` and ``p`` pool all seeds; ``per_seed`` has each seed's own test.
    """

    b: int
    c: int
    p: float
    per_seed: list[McNemarSeed]


@dataclass(frozen=True)
class ConditionStats:
    """One condition under one metric. ``diff`` is condition minus base (None for the base itself).

    ``clear`` is +1 when the condition is clearly above the base, -1 clearly below, 0 otherwise: the difference's
    interval excludes 0, and for accuracy the exact McNemar test agrees (p < 1 - confidence), and with several seeds
    the t-interval over seeds excludes 0 too. ``flag`` names a metric that cannot inform: "floor" (0 on every
    example), "saturated" (1 on every example) or "chance" (not clearly better than chance: 1/k for accuracy,
    -ln k for the gold log-likelihood of k choices).
    """

    name: str
    mean: Estimate
    diff: Estimate | None = None
    seeds: SeedSpread | None = None  # per-seed means, only with several seeds
    diff_seeds: SeedSpread | None = None  # per-seed differences from the base, only with several seeds
    mcnemar: McNemar | None = None  # accuracy only, non-base conditions
    diff_t: SeedT | None = None  # t-interval of the per-seed differences from the base, only with several seeds
    clear: int = 0
    flag: str | None = None
    vs_ceiling: Estimate | None = None  # condition minus ceiling, for conditions other than base and ceiling
    beats_ceiling: bool = False  # clearly above the ceiling, by the same rule as ``clear``


@dataclass(frozen=True)
class Undefined:
    """Why R is undefined: the ceiling's gain over the base, ``gain``, is not clearly positive. When its interval
    lies above 0 another test disagreed: the exact McNemar test (``mcnemar_p``) or the t-interval over seeds
    (``seed_t``)."""

    gain: Estimate
    mcnemar_p: float | None = None
    seed_t: Interval | None = None


@dataclass(frozen=True)
class RatioStats:
    """R for one text condition; ``value`` is None (and ``undefined`` set) when R is undefined.

    ``p`` tests R = 0.5 (two-sided) by the same bootstrap and method as ``ci``, so ``ci`` excludes 0.5 exactly when
    ``p`` < 1 - confidence. With several seeds ``seed_t`` is the t-interval over per-seed R; ``decision`` is the
    wider of the two intervals and ``decision_p`` the larger p. ``p_adjusted`` is ``decision_p`` after Holm's
    correction over the family of distinct text conditions judged on this metric (None outside the family).
    """

    text: str
    value: float | None
    ci: Interval | None
    percentile: Interval | None
    undefined: Undefined | None
    n_excluded: int  # bootstrap replicates with a ceiling gain of exactly 0, left out of the intervals
    p: float | None = None
    seed_t: SeedT | None = None
    decision: Interval | None = None
    decision_p: float | None = None
    p_adjusted: float | None = None
    # True where the p beside it is the bootstrap's resolution, 1 / n_boot, not a measured value: no replicate (or
    # less than one's worth, after BCa's map) lies beyond 0.5, so the p is below it. Holm's adjustment of such a p is
    # a bound too
    p_bound: bool = False
    decision_p_bound: bool = False
    p_adjusted_bound: bool = False


@dataclass(frozen=True)
class MetricAnalysis:
    metric: str
    conditions: dict[str, ConditionStats]
    ratios: dict[str, RatioStats]  # by text condition; empty without a ceiling
    ceiling_gain_clear: bool | None  # the ceiling is clearly above the base (ConditionStats.clear); None without one
    chance: float | None = None  # the chance level on this metric's scale, when the task has one
    family: list[str] = dataclasses.field(default_factory=list)  # the texts whose R is tested, Holm-corrected


# the rule that gave an outcome (Outcome.rule), in the order ``verdict`` applies them
RULES = ("same-as-base", "uninformative", "only-text-improves", "neither-improves", "r-above", "r-below", "r-undecided")


@dataclass(frozen=True)
class Outcome:
    """What the verdict rules give one text condition on one metric: ``label`` and the ``rule`` that fired (from
    ``RULES``), with what that rule cites. "uninformative": ``who`` ("ceiling" or "text"), ``condition`` and its
    ``flag``. The R rules: ``p_adjusted`` (Holm over ``family``; ``n_boot`` bounds what the bootstrap resolves) and,
    undecided, ``n_needed``: roughly how many test examples per seed would shrink R's interval to exclude 0.5, from
    the observed variance (None when no number of examples would)."""

    label: str
    rule: str
    who: str | None = None
    condition: str | None = None
    flag: str | None = None
    p_adjusted: float | None = None
    family: int = 1
    n_boot: int = 0
    n_needed: int | None = None
    p_adjusted_bound: bool = False  # p_adjusted is a bound at the bootstrap's resolution (RatioStats)
    seeds_needed: int | None = None


@dataclass(frozen=True)
class Verdict:
    """The verdict for one text condition, decided on ``metric``; ``by_metric`` applies the same rules per metric,
    ``outcomes`` holds each metric's outcome with what its rule cites."""

    text: str
    label: str
    metric: str
    by_metric: dict[str, str]
    outcomes: dict[str, Outcome]

    @property
    def outcome(self) -> Outcome:
        """The deciding metric's outcome."""
        return self.outcomes[self.metric]

    @property
    def n_needed(self) -> int | None:
        return self.outcome.n_needed


@dataclass(frozen=True)
class Analysis:
    base: str
    ceiling: str | None
    texts: list[str]
    n_seeds: int
    n_examples: int
    n_boot: int
    seed: int
    confidence: float
    metrics: dict[str, MetricAnalysis]
    verdicts: dict[str, Verdict]  # by text condition; empty without a ceiling
    duplicates: dict[str, str] = dataclasses.field(default_factory=dict)  # condition -> the earlier one it equals
    deciding: str = "loglik"
    correction: str = "holm"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# --- building the matrices -------------------------------------------------------------------------------------------
def _field(rec: Any, key: str, condition: str, seed: Any, i: int) -> Any:
    try:
        return rec[key] if isinstance(rec, Mapping) else getattr(rec, key)
    except (KeyError, AttributeError):
        raise UserError(f"condition {condition!r}, seed {seed}: record {i} has no {key!r}; "
                        f"pass eval JSONL lines (example_id, correct, gold_nll)") from None


def score_matrices(
    records: Mapping[str, Sequence[Sequence[Any]] | Mapping[Any, Sequence[Any]]],
) -> dict[str, dict[str, np.ndarray]]:
    """Per-example records -> ``{"accuracy": {condition: (n_seeds, n_examples)}, "loglik": {...}}``.

    ``records[condition]`` is a list with one list of records per seed, or a mapping seed -> records (then every
    condition must have the same seeds). A record is a dict with ``example_id``, ``correct`` and ``gold_nll`` (an eval
    JSONL line) or an ``ExampleScore``. Within a seed every condition must hold exactly the same example ids; rows are
    put in the first condition's order, so a condition scored in another order is still paired correctly.
    """
    if not records:
        raise UserError("records: no conditions given; pass {condition: [records of seed 0, ...]}")
    per_cond: dict[str, dict[Any, Sequence[Any]]] = {}
    for cond, seeds in records.items():
        per_cond[cond] = dict(seeds) if isinstance(seeds, Mapping) else dict(enumerate(seeds))
        if not per_cond[cond]:
            raise UserError(f"condition {cond!r}: no seeds; give at least one seed's records")
    names = list(per_cond)
    ref_seeds = list(per_cond[names[0]])  # rows follow the first condition's seed order
    for cond in names[1:]:
        if set(per_cond[cond]) != set(ref_seeds):
            raise UserError(f"condition {cond!r} has seeds {list(per_cond[cond])} but {names[0]!r} has "
                            f"{ref_seeds}; score every condition on the same seeds")

    acc = {c: [] for c in names}
    ll = {c: [] for c in names}
    n_ref: int | None = None
    for seed in ref_seeds:
        ref_ids: list[str] | None = None
        for cond in names:
            recs = per_cond[cond][seed]
            ids = [str(_field(r, "example_id", cond, seed, i)) for i, r in enumerate(recs)]
            if not ids:
                raise UserError(f"condition {cond!r}, seed {seed}: no examples; score the test split first")
            if len(set(ids)) != len(ids):
                dup = next(x for x in ids if ids.count(x) > 1)
                raise UserError(f"condition {cond!r}, seed {seed}: example id {dup!r} appears twice; "
                                f"each example must be scored once")
            if ref_ids is None:
                ref_ids = ids
            elif ids != ref_ids:
                missing, extra = sorted(set(ref_ids) - set(ids)), sorted(set(ids) - set(ref_ids))
                if missing or extra:
                    raise UserError(f"condition {cond!r}, seed {seed}: example ids differ from {names[0]!r} "
                                    f"(missing {missing[:3]}, extra {extra[:3]}); score every condition on the same "
                                    f"test split")
            pos = {x: i for i, x in enumerate(ids)}
            order = [pos[x] for x in ref_ids]
            correct = [_field(recs[i], "correct", cond, seed, i) for i in order]
            nll = [_field(recs[i], "gold_nll", cond, seed, i) for i in order]
            try:
                row_acc, row_ll = np.asarray(correct, dtype=float), -np.asarray(nll, dtype=float)
            except (TypeError, ValueError):
                row_acc = row_ll = np.array([np.nan])
            if not (np.all(np.isfinite(row_acc)) and np.all(np.isfinite(row_ll))):
                raise UserError(f"condition {cond!r}, seed {seed}: 'correct' or 'gold_nll' is not a finite number in "
                                f"some record; rescore that condition")
            acc[cond].append(row_acc)
            ll[cond].append(row_ll)
        assert ref_ids is not None
        if n_ref is None:
            n_ref = len(ref_ids)
        elif len(ref_ids) != n_ref:
            raise UserError(f"seed {seed} has {len(ref_ids)} test examples but seed {ref_seeds[0]} has {n_ref}; "
                            f"the analysis needs the same test size in every seed (use the same --limit)")
    return {"accuracy": {c: np.stack(v) for c, v in acc.items()}, "loglik": {c: np.stack(v) for c, v in ll.items()}}


# --- checks ----------------------------------------------------------------------------------------------------------
def _check(
    scores: Mapping[str, Mapping[str, Any]], base: str, ceiling: str | None, texts: Sequence[str] | None,
    n_boot: int, confidence: float,
) -> tuple[dict[str, dict[str, np.ndarray]], list[str], list[str]]:
    if not scores:
        raise UserError("scores: no metrics given; pass {'loglik': {condition: matrix}, 'accuracy': {...}}")
    unknown = [m for m in scores if m not in METRICS]
    if unknown:
        raise UserError(f"scores: unknown metric {unknown[0]!r}; use {' or '.join(METRICS)}")
    if not isinstance(n_boot, int | np.integer) or n_boot < 1:
        raise UserError(f"n_boot={n_boot!r}: must be a positive integer (default {DEFAULT_N_BOOT})")
    if not 0 < confidence < 1:
        raise UserError(f"confidence={confidence!r}: must be between 0 and 1 (e.g. 0.95)")
    out: dict[str, dict[str, np.ndarray]] = {}
    names: list[str] | None = None
    shape: tuple[int, int] | None = None
    for metric, by_cond in scores.items():
        if names is None:
            names = list(by_cond)
            if len(names) < 2:
                raise UserError(f"scores[{metric!r}]: need at least two conditions (a base and one more), got "
                                f"{names}; score another condition on the same test examples")
            if base not in by_cond:
                raise UserError(f"base {base!r} is not among the conditions {names}; pass one of them as base")
            if ceiling is not None and ceiling not in by_cond:
                raise UserError(f"ceiling {ceiling!r} is not among the conditions {names}; pass one of them as "
                                f"ceiling, or none")
            if ceiling == base:
                raise UserError(f"ceiling and base are both {base!r}; the ceiling must be another condition")
        elif sorted(by_cond) != sorted(names):
            raise UserError(f"scores[{metric!r}] has conditions {sorted(by_cond)} but another metric has "
                            f"{sorted(names)}; give every metric the same conditions")
        out[metric] = {}
        for cond in names:
            x = np.asarray(by_cond[cond], dtype=float)
            if x.ndim == 1:
                x = x[None, :]
            if x.ndim != 2:
                raise UserError(f"scores[{metric!r}][{cond!r}] has shape {x.shape}; pass (n_seeds, n_examples)")
            if x.shape[0] == 0:
                raise UserError(f"scores[{metric!r}][{cond!r}] has zero seeds; give at least one seed's scores")
            if x.shape[1] == 0:
                raise UserError(f"scores[{metric!r}][{cond!r}] has zero examples; score the test split first")
            if shape is None:
                shape = x.shape
            elif x.shape != shape:
                raise UserError(f"scores[{metric!r}][{cond!r}] has shape {x.shape} but the others {shape}; score "
                                f"every condition on the same seeds and test examples")
            if not np.all(np.isfinite(x)):
                raise UserError(f"scores[{metric!r}][{cond!r}] holds NaN or infinite values; rescore that condition")
            if metric == "accuracy" and not np.all((x == 0) | (x == 1)):
                raise UserError(f"scores['accuracy'][{cond!r}] holds values other than 0/1; pass per-example "
                                f"correctness")
            out[metric][cond] = x
    assert names is not None
    if texts is None:
        texts = [c for c in names if c not in (base, ceiling)]
    else:
        texts = list(texts)
        for t in texts:
            if t not in names or t in (base, ceiling):
                raise UserError(f"text condition {t!r} is not among the conditions {names} (other than base and "
                                f"ceiling); pass names of scored conditions")
    return out, names, texts


# --- bootstrap and intervals -----------------------------------------------------------------------------------------
def _replicate_means(values: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """(n_seeds, n_examples, K) -> (n_boot, K) bootstrap means, one shared index set per replicate for all K columns."""
    n_seeds, n, k = values.shape
    cells = n_seeds * n
    flat = values.reshape(cells, k)
    out = np.empty((n_boot, k))
    chunk = max(1, min(n_boot, _CHUNK_CELLS // cells))
    for start in range(0, n_boot, chunk):
        m = min(chunk, n_boot - start)
        if n_seeds == 1:
            idx = rng.integers(0, n, size=(m, n))
        else:
            drawn = rng.integers(0, n_seeds, size=(m, n_seeds, 1))
            idx = (drawn * n + rng.integers(0, n, size=(m, n_seeds, n))).reshape(m, cells)
        # how often each cell was drawn, times the values, summed per replicate. Not a matrix product: BLAS sums in
        # an order that depends on its thread count, so a report's last bits would depend on the machine's threads;
        # numpy's own reduction (pairwise, fixed blocks) gives the same bits everywhere
        counts = np.bincount((idx + (np.arange(m) * cells)[:, None]).ravel(), minlength=m * cells)
        counts = counts.reshape(m, cells).astype(float)
        for j in range(k):
            out[start:start + m, j] = (counts * flat[:, j]).sum(axis=1) / cells
    return out


def _percentile(reps: np.ndarray, alpha: float) -> Interval:
    lo, hi = np.quantile(reps, [alpha / 2, 1 - alpha / 2])
    return Interval(float(lo), float(hi), "percentile")


def _bca_params(theta: float, reps: np.ndarray, loo: np.ndarray | None) -> tuple[float, float] | BcaSkip:
    """BCa's bias correction z0 and acceleration, or why BCa is undefined. ``loo``: leave-one-out estimates."""
    scale = max(1.0, abs(theta))
    if np.ptp(reps) <= _TINY * scale:
        return BcaSkip("equal-replicates")
    if loo is None:
        return BcaSkip("no-jackknife")
    if loo.size < 3 or not np.all(np.isfinite(loo)):
        return BcaSkip("jackknife-undefined")
    if np.ptp(loo) <= _TINY * scale:
        return BcaSkip("jackknife-zero")
    u = loo.mean() - loo  # the (n - 1) factor of the jackknife influence cancels in the acceleration
    accel = float((u**3).sum() / (6 * (u**2).sum() ** 1.5))
    # mid-rank: replicates tied with the estimate count half, as scipy does (accuracy means tie often)
    p0 = (np.sum(reps < theta) + np.sum(reps <= theta)) / (2 * reps.size)
    if not 0 < p0 < 1:
        return BcaSkip("outside-distribution")
    return float(ndtri(p0)), accel


def _bca(theta: float, reps: np.ndarray, loo: np.ndarray | None, alpha: float) -> Interval | BcaSkip:
    """BCa interval, or why it is undefined."""
    params = _bca_params(theta, reps, loo)
    if isinstance(params, BcaSkip):
        return params
    z0, accel = params
    z = ndtri(np.array([alpha / 2, 1 - alpha / 2]))
    shrink = 1 - accel * (z0 + z)
    if np.any(shrink <= 0):
        return BcaSkip("acceleration", accel)
    levels = ndtr(z0 + (z0 + z) / shrink)
    if not (np.all(np.isfinite(levels)) and levels[0] < levels[1]):
        return BcaSkip("degenerate-levels")
    lo, hi = np.quantile(reps, levels)
    return Interval(float(lo), float(hi), "bca")


def _p_value(theta: float, reps: np.ndarray, loo: np.ndarray | None, ci: Interval, null: float) -> tuple[float, bool]:
    """Two-sided bootstrap p-value of ``null``, by the method of ``ci``: the smallest 1 - confidence at which that
    interval would exclude ``null`` (so ``ci`` excludes it exactly when p < 1 - its confidence); and whether it is
    only a bound.

    Percentile: twice the smaller tail of the replicates beyond ``null`` (mid-rank for ties). BCa: the BCa map from
    nominal levels to quantile levels, inverted at the replicates' distribution function at ``null``. Below one
    replicate in ``reps.size`` the bootstrap cannot resolve p: then p is that resolution and the flag says it is a
    bound. That includes every p with no replicate beyond ``null``, whatever BCa's map of the clamped tail gives:
    such a number (say 0.000127 from 10,000 replicates) has no replicate behind it."""
    beyond = (np.sum(reps < null) + np.sum(reps <= null)) / (2 * reps.size)
    tail = beyond
    if ci.method == "bca":
        params = _bca_params(theta, reps, loo)
        if not isinstance(params, BcaSkip):
            z0, accel = params
            w = float(ndtri(min(max(tail, 0.5 / reps.size), 1 - 0.5 / reps.size))) - z0
            tail = float(ndtr(w / (1 + accel * w) - z0))
    p = 2 * min(tail, 1 - tail)
    if min(beyond, 1 - beyond) == 0 or p < 1 / reps.size:
        return 1 / reps.size, True
    return float(min(1.0, p)), False


def _seed_t(values: np.ndarray, null: float, alpha: float) -> SeedT | None:
    """t-interval and one-sample t-test of per-seed values (None with fewer than two finite values)."""
    if values.size < 2 or not np.all(np.isfinite(values)):
        return None
    m, sd, k = float(values.mean()), float(values.std(ddof=1)), values.size
    if sd <= _TINY * max(1.0, abs(m)):
        return SeedT([float(v) for v in values], m, Interval(m, m, "t"), null, 1.0 if m == null else 0.0)
    half = float(scipy.stats.t.ppf(1 - alpha / 2, k - 1)) * sd / math.sqrt(k)
    p = float(2 * scipy.stats.t.sf(abs(m - null) / (sd / math.sqrt(k)), k - 1))
    return SeedT([float(v) for v in values], m, Interval(m - half, m + half, "t"), null, p)


def wilson(k: int, n: int, confidence: float) -> Interval:
    """Wilson's score interval for a proportion k/n: never [0, 0] at k = 0, unlike a bootstrap of all-zero data."""
    ci = binomtest(int(k), int(n)).proportion_ci(confidence_level=confidence, method="wilson")
    return Interval(float(ci.low), float(ci.high), "wilson")


def _estimate(theta: float, reps: np.ndarray, loo: np.ndarray | None, alpha: float,
              why_not: BcaSkip | None) -> Estimate:
    pct = _percentile(reps, alpha)
    bca = why_not if why_not is not None else _bca(theta, reps, loo, alpha)
    ci = bca if isinstance(bca, Interval) else dataclasses.replace(pct, bca_skipped=bca)
    return Estimate(float(theta), ci, pct)


def _loo_means(x: np.ndarray) -> np.ndarray:
    """Leave-one-example-out means of a (1, n) matrix."""
    row = x[0]
    return (row.sum() - row) / (row.size - 1) if row.size > 1 else np.array([np.nan])


def _spread(x: np.ndarray) -> SeedSpread | None:
    if x.shape[0] < 2:
        return None
    m = x.mean(axis=1)
    return SeedSpread([float(v) for v in m], float(m.std(ddof=1)), float(m.min()), float(m.max()))


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p: binomial test of ``b`` successes in ``b + c`` trials at 0.5; 1.0 when b + c = 0."""
    if b + c == 0:
        return 1.0
    return float(binomtest(int(b), int(b + c), 0.5).pvalue)


def _mcnemar(x: np.ndarray, base: np.ndarray) -> McNemar:
    b = ((x == 1) & (base == 0)).sum(axis=1)
    c = ((x == 0) & (base == 1)).sum(axis=1)
    per_seed = [McNemarSeed(s, int(bs), int(cs), mcnemar_exact(bs, cs))
                for s, (bs, cs) in enumerate(zip(b, c, strict=True))]
    return McNemar(int(b.sum()), int(c.sum()), mcnemar_exact(b.sum(), c.sum()), per_seed)


# --- the analysis ----------------------------------------------------------------------------------------------------
def analyze(
    scores: Mapping[str, Mapping[str, Any]],
    *,
    base: str,
    ceiling: str | None = None,
    texts: Sequence[str] | None = None,
    n_boot: int = DEFAULT_N_BOOT,
    seed: int = 0,
    confidence: float = 0.95,
    chance: Mapping[str, float] | None = None,
    deciding: str | None = None,
) -> Analysis:
    """Means, differences from ``base``, R against ``ceiling`` for each text condition, McNemar tests and verdicts.

    ``scores[metric][condition]`` is a ``(n_seeds, n_examples)`` matrix (or 1-D for one seed), metrics from
    ``METRICS`` (as ``score_matrices`` returns). ``texts`` defaults to every condition other than base and ceiling.
    ``chance`` gives the chance level per metric on its own scale (multiple choice with k choices: accuracy 1/k,
    log-likelihood -ln k, averaged over examples), which flags conditions no better than chance. ``deciding`` is the
    metric verdicts are decided on (default: log-likelihood when given). Without a ceiling there are no ratios and
    no verdicts. Same inputs and ``seed`` -> same numbers.
    """
    data, names, texts = _check(scores, base, ceiling, texts, n_boot, confidence)
    deciding = deciding or ("loglik" if "loglik" in data else "accuracy")
    if deciding not in data:
        raise UserError(f"deciding metric {deciding!r} was not scored; use one of {', '.join(data)}")
    alpha = 1 - confidence
    n_seeds, n = next(iter(data[next(iter(data))].values())).shape
    why_not = BcaSkip("several-seeds") if n_seeds > 1 else None
    others = [c for c in names if c != base]
    rivals = [c for c in names if c not in (base, ceiling)] if ceiling is not None else []

    # one column per (metric, condition mean), per (metric, per-example difference from the base) and from the
    # ceiling; differences are bootstrapped directly so that they keep full precision when conditions are close
    cols: dict[tuple[str, str, str], np.ndarray] = {}
    for metric, by_cond in data.items():
        for cond in names:
            cols[(metric, "mean", cond)] = by_cond[cond]
        for cond in others:
            cols[(metric, "diff", cond)] = by_cond[cond] - by_cond[base]
        for cond in rivals:
            cols[(metric, "vs_ceiling", cond)] = by_cond[cond] - by_cond[ceiling]
    keys = list(cols)
    reps = _replicate_means(np.stack([cols[k] for k in keys], axis=-1), n_boot, np.random.default_rng(seed))
    rep = {k: reps[:, j] for j, k in enumerate(keys)}

    def estimate(key: tuple[str, str, str]) -> Estimate:
        x = cols[key]
        return _estimate(float(x.mean()), rep[key], _loo_means(x) if n_seeds == 1 else None, alpha, why_not)

    def clear(metric: str, est: Estimate, x: np.ndarray, ref: np.ndarray) -> tuple[int, McNemar | None, SeedT | None]:
        """+1/-1 when every rule says the difference ``est`` (of ``x`` - ``ref``) is clear, else 0."""
        sign = 1 if est.ci.lo > 0 else -1 if est.ci.hi < 0 else 0
        mc = _mcnemar(x, ref) if metric == "accuracy" else None
        if mc is not None and not mc.p < alpha:
            sign = 0  # the interval and the exact test must agree before a difference in accuracy is clear
        st = _seed_t((x - ref).mean(axis=1), 0.0, alpha) if n_seeds > 1 else None
        if st is not None and not (st.ci.lo > 0 if sign > 0 else st.ci.hi < 0 if sign < 0 else False):
            sign = 0  # with several seeds, the between-seed spread must agree too
        return sign, mc, st

    metrics: dict[str, MetricAnalysis] = {}
    for metric, by_cond in data.items():
        level = (chance or {}).get(metric)
        conds: dict[str, ConditionStats] = {}
        for cond in names:
            x = by_cond[cond]
            mean = estimate((metric, "mean", cond))
            if metric == "accuracy":  # a proportion: Wilson's interval on the pooled counts
                mean = dataclasses.replace(mean, ci=wilson(int(x.sum()), x.size, confidence))
            stats = ConditionStats(name=cond, mean=mean, seeds=_spread(x), flag=_flag(metric, x, mean, level))
            if cond != base:
                diff = estimate((metric, "diff", cond))
                sign, mc, st = clear(metric, diff, x, by_cond[base])
                stats = dataclasses.replace(stats, diff=_deciding(diff, st),
                                            diff_seeds=_spread(cols[(metric, "diff", cond)]), mcnemar=mc, diff_t=st,
                                            clear=sign)
            if cond in rivals:
                vs = estimate((metric, "vs_ceiling", cond))
                beats, _, vs_t = clear(metric, vs, x, by_cond[ceiling])
                stats = dataclasses.replace(stats, vs_ceiling=_deciding(vs, vs_t), beats_ceiling=beats > 0)
            conds[cond] = stats
        ratios: dict[str, RatioStats] = {}
        gain_clear: bool | None = None
        if ceiling is not None:
            gain_clear = conds[ceiling].clear > 0
            for t in texts:
                ratios[t] = _ratio(t, cols[(metric, "diff", t)], cols[(metric, "diff", ceiling)],
                                   rep[(metric, "diff", t)], rep[(metric, "diff", ceiling)], conds[ceiling],
                                   gain_clear, alpha, why_not)
        metrics[metric] = MetricAnalysis(metric, conds, ratios, gain_clear, level)

    analysis = Analysis(base, ceiling, texts, int(n_seeds), int(n), int(n_boot), int(seed), float(confidence),
                        metrics, {}, duplicates=_duplicates(data, names), deciding=deciding)
    if ceiling is None:
        return analysis
    return _judge(analysis)


def _deciding(est: Estimate, seed_t: SeedT | None) -> Estimate:
    """A difference with the interval its verdict uses: with several seeds, the wider of the hierarchical
    bootstrap's and the t-interval over seeds (a bootstrap over a few seeds underestimates their spread), so the
    interval shown beside a number is the one that decides. The bootstrap's percentile interval stays beside it."""
    if seed_t is None or seed_t.ci.width <= est.ci.width:
        return est
    return dataclasses.replace(est, ci=seed_t.ci)


def _flag(metric: str, x: np.ndarray, mean: Estimate, chance: float | None) -> str | None:
    """Why a condition's metric cannot inform a verdict, or None."""
    if metric == "accuracy" and np.all(x == 0):
        return "floor"
    if metric == "accuracy" and np.all(x == 1):
        return "saturated"
    if chance is not None and mean.ci.lo <= chance:
        return "chance"
    return None


def _duplicates(data: dict[str, dict[str, np.ndarray]], names: list[str]) -> dict[str, str]:
    """Conditions whose per-example scores equal an earlier condition's within 1e-9 on every metric: the same
    prompt in effect (a search that returned the hand-written instruction, a few-shot search that kept no demo)."""
    out: dict[str, str] = {}
    for i, c in enumerate(names):
        for d in names[:i]:
            if d not in out and all(np.allclose(m[c], m[d], rtol=0, atol=1e-9) for m in data.values()):
                out[c] = d
                break
    return out


def _ratio(
    text: str, d_text: np.ndarray, d_ceil: np.ndarray, rep_text: np.ndarray, rep_ceil: np.ndarray,
    ceiling: ConditionStats, gain_clear: bool, alpha: float, why_not: BcaSkip | None,
) -> RatioStats:
    zero = rep_ceil == 0
    n_excluded = int(zero.sum())
    gain = ceiling.diff
    assert gain is not None
    if not gain_clear:
        why = Undefined(gain)
        if ceiling.mcnemar is not None and gain.ci.lo > 0:
            why = Undefined(gain, mcnemar_p=ceiling.mcnemar.p)
        elif ceiling.diff_t is not None and gain.ci.lo > 0:
            why = Undefined(gain, seed_t=ceiling.diff_t.ci)
        return RatioStats(text, None, None, None, why, n_excluded)
    theta = float(d_text.mean() / d_ceil.mean())
    reps = rep_text[~zero] / rep_ceil[~zero]
    loo = None
    if d_text.shape[0] == 1:
        with np.errstate(divide="ignore", invalid="ignore"):
            loo = _loo_means(d_text) / _loo_means(d_ceil)
    est = _estimate(theta, reps, loo, alpha, why_not)
    p, bound = _p_value(theta, reps, loo, est.ci, RECOVERY_THRESHOLD)
    per_seed = d_ceil.mean(axis=1)
    seed_t = None
    if d_text.shape[0] > 1 and np.all(per_seed != 0):
        seed_t = _seed_t(d_text.mean(axis=1) / per_seed, RECOVERY_THRESHOLD, alpha)
    decision, decision_p, decision_bound = est.ci, p, bound
    if seed_t is not None:
        decision = max(est.ci, seed_t.ci, key=lambda iv: iv.width)
        decision_p, decision_bound = (p, bound) if p >= seed_t.p else (seed_t.p, False)
    return RatioStats(text, est.value, est.ci, est.percentile, None, n_excluded, p, seed_t, decision, decision_p,
                      p_bound=bound, decision_p_bound=decision_bound)


# --- the verdict -----------------------------------------------------------------------------------------------------
LABELS = ("text-closes-gap", "soft-only", "inconclusive", "neither", "uninformative", "same-as-base")


def _pre_rule(a: Analysis, m: MetricAnalysis, text: str) -> Outcome | None:
    """The rules that decide before R is tested (None: R is tested, within the family)."""
    ceiling = a.ceiling
    assert ceiling is not None
    if a.duplicates.get(text) == a.base:
        return Outcome("same-as-base", "same-as-base")
    for who, cond in (("ceiling", ceiling), ("text", text)):
        flag = m.conditions[cond].flag
        if flag is not None:
            return Outcome("uninformative", "uninformative", who=who, condition=cond, flag=flag)
    if not m.ceiling_gain_clear:
        if m.conditions[text].clear > 0:
            return Outcome("inconclusive", "only-text-improves")
        return Outcome("neither", "neither-improves")
    return None


def _judge(a: Analysis) -> Analysis:
    """Every text condition's verdict on every metric, R tested with Holm's correction over the family of distinct
    text conditions that reach that test (statsmodels' ``multipletests``)."""
    from statsmodels.stats.multitest import multipletests

    alpha = 1 - a.confidence
    distinct = [t for t in a.texts if a.duplicates.get(t) not in a.texts]
    outcomes: dict[str, dict[str, Outcome]] = {t: {} for t in a.texts}
    metrics = dict(a.metrics)
    for name, m in a.metrics.items():
        family = []
        for t in distinct:
            pre = _pre_rule(a, m, t)
            if pre is None:
                family.append(t)
            else:
                outcomes[t][name] = pre
        ratios = dict(m.ratios)
        if family:
            ps = [m.ratios[t].decision_p for t in family]
            adjusted = multipletests(ps, alpha=alpha, method="holm")[1] if len(family) > 1 else ps
            steps, bounds = _holm_steps(ps, [m.ratios[t].decision_p_bound for t in family])
            for t, p_adj, step, bound in zip(family, adjusted, steps, bounds, strict=True):
                # 12 significant digits: Holm's products land a bit off the multiples of 1 / n_boot they are
                r = ratios[t] = dataclasses.replace(m.ratios[t], p_adjusted=float(f"{p_adj:.12g}"),
                                                    p_adjusted_bound=bound)
                outcomes[t][name] = _r_rule(r, len(family), step, a.n_examples, alpha, a.n_boot)
        metrics[name] = dataclasses.replace(m, ratios=ratios, family=family)
    for t in a.texts:  # a duplicate of another text condition shares its verdict
        if t not in distinct:
            outcomes[t] = outcomes[a.duplicates[t]]
    a = dataclasses.replace(a, metrics=metrics)
    return dataclasses.replace(a, verdicts={
        t: Verdict(t, outcomes[t][a.deciding].label, a.deciding, {k: o.label for k, o in outcomes[t].items()},
                   outcomes[t]) for t in a.texts})


def _holm_steps(ps: Sequence[float], bounds: Sequence[bool]) -> tuple[list[int], list[bool]]:
    """For each p of a Holm family: the number of hypotheses still standing at its step (m for the smallest p, 1
    for the largest), whose alpha / that number it is tested at; and whether its adjusted p is a bound, that is,
    whether the p that sets it (Holm's adjusted p is the running maximum of (m - j + 1) p_(j)) is one."""
    m = len(ps)
    order = sorted(range(m), key=lambda i: ps[i])
    steps, bounds_out = [0] * m, [False] * m
    best, best_bound = -1.0, False
    for j, i in enumerate(order):
        steps[i] = m - j
        if (m - j) * ps[i] > best:
            best, best_bound = (m - j) * ps[i], bounds[i]
        bounds_out[i] = best_bound
    return steps, bounds_out


def _r_rule(r: RatioStats, family: int, step: int, n: int, alpha: float, n_boot: int) -> Outcome:
    assert r.value is not None and r.decision is not None and r.p_adjusted is not None
    cited = {"p_adjusted": r.p_adjusted, "family": family, "n_boot": n_boot, "p_adjusted_bound": r.p_adjusted_bound}
    if r.p_adjusted < alpha:
        if r.value > RECOVERY_THRESHOLD:
            return Outcome("text-closes-gap", "r-above", **cited)
        return Outcome("soft-only", "r-below", **cited)
    return Outcome("inconclusive", "r-undecided", **cited, **_needed(r, step, n, alpha))


def _needed(r: RatioStats, step: int, n: int, alpha: float) -> dict[str, int | None]:
    """Roughly what would settle an undecided R: its interval, at the level Holm tests it at (alpha / ``step``),
    must shrink to exclude 0.5. With one seed, or where the bootstrap interval decides, it shrinks as 1 / sqrt(n):
    ``n_needed`` examples per seed. Where the t-interval over seeds decides, more examples per seed cannot narrow
    it: ``seeds_needed``, for the observed spread of per-seed R (None: no number would)."""
    assert r.value is not None and r.decision is not None
    gap = abs(r.value - RECOVERY_THRESHOLD)
    level = alpha / max(1, step)
    if r.decision.method == "t" and r.seed_t is not None:
        k = len(r.seed_t.per_seed)
        sd = float(np.std(r.seed_t.per_seed, ddof=1))
        for seeds in range(k + 1, 1001):
            if float(scipy.stats.t.ppf(1 - level / 2, seeds - 1)) * sd / math.sqrt(seeds) < gap:
                return {"n_needed": None, "seeds_needed": seeds}
        return {"n_needed": None, "seeds_needed": None}
    # the interval's half-width at the Holm level: its half-width at alpha, widened by the ratio of normal points
    half = r.decision.width / 2 * float(ndtri(1 - level / 2) / ndtri(1 - alpha / 2))
    if gap == 0 or not math.isfinite(half):
        return {"n_needed": None, "seeds_needed": None}
    return {"n_needed": max(n + 1, math.ceil(n * (half / gap) ** 2)), "seeds_needed": None}


def verdict(analysis: Analysis, text: str) -> Verdict:
    """Whether the text condition ``text`` recovers the ceiling's gain (``harness.wording.explanation`` words it).

    Decided on ``analysis.deciding`` (log-likelihood by default: per-example log-likelihoods are far less noisy than
    0/1 correctness); the other metric's outcome under the same rules is in ``by_metric`` and the explanation. With
    G = the ceiling's difference from base, T = the text's, and R = the gap ratio, the rules, in this order, are:

    0. "same-as-base":    the text's per-example scores equal the base's (no verdict);
       "uninformative":   the ceiling or the text is at the floor, saturated, or no better than chance on the
                          metric (``ConditionStats.flag``), so the metric cannot show a gap or its recovery;
    1. "neither":         G is not clearly positive and T is not either;
       "inconclusive":    G is not clearly positive but T is (R undefined; an under-trained ceiling?);
    2. with G clearly positive, R is tested against 0.5 (two-sided, the p-value of its decision interval: BCa or
       percentile, the wider of that and the t-interval over seeds with several seeds), Holm-corrected over the
       family of distinct text conditions that reach this test on the metric:
       "text-closes-gap" when the adjusted p < 1 - confidence and R > 0.5 (R > 1, a text beating the ceiling,
       lands here too); "soft-only" when it is and R < 0.5; "inconclusive" otherwise.

    "Clearly positive" is ``ConditionStats.clear``: the interval excludes 0, and for accuracy the exact McNemar test
    agrees, and with several seeds the t-interval over seeds agrees. A text condition whose scores equal another
    text condition's shares its verdict and is not counted twice in the family.
    """
    if analysis.ceiling is None:
        raise UserError("verdict: the analysis has no ceiling; run analyze(..., ceiling=<soft prompt condition>)")
    if text not in analysis.texts:
        raise UserError(f"verdict: {text!r} is not a text condition of this analysis ({analysis.texts}); pass one")
    return analysis.verdicts[text] if analysis.verdicts else _judge(analysis).verdicts[text]


def analyze_records(records: Mapping[str, Any], *, base: str, ceiling: str | None = None, **kwargs: Any) -> Analysis:
    """``analyze(score_matrices(records), ...)``: the analysis straight from per-example records."""
    return analyze(score_matrices(records), base=base, ceiling=ceiling, **kwargs)


# --- a suite: optimizers across tasks ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class SuiteRow:
    """One text condition across a suite's tasks: its mean R over the tasks with a gap, with a percentile interval
    from the bootstrap below, its rank among the suite's conditions (1 = highest mean R) and the rank's interval."""

    name: str
    mean_r: float | None  # None when no task has a gap
    ci: Interval | None
    rank: int | None
    rank_ci: tuple[int, int] | None
    per_task: dict[str, float | None]  # each task's point R (None: the task has no gap)


@dataclass(frozen=True)
class SuiteStats:
    """What the leaderboard's aggregate columns say. ``tasks``: the tasks averaged (a gap: the ceiling clearly above
    the base), ``no_gap``: those left out; ``n_excluded``: replicates left out because a task's drawn ceiling gain
    was exactly 0 (no ratio)."""

    rows: list[SuiteRow]
    tasks: list[str]
    no_gap: list[str]
    n_boot: int
    confidence: float
    n_excluded: int


def suite_means(
    scores: Mapping[str, Mapping[str, np.ndarray]],
    *,
    base: str,
    ceiling: str,
    texts: Sequence[str],
    gap: Mapping[str, bool],
    n_boot: int = DEFAULT_N_BOOT,
    seed: int = 0,
    confidence: float = 0.95,
) -> SuiteStats:
    """Mean R over a suite's tasks, for each text condition, with intervals and ranks.

    ``scores[task][condition]``: the deciding metric's ``(n_seeds, n_examples)`` matrix (as ``score_matrices``),
    aligned within each task. ``gap[task]``: whether the task's ceiling is clearly above its base (the task's own
    analysis); tasks without one are left out of every mean. The tasks are the suite's fixed set, not a sample: a
    replicate resamples, inside each task independently, seeds and then examples (the same hierarchical draw as
    ``analyze``, one index set for all the task's conditions), computes each task's R = mean(text - base) /
    mean(ceiling - base) and averages the tasks. The interval is the percentile interval of those averages; a
    replicate's ranks (1 = highest) give each condition's rank interval (its ``confidence`` percentiles, rounded
    outwards). Same inputs and ``seed`` -> same numbers.
    """
    texts = list(texts)
    if not texts:
        raise UserError("suite: no text conditions to rank; name them in [ratio] texts")
    if n_boot < 1:
        raise UserError(f"n_boot = {n_boot}; give a whole number >= 1")
    used = [t for t in scores if gap.get(t)]
    no_gap = [t for t in scores if not gap.get(t)]
    rng = np.random.default_rng(seed)
    alpha = 1 - confidence
    point: dict[str, dict[str, float | None]] = {c: {} for c in texts}
    reps = np.zeros((n_boot, len(texts)))
    bad = np.zeros(n_boot, dtype=bool)
    for task in scores:
        by = scores[task]
        missing = [c for c in (base, ceiling, *texts) if c not in by]
        if missing:
            raise UserError(f"suite task {task!r}: no scores for {', '.join(missing)}; run those cells first")
        if task not in used:
            for c in texts:
                point[c][task] = None
            continue
        mats = [np.atleast_2d(np.asarray(by[c], dtype=float)) for c in (base, ceiling, *texts)]
        cols = np.stack([m - mats[0] for m in mats[1:]], axis=-1)  # ceiling gain, then each text's gain
        r = _replicate_means(cols, n_boot, rng)
        d_ceil = float(cols[..., 0].mean())
        for j, c in enumerate(texts):
            point[c][task] = float(cols[..., j + 1].mean()) / d_ceil
        zero = r[:, 0] == 0
        bad |= zero
        with np.errstate(divide="ignore", invalid="ignore"):
            reps += r[:, 1:] / np.where(zero, 1.0, r[:, 0])[:, None]
    if not used:
        rows = [SuiteRow(c, None, None, None, None, point[c]) for c in texts]
        return SuiteStats(rows, [], no_gap, n_boot, confidence, 0)
    reps = reps[~bad] / len(used)
    means = {c: float(np.mean([point[c][t] for t in used])) for c in texts}
    # rank 1 = highest mean R; ties share the better rank (scipy's "min")
    point_rank = scipy.stats.rankdata([-means[c] for c in texts], method="min")
    rep_ranks = scipy.stats.rankdata(-reps, method="min", axis=1) if len(reps) else np.empty((0, len(texts)))
    rows = []
    for j, c in enumerate(texts):
        ci = rank_ci = None
        if len(reps):
            lo, hi = np.quantile(reps[:, j], [alpha / 2, 1 - alpha / 2])
            ci = Interval(float(lo), float(hi), "percentile")
            rlo, rhi = np.quantile(rep_ranks[:, j], [alpha / 2, 1 - alpha / 2])
            rank_ci = (int(math.floor(rlo)), int(math.ceil(rhi)))
        rows.append(SuiteRow(c, means[c], ci, int(point_rank[j]), rank_ci, point[c]))
    return SuiteStats(rows, used, no_gap, n_boot, confidence, int(bad.sum()))
