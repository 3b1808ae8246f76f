"""Parity with lm-evaluation-harness: its own task code and HFLM, in-process, on the same rows and model."""

from __future__ import annotations

import pytest

from harness.artifact import PromptArtifact
from harness.parity import lm_eval_reference
from harness.registry import get_task

CASES = [("winogrande", 40, "raw"), ("winogrande", 40, "chat"), ("boolq", 20, "raw"), ("boolq", 20, "chat")]


@pytest.mark.parametrize(("task_name", "n", "fmt"), CASES)
def test_loglikelihoods_match_lm_eval(lm, scorer, shared_data, task_name, n, fmt) -> None:
    task = get_task(task_name, data_dir=shared_data / task_name)
    examples = task.all_examples()[:n]
    ours = scorer.score(PromptArtifact(format=fmt), examples, task.kind)
    ref = lm_eval_reference(lm, task_name, shared_data / task_name / "dev.jsonl", limit=n, chat=fmt == "chat")
    assert len(ref.lls) == n
    for o, lls, greedy, acc in zip(ours, ref.lls, ref.greedy, ref.acc, strict=True):
        assert len(o.choice_loglik) == len(lls)
        for a, b in zip(o.choice_loglik, lls, strict=True):
            assert abs(a - b) < 1e-3, f"{o.example_id}: {a} vs lm-eval {b}"
        assert o.choice_greedy == greedy
        assert o.correct == bool(acc)
