"""The flags read from a trial's train and dev curves (overfitting, still improving, chosen at the first evaluation):
known answers worked by hand, and simulations with a fixed seed that hold them to their false-flag rate."""

from __future__ import annotations

import math
import random

import pytest

from harness.findings import FIT_ALPHA, fit_checks, rise_threshold
from harness.wording import fit_warning, fit_warnings


def said(check) -> list[str]:  # the warnings as the report words them
    return [fit_warning(w) for w in check.warnings]


def window(first: int, losses: list[float]) -> list[dict]:
    """A search's or a training's per-step points: one train loss per minibatch."""
    return [{"step": first + i, "train_loss": t} for i, t in enumerate(losses)]


def evaluation(step: int, losses: list[float]) -> dict:
    return {"step": step, "dev_loss": sum(losses) / len(losses), "dev_losses": losses}


def searched(later: list[float], last_dev: list[float]) -> dict:
    """Dev best at step 4 (every example 1.0), then ``last_dev`` at step 8; train losses of every step."""
    return {"best_step": 4, "stopped": "patience",
            "curves": [evaluation(0, [1.5] * 4), *window(1, [3.0, 2.0, 3.0, 2.0]), evaluation(4, [1.0] * 4),
                       *window(5, later), evaluation(8, last_dev)]}


RISE = [1.2, 1.3, 1.1, 1.2]  # differences 0.2, 0.3, 0.1, 0.2: mean 0.2, sd sqrt(0.02 / 3), z = 0.2 / (sd / 2) = 4.90


def test_threshold_is_bonferroni_over_the_pairs_of_evaluations() -> None:
    # two evaluations, one pair: the plain one-sided 5% point; three, three pairs: the 1.667% point; nine, 36 pairs:
    # the 0.139% point (all from a normal table)
    assert rise_threshold(2) == pytest.approx(1.6449, abs=1e-4)
    assert rise_threshold(3) == pytest.approx(2.1280, abs=1e-4)
    assert rise_threshold(9) == pytest.approx(2.9913, abs=1e-4)


def test_overfitting_needs_a_dev_rise_and_a_train_fall_both_beyond_noise() -> None:
    # the rise (z 4.90 > 2.13 with 3 evaluations) and a real train fall 2.5 -> 1.0 (against 2 SE = 2 * 0.292)
    [real] = fit_checks(searched([1.0, 1.1, 0.9, 1.0], RISE))
    assert real.label == "search" and real.assessable and real.train_loss == pytest.approx(2.5)
    assert said(real) == ["from step 4 to step 8 dev loss rises (1.000 -> 1.200, 4.9 standard errors of the paired "
                          "difference, beyond 2.13) while train loss falls (2.500 -> 1.000) beyond its minibatch "
                          "noise"]
    assert real.warnings[0].z == pytest.approx(0.2 / (math.sqrt(0.02 / 3) / 2))
    # minibatch noise: train means 2.5 -> 2.45, two standard errors of their difference 2 * 0.388 (by hand): no flag
    [noisy] = fit_checks(searched([2.9, 2.0, 3.0, 1.9], RISE))
    assert noisy.warnings == []
    # a dev rise of the same mean with a spread as large as itself: differences 0.2 ± 0.6, z 0.2 / 0.3 = 0.67
    [spread] = fit_checks(searched([1.0, 1.1, 0.9, 1.0], [1.8, 0.6, 1.8, 0.6]))
    assert spread.warnings == []


def test_still_improving_and_first_evaluation() -> None:
    # chosen at its last evaluation: still improving, whatever the noise (no other evaluation to rise to)
    log = {"best_step": 8, "stopped": "steps",
           "curves": [evaluation(0, [1.5] * 4), *window(1, [3.0, 2.0, 3.0, 2.0]), evaluation(4, [1.2] * 4),
                      *window(5, [2.0] * 4), evaluation(8, [1.0] * 4)]}
    [check] = fit_checks(log)
    assert said(check) == ["chosen at its last evaluation (step 8), where the fit ended at its step budget"]
    log["stopped"] = "max_minutes (45)"
    assert said(fit_checks(log)[0]) == ["chosen at its last evaluation (step 8), where the fit ended at its time "
                                         "budget (max_minutes (45))"]
    # chosen before the end (on accuracy, say); the last evaluation falls below the one before by 4.90 SE, back to
    # the chosen one's level (their paired difference is 0)
    def ended(chosen: float, before_last: float, last: list[float]) -> dict:
        return {"best_step": 4, "stopped": "steps",
                "curves": [evaluation(0, [1.5] * 4), *window(1, [3.0, 2.0, 3.0, 2.0]), evaluation(4, [chosen] * 4),
                           *window(5, [2.0, 2.1, 1.9, 2.0]), evaluation(8, [before_last] * 4),
                           *window(9, [2.0, 2.1, 1.9, 2.0]), evaluation(12, last)]}

    [check] = fit_checks(ended(1.2, 1.4, [1.2, 1.1, 1.3, 1.2]))
    assert [w.kind for w in check.warnings] == ["still-improving"]
    assert said(check) == ["dev loss still falls at the last evaluation (1.400 -> 1.200 at step 12, 4.9 standard "
                           "errors of the paired difference)"]
    # falling at the end as much, but from a bump: still 4.90 SE above the chosen step, a recovery, not an improvement
    assert fit_checks(ended(1.0, 1.4, [1.2, 1.1, 1.3, 1.2]))[0].warnings == []
    # the best dev loss before any training
    never = {"best_step": 0, "curves": [evaluation(0, [1.0] * 4), *window(1, [2.0, 2.1]), evaluation(2, [1.1] * 4)]}
    assert said(fit_checks(never)[0]) == ["the dev-selected step is the first evaluation (step 0, before any "
                                           "training): nothing learned on train improved dev"]


