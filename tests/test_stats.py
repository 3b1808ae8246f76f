"""The statistics module: each number checked against a value computed independently (by hand, scipy, exact counts)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import scipy.stats

from harness.errors import UserError
from harness.stats import (
    Analysis,
    BcaSkip,
    Undefined,
    analyze,
    analyze_records,
    mcnemar_exact,
    score_matrices,
    verdict,
)

N_BOOT = 4000  # enough for coverage checks; the scipy comparisons use 10,000 as the spec's tolerance assumes


def _alternating(n: int, size: float) -> np.ndarray:
    """+size, -size, ...: mean exactly 0 with n even, so any interval for its mean must cross 0."""
    return np.where(np.arange(n) % 2 == 0, size, -size)


# --- hand-computed ---------------------------------------------------------------------------------------------------
def test_tiny_case_by_hand() -> None:
    base = np.array([-1.0, -2.0, -0.5, -1.5])
    soft = np.array([-0.5, -1.0, -0.25, -0.5])  # gains 0.5, 1.0, 0.25, 1.0
    text = np.array([-0.75, -2.0, -0.5, -1.0])  # gains 0.25, 0, 0, 0.5
    a = analyze({"loglik": {"base": base, "soft": soft, "text": text}}, base="base", ceiling="soft", n_boot=N_BOOT)
    m = a.metrics["loglik"]
    # by hand: means -5/4, -2.25/4, -4.25/4; gains 2.75/4 and 0.75/4; R = 0.75 / 2.75 = 3/11
    assert m.conditions["base"].mean.value == pytest.approx(-1.25)
    assert m.conditions["soft"].mean.value == pytest.approx(-0.5625)
    assert m.conditions["text"].mean.value == pytest.approx(-1.0625)
    assert m.conditions["soft"].diff.value == pytest.approx(0.6875)
    assert m.conditions["text"].diff.value == pytest.approx(0.1875)
    assert m.conditions["base"].diff is None
    r = m.ratios["text"]
    assert r.value == pytest.approx(3 / 11) and r.undefined is None
    # a bootstrap mean of the gains cannot leave [min gain, max gain]; every gain is > 0, so R is defined
    gain = m.conditions["soft"].diff
    assert 0.25 <= gain.ci.lo <= gain.value <= gain.ci.hi <= 1.0
    assert 0.25 <= gain.percentile.lo and gain.percentile.hi <= 1.0
    assert m.ceiling_gain_clear is True
    assert r.ci.lo <= 3 / 11 <= r.ci.hi


def test_tiny_accuracy_and_mcnemar_by_hand() -> None:
    base = np.array([1, 0, 0, 1, 0, 1])
    text = np.array([1, 1, 0, 1, 1, 0])  # right where base is wrong: examples 1, 4 (b = 2); the reverse: 5 (c = 1)
    a = analyze({"accuracy": {"base": base, "text": text}}, base="base", n_boot=N_BOOT)
    c = a.metrics["accuracy"].conditions["text"]
    assert a.metrics["accuracy"].conditions["base"].mean.value == pytest.approx(3 / 6)
    assert c.mean.value == pytest.approx(4 / 6)
    assert c.diff.value == pytest.approx(1 / 6)
    assert (c.mcnemar.b, c.mcnemar.c) == (2, 1)
    # two-sided exact binomial, n = 3: P(X <= 1) + P(X >= 2) = 1
    assert c.mcnemar.p == pytest.approx(1.0)
    assert a.ceiling is None and a.verdicts == {} and a.metrics["accuracy"].ratios == {}


# --- against scipy.stats.bootstrap -----------------------------------------------------------------------------------
def _scipy_ci(x: np.ndarray, method: str) -> tuple[float, float]:
    ci = scipy.stats.bootstrap((x,), np.mean, method=method, n_resamples=10_000,
                               rng=np.random.default_rng(7)).confidence_interval
    return float(ci.low), float(ci.high)


def test_percentile_ci_matches_scipy() -> None:
    x = np.random.default_rng(3).normal(0.0, 1.0, 200)
    a = analyze({"loglik": {"zero": np.zeros(200), "x": x}}, base="zero", n_boot=10_000, seed=1)
    est = a.metrics["loglik"].conditions["x"].mean
    lo, hi = _scipy_ci(x, "percentile")
    assert est.percentile.method == "percentile"
    assert est.percentile.lo == pytest.approx(lo, abs=0.01)
    assert est.percentile.hi == pytest.approx(hi, abs=0.01)


def test_bca_ci_matches_scipy() -> None:
    # right-skewed data, so BCa moves both bounds up from the percentile ones; scipy must see the same shift
    x = np.random.default_rng(100).exponential(1.0, 200)
    a = analyze({"loglik": {"zero": np.zeros(200), "x": x}}, base="zero", n_boot=10_000, seed=0)
    est = a.metrics["loglik"].conditions["x"].mean
    lo, hi = _scipy_ci(x, "BCa")
    p_lo, p_hi = _scipy_ci(x, "percentile")
    assert est.ci.method == "bca" and est.ci.bca_skipped is None
    assert est.ci.lo == pytest.approx(lo, abs=0.01)
    assert est.ci.hi == pytest.approx(hi, abs=0.01)
    assert lo > p_lo and hi > p_hi
    assert est.ci.lo > est.percentile.lo and est.ci.hi > est.percentile.hi


def test_bca_matches_scipy_closely_on_a_small_skewed_sample() -> None:
    # with n = 20 BCa moves the bounds by ~0.05-0.1 from the percentile ones; a wrong bias (z0) or acceleration
    # term moves the lower bound by >= 0.015, far more than the Monte-Carlo error left with 100,000 replicates
    x = np.random.default_rng(21).exponential(1.0, 20)
    est = analyze({"loglik": {"zero": np.zeros(20), "x": x}}, base="zero", n_boot=100_000).metrics["loglik"]
    est = est.conditions["x"].mean
    ci = scipy.stats.bootstrap((x,), np.mean, method="BCa", n_resamples=100_000,
                               rng=np.random.default_rng(7)).confidence_interval
    assert est.ci.method == "bca"
    assert est.ci.lo == pytest.approx(ci.low, abs=0.008)
    assert est.ci.hi == pytest.approx(ci.high, abs=0.016)


def test_bca_falls_back_to_percentile_saying_why() -> None:
    # the base is constant: every replicate of its mean is equal, BCa is undefined
    a = analyze({"loglik": {"b": np.full(30, -1.0), "x": np.linspace(-2, 0, 30)}}, base="b", n_boot=N_BOOT)
    ci = a.metrics["loglik"].conditions["b"].mean.ci
    assert ci.method == "percentile" and ci.bca_skipped == BcaSkip("equal-replicates")
    assert (ci.lo, ci.hi) == (-1.0, -1.0)


# --- McNemar ---------------------------------------------------------------------------------------------------------
def test_mcnemar_known_values() -> None:
    assert mcnemar_exact(10, 2) == pytest.approx(2 * scipy.stats.binom.cdf(2, 12, 0.5))
    assert mcnemar_exact(10, 2) == pytest.approx(0.03857, abs=1e-5)
    assert mcnemar_exact(7, 7) == 1.0
    assert mcnemar_exact(0, 0) == 1.0
    # Armitage & Berry (1994, p. 127), two culture media on 50 sputum specimens: discordant 12 and 2, exact P = 0.0129
    assert mcnemar_exact(12, 2) == pytest.approx(2 * sum(math.comb(14, k) for k in range(3)) / 2**14)
    assert round(mcnemar_exact(12, 2), 4) == 0.0129
    assert mcnemar_exact(2, 12) == mcnemar_exact(12, 2)


def _pairs(b: int, c: int, both: int, neither: int) -> tuple[np.ndarray, np.ndarray]:
    """(base, condition) 0/1 vectors with b 'condition right, base wrong' and c 'base right, condition wrong'."""
    base = np.array([0] * b + [1] * c + [1] * both + [0] * neither)
    cond = np.array([1] * b + [0] * c + [1] * both + [0] * neither)
    return base, cond


def test_mcnemar_in_the_analysis_and_pooled_over_seeds() -> None:
    base, cond = _pairs(10, 2, 30, 18)
    m = analyze({"accuracy": {"base": base, "x": cond}}, base="base", n_boot=200).metrics["accuracy"]
    mc = m.conditions["x"].mcnemar
    assert (mc.b, mc.c) == (10, 2) and mc.p == pytest.approx(0.0385742, abs=1e-6)
    b0, c0 = _pairs(6, 1, 20, 13)
    b1, c1 = _pairs(4, 1, 25, 10)
    mc = analyze({"accuracy": {"base": np.stack([b0, b1]), "x": np.stack([c0, c1])}}, base="base",
                 n_boot=200).metrics["accuracy"].conditions["x"].mcnemar
    assert (mc.b, mc.c) == (10, 2) and mc.p == pytest.approx(2 * scipy.stats.binom.cdf(2, 12, 0.5))
    assert [(s.b, s.c) for s in mc.per_seed] == [(6, 1), (4, 1)]
    assert mc.per_seed[0].p == pytest.approx(2 * scipy.stats.binom.cdf(1, 7, 0.5))
    assert mc.per_seed[1].p == pytest.approx(2 * scipy.stats.binom.cdf(1, 5, 0.5))


# --- the ratio -------------------------------------------------------------------------------------------------------
def test_text_recovering_exactly_half_on_every_example_gives_r_half() -> None:
    rng = np.random.default_rng(5)
    base = rng.normal(-1.0, 0.5, 300)
    soft = base + rng.uniform(0.1, 0.6, 300)
    text = base + 0.5 * (soft - base)
    a = analyze({"loglik": {"base": base, "soft": soft, "text": text}}, base="base", ceiling="soft", n_boot=N_BOOT)
    r = a.metrics["loglik"].ratios["text"]
    assert r.value == pytest.approx(0.5, abs=1e-9)
    assert r.ci.lo == pytest.approx(0.5, abs=1e-9) and r.ci.hi == pytest.approx(0.5, abs=1e-9)
    assert r.n_excluded == 0


def test_accuracy_r_half_from_counts() -> None:
    n = 200
    base = np.zeros(n)
    base[:100] = 1
    soft = base.copy()
    soft[100:140] = 1  # 40 more right than base
    text = base.copy()
    text[100:120] = 1  # 20 of those
    a = analyze({"accuracy": {"base": base, "soft": soft, "text": text}}, base="base", ceiling="soft", n_boot=N_BOOT)
    m = a.metrics["accuracy"]
    assert m.conditions["soft"].diff.value == pytest.approx(40 / n)
    assert m.conditions["text"].diff.value == pytest.approx(20 / n)
    r = m.ratios["text"]
    assert r.value == pytest.approx(0.5)
    assert r.ci.lo < 0.5 < r.ci.hi and r.percentile.lo < 0.5 < r.percentile.hi
    # R of a replicate is (text wins drawn) / (soft wins drawn), a share of 20 of 40: it lies in [0, 1]
    assert 0.0 <= r.percentile.lo and r.percentile.hi <= 1.0


def test_undefined_r_when_the_ceiling_gain_crosses_zero() -> None:
    rng = np.random.default_rng(11)
    base = rng.normal(-1.0, 0.5, 100)
    soft = base + _alternating(100, 0.1)
    text = base + 0.3
    m = analyze({"loglik": {"base": base, "soft": soft, "text": text}}, base="base", ceiling="soft",
                n_boot=N_BOOT).metrics["loglik"]
    r = m.ratios["text"]
    assert r.value is None and r.ci is None and r.percentile is None
    gain = m.conditions["soft"].diff
    assert r.undefined == Undefined(gain)  # its interval crosses 0: no other test is asked
    assert m.ceiling_gain_clear is False


def test_replicates_with_zero_ceiling_gain_are_counted() -> None:
    # the ceiling beats the base on 2 of 40 examples only: a replicate misses both with prob. (38/40)^40 = 0.13
    base = np.zeros(40)
    soft = base.copy()
    soft[:2] = 1
    r = analyze({"accuracy": {"base": base, "soft": soft, "text": base.copy()}}, base="base", ceiling="soft",
                n_boot=N_BOOT).metrics["accuracy"].ratios["text"]
    p = (38 / 40) ** 40
    assert abs(r.n_excluded - N_BOOT * p) < 5 * math.sqrt(N_BOOT * p * (1 - p))
    assert r.value is None  # 13% of the replicates have no gain at all, so the gain's lower bound is 0


# --- pairing ---------------------------------------------------------------------------------------------------------
def test_pairing_gives_a_narrow_difference_interval() -> None:
    rng = np.random.default_rng(2)
    a_ = rng.normal(0.0, 1.0, 200)
    b_ = a_ + 0.01 + rng.normal(0.0, 0.001, 200)
    d = analyze({"loglik": {"a": a_, "b": b_}}, base="a", n_boot=N_BOOT).metrics["loglik"].conditions["b"].diff
    assert d.value == pytest.approx(float(np.mean(b_ - a_)))
    assert d.ci.lo > 0
    # the unpaired (Welch) 95% interval for the same difference, from the two samples' own variances
    unpaired = 2 * 1.96 * math.sqrt(a_.var(ddof=1) / 200 + b_.var(ddof=1) / 200)
    assert unpaired > 0.3
    assert d.ci.hi - d.ci.lo < 0.001


# --- several seeds ---------------------------------------------------------------------------------------------------
def _three_conditions(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    base = rng.normal(-1.0, 0.5, n)
    return {"base": base, "soft": base + 0.3 + rng.normal(0, 0.1, n), "text": base + 0.2 + rng.normal(0, 0.1, n)}


def test_several_seeds_report_spread_and_pooled_means() -> None:
    rngs = [np.random.default_rng(s) for s in (20, 21, 22)]
    seeds = [_three_conditions(r, 80) for r in rngs]
    scores = {c: np.stack([s[c] for s in seeds]) for c in ("base", "soft", "text")}
    a = analyze({"loglik": scores}, base="base", ceiling="soft", n_boot=N_BOOT)
    assert (a.n_seeds, a.n_examples) == (3, 80)
    c = a.metrics["loglik"].conditions["text"]
    row_means = scores["text"].mean(axis=1)
    assert c.seeds.per_seed == pytest.approx(list(row_means))
    assert c.seeds.std == pytest.approx(float(np.std(row_means, ddof=1)))
    assert (c.seeds.min, c.seeds.max) == pytest.approx((row_means.min(), row_means.max()))
    assert c.diff_seeds.per_seed == pytest.approx(list((scores["text"] - scores["base"]).mean(axis=1)))
    assert c.mean.value == pytest.approx(float(scores["text"].mean()))
    assert c.mean.ci.method == "percentile" and c.mean.ci.bca_skipped == BcaSkip("several-seeds")
    r = a.metrics["loglik"].ratios["text"]
    gains = scores["text"] - scores["base"], scores["soft"] - scores["base"]
    assert r.value == pytest.approx(float(gains[0].mean() / gains[1].mean()))
    assert r.ci.lo < r.value < r.ci.hi


def test_identical_seeds_give_the_single_seed_point_estimates() -> None:
    one = _three_conditions(np.random.default_rng(30), 60)
    single = analyze({"loglik": one}, base="base", ceiling="soft", n_boot=N_BOOT).metrics["loglik"]
    tripled = analyze({"loglik": {c: np.stack([v] * 3) for c, v in one.items()}}, base="base", ceiling="soft",
                      n_boot=N_BOOT).metrics["loglik"]
    for c in one:
        assert tripled.conditions[c].mean.value == pytest.approx(single.conditions[c].mean.value)
        assert tripled.conditions[c].seeds.std == pytest.approx(0.0, abs=1e-12)
    for c in ("soft", "text"):
        assert tripled.conditions[c].diff.value == pytest.approx(single.conditions[c].diff.value)
    assert tripled.ratios["text"].value == pytest.approx(single.ratios["text"].value)


def test_the_bootstrap_resamples_seeds() -> None:
    # seeds constant at 0, 1, 2: only seed resampling moves the mean. The mean of 3 seeds drawn with replacement is 0
    # with probability 1/27 > 2.5% and 2 likewise, so the exact 95% percentile interval is [0, 2]
    scores = {"base": np.zeros((3, 10)), "x": np.repeat([[0.0], [1.0], [2.0]], 10, axis=1)}
    ci = analyze({"loglik": scores}, base="base", n_boot=N_BOOT).metrics["loglik"].conditions["x"].mean.ci
    assert (ci.lo, ci.hi) == (0.0, 2.0)


# --- verdicts --------------------------------------------------------------------------------------------------------
def _verdict_for(soft_gain: np.ndarray, text_gain: np.ndarray, n_boot: int = N_BOOT) -> tuple[Analysis, str]:
    base = np.random.default_rng(40).normal(-1.0, 0.5, soft_gain.size)
    a = analyze({"loglik": {"base": base, "soft": base + soft_gain, "text": base + text_gain}}, base="base",
                ceiling="soft", n_boot=n_boot)
    return a, a.verdicts["text"].label


def test_verdict_text_closes_gap() -> None:
    rng = np.random.default_rng(41)
    a, label = _verdict_for(0.3 + rng.normal(0, 0.05, 300), 0.27 + rng.normal(0, 0.05, 300))
    assert label == "text-closes-gap"
    v = a.verdicts["text"]
    assert v.metric == "loglik" and v.by_metric == {"loglik": "text-closes-gap"}
    r = a.metrics["loglik"].ratios["text"]
    assert r.ci.lo > 0.5
    assert v.outcome.rule == "r-above" and v.outcome.p_adjusted == r.p_adjusted
    assert verdict(a, "text") == v


def test_verdict_soft_only() -> None:
    rng = np.random.default_rng(42)
    a, label = _verdict_for(0.3 + rng.normal(0, 0.05, 300), 0.03 + rng.normal(0, 0.05, 300))
    assert label == "soft-only"
    assert a.metrics["loglik"].ratios["text"].ci.hi < 0.5


def test_verdict_neither() -> None:
    a, label = _verdict_for(_alternating(200, 0.05), np.roll(_alternating(200, 0.08), 1))
    assert label == "neither"
    assert a.metrics["loglik"].ratios["text"].value is None
    assert a.verdicts["text"].outcome.rule == "neither-improves"


def test_verdict_inconclusive_when_r_straddles_half() -> None:
    noise = np.random.default_rng(43).normal(0, 1.0, 300)
    a, label = _verdict_for(np.full(300, 0.3), 0.15 + noise - noise.mean())
    assert label == "inconclusive"
    r = a.metrics["loglik"].ratios["text"]
    assert r.value == pytest.approx(0.5) and r.ci.lo < 0.5 < r.ci.hi


def test_verdict_inconclusive_when_only_the_text_improves() -> None:
    a, label = _verdict_for(_alternating(200, 0.05), np.full(200, 0.2))
    assert label == "inconclusive"
    assert a.verdicts["text"].outcome.rule == "only-text-improves"


def metrics_that_disagree() -> tuple[dict, dict]:
    """Scores on which the text closes the gap on log-likelihood, while on accuracy the ceiling wins 4 examples and
    loses 4 and the text wins 2 and loses 1: neither clearly positive. (loglik, accuracy) by condition."""
    rng = np.random.default_rng(44)
    n = 300
    base_ll = rng.normal(-1.0, 0.5, n)
    loglik = {"base": base_ll, "soft": base_ll + 0.3 + rng.normal(0, 0.05, n),
              "text": base_ll + 0.27 + rng.normal(0, 0.05, n)}
    base_acc = (np.arange(n) % 2).astype(float)
    soft_acc, text_acc = base_acc.copy(), base_acc.copy()
    soft_acc[[0, 2, 4, 6]], soft_acc[[1, 3, 5, 7]] = 1, 0
    text_acc[[0, 2]], text_acc[1] = 1, 0
    return loglik, {"base": base_acc, "soft": soft_acc, "text": text_acc}


def test_verdict_is_decided_on_loglik_and_reports_accuracy() -> None:
    loglik, accuracy = metrics_that_disagree()
    a = analyze({"loglik": loglik, "accuracy": accuracy}, base="base", ceiling="soft", n_boot=N_BOOT)
    v = a.verdicts["text"]
    assert v.label == "text-closes-gap" and v.metric == "loglik"
    assert v.by_metric == {"loglik": "text-closes-gap", "accuracy": "neither"}
    assert v.outcomes["accuracy"].rule == "neither-improves"
    acc_only = analyze({"accuracy": accuracy}, base="base", ceiling="soft", n_boot=N_BOOT)
    assert acc_only.verdicts["text"].metric == "accuracy"


# --- records, JSON, determinism --------------------------------------------------------------------------------------
def _recs(ids: list[str], correct: list[int], nll: list[float]) -> list[dict]:
    return [{"example_id": i, "correct": bool(c), "gold_nll": x, "pred": 0} for i, c, x in zip(ids, correct, nll,
                                                                                                strict=True)]


def test_score_matrices_aligns_by_id_and_negates_nll() -> None:
    records = {
        "base": [_recs(["a", "b", "c"], [1, 0, 0], [0.5, 1.0, 2.0]), _recs(["d", "e", "f"], [0, 0, 1], [1, 2, 3])],
        "text": [_recs(["c", "a", "b"], [1, 1, 1], [0.25, 0.5, 0.75]), _recs(["d", "e", "f"], [1, 1, 1], [0, 0, 0])],
    }
    m = score_matrices(records)
    np.testing.assert_array_equal(m["accuracy"]["base"], [[1, 0, 0], [0, 0, 1]])
    np.testing.assert_array_equal(m["accuracy"]["text"], [[1, 1, 1], [1, 1, 1]])
    np.testing.assert_array_equal(m["loglik"]["text"], [[-0.5, -0.75, -0.25], [0, 0, 0]])
    by_seed = {"base": {0: records["base"][0], 1: records["base"][1]}, "text": {1: records["text"][1],
                                                                              0: records["text"][0]}}
    assert all(np.array_equal(score_matrices(by_seed)[k][c], m[k][c]) for k in m for c in m[k])
    a = analyze_records(records, base="base", n_boot=100)
    assert a.metrics["loglik"].conditions["base"].mean.value == pytest.approx(-(0.5 + 1 + 2 + 1 + 2 + 3) / 6)
    assert a.metrics["accuracy"].conditions["text"].mcnemar.b == 4


def test_to_dict_is_json_with_plain_floats_and_runs_are_reproducible() -> None:
    one = _three_conditions(np.random.default_rng(50), 50)
    acc = {c: (v > -1.0).astype(float) for c, v in one.items()}
    a = analyze({"loglik": one, "accuracy": acc}, base="base", ceiling="soft", n_boot=500, seed=3)
    d = a.to_dict()
    assert json.loads(json.dumps(d)) == d
    assert type(d["metrics"]["loglik"]["ratios"]["text"]["value"]) is float
    assert type(d["metrics"]["accuracy"]["conditions"]["soft"]["diff"]["ci"]["lo"]) is float
    assert analyze({"loglik": one, "accuracy": acc}, base="base", ceiling="soft", n_boot=500, seed=3) == a


# --- errors ----------------------------------------------------------------------------------------------------------
X = np.zeros((1, 5))


@pytest.mark.parametrize(
    ("scores", "kwargs", "match"),
    [
        ({"loglik": {"base": X}}, {}, "at least two conditions"),
        ({"loglik": {"a": X, "b": X}}, {"base": "nope"}, "base 'nope' is not among"),
        ({"loglik": {"a": X, "b": X}}, {"ceiling": "soft"}, "ceiling 'soft' is not among"),
        ({"loglik": {"a": X, "b": X}}, {"ceiling": "a"}, "ceiling and base are both"),
        ({"loglik": {"a": np.zeros((0, 5)), "b": np.zeros((0, 5))}}, {}, r"\['b'\] has zero seeds|\['a'\] has zero"),
        ({"loglik": {"a": X, "b": np.zeros((1, 4))}}, {}, r"\['b'\] has shape \(1, 4\) but the others \(1, 5\)"),
        ({"loglik": {"a": np.zeros((2, 5)), "b": X}}, {}, "has shape"),
        ({"loglik": {"a": np.zeros((1, 2, 3)), "b": X}}, {}, r"pass \(n_seeds, n_examples\)"),
        ({"accuracy": {"a": X, "b": X + 0.5}}, {}, "other than 0/1"),
        ({"loglik": {"a": X, "b": X + np.nan}}, {}, "NaN"),
        ({"f1": {"a": X, "b": X}}, {}, "unknown metric 'f1'"),
        ({"loglik": {"a": X, "b": X}}, {"n_boot": 0}, "n_boot=0"),
        ({"loglik": {"a": X, "b": X}}, {"texts": ["c"]}, "text condition 'c'"),
        ({"loglik": {"a": X, "b": X}, "accuracy": {"a": X}}, {}, "give every metric the same conditions"),
        ({}, {}, "no metrics"),
    ],
)
def test_user_errors(scores: dict, kwargs: dict, match: str) -> None:
    with pytest.raises(UserError, match=match):
        analyze(scores, **{"base": "a", "n_boot": 10, **kwargs})


def test_record_errors_name_the_condition_and_seed() -> None:
    ok = _recs(["a", "b"], [1, 0], [0.1, 0.2])
    with pytest.raises(UserError, match=r"condition 'text', seed 1: example ids differ from 'base' \(missing \['b'\], "
                                        r"extra \['z'\]\)"):
        score_matrices({"base": [ok, ok], "text": [ok, _recs(["a", "z"], [1, 0], [0.1, 0.2])]})
    with pytest.raises(UserError, match="condition 'text' has seeds"):
        score_matrices({"base": [ok, ok], "text": [ok]})
    with pytest.raises(UserError, match="condition 'text': no seeds"):
        score_matrices({"base": [ok], "text": []})
    with pytest.raises(UserError, match="example id 'a' appears twice"):
        score_matrices({"base": [_recs(["a", "a"], [1, 0], [0.1, 0.2])], "text": [ok]})
    with pytest.raises(UserError, match="seed 1 has 3 test examples but seed 0 has 2"):
        three = _recs(["a", "b", "c"], [1, 0, 1], [0.1, 0.2, 0.3])
        score_matrices({"base": [ok, three], "text": [ok, three]})
    with pytest.raises(UserError, match="condition 'text', seed 0: 'correct' or 'gold_nll' is not a finite"):
        score_matrices({"base": [ok], "text": [_recs(["a", "b"], [1, 0], [0.1, None])]})
    with pytest.raises(UserError, match="record 0 has no 'gold_nll'"):
        score_matrices({"base": [[{"example_id": "a", "correct": True}]], "text": [ok]})


def test_verdict_needs_a_ceiling_and_a_text_condition() -> None:
    a = analyze({"loglik": {"a": X, "b": X + 1}}, base="a", n_boot=10)
    with pytest.raises(UserError, match="no ceiling"):
        verdict(a, "b")
    a = analyze({"loglik": {"a": X, "b": X + 1, "c": X}}, base="a", ceiling="b", n_boot=10)
    with pytest.raises(UserError, match="'b' is not a text condition"):
        verdict(a, "b")


# --- decision rules that agree, multiplicity, seeds, degenerate results ---------------------------------------------
def _discordant(n: int, b: int, c: int, base_right: int = 60) -> tuple[np.ndarray, np.ndarray]:
    """Base and condition 0/1 scores: ``b`` examples only the condition gets right, ``c`` only the base."""
    base = np.zeros(n)
    base[:base_right] = 1
    cond = base.copy()
    cond[base_right:base_right + b] = 1  # base wrong, condition right
    cond[:c] = 0  # base right, condition wrong
    return base, cond


def test_an_accuracy_gain_is_clear_only_when_mcnemar_agrees() -> None:
    base, cond = _discordant(137, 6, 1)
    a = analyze({"accuracy": {"base": base, "x": cond}}, base="base", n_boot=10_000)
    x = a.metrics["accuracy"].conditions["x"]
    assert (x.mcnemar.b, x.mcnemar.c) == (6, 1) and x.mcnemar.p == pytest.approx(0.125)  # 2 * 8/128, by hand
    assert x.diff.ci.lo > 0  # the BCa interval alone would call it clear (the issue's +0.007)
    assert x.clear == 0  # the exact test does not agree, so it is not clear
    base, cond = _discordant(137, 12, 1)  # p = 2 * 14/8192 = 0.0034: both agree
    y = analyze({"accuracy": {"base": base, "x": cond}}, base="base", n_boot=10_000).metrics["accuracy"]
    assert y.conditions["x"].mcnemar.p == pytest.approx(2 * 14 / 2**13) and y.conditions["x"].clear == 1


def test_under_the_null_accuracy_gains_are_called_clear_at_most_at_the_nominal_rate() -> None:
    rng = np.random.default_rng(7)
    n, sets, clear, bca_alone = 137, 400, 0, 0
    for _ in range(sets):
        base = (rng.random(n) < 0.5).astype(float)
        cond = base.copy()
        u = rng.random(n)
        b_type, c_type = u < 0.02, (u >= 0.02) & (u < 0.04)  # 2% discordant each way
        base[b_type], cond[b_type] = 0, 1
        base[c_type], cond[c_type] = 1, 0
        a = analyze({"accuracy": {"base": base, "x": cond}}, base="base", n_boot=1000, seed=int(rng.integers(1e9)))
        clear += a.metrics["accuracy"].conditions["x"].clear > 0
        bca_alone += a.metrics["accuracy"].conditions["x"].diff.ci.lo > 0
    assert bca_alone > clear  # the interval alone over-claims; the exact test reins it in
    # one-sided nominal rate 2.5%; Monte Carlo error on 400 sets: 2 standard errors = 1.6 points
    assert clear / sets <= 0.025 + 2 * math.sqrt(0.025 * 0.975 / sets)


def test_accuracy_means_get_wilson_intervals_never_zero_width() -> None:
    a = analyze({"accuracy": {"base": np.zeros(137), "x": np.ones(137)}}, base="base", n_boot=500)
    ci = a.metrics["accuracy"].conditions["base"].mean.ci
    # Wilson at k = 0: [0, z^2 / (n + z^2)], by hand
    z = scipy.stats.norm.ppf(0.975)
    assert ci.method == "wilson" and ci.lo == 0 and ci.hi == pytest.approx(z**2 / (137 + z**2))
    assert a.metrics["accuracy"].conditions["base"].flag == "floor"
    assert a.metrics["accuracy"].conditions["x"].flag == "saturated"


def _family(gains: dict[str, float], n: int = 200, seed: int = 50) -> Analysis:
    rng = np.random.default_rng(seed)
    base = rng.normal(-1, 0.3, n)
    soft_gain = 1.0 + rng.normal(0, 0.2, n)
    ll = {"base": base, "soft": base + soft_gain}
    for name, share in gains.items():
        ll[name] = base + share * soft_gain + rng.normal(0, 0.6, n)
    return analyze({"loglik": ll}, base="base", ceiling="soft", n_boot=4000)


def test_holm_over_the_family_of_text_conditions() -> None:
    a = _family({"t1": 0.38, "t2": 0.42, "t3": 0.44})
    m = a.metrics["loglik"]
    assert m.family == ["t1", "t2", "t3"]
    raw = [m.ratios[t].decision_p for t in m.family]
    # Holm by hand: sort, multiply the i-th smallest by (m - i), running maximum, cap at 1
    order = np.argsort(raw)
    by_hand = np.empty(3)
    running = 0.0
    for i, k in enumerate(order):
        running = max(running, min(1.0, (3 - i) * raw[k]))
        by_hand[k] = running
    assert [m.ratios[t].p_adjusted for t in m.family] == pytest.approx(list(by_hand))
    from statsmodels.stats.multitest import multipletests

    assert list(by_hand) == pytest.approx(list(multipletests(raw, method="holm")[1]))
    # each verdict follows its adjusted p, not its raw p
    for t in m.family:
        adj = m.ratios[t].p_adjusted
        assert (a.verdicts[t].label == "soft-only") == (adj < 0.05 and m.ratios[t].value < 0.5)
    assert any(p < 0.05 <= q for p, q in zip(raw, by_hand, strict=True)), "the correction should matter here"


def test_bca_p_value_inverts_the_bca_interval() -> None:
    rng = np.random.default_rng(51)
    n = 150
    base = rng.normal(-1, 0.3, n)
    gain = 1.0 + rng.normal(0, 0.2, n)
    ll = {"base": base, "soft": base + gain, "t": base + 0.42 * gain + rng.normal(0, 0.8, n)}

    def ratio(confidence: float):
        return analyze({"loglik": ll}, base="base", ceiling="soft", n_boot=4000,
                       confidence=confidence).metrics["loglik"].ratios["t"]

    r = ratio(0.95)
    assert r.ci.method == "bca" and 0.002 < r.p < 0.5
    # at a level just wider than 1 - p the BCa interval reaches 0.5; just narrower, it stops short of it
    assert ratio(1 - 0.9 * r.p).ci.contains(0.5)
    assert not ratio(1 - 1.1 * r.p).ci.contains(0.5)


def test_duplicates_and_same_as_base_get_no_second_vote() -> None:
    rng = np.random.default_rng(52)
    n = 200
    base = rng.normal(-1, 0.3, n)
    soft = base + 1 + rng.normal(0, 0.2, n)
    text = base + 0.2 + rng.normal(0, 0.2, n)
    a = analyze({"loglik": {"base": base, "soft": soft, "text": text, "copy": text.copy(), "nothing": base.copy()}},
                base="base", ceiling="soft", n_boot=2000)
    assert a.duplicates == {"copy": "text", "nothing": "base"}
    assert a.metrics["loglik"].family == ["text"]  # one vote for the two identical prompts
    assert a.verdicts["copy"].label == a.verdicts["text"].label == "soft-only"
    assert a.verdicts["nothing"].label == "same-as-base"


def test_a_ceiling_at_chance_makes_the_metric_uninformative() -> None:
    rng = np.random.default_rng(53)
    n = 300
    k = 2  # two choices: chance is 1/2 on accuracy and -ln 2 on the gold log-likelihood
    base = -math.log(k) - 0.03 + rng.normal(0, 0.05, n)  # worse than uniform over the two choices, as WinoGrande
    soft = base + 0.01 + rng.normal(0, 0.01, n)  # clearly above the base, still no better than chance
    text = base + rng.normal(0, 0.02, n)
    a = analyze({"loglik": {"base": base, "soft": soft, "text": text}}, base="base", ceiling="soft", n_boot=2000,
                chance={"loglik": -math.log(k)})
    m = a.metrics["loglik"]
    assert m.conditions["soft"].clear == 1 and m.conditions["soft"].flag == "chance"
    v = a.verdicts["text"]
    assert v.label == "uninformative"
    assert (v.outcome.rule, v.outcome.who, v.outcome.condition, v.outcome.flag) == ("uninformative", "ceiling", "soft",
                                                                                    "chance")


def test_three_seeds_use_the_wider_interval() -> None:
    rng = np.random.default_rng(54)
    n = 200
    base = rng.normal(-1, 0.3, (3, n))
    soft_gain = 1 + rng.normal(0, 0.05, (3, n))
    share = np.array([[0.1], [0.45], [0.8]])  # the text's recovery differs a lot between seeds (fits)
    text = base + share * soft_gain + rng.normal(0, 0.05, (3, n))
    a = analyze({"loglik": {"base": base, "soft": base + soft_gain, "text": text}}, base="base", ceiling="soft",
                n_boot=2000)
    r = a.metrics["loglik"].ratios["text"]
    per_seed = [float((text[s] - base[s]).mean() / soft_gain[s].mean()) for s in range(3)]
    assert r.seed_t.per_seed == pytest.approx(per_seed)
    # by hand: mean +- t(0.975, 2) * sd / sqrt(3)
    half = scipy.stats.t.ppf(0.975, 2) * np.std(per_seed, ddof=1) / math.sqrt(3)
    assert (r.seed_t.ci.lo, r.seed_t.ci.hi) == pytest.approx((np.mean(per_seed) - half, np.mean(per_seed) + half))
    assert r.seed_t.ci.width > r.ci.width and r.decision == r.seed_t.ci  # the wider decides
    assert a.verdicts["text"].label == "inconclusive" and r.decision_p == max(r.p, r.seed_t.p)


def test_bootstrap_replicates_are_the_same_bits_whatever_the_thread_count() -> None:
    """A committed report re-rendered elsewhere must be byte-identical: the replicate means may not depend on how many
    threads BLAS uses (a threaded matrix product sums in another order; with it, 1 and 2 threads differed in the last
    bit of an interval endpoint of winogrande-ceiling's verdict.json)."""
    from threadpoolctl import threadpool_limits

    from harness.stats import _replicate_means

    values = np.random.default_rng(1).normal(size=(1, 1267, 12))
    out = []
    for threads in (1, 2, 4):
        with threadpool_limits(threads):
            out.append(_replicate_means(values, 2000, np.random.default_rng(0)))
    assert all(np.array_equal(out[0], o) for o in out[1:])
