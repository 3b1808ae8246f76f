"""PEZ and GCG: a known answer found by brute force, prompts that are text, re-scored the same from anywhere."""

from __future__ import annotations

import pytest
import torch

from harness.artifact import PromptArtifact
from harness.data import Example
from harness.errors import UserError
from harness.optimizer import FitContext, TaskInfo
from harness.registry import get_optimizer, get_task
from harness.search import SlotObjective, sample_candidates, top_k_tokens
from harness.task import SplitSizes

# a synthetic task whose best one-token prompt is plain: every input asks for one word, " banana"
STARTS = ["The secret word is", "Say the secret word:", "The password is", "Remember this word:",
          "The hidden word is", "Tell me the word:", "My favourite word is", "The answer is"]
# a slice of related words (fruit), where a gradient says something about its neighbours, and a few others
WORDS = ["banana", "apple", "orange", "pear", "grape", "lemon", "cherry", "mango", "peach", "plum", "melon", "berry",
         "the", "your", "word", "time"]


def _secret(lm, scorer, seed: int = 0) -> tuple[FitContext, list[int]]:
    train = tuple(Example(f"s{i}", (c,), ("banana",), 0) for i, c in enumerate(STARTS))
    info = TaskInfo(name="secret", kind="continuation", instruction="Say the word.")
    vocab = sorted({ids[0] for w in WORDS if len(ids := lm.tokenizer.encode(" " + w, add_special_tokens=False)) == 1})
    # dev is train: the search selects on exactly the loss the brute force minimises
    return FitContext(lm=lm, task=info, train=train, dev=train, scorer=scorer, seed=seed), vocab


@pytest.mark.parametrize(("name", "settings"), [
    ("gcg", {"top_k": 4, "search_width": 6}),
    ("pez", {"restarts": 4}),
])
def test_one_token_search_reaches_the_brute_force_best(lm, scorer, name, settings) -> None:
    ctx, vocab = _secret(lm, scorer)
    obj = SlotObjective(ctx, 1, vocab=vocab, condition="brute force")
    everything = list(range(len(ctx.train)))
    losses = obj.losses([[v] for v in vocab], everything)  # every one-token prompt of the slice, scored exactly
    best = min(losses)
    art = get_optimizer(name)(length=1, vocab=vocab, steps=12, batch_size=8, eval_every=1, patience=12,
                              **settings).fit(ctx)
    found = obj.losses([art.meta["ids"]], everything)[0]
    assert found - best <= 0.05, (art.instruction, found, best)
    assert art.meta["round_trip"] and art.instruction == lm.tokenizer.decode(art.meta["ids"])


def test_gcg_prompt_is_text_that_rescores_identically(lm, scorer, tmp_path) -> None:
    task = get_task("antonyms")
    split = task.split(0, SplitSizes(train=8, dev=4, test=6))

    def fit() -> PromptArtifact:
        ctx = FitContext(lm=lm, task=TaskInfo.of(task), train=split.train, dev=split.dev, scorer=scorer, seed=0)
        return get_optimizer("gcg")(length=4, steps=2, batch_size=4, eval_every=1, top_k=8,
                                    search_width=8).fit(ctx)

    art = fit()
    assert fit() == art  # the same seed, the same prompt
    ids = art.meta["ids"]
    assert art.meta["round_trip"]
    # the rendered test requests hold exactly the found ids after the chat header, where an instruction goes
    rendered = scorer.renderer.requests(art, split.test[:1])[0][0].context
    assert any(rendered[i:i + len(ids)] == tuple(ids) for i in range(len(rendered)))
    # re-scored from the saved artifact alone, and as its text pasted into a hand-written condition: identical to the
    # bit, since all three render the same token ids and the one scorer runs them in the same passes
    direct = scorer.score(art, split.test, task.kind)
    saved = scorer.score(PromptArtifact.load(art.save(tmp_path / "a")), split.test, task.kind)
    pasted = get_optimizer("handwritten")(instruction=art.instruction, format="chat")
    ctx = FitContext(lm=lm, task=TaskInfo.of(task), train=split.train, dev=split.dev, scorer=scorer, seed=0)
    by_hand = scorer.score(pasted.fit(ctx), split.test, task.kind)
    assert [s.choice_loglik for s in direct] == [s.choice_loglik for s in saved] == [s.choice_loglik for s in by_hand]


@pytest.mark.parametrize(("name", "settings", "needle"), [
    ("gcg", {"length": 0}, "length = 0"),
    ("pez", {"length": 0}, "length = 0"),
    ("gcg", {"top_k": 0}, "top_k = 0"),
    ("gcg", {"search_width": 0}, "search_width = 0"),
    ("gcg", {"n_replace": 0}, "n_replace = 0"),
    ("pez", {"restarts": 0}, "restarts = 0"),
    ("gcg", {"init": "magic"}, "init 'magic' is unknown"),
])
def test_bad_settings_are_one_line_errors(name, settings, needle) -> None:
    with pytest.raises(UserError) as e:
        get_optimizer(name)(**settings)
    assert needle in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("name", ["pez", "gcg", "soft-prompt", "prefix-tuning"])
@pytest.mark.parametrize(("settings", "needle"), [
    ({"steps": 0}, "steps = 0; give a whole number >= 1"),
    ({"eval_every": True}, "eval_every = True; give a whole number >= 1"),
    ({"max_minutes": -1}, "max_minutes = -1; give a positive number of minutes"),
    ({"select_on": "f1"}, "select_on 'f1' is unknown; use loss or accuracy"),
])
def test_every_gradient_condition_checks_its_budget_in_one_place(name, settings, needle) -> None:
    """One BudgetSettings for the searches and the trained prompts: the same checks and words, naming the owner."""
    with pytest.raises(UserError) as e:
        get_optimizer(name)(**settings)
    owner = {"pez": "condition pez", "gcg": "condition gcg"}.get(name, "prompt training")
    assert str(e.value) == f"{owner}: {needle}"


def test_gcg_candidates_are_distinct_swaps_among_the_top_tokens() -> None:
    """nanoGCG's sampling as a function: each candidate differs from the prompt in at most n_replace positions, each
    swapped token is one of that position's top-k, no candidate repeats or is the prompt, and a seed fixes them."""
    ids = [5, 6, 7, 8]
    grad = torch.randn(4, 50, generator=torch.Generator().manual_seed(0))
    allowed = torch.ones(50, dtype=torch.bool)
    allowed[:10] = False
    top = top_k_tokens(grad, allowed, 3)
    assert top.shape == (4, 3) and bool((top >= 10).all())
    assert top.tolist() == [sorted(range(10, 50), key=lambda t: float(grad[i, t]))[:3] for i in range(4)]
    draw = sample_candidates(ids, top, 40, 2, torch.Generator().manual_seed(1))
    assert draw == sample_candidates(ids, top, 40, 2, torch.Generator().manual_seed(1))
    assert len({tuple(c) for c in draw}) == len(draw) and ids not in draw and len(draw) > 20
    for cand in draw:
        changed = [i for i in range(4) if cand[i] != ids[i]]
        assert 1 <= len(changed) <= 2 and all(cand[i] in top[i].tolist() for i in changed)