def test_a_log_without_per_example_dev_losses_is_not_assessed() -> None:
    # logged before per-example dev losses were kept: one train loss per evaluation, the mean dev loss only. Its
    # train "falls" 3 -> 1 and dev "rises" 2.0 -> 2.5, but neither has a noise scale: no verdict either way
    def trial(best: int, curve: list[tuple[int, float | None, float]], lr: float) -> dict:
        return {"length": 8, "lr": lr, "init": "text", "status": "ok", "best_step": best,
                "curve": [{"step": s, "train_loss": t, "dev_loss": d} for s, t, d in curve]}

    old = trial(10, [(0, None, 2.2), (10, 3.0, 2.0), (20, 2.0, 2.2), (30, 1.0, 2.5)], 0.03)
    other = trial(20, [(0, None, 2.4), (10, 2.2, 2.2), (20, 2.0, 1.9)], 0.003)
    log = {"curves": old["curve"], "winner": {"length": 8, "lr": 0.03, "init": "text"}, "trials": [old, other]}
    checks = fit_checks(log)
    assert [c.winner for c in checks] == [True, False] and not checks[0].assessable
    assert checks[0].warnings == [] and checks[0].gap == pytest.approx(2.0 - 3.0)
    assert fit_warnings(checks[0]) == "overfitting not assessable: the log predates per-example dev losses"
    # chosen at its last evaluation needs no noise scale
    assert [w.kind for w in checks[1].warnings] == ["still-improving"]


# --- simulations: the false-flag rate on curves whose dev loss is noise, the power on a planted rise -----------------
def simulate(rng: random.Random, noise: float, train_fall: float, n_dev: int = 50, steps: int = 80,
             eval_every: int = 10, patience: int = 3) -> dict:
    """A search's log as ``harness.search.SearchLoop`` writes it, on a curve that learns nothing on dev: each dev
    example's loss is its own difficulty plus independent noise of SD ``noise`` at every evaluation; the train loss
    falls by ``train_fall`` over the steps with minibatch noise. The loop's rules: evaluations at step 0, every
    ``eval_every`` steps and the last; the strict minimum is kept; stop after ``patience`` evaluations without one."""
    difficulty = [rng.gauss(1.3, 0.6) for _ in range(n_dev)]
    curve = [evaluation(0, [d + rng.gauss(0, noise) for d in difficulty])]
    best, best_step, since = curve[0]["dev_loss"], 0, 0
    for step in range(1, steps + 1):
        curve.append({"step": step, "train_loss": 2.0 - train_fall * step / steps + rng.gauss(0, 0.3)})
        if step % eval_every == 0 or step == steps:
            point = evaluation(step, [d + rng.gauss(0, noise) for d in difficulty])
            curve.append(point)
            if point["dev_loss"] < best:
                best, best_step, since = point["dev_loss"], step, 0
            else:
                since += 1
                if since >= patience:
                    break
    return {"best_step": best_step, "curves": curve, "stopped": "steps"}


@pytest.mark.parametrize(("noise", "train_fall", "steps", "patience"),
                         [(0.1, 0.0, 80, 3), (0.1, 1.5, 80, 3), (1e-4, 1.5, 80, 3), (0.1, 1.5, 30, 3),
                          (0.1, 1.5, 200, 4)])
def test_noise_curves_are_flagged_at_most_five_percent_of_the_time(noise: float, train_fall: float, steps: int,
                                                                    patience: int) -> None:
    # 1,000 curves per setting; with a falling train loss only the dev rise can hold the flag back, and at a dev
    # noise of 1e-4 the rises are tiny but so is their standard error: the test is on z, free of scale. Budgets of
    # 4 to 21 evaluations
    rng = random.Random(24)
    fired = sum(any(w.kind == "dev-rises" for w in fit_checks(simulate(rng, noise, train_fall, steps=steps,
                                                                         patience=patience))[0].warnings)
                for _ in range(1000))
    assert fired / 1000 <= FIT_ALPHA


def test_a_planted_rise_of_five_standard_errors_is_flagged() -> None:
    # nine evaluations (threshold 2.99 by Bonferroni over their 36 pairs), the chosen at step 40, the last at step 80
    # above it by exactly 5 standard errors of the paired difference, and a train loss that falls far beyond its noise
    rng = random.Random(5)
    n = 50
    difficulty = [rng.gauss(1.3, 0.6) for _ in range(n)]
    at = [d + rng.gauss(0, 0.1) for d in difficulty]
    noise = [rng.gauss(0, 0.1) for _ in range(n)]
    mean = sum(noise) / n
    sd = math.sqrt(sum((e - mean) ** 2 for e in noise) / (n - 1))
    shift = 5 * sd / math.sqrt(n) - mean  # the mean difference is then 5 standard errors
    last = [a + e + shift for a, e in zip(at, noise, strict=True)]
    curve = []
    for step in range(0, 81, 10):
        if step:
            curve += window(step - 9, [2.0 - step / 80 + rng.gauss(0, 0.05) for _ in range(10)])
        losses = at if step == 40 else last if step == 80 else [a + 0.5 for a in at]
        curve.append(evaluation(step, losses))
    [check] = fit_checks({"best_step": 40, "curves": curve, "stopped": "steps"})
    [w] = [w for w in check.warnings if w.kind == "dev-rises"]
    assert w.z == pytest.approx(5.0) and w.threshold == pytest.approx(rise_threshold(9))
