"""The LoRA ceiling: trained on train, selected on dev, scored by the one scorer with its adapter in the model for
that scoring only; the base model is the same bits before and after."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from harness.adapters import applied, snapshot
from harness.artifact import PromptArtifact
from harness.audit import audit
from harness.errors import UserError
from harness.plan import split
from harness.registry import get_task
from harness.runner import Runner
from optimizers.weight_training import LoraSettings

CONFIG = """
[run]
name = "lora"
n_boot = 200

[[tasks]]
name = "antonyms"
sizes = { train = 16, dev = 8, test = 12 }

[conditions.base-chat]
[conditions.lora]
lr = 0.003
steps = 6
batch_size = 8
eval_every = 3
r = 4
"""
CELLS = Path("cells/smollm2-135m-instruct/antonyms/seed-0")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("lora")
    (root / "c.toml").write_text(CONFIG)
    return Runner(root / "c.toml", run_id="r", results_root=root / "results").run()


def _rows(cell: Path) -> list[dict]:
    return [json.loads(x) for x in (cell / "scores.jsonl").read_text().splitlines()]


def _state(lm) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in lm.model.named_parameters()}


def test_a_lora_cell_scores_its_adapter_and_the_base_model_is_the_same_bits_after(run_dir, lm, scorer) -> None:
    cell = run_dir / CELLS / "lora"
    art = PromptArtifact.load(cell / "artifact")
    assert art.parts == {"weights"} and art.adapter_config["r"] == 4
    # PEFT's default targets for a Llama-architecture model: q_proj and v_proj of each of SmolLM2's 30 layers,
    # an A [4, 576] and a B [out, 4] each (v_proj's out is 3 key/value heads x 64 = 192)
    assert len(art.adapter) == 30 * 2 * 2
    assert art.trainable_params == 30 * (4 * 576 + 576 * 4) + 30 * (4 * 576 + 192 * 4)
    assert any(t.abs().sum() > 0 for k, t in art.adapter.items() if "lora_B" in k)  # trained: B moved from zero

    task = get_task("antonyms")
    test = split(task, {"train": 16, "dev": 8, "test": 12}, 0).test
    base = PromptArtifact(format="chat", condition="base-chat")
    before, params = [s.gold_nll for s in scorer.score(base, test, task.kind)], _state(lm)
    lora = [s.gold_nll for s in scorer.score(art, test, task.kind)]
    after = [s.gold_nll for s in scorer.score(base, test, task.kind)]
    assert after == before  # nothing of the adapter stays in the model, and nothing scored under it is reused
    assert lm.adapter is None and not any("lora" in n for n, _ in lm.model.named_modules())
    assert {n: p for n, p in _state(lm).items()}.keys() == params.keys()
    assert all(torch.equal(p, params[n]) for n, p in _state(lm).items())
    # the cell's numbers are this scorer's on the same examples: the same passes, the same bits
    rows = {r["example_id"]: r["gold_nll"] for r in _rows(cell)}
    assert [rows[e.id] for e in test] == lora
    assert lora != before
    base_rows = {r["example_id"]: r["gold_nll"] for r in _rows(run_dir / CELLS / "base-chat")}
    assert [base_rows[e.id] for e in test] == before


def test_a_fresh_adapter_scores_the_base_models_exact_bits(lm, scorer) -> None:
    # PEFT starts B at zero, so every adapted projection adds exactly 0.0: the scores are the base model's bits
    task = get_task("antonyms")
    test = split(task, {"train": 16, "dev": 8, "test": 12}, 0).test[:6]
    base = PromptArtifact(format="chat")
    config = LoraSettings(r=4).adapter_config()
    with applied(lm, config) as live:
        fresh = PromptArtifact(format="chat", adapter=snapshot(live), adapter_config=config)
    assert [s.gold_nll for s in scorer.score(fresh, test, task.kind)] == \
        [s.gold_nll for s in scorer.score(base, test, task.kind)]


def test_an_adapter_saves_and_loads_whole(tmp_path) -> None:
    adapter = {"model.layers.0.self_attn.q_proj.lora_A.weight": torch.randn(2, 8),
               "model.layers.0.self_attn.q_proj.lora_B.weight": torch.randn(8, 2)}
    art = PromptArtifact(format="chat", adapter=adapter, adapter_config={"r": 2, "lora_alpha": 4}, condition="lora")
    back = PromptArtifact.load(art.save(tmp_path / "a"))
    assert back.adapter_config == {"r": 2, "lora_alpha": 4} and back.parts == {"weights"}
    assert back.adapter.keys() == adapter.keys() and all(torch.equal(back.adapter[k], adapter[k]) for k in adapter)
    assert json.loads((tmp_path / "a" / "artifact.json").read_text())["tensors"] == {
        "adapter.model.layers.0.self_attn.q_proj.lora_A.weight": [2, 8],
        "adapter.model.layers.0.self_attn.q_proj.lora_B.weight": [8, 2]}


def test_the_run_with_a_lora_cell_passes_the_audit(run_dir) -> None:
    result = audit(run_dir, report=run_dir / "no-report.md")
    assert not result.failed, [(i.title, i.problems) for i in result.failed]


@pytest.mark.parametrize(("settings", "message"), [
    ({"r": 0}, "r = 0"), ({"lora_alpha": -1}, "lora_alpha = -1"), ({"lora_dropout": 1.0}, "lora_dropout = 1.0"),
    ({"target_modules": []}, "target_modules = []"), ({"length": 4}, "trained weights have none of them"),
])
def test_bad_lora_settings_are_refused_in_one_line(settings, message) -> None:
    with pytest.raises(UserError, match=message.replace("[", r"\[").replace("]", r"\]")) as e:
        LoraSettings(**settings)
    assert "\n" not in str(e.value)


def test_lora_is_a_ceiling_never_a_text_of_the_ratio(tmp_path) -> None:
    from harness.config import load_config

    head = ('[[tasks]]\nname = "antonyms"\n[conditions.base-chat]\n[conditions.handwritten]\n'
            '[conditions.soft-prompt]\n[conditions.lora]\n')
    (tmp_path / "a.toml").write_text(head + '[ratio]\nbase = "base-chat"\nceiling = "soft-prompt"\n')
    assert load_config(tmp_path / "a.toml").ratio["texts"] == ["handwritten"]  # lora left out of the default texts
    (tmp_path / "b.toml").write_text(head + '[ratio]\nbase = "base-chat"\nceiling = ["soft-prompt", "lora"]\n')
    assert load_config(tmp_path / "b.toml").ratio["texts"] == ["handwritten"]
    (tmp_path / "c.toml").write_text(head + '[ratio]\nbase = "base-chat"\nceiling = "soft-prompt"\ntexts = ["lora"]\n')
    with pytest.raises(UserError, match="text 'lora' trains the model's weights, not a prompt"):
        load_config(tmp_path / "c.toml")


def test_an_adapter_of_another_model_is_refused_in_one_line_and_leaves_the_model_as_it_was(lm, scorer) -> None:
    task = get_task("antonyms")
    test = split(task, {"train": 16, "dev": 8, "test": 12}, 0).test[:4]
    config = {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj"]}
    with applied(lm, config) as live:
        weights = snapshot(live)
    wide = {k: torch.zeros(t.shape[0], 2 * t.shape[1]) if "lora_A" in k else t for k, t in weights.items()}
    before = [s.gold_nll for s in scorer.score(PromptArtifact(format="chat"), test, task.kind)]
    for bad, says in [(wide, "layer needs [4, 576]"), (dict(list(weights.items())[2:]), "58 given, 60 expected")]:
        with pytest.raises(UserError, match=re.escape(says)) as e:
            scorer.score(PromptArtifact(format="chat", adapter=bad, adapter_config=config), test, task.kind)
        assert "\n" not in str(e.value) and "score it on the model it was trained on" in str(e.value)
    assert lm.adapter is None and not any("lora" in n for n, _ in lm.model.named_modules())
    assert [s.gold_nll for s in scorer.score(PromptArtifact(format="chat"), test, task.kind)] == before


def test_inside_training_a_prompt_is_scored_without_the_adapter_and_a_checkpoint_with_its_own_weights(lm, scorer
                                                                                                        ) -> None:
    # a trainer holds an adapter in the model; a dev score of a checkpoint swaps its weights in for the call, and
    # an artifact without an adapter is scored with the adapter switched off: both give the bits they give outside
    task = get_task("antonyms")
    test = split(task, {"train": 16, "dev": 8, "test": 12}, 0).test[:4]
    base = PromptArtifact(format="chat")
    config = {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]}
    with applied(lm, config) as live:
        zero = snapshot(live)
    moved = {k: t + 0.05 * torch.randn(t.shape, generator=torch.Generator().manual_seed(3)) if "lora_B" in k else t
             for k, t in zero.items()}
    checkpoint = PromptArtifact(format="chat", adapter=moved, adapter_config=config)
    outside_base = [s.gold_nll for s in scorer.score(base, test, task.kind)]
    outside_checkpoint = [s.gold_nll for s in scorer.score(checkpoint, test, task.kind)]
    assert outside_checkpoint != outside_base
    with applied(lm, config, zero) as live:  # the trainer's live adapter, at other weights than the checkpoint's
        assert [s.gold_nll for s in scorer.score(base, test, task.kind)] == outside_base
        assert [s.gold_nll for s in scorer.score(checkpoint, test, task.kind)] == outside_checkpoint
        assert all(torch.equal(p.detach(), zero[k]) for k, p in live.items())  # put back after the call
