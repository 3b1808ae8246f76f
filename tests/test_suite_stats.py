"""Known-answer tests of a suite's aggregate: mean R over tasks, its interval and the rank interval."""

import numpy as np
import pytest

from harness.errors import UserError
from harness.stats import suite_means


def const(value: float, seeds: int = 2, n: int = 20) -> np.ndarray:
    return np.full((seeds, n), value)


def test_constant_gains_give_exact_ratios_intervals_and_ranks():
    # every example's gain is the same, so every replicate's R is the point R: 0.25 / 1 and 0.75 / 1 exactly
    scores = {"t": {"base": const(0.0), "ceil": const(1.0), "a": const(0.25), "b": const(0.75)}}
    s = suite_means(scores, base="base", ceiling="ceil", texts=["a", "b"], gap={"t": True}, n_boot=500)
    a, b = s.rows
    assert (a.mean_r, a.ci.lo, a.ci.hi, a.rank, a.rank_ci) == (0.25, 0.25, 0.25, 2, (2, 2))
    assert (b.mean_r, b.ci.lo, b.ci.hi, b.rank, b.rank_ci) == (0.75, 0.75, 0.75, 1, (1, 1))
    assert s.tasks == ["t"] and s.no_gap == [] and s.n_excluded == 0


def test_mean_is_over_tasks_with_a_gap_only():
    scores = {
        "t1": {"base": const(0.0), "ceil": const(2.0), "a": const(0.4)},    # R = 0.2
        "t2": {"base": const(1.0), "ceil": const(2.0), "a": const(1.6)},    # R = 0.6
        "t3": {"base": const(0.0), "ceil": const(0.0), "a": const(5.0)},    # no gap: left out
    }
    s = suite_means(scores, base="base", ceiling="ceil", texts=["a"], gap={"t1": True, "t2": True, "t3": False},
                    n_boot=200)
    (a,) = s.rows
    assert a.mean_r == pytest.approx(0.4, abs=1e-15)  # (0.2 + 0.6) / 2, in float64
    assert a.per_task["t1"] == pytest.approx(0.2) and a.per_task["t2"] == pytest.approx(0.6)
    assert a.per_task["t3"] is None
    assert s.tasks == ["t1", "t2"] and s.no_gap == ["t3"]


def test_seeds_are_resampled_as_well_as_examples():
    # seed 0: the text gains nothing, seed 1: all of the ceiling's gain; examples within a seed are identical, so a
    # replicate's R is the share of seed-1 draws: 0 (1/4 of replicates), 0.5 (1/2) or 1 (1/4). The 95% percentile
    # interval is therefore exactly [0, 1], around the point R of 0.5
    text = np.stack([np.zeros(30), np.ones(30)])
    scores = {"t": {"base": const(0.0, n=30), "ceil": const(1.0, n=30), "a": text}}
    s = suite_means(scores, base="base", ceiling="ceil", texts=["a"], gap={"t": True}, n_boot=2000)
    (a,) = s.rows
    assert a.mean_r == 0.5 and (a.ci.lo, a.ci.hi) == (0.0, 1.0)


def test_interval_matches_the_normal_approximation():
    # one seed, ceiling gain 1 everywhere: a replicate's R is the mean of n resampled text gains, whose bootstrap
    # standard error is s / sqrt(n) (s: the sample's standard deviation, ddof 0). With 20,000 replicates the 2.5% and
    # 97.5% quantiles carry a Monte Carlo error of about 2% of that error; 5% of the half-width is the tolerance
    rng = np.random.default_rng(7)
    n = 400
    text = rng.normal(0.5, 1.0, size=(1, n))
    scores = {"t": {"base": np.zeros((1, n)), "ceil": np.ones((1, n)), "a": text}}
    s = suite_means(scores, base="base", ceiling="ceil", texts=["a"], gap={"t": True}, n_boot=20_000)
    (a,) = s.rows
    half = 1.959964 * text.std() / np.sqrt(n)
    assert a.mean_r == pytest.approx(text.mean(), rel=1e-12)
    assert a.mean_r - a.ci.lo == pytest.approx(half, rel=0.05)
    assert a.ci.hi - a.mean_r == pytest.approx(half, rel=0.05)


def test_rank_interval_spans_both_ranks_when_two_conditions_are_alike():
    # two texts drawn from the same distribution: each is first in about half the replicates, so both rank
    # intervals are [1, 2]; a third far below is last in every replicate
    rng = np.random.default_rng(3)
    n = 200
    scores = {"t": {"base": np.zeros((1, n)), "ceil": np.ones((1, n)), "a": rng.normal(0.5, 1.0, (1, n)),
                    "b": rng.normal(0.5, 1.0, (1, n)), "c": np.full((1, n), -3.0)}}
    s = suite_means(scores, base="base", ceiling="ceil", texts=["a", "b", "c"], gap={"t": True}, n_boot=4000)
    a, b, c = s.rows
    assert a.rank_ci == (1, 2) and b.rank_ci == (1, 2) and c.rank_ci == (3, 3) and c.rank == 3


def test_no_task_with_a_gap_gives_no_mean_and_missing_scores_are_refused():
    scores = {"t": {"base": const(0.0), "ceil": const(0.0), "a": const(1.0)}}
    (a,) = suite_means(scores, base="base", ceiling="ceil", texts=["a"], gap={"t": False}, n_boot=10).rows
    assert a.mean_r is None and a.rank is None
    with pytest.raises(UserError, match="no scores for b"):
        suite_means(scores, base="base", ceiling="ceil", texts=["a", "b"], gap={"t": True}, n_boot=10)
