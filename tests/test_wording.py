"""The one place findings become words: each verdict rule, why R is undefined, why BCa was not used, and the
explanation, worded from the analysis's numbers; emphasis marked, not written."""

from __future__ import annotations

import math

import numpy as np
from test_stats import N_BOOT, _alternating, _verdict_for, metrics_that_disagree

from harness import wording
from harness.stats import analyze
from harness.wording import Em, Text, markdown, words


def test_the_explanation_cites_the_numbers_and_the_rule() -> None:
    rng = np.random.default_rng(41)
    a, label = _verdict_for(0.3 + rng.normal(0, 0.05, 300), 0.27 + rng.normal(0, 0.05, 300))
    assert label == "text-closes-gap"
    r = a.metrics["loglik"].ratios["text"]
    text = wording.explanation(a, "text")
    assert f"R = {r.value:.3f} [{r.ci.lo:.3f}, {r.ci.hi:.3f}]" in text
    assert text.startswith("Verdict for 'text' against the ceiling 'soft' over the base 'base': \"text-closes-gap\".")
    reason = wording.reason(a.verdicts["text"].outcome, "loglik")
    assert reason.startswith("R's interval lies above 0.5 (p ") and reason in text


def test_each_rule_before_r_is_worded() -> None:
    a, _ = _verdict_for(_alternating(200, 0.05), np.roll(_alternating(200, 0.08), 1))
    assert "neither the ceiling nor the text prompt clearly improves" in wording.explanation(a, "text")
    r = a.metrics["loglik"].ratios["text"]
    gain = a.metrics["loglik"].conditions["soft"].diff
    said = wording.undefined(r.undefined)
    assert said.startswith("ceiling gain not clearly positive: ")
    assert f"[{gain.ci.lo:+.3f}, {gain.ci.hi:+.3f}]" in said and f"R is undefined ({said})" in wording.explanation(
        a, "text")
    a, _ = _verdict_for(_alternating(200, 0.05), np.full(200, 0.2))
    assert "the text prompt clearly improves but the ceiling does not" in wording.explanation(a, "text")


def test_the_metric_that_does_not_decide_is_reported() -> None:
    loglik, accuracy = metrics_that_disagree()
    a = analyze({"loglik": loglik, "accuracy": accuracy}, base="base", ceiling="soft", n_boot=N_BOOT)
    text = wording.explanation(a, "text")
    assert "reported, not deciding" in text and "McNemar p = " in text and 'the same rules give "neither"' in text


def test_uninformative_names_who_and_why() -> None:
    rng = np.random.default_rng(53)
    n = 300
    base = -math.log(2) - 0.03 + rng.normal(0, 0.05, n)
    soft = base + 0.01 + rng.normal(0, 0.01, n)
    a = analyze({"loglik": {"base": base, "soft": soft, "text": base + rng.normal(0, 0.02, n)}}, base="base",
                ceiling="soft", n_boot=2000, chance={"loglik": -math.log(2)})
    assert wording.reason(a.verdicts["text"].outcome, "loglik") == ("the ceiling 'soft' is no better than chance on "
                                                                    "gold log-likelihood")


def test_why_bca_was_not_used() -> None:
    a = analyze({"loglik": {"b": np.full(30, -1.0), "x": np.linspace(-2, 0, 30)}}, base="b", n_boot=N_BOOT)
    skip = a.metrics["loglik"].conditions["b"].mean.ci.bca_skipped
    assert wording.bca_skipped(skip) == "all bootstrap replicates are equal"
    several = analyze({"loglik": {"b": np.zeros((2, 5)), "x": np.ones((2, 5))}}, base="b", n_boot=N_BOOT)
    assert wording.bca_skipped(several.metrics["loglik"].conditions["x"].mean.ci.bca_skipped).startswith(
        "several seeds")


def test_emphasis_is_marked_not_written() -> None:
    t = words("Ceiling ", Em("soft"), " over base ", Em("base"), ".")
    assert markdown(t) == "Ceiling **soft** over base **base**."
    assert t.plain == "Ceiling soft over base base."
    assert (t + " More.").plain.endswith(". More.") and isinstance(t + "x", Text)
