"""Memory: the scorer's budgets do not change its numbers, and an out-of-memory error, injected from a patched model
forward (the error a GPU raises), is survived with the same numbers: the scorer halves the pass and retries, training
falls back to micro-batches with gradient accumulation, and the cell records what it fell back to."""

from __future__ import annotations

import functools
import threading

import pytest
import torch

import harness.scorer as scorer_module
from harness.artifact import PromptArtifact
from harness.run_folder import load_run
from harness.runner import Runner
from harness.scorer import Scorer
from tasks.winogrande import WinoGrande


def lls(scores) -> list[float]:
    return [x for s in scores for x in s.choice_loglik]


@pytest.fixture(scope="module")
def examples(shared_data):
    return WinoGrande(shared_data / "winogrande").all_examples()[:24]


class Injected:
    """Wraps the decoder class's forward: raises torch.OutOfMemoryError on the first call (``first``), or on the first
    call that keeps gradients (``first_grad``), then runs the real forward. Every model of the class gets it, so a
    model the runner loads itself does too."""

    def __init__(self, monkeypatch, decoder_class: type, first: bool = False, first_grad: bool = False) -> None:
        self.original = decoder_class.forward
        self.first, self.first_grad = first, first_grad
        self.raised: list[str] = []
        self.calls = 0
        lock = threading.Lock()

        @functools.wraps(self.original)  # the signature stays the decoder's (LoadedModel.cache_kwarg reads it)
        def forward(module, *args, **kwargs):
            with lock:
                self.calls += 1
                if self.first:
                    self.first = False
                    self.raised.append("first pass")
                    raise torch.OutOfMemoryError("injected: CUDA out of memory (first pass)")
                if self.first_grad and torch.is_grad_enabled():
                    self.first_grad = False
                    self.raised.append("first training step")
                    raise torch.OutOfMemoryError("injected: CUDA out of memory (first training step)")
            return self.original(module, *args, **kwargs)

        monkeypatch.setattr(decoder_class, "forward", forward)


def test_a_small_memory_budget_gives_the_same_numbers(lm, examples, monkeypatch) -> None:
    """A budget of 2 MB: every level in many chunks, passes cut by their rows' pasts, the LM head a few rows at a
    time; the numbers are those of the default budget (to float32 rounding: other pass sizes sum in another order,
    the tolerance of test_scorer's batch-size invariance)."""
    art = PromptArtifact(format="chat", instruction="Pick the option that makes sense.")
    ref = Scorer(lm).score(art, examples, "multiple_choice")
    passes = []
    real = scorer_module.run_tree_rows
    monkeypatch.setattr(scorer_module, "run_tree_rows", lambda *a, **k: passes.append(1) or real(*a, **k))
    small = Scorer(lm, memory=2 * 2**20)
    assert small.budget.keep_kv < 100 and small.budget.head_rows < 4
    ours = small.score(art, examples, "multiple_choice")
    many = len(passes)
    passes.clear()
    Scorer(lm).score(art, examples, "multiple_choice")
    assert many > 3 * len(passes)  # the budget did cut the work finer
    assert max(abs(a - b) for a, b in zip(lls(ours), lls(ref), strict=True)) < 1e-4
    assert [s.choice_greedy for s in ours] == [s.choice_greedy for s in ref]


def test_scorer_halves_the_pass_after_out_of_memory(lm, examples, monkeypatch) -> None:
    art = PromptArtifact(format="raw")
    ref = Scorer(lm).score(art, examples, "multiple_choice")
    before = len(lm.fallbacks)
    scorer = Scorer(lm)
    injected = Injected(monkeypatch, type(lm.model.base_model), first=True)
    ours = scorer.score(art, examples, "multiple_choice")
    assert injected.raised == ["first pass"]
    assert max(abs(a - b) for a, b in zip(lls(ours), lls(ref), strict=True)) < 1e-4
    assert [s.choice_greedy for s in ours] == [s.choice_greedy for s in ref]
    new = lm.fallbacks[before:]
    assert len(new) == 1 and new[0]["where"] == "scorer" and "halved" in new[0]["what"]
    assert scorer.budget.max_rows == Scorer(lm).budget.max_rows // 2  # later calls start at the size that fit


RUN = """
[run]
name = "oom"
seeds = [0]
n_boot = 100
threads = 1

[[tasks]]
name = "antonyms"
sizes = { train = 16, dev = 8, test = 12 }

[conditions.base-chat]
[conditions.handwritten]
format = "chat"
[conditions.soft-prompt]
lr = 0.01
steps = 4
eval_every = 2
batch_size = 8

[ratio]
base = "base-chat"
texts = ["handwritten"]
ceiling = "soft-prompt"
"""


def test_a_run_survives_out_of_memory_with_the_same_numbers(tmp_path, lm, monkeypatch) -> None:
    """The first pass of the run (scoring base-chat) and the first training step (soft-prompt) run out of memory;
    the run finishes with the numbers of a run that did not, and each cell says what it fell back to."""
    config = tmp_path / "oom.toml"
    config.write_text(RUN)
    clean = load_run(Runner(config, run_id="clean", results_root=tmp_path).run())
    with monkeypatch.context() as m:
        injected = Injected(m, type(lm.model.base_model), first=True, first_grad=True)
        hit = load_run(Runner(config, run_id="oom", results_root=tmp_path).run())
    assert injected.raised == ["first pass", "first training step"]
    for key, cell in clean.cells.items():
        other = hit.cells[key]
        assert cell.ok and other.ok, (other.error, other.record and other.record.traceback)
        a = [x for line in cell.lines for x in line["choice_loglik"]]
        b = [x for line in other.lines for x in line["choice_loglik"]]
        assert max(abs(x - y) for x, y in zip(a, b, strict=True)) < 1e-4
        assert [line["correct"] for line in cell.lines] == [line["correct"] for line in other.lines]
        assert cell.record.fallbacks is None
    fell = {k.condition: c.record.fallbacks for k, c in hit.cells.items()}
    assert [f["where"] for f in fell["base-chat"]] == ["scorer"]
    assert fell["handwritten"] is None
    assert [f["where"] for f in fell["soft-prompt"]] == ["training"]
    assert "micro-batches of 4" in fell["soft-prompt"][0]["what"]
    trained = [c.artifact.soft_prompt for r in (clean, hit) for k, c in r.cells.items() if k.condition == "soft-prompt"]
    assert (trained[0] - trained[1]).abs().max() < 1e-4
    from harness.report import write_report

    text = write_report(hit.folder.root, tmp_path / "reports", n_boot=50).read_text()
    assert "the work was cut finer): 2." in text
    assert "micro-batches of 4" in text
    clean_text = write_report(clean.folder.root, tmp_path / "reports", n_boot=50).read_text()
    assert "the work was cut finer): none." in clean_text
