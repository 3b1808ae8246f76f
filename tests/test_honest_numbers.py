"""No number printed more exact than it is, and the interval shown beside a number is the one that decides: p at
the bootstrap's resolution, Holm at its floor, what would settle an undecided R, the median of an even count, and
the coverage of the shown interval with several seeds."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import scipy.stats
from scipy.special import ndtri

from harness.findings import TwoSeeds, _median_gain, analyze_group
from harness.run_folder import load_run
from harness.stats import analyze
from harness.wording import format_p, note

ROOT = Path(__file__).resolve().parents[1]


def _far_below_half(n_boot: int, texts: int = 1) -> dict:
    """A ceiling gaining 1 nat and text prompts recovering about a tenth of it, tightly: no replicate near 0.5."""
    rng = np.random.default_rng(7)
    n = 200
    base = rng.normal(-1, 0.3, n)
    gain = 1.0 + rng.normal(0, 0.1, n)
    ll = {"base": base, "soft": base + gain}
    for i in range(texts):
        ll[f"t{i}"] = base + 0.1 * gain + rng.normal(0, 0.05, n)
    return analyze({"loglik": ll}, base="base", ceiling="soft", n_boot=n_boot)


def test_a_p_with_no_replicate_beyond_the_null_is_a_bound() -> None:
    a = _far_below_half(2000)
    r = a.metrics["loglik"].ratios["t0"]
    assert r.ci.method == "bca" and r.ci.hi < 0.2
    # by hand: the replicates behind the interval never reach 0.5, so the bootstrap resolves p only to 1/2000
    assert (r.p, r.p_bound, r.decision_p_bound) == (1 / 2000, True, True)
    assert format_p(r.p, r.p_bound, 2000) == "< 1/2000"
    assert format_p(0.0312, False, 2000) == "= 0.0312"


def test_holm_at_the_floor_is_stored_exactly_and_printed_as_a_bound() -> None:
    a = _far_below_half(2000, texts=3)
    m = a.metrics["loglik"]
    assert m.family == ["t0", "t1", "t2"]
    # Holm's running maximum of (3 - j) p_(j) over three p's all at 1/2000: 3/2000 for each, no float residue
    assert [m.ratios[t].p_adjusted for t in m.family] == [0.0015] * 3
    assert all(m.ratios[t].p_adjusted_bound for t in m.family)
    o = a.verdicts["t0"].outcome
    assert o.p_adjusted_bound and format_p(o.p_adjusted, True, 2000, adjusted=True) == "<= 0.0015"


def test_examples_needed_accounts_for_holm() -> None:
    # three prompts near R = 0.5 whose raw p's pass 0.05 but not after Holm; what would settle each is sized at the
    # level Holm tests it at, so it always asks for more examples than the run has
    rng = np.random.default_rng(50)
    n = 200
    base = rng.normal(-1, 0.3, n)
    soft_gain = 1.0 + rng.normal(0, 0.2, n)
    ll = {"base": base, "soft": base + soft_gain}
    for name, share in {"t1": 0.38, "t2": 0.42, "t3": 0.44}.items():
        ll[name] = base + share * soft_gain + rng.normal(0, 0.6, n)
    a = analyze({"loglik": ll}, base="base", ceiling="soft", n_boot=4000)
    m = a.metrics["loglik"]
    undecided = [t for t in m.family if a.verdicts[t].label == "inconclusive"]
    assert any(m.ratios[t].decision_p < 0.05 for t in undecided), "a raw p under 0.05 that Holm does not pass"
    ranked = sorted(m.family, key=lambda t: m.ratios[t].decision_p)
    for t in undecided:
        r, o = m.ratios[t], a.verdicts[t].outcome
        step = 3 - ranked.index(t)  # hypotheses standing at its step of Holm's procedure
        half = r.decision.width / 2 * ndtri(1 - 0.05 / step / 2) / ndtri(1 - 0.05 / 2)
        assert o.n_needed == max(n + 1, math.ceil(n * (half / abs(r.value - 0.5)) ** 2)) and o.n_needed > n


def test_when_the_seeds_decide_more_seeds_not_examples_would_settle_it() -> None:
    rng = np.random.default_rng(54)
    n = 200
    base = rng.normal(-1, 0.3, (3, n))
    soft_gain = 1 + rng.normal(0, 0.05, (3, n))
    share = np.array([[0.1], [0.45], [0.8]])  # per-seed R far apart: the t-interval over seeds decides
    text = base + share * soft_gain + rng.normal(0, 0.05, (3, n))
    a = analyze({"loglik": {"base": base, "soft": base + soft_gain, "text": text}}, base="base", ceiling="soft",
                n_boot=2000)
    r, o = a.metrics["loglik"].ratios["text"], a.verdicts["text"].outcome
    assert r.decision.method == "t" and o.label == "inconclusive" and o.n_needed is None
    # by hand: the fewest seeds k whose t-interval t(0.975, k - 1) sd / sqrt(k) falls short of |R - 0.5|
    sd, gap = np.std(r.seed_t.per_seed, ddof=1), abs(r.value - 0.5)
    k = next(k for k in range(4, 1000) if scipy.stats.t.ppf(0.975, k - 1) * sd / math.sqrt(k) < gap)
    assert o.seeds_needed == k


def test_the_shown_difference_interval_covers_the_truth_with_three_seeds() -> None:
    # 3 seeds whose means differ by twice the within-seed standard error: the hierarchical bootstrap over 3 seeds
    # covers the truth about 88% of the time; the interval shown is the wider of it and the t-interval over seeds,
    # the one the verdict uses, and must cover it at least 93% of the time
    rng = np.random.default_rng(2024)
    n, sd, runs, covered = 100, 1.0, 400, 0
    between = 2 * sd / math.sqrt(n)
    for _ in range(runs):
        base = rng.normal(0, 1, (3, n))
        x = base + 0.3 + rng.normal(0, between, (3, 1)) + rng.normal(0, sd, (3, n))
        d = analyze({"loglik": {"base": base, "x": x}}, base="base", n_boot=1000,
                    seed=int(rng.integers(1 << 30))).metrics["loglik"].conditions["x"].diff
        covered += d.ci.contains(0.3)
    assert covered / runs >= 0.93


def test_the_median_of_an_even_count_is_the_mean_of_the_two_middle_gains() -> None:
    # on a committed run: by linearity the paired gain of the two conditions' mean is the mean of their two gains
    run = load_run(ROOT / "results" / "quickstart")
    [(model, task, size)] = run.groups()
    g = analyze_group(run, model, task, n_boot=2000, train_size=size)
    diffs = {c: g.analysis.metrics["loglik"].conditions[c].diff for c in ("paraphrases.0", "paraphrases.1")}
    mid = _median_gain(g, "loglik", "paraphrases.0", "paraphrases.1")
    assert mid.value == pytest.approx((diffs["paraphrases.0"].value + diffs["paraphrases.1"].value) / 2, abs=1e-12)
    assert mid.ci.lo < mid.value < mid.ci.hi


def test_two_seeds_say_why_verdicts_are_hard() -> None:
    # t(0.975, 1) = 12.71: the note's figure, from a t table
    assert scipy.stats.t.ppf(0.975, 1) == pytest.approx(12.71, abs=0.005)
    assert "one degree of freedom (its 95% point is 12.7 standard errors)" in note(TwoSeeds(), False).plain
