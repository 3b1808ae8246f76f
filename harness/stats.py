"""Paired statistics over conditions scored on the same test examples: means, differences, the gap ratio R, verdicts.

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
scipy.stats.bootstrap) when there is one seed and BCa is defined; otherwise it is the percentile interval with a
``note`` saying why (several seeds, all replicates equal, jackknife variance 0, ...).

The gap ratio
-------------
``R = (mean_text - mean_base) / (mean_ceiling - mean_base)``, from the per-example differences to the base. R is only
reported when the ceiling's gain is clearly positive, i.e. the lower bound of its difference-from-base ``ci`` is
> 0; otherwise ``RatioStats.value`` is None and ``reason`` says why. Replicates whose ceiling gain is exactly 0 have
no ratio; they are left out of R's interval and counted in ``RatioStats.n_excluded``. Replicates with a negative
ceiling gain are kept (they widen the interval, as they should).

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

The verdict rules are in ``verdict``'s docstring.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.special import ndtr, ndtri
from scipy.stats import binomtest

from harness.errors import UserError

METRICS = ("accuracy", "loglik")
DEFAULT_N_BOOT = 10_000
RECOVERY_THRESHOLD = 0.5  # "the text recovers most of the gap" means R > this, with confidence
METRIC_LABELS = {
    "loglik": ("gold log-likelihood", "minus the gold NLL in nats, per token for continuation tasks; higher is better"),
    "accuracy": ("accuracy", "fraction correct"),
}
# cells of the per-chunk count matrix: bounds memory (~16 MB of float64) whatever n_boot and the data size are
_CHUNK_CELLS = 2_000_000
# spreads this small relative to the estimate are float rounding, not sampling variation
_TINY = 1e-12


# --- results ---------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Interval:
    """A two-sided confidence interval; ``method`` is "bca" or "percentile", ``note`` says why BCa was not used."""

    lo: float
    hi: float
    method: str
    note: str | None = None

    def contains(self, x: float) -> bool:
        return self.lo <= x <= self.hi


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
    """One condition under one metric. ``diff`` is condition minus base (None for the base itself)."""

    name: str
    mean: Estimate
    diff: Estimate | None = None
    seeds: SeedSpread | None = None  # per-seed means, only with several seeds
    diff_seeds: SeedSpread | None = None  # per-seed differences from the base, only with several seeds
    mcnemar: McNemar | None = None  # accuracy only, non-base conditions


@dataclass(frozen=True)
class RatioStats:
    """R for one text condition; ``value`` is None (and ``reason`` set) when R is undefined."""

    text: str
    value: float | None
    ci: Interval | None
    percentile: Interval | None
    reason: str | None
    n_excluded: int  # bootstrap replicates with a ceiling gain of exactly 0, left out of the intervals


@dataclass(frozen=True)
class MetricAnalysis:
    metric: str
    conditions: dict[str, ConditionStats]
    ratios: dict[str, RatioStats]  # by text condition; empty without a ceiling
    ceiling_gain_clear: bool | None  # lower bound of the ceiling's gain > 0; None without a ceiling


@dataclass(frozen=True)
class Verdict:
    """The verdict for one text condition, decided on ``metric``; ``by_metric`` applies the same rules per metric."""

    text: str
    label: str
    metric: str
    by_metric: dict[str, str]
    explanation: str


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
        # how often each cell was drawn; a count matrix times the values gives all K means in one product
        counts = np.bincount((idx + (np.arange(m) * cells)[:, None]).ravel(), minlength=m * cells)
        out[start:start + m] = counts.reshape(m, cells).astype(float) @ flat / cells
    return out


def _percentile(reps: np.ndarray, alpha: float) -> Interval:
    lo, hi = np.quantile(reps, [alpha / 2, 1 - alpha / 2])
    return Interval(float(lo), float(hi), "percentile")


def _bca(theta: float, reps: np.ndarray, loo: np.ndarray, alpha: float) -> Interval | str:
    """BCa interval, or the reason it is undefined. ``loo`` holds the leave-one-example-out estimates."""
    scale = max(1.0, abs(theta))
    if np.ptp(reps) <= _TINY * scale:
        return "all bootstrap replicates are equal"
    if loo.size < 3 or not np.all(np.isfinite(loo)):
        return "the jackknife is undefined (too few examples, or a leave-one-out estimate has a zero denominator)"
    if np.ptp(loo) <= _TINY * scale:
        return "the jackknife variance is 0"
    u = loo.mean() - loo  # the (n - 1) factor of the jackknife influence cancels in the acceleration
    accel = float((u**3).sum() / (6 * (u**2).sum() ** 1.5))
    # mid-rank: replicates tied with the estimate count half, as scipy does (accuracy means tie often)
    p0 = (np.sum(reps < theta) + np.sum(reps <= theta)) / (2 * reps.size)
    if not 0 < p0 < 1:
        return "the estimate lies outside the bootstrap distribution"
    z0 = float(ndtri(p0))
    z = ndtri(np.array([alpha / 2, 1 - alpha / 2]))
    shrink = 1 - accel * (z0 + z)
    if np.any(shrink <= 0):
        return f"the acceleration ({accel:.3g}) is too large for the BCa adjustment"
    levels = ndtr(z0 + (z0 + z) / shrink)
    if not (np.all(np.isfinite(levels)) and levels[0] < levels[1]):
        return "the BCa levels are degenerate"
    lo, hi = np.quantile(reps, levels)
    return Interval(float(lo), float(hi), "bca")


def _estimate(theta: float, reps: np.ndarray, loo: np.ndarray | None, alpha: float, why_not: str | None) -> Estimate:
    pct = _percentile(reps, alpha)
    if why_not is None and loo is None:
        why_not = "no jackknife estimates"
    bca = why_not if why_not is not None else _bca(theta, reps, loo, alpha)
    ci = bca if isinstance(bca, Interval) else dataclasses.replace(pct, note=f"BCa not used: {bca}")
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


def _fmt_ci(est: Estimate) -> str:
    return f"{est.value:+.3f} [{est.ci.lo:+.3f}, {est.ci.hi:+.3f}]"


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
) -> Analysis:
    """Means, differences from ``base``, R against ``ceiling`` for each text condition, McNemar tests and verdicts.

    ``scores[metric][condition]`` is a ``(n_seeds, n_examples)`` matrix (or 1-D for one seed), metrics from
    ``METRICS`` (as ``score_matrices`` returns). ``texts`` defaults to every condition other than base and ceiling.
    Without a ceiling there are no ratios and no verdicts. Same inputs and ``seed`` -> same numbers.
    """
    data, names, texts = _check(scores, base, ceiling, texts, n_boot, confidence)
    alpha = 1 - confidence
    n_seeds, n = next(iter(data[next(iter(data))].values())).shape
    why_not = "several seeds: the hierarchical bootstrap reports percentile intervals" if n_seeds > 1 else None
    others = [c for c in names if c != base]

    # one column per (metric, condition mean) and per (metric, per-example difference from the base); the
    # differences are bootstrapped directly so that they keep full precision when the conditions are close
    cols: dict[tuple[str, str, str], np.ndarray] = {}
    for metric, by_cond in data.items():
        for cond in names:
            cols[(metric, "mean", cond)] = by_cond[cond]
        for cond in others:
            cols[(metric, "diff", cond)] = by_cond[cond] - by_cond[base]
    keys = list(cols)
    reps = _replicate_means(np.stack([cols[k] for k in keys], axis=-1), n_boot, np.random.default_rng(seed))
    rep = {k: reps[:, j] for j, k in enumerate(keys)}

    def estimate(key: tuple[str, str, str]) -> Estimate:
        x = cols[key]
        return _estimate(float(x.mean()), rep[key], _loo_means(x) if n_seeds == 1 else None, alpha, why_not)

    metrics: dict[str, MetricAnalysis] = {}
    for metric, by_cond in data.items():
        conds: dict[str, ConditionStats] = {}
        for cond in names:
            is_base = cond == base
            conds[cond] = ConditionStats(
                name=cond,
                mean=estimate((metric, "mean", cond)),
                diff=None if is_base else estimate((metric, "diff", cond)),
                seeds=_spread(by_cond[cond]),
                diff_seeds=None if is_base else _spread(cols[(metric, "diff", cond)]),
                mcnemar=_mcnemar(by_cond[cond], by_cond[base]) if metric == "accuracy" and not is_base else None,
            )
        ratios: dict[str, RatioStats] = {}
        clear: bool | None = None
        if ceiling is not None:
            gain = conds[ceiling].diff
            assert gain is not None
            clear = gain.ci.lo > 0
            for t in texts:
                ratios[t] = _ratio(t, cols[(metric, "diff", t)], cols[(metric, "diff", ceiling)],
                                   rep[(metric, "diff", t)], rep[(metric, "diff", ceiling)], gain, alpha, why_not)
        metrics[metric] = MetricAnalysis(metric, conds, ratios, clear)

    analysis = Analysis(base, ceiling, texts, int(n_seeds), int(n), int(n_boot), int(seed), float(confidence),
                        metrics, {})
    if ceiling is None:
        return analysis
    return dataclasses.replace(analysis, verdicts={t: verdict(analysis, t) for t in texts})


def _ratio(
    text: str, d_text: np.ndarray, d_ceil: np.ndarray, rep_text: np.ndarray, rep_ceil: np.ndarray, gain: Estimate,
    alpha: float, why_not: str | None,
) -> RatioStats:
    zero = rep_ceil == 0
    n_excluded = int(zero.sum())
    if gain.ci.lo <= 0:
        return RatioStats(text, None, None, None, f"ceiling gain not clearly positive: {_fmt_ci(gain)}", n_excluded)
    theta = float(d_text.mean() / d_ceil.mean())
    reps = rep_text[~zero] / rep_ceil[~zero]
    loo = None
    if d_text.shape[0] == 1:
        with np.errstate(divide="ignore", invalid="ignore"):
            loo = _loo_means(d_text) / _loo_means(d_ceil)
    est = _estimate(theta, reps, loo, alpha, why_not)
    return RatioStats(text, est.value, est.ci, est.percentile, None, n_excluded)


# --- the verdict -----------------------------------------------------------------------------------------------------
def _rule(m: MetricAnalysis, ceiling: str, text: str) -> tuple[str, str]:
    """The verdict rules on one metric: (label, the sentence saying which rule fired)."""
    gain, tgain, r = m.conditions[ceiling].diff, m.conditions[text].diff, m.ratios[text]
    assert gain is not None and tgain is not None
    g_clear, t_clear = gain.ci.lo > 0, tgain.ci.lo > 0
    if g_clear and r.value is not None and r.ci is not None:
        if r.ci.lo > RECOVERY_THRESHOLD:
            return "text-closes-gap", (f"R's lower bound {r.ci.lo:.3f} is above {RECOVERY_THRESHOLD}, so the text "
                                       f"prompt recovers most of the ceiling's gain")
        if r.ci.hi < RECOVERY_THRESHOLD:
            return "soft-only", (f"R's upper bound {r.ci.hi:.3f} is below {RECOVERY_THRESHOLD}, so the text prompt "
                                 f"recovers less than half of the ceiling's gain")
        return "inconclusive", (f"R's interval contains {RECOVERY_THRESHOLD}, so the data cannot tell whether the "
                                f"text prompt recovers more or less than half of the gap; more test examples or seeds "
                                f"would narrow it")
    if not g_clear and not t_clear:
        return "neither", ("neither lower bound is above 0, so neither the ceiling nor the text prompt clearly "
                           "improves on the base (which is not the same as showing that they do not)")
    return "inconclusive", ("the text prompt clearly improves but the ceiling does not, so R is undefined; a ceiling "
                            "that does not beat a readable prompt suggests an under-trained soft prompt")


def _describe(m: MetricAnalysis, ceiling: str, text: str) -> str:
    gain, tgain, r = m.conditions[ceiling].diff, m.conditions[text].diff, m.ratios[text]
    assert gain is not None and tgain is not None

    def p(cond: str) -> str:
        mc = m.conditions[cond].mcnemar
        return f" (McNemar p = {mc.p:.3g})" if mc is not None else ""

    s = (f"the ceiling's difference from the base is {_fmt_ci(gain)}{p(ceiling)} and the text prompt's "
         f"{_fmt_ci(tgain)}{p(text)}")
    if r.value is not None and r.ci is not None:
        s += f"; R = {r.value:.3f} [{r.ci.lo:.3f}, {r.ci.hi:.3f}]"
        if r.n_excluded:
            s += f" ({r.n_excluded} replicates with a zero ceiling gain left out)"
    else:
        s += f"; R is undefined ({r.reason})"
    return s


def verdict(analysis: Analysis, text: str) -> Verdict:
    """Whether the text condition ``text`` recovers the ceiling's gain, with a plain-English explanation.

    Decided on the "loglik" metric when present (per-example log-likelihoods are far less noisy than 0/1
    correctness), else on "accuracy"; the other metric's outcome under the same rules is reported in ``by_metric``
    and in the explanation. With G = the ceiling's difference from base, T = the text's difference from base and
    R = the gap ratio, each with its decision interval ``ci`` (BCa or percentile, ``analysis.confidence``), the rules,
    applied in this order, are:

    1. "text-closes-gap": G.lo > 0 and R.lo > 0.5  (the ceiling clearly improves; the text surely recovers more
       than half of its gain; R > 1, a text prompt beating the ceiling, lands here too);
    2. "soft-only":       G.lo > 0 and R.hi < 0.5  (the ceiling clearly improves; the text surely recovers less than
       half, whether or not its own gain is clearly positive);
    3. "neither":         G.lo <= 0 and T.lo <= 0  (neither gain is clearly positive);
    4. "inconclusive":    everything else, i.e. G.lo > 0 with 0.5 inside R's interval, or G.lo <= 0 < T.lo
       (the text clearly improves while the ceiling does not, so R is undefined).

    R is defined exactly when G.lo > 0, so rules 1-2 never see an undefined R. A text gain whose interval includes 0
    is not by itself "soft-only": with a wide interval R may still exceed 0.5, and then the answer is "inconclusive".
    """
    if analysis.ceiling is None:
        raise UserError("verdict: the analysis has no ceiling; run analyze(..., ceiling=<soft prompt condition>)")
    if text not in analysis.texts:
        raise UserError(f"verdict: {text!r} is not a text condition of this analysis ({analysis.texts}); pass one")
    deciding = "loglik" if "loglik" in analysis.metrics else "accuracy"
    outcomes = {name: _rule(m, analysis.ceiling, text) for name, m in analysis.metrics.items()}
    label, why = outcomes[deciding]
    pct = round(analysis.confidence * 100)
    methods = sorted({e.ci.method for m in analysis.metrics.values() for c in (analysis.ceiling, text)
                      for e in (m.conditions[c].diff,) if e is not None})
    parts = [
        f"Verdict for {text!r} against the ceiling {analysis.ceiling!r} over the base {analysis.base!r}: \"{label}\". "
        f"Numbers are means over {analysis.n_seeds} seed(s) x {analysis.n_examples} test examples with {pct}% "
        f"paired-bootstrap intervals ({' or '.join(methods)}, {analysis.n_boot} replicates). "
        f"On {METRIC_LABELS[deciding][0]} ({METRIC_LABELS[deciding][1]}; the deciding metric), "
        f"{_describe(analysis.metrics[deciding], analysis.ceiling, text)}; {why}."
    ]
    for name, (other_label, _) in outcomes.items():
        if name != deciding:
            parts.append(f"On {METRIC_LABELS[name][0]} ({METRIC_LABELS[name][1]}; reported, not deciding), "
                         f"{_describe(analysis.metrics[name], analysis.ceiling, text)}; the same rules give "
                         f'"{other_label}".')
    if deciding != "loglik":
        parts.append("No log-likelihood scores were given, so accuracy decided; it is much noisier.")
    return Verdict(text, label, deciding, {k: v[0] for k, v in outcomes.items()}, " ".join(parts))


def analyze_records(records: Mapping[str, Any], *, base: str, ceiling: str | None = None, **kwargs: Any) -> Analysis:
    """``analyze(score_matrices(records), ...)``: the analysis straight from per-example records."""
    return analyze(score_matrices(records), base=base, ceiling=ceiling, **kwargs)
