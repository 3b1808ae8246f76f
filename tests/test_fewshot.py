"""The k-shot baseline: demos are solved train examples, one fixed set per seed, k chosen on dev by its scores."""

from __future__ import annotations

import pytest

from harness.errors import UserError
from harness.optimizer import FitContext, TaskInfo
from harness.registry import get_optimizer, get_task
from harness.task import SplitSizes


def _ctx(lm, scorer, seed: int = 0) -> FitContext:
    task = get_task("antonyms")
    split = task.split(0, SplitSizes(train=8, dev=6, test=1))
    return FitContext(lm=lm, task=TaskInfo.of(task), train=split.train, dev=split.dev, scorer=scorer, seed=seed)


def test_fewshot_picks_k_by_its_dev_scores(lm, scorer) -> None:
    ctx = _ctx(lm, scorer)
    art = get_optimizer("fewshot")(k=[1, 4]).fit(ctx)
    tried = {t["k"]: t for t in ctx.reported_log["tried"]}
    # every demo is a solved train example; the larger set extends the smaller one (the same shuffle)
    by_id = {e.id: e for e in ctx.train}
    assert art.demos == [by_id[i].solved_text() for i in art.meta["demo_ids"]]
    assert tried[4]["demo_ids"][:1] == tried[1]["demo_ids"]
    # the choice follows the rule applied to the dev scores of each k's prompt, scored here on their own
    def dev_nll(k: int) -> float:
        from harness.artifact import PromptArtifact

        demo = PromptArtifact(format="chat", demos=[by_id[i].solved_text() for i in tried[k]["demo_ids"]])
        scores = scorer.score(demo, ctx.dev, "continuation")
        return sum(s.gold_nll for s in scores) / len(scores)

    nll = {k: dev_nll(k) for k in (1, 4)}
    assert nll == pytest.approx({k: tried[k]["dev_loss"] for k in (1, 4)})
    assert art.meta["k"] == min(nll, key=nll.get)
    assert ctx.reported_selection["ids"] == [e.id for e in ctx.dev]
    again = get_optimizer("fewshot")(k=[1, 4]).fit(_ctx(lm, scorer))
    assert again == art  # the same seed, the same prompt


def test_fewshot_bad_input(lm, scorer) -> None:
    with pytest.raises(UserError, match="k = 0"):
        get_optimizer("fewshot")(k=0)
    with pytest.raises(UserError, match="train has only 8 examples"):
        get_optimizer("fewshot")(k=[2, 9]).fit(_ctx(lm, scorer))


def test_paraphrases_choose_on_dev_and_expand_into_scored_variants(lm, scorer, tmp_path) -> None:
    from harness.config import load_config

    ctx = _ctx(lm, scorer)
    art = get_optimizer("paraphrases")(instructions=["Write the opposite word.", "Antonym:"]).fit(ctx)
    tried = ctx.reported_log["tried"]
    assert [t["instruction"] for t in tried] == [ctx.task.instruction, "Write the opposite word.", "Antonym:"]
    assert art.instruction == min(tried, key=lambda t: t["dev_loss"])["instruction"]
    with pytest.raises(UserError, match="instructions is empty"):
        get_optimizer("paraphrases")(instructions=[])
    # in a run config each paraphrase is a condition of its own, scored on test in its own cell, and not judged
    (tmp_path / "c.toml").write_text('[[tasks]]\nname = "antonyms"\n[conditions.base-chat]\n'
                                     '[conditions.paraphrases]\ninstructions = ["Antonym:"]\n'
                                     '[ratio]\nbase = "base-chat"\n')
    cfg = load_config(tmp_path / "c.toml")
    assert list(cfg.conditions) == ["base-chat", "paraphrases", "paraphrases.0", "paraphrases.1"]
    assert cfg.conditions["paraphrases.1"].settings == {"instruction": "Antonym:"}
    assert cfg.conditions["paraphrases.1"].variant_of == "paraphrases" and cfg.ratio["texts"] == ["paraphrases"]
