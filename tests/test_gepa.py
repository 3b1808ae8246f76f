"""dspy-gepa: GEPA over the shared scorer, its feedback read from the scorer's own numbers, its budget in metric calls
kept, its final choice made on dev, and the same artifact from the same seed."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from harness.errors import UserError
from harness.registry import get_task
from harness.task import SplitSizes
from optimizers.dspy_gepa import DSPyGepa, feedback_text, greedy_continuation
from tests.test_dspy import check_invariant, fit_ctx

# tiny budgets: what is tested is the plumbing, not the quality of the search
GEPA_TINY = {"max_metric_calls": 16, "reflection_minibatch_size": 2, "proposer_max_tokens": 24}


def test_gepa_keeps_its_budget_chooses_on_dev_and_repeats_itself(lm, scorer, tmp_path: Path) -> None:
    task = get_task("antonyms")
    sizes = SplitSizes(train=6, dev=4, test=1)
    search = {**GEPA_TINY, "max_metric_calls": 28}  # room for a few reflections, so that a child can be kept
    first = DSPyGepa(**search).fit(fit_ctx(lm, scorer, task, sizes, tmp_path / "a"))
    ctx = fit_ctx(lm, scorer, task, sizes, tmp_path / "b")
    second = DSPyGepa(**search).fit(ctx)
    assert first == second  # instruction and meta (every proposal and dev score): the seed decides the search
    log = ctx.reported_log
    assert second.demos == [] and log["dspy_optimizer"] == "GEPA"
    # GEPA checks its budget between iterations: at most one iteration (two minibatches and a dev pass) beyond it
    assert log["metric_calls_budget"] == 28 and log["metric_calls_allowance"] == 2 * 2 + 4
    assert 4 <= log["metric_calls"] <= 28 + 8  # the starting instruction on all of dev, at least
    # it changed the instruction: a kept child beat the task's own instruction on dev
    assert log["accepted"] >= 1 and second.instruction != task.instruction
    assert second.meta["dev_score"] > log["candidates"][0]["dev_score"]
    assert log["metric_calls"] == log["gepa_metric_calls"]  # ours (examples evaluated) and GEPA's own count agree
    assert log["candidates"][0]["instruction"] == task.instruction  # GEPA starts from the task's instruction
    # the final choice is the best on dev among what GEPA kept, the first of equals
    assert second.meta["dev_score"] == max(c["dev_score"] for c in log["candidates"])
    assert ctx.reported_selection["ids"] == [e.id for e in ctx.dev]
    check_invariant(ctx, "dspy-gepa", second, tmp_path / "b")


def greedy_by_hand(lm, ids: list[int], n: int) -> tuple[list[int], float]:
    """Greedy decoding by repeated full forwards and argmax (no cache, no generate()), and the smallest gap between
    the top two logits over the steps."""
    out, margin = list(ids), float("inf")
    with torch.no_grad():
        for _ in range(n):
            logits = lm.model(input_ids=torch.tensor([out], device=lm.device)).logits[0, -1]
            top = torch.topk(logits, 2).values
            margin = min(margin, float(top[0] - top[1]))
            out.append(int(logits.argmax()))
    return out[len(ids):], margin


def scored_example(lm, scorer, task_name: str):
    """The task, a ScoreBook over a tiny split, its first dev example and that example's score under the task's
    instruction."""
    from optimizers.dspy_bridge import ScoreBook

    task = get_task(task_name)
    ctx = fit_ctx(lm, scorer, task, SplitSizes(train=4, dev=3, test=1), None)
    book = ScoreBook(ctx, "chat", "dspy-gepa", lambda c: None)
    example = ctx.dev[0]
    return task, book, example, book.score(task.instruction, (), example.id)


def test_feedback_states_the_scorers_numbers(lm, scorer) -> None:
    task, book, example, score = scored_example(lm, scorer, "antonyms")
    greedy = greedy_continuation(book, task.instruction, example, 4)
    # generate()'s greedy text is the argmax of plain forwards, token by token. The two sum in other orders (a KV
    # cache against full passes): float32 logits differ by ~1e-5, so the argmax is the same wherever the top two
    # logits are more than 1e-3 apart, which this example's steps are (checked, not assumed)
    request = scorer.renderer.text_requests(book.artifact(task.instruction, ()), example)[0]
    want, margin = greedy_by_hand(lm, scorer.renderer.encode(request.context), 4)
    assert margin > 1e-3
    assert greedy == lm.tokenizer.decode(want, skip_special_tokens=True)
    text = feedback_text(book, example, score, greedy)
    assert repr(example.continuations[0]) in text and repr(greedy) in text
    assert f"{-score.gold_nll:.3f}" in text  # the gold answer's log-probability, as the scorer gave it


def test_feedback_on_multiple_choice_names_the_models_choice(lm, scorer) -> None:
    from optimizers.dspy_bridge import choice_text

    _, book, example, score = scored_example(lm, scorer, "opposites")
    # the model's choice is the argmax of the scorer's choice log-likelihoods
    assert score.pred == max(range(len(score.choice_loglik)), key=score.choice_loglik.__getitem__)
    text = feedback_text(book, example, score, None)
    assert f"The model chose {choice_text(example, score.pred)!r}" in text
    assert f"The correct answer is {choice_text(example, example.gold)!r}" in text


def test_gepa_stops_at_its_token_budget(lm, scorer, tmp_path: Path) -> None:
    task = get_task("antonyms")
    ctx = fit_ctx(lm, scorer, task, SplitSizes(train=6, dev=4, test=1), tmp_path)
    budget = 600  # the starting instruction on dev and a minibatch or two
    artifact = DSPyGepa(**{**GEPA_TINY, "max_metric_calls": 200, "budget_tokens": budget}).fit(ctx)
    log = ctx.reported_log
    assert log["stopped"] == f"budget_tokens ({budget})" and log["tokens"] <= budget
    assert artifact.meta["dev_score"] == max(c["dev_score"] for c in log["candidates"])


@pytest.mark.parametrize(("settings", "needle"), [
    ({"auto": "huge"}, "auto = 'huge'"),
    ({"max_metric_calls": 5}, "max_metric_calls = 5 leaves nothing"),
    ({"max_metric_calls": "many"}, "max_metric_calls = 'many'"),
    ({"max_labeled_demos": 2}, "instruction only"),
    ({"candidate_selection_strategy": "best"}, "candidate_selection_strategy = 'best'"),
    ({"reflection_minibatch_size": 0}, "reflection_minibatch_size = 0"),
])
def test_bad_gepa_settings_fail_at_parse_time(settings, needle) -> None:
    with pytest.raises(UserError, match=needle):
        DSPyGepa(**settings)
