"""Soft prompts and prefixes: the training forward against the shared scorer, text-equivalence invariants, save/load,
training, determinism and bad input. Real model, a handful of examples."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from harness.artifact import PromptArtifact
from harness.errors import UserError
from harness.forward import kv_of
from harness.optimizer import FitContext, TaskInfo
from harness.render import TokenRequest
from harness.search import PromptForward
from optimizers.prompt_training import PromptTrainer, init_text_ids, nearest_tokens
from optimizers.soft_prompt import PrefixTuning, SoftProjected, SoftPrompt
from tasks.antonyms import Antonyms
from tasks.winogrande import WinoGrande

INSTRUCTION = "Give the antonym of the given word."


@pytest.fixture(scope="module")
def antonyms():
    return Antonyms().split(0)


def flat(scorer, art, examples) -> list[TokenRequest]:
    return [r for reqs in scorer.renderer.requests(art, examples) for r in reqs]


def logliks(scorer, art, examples) -> list[float]:
    return [x for s in scorer.score(art, examples, "multiple_choice") for x in s.choice_loglik]


def embeddings(lm, ids: list[int]) -> torch.Tensor:
    return lm.model.get_input_embeddings().weight[ids].detach()


def random_soft(n: int = 4, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 576, generator=torch.Generator().manual_seed(seed)) * 0.1


def test_training_forward_agrees_with_scorer(lm, scorer, antonyms) -> None:
    """The invariant the ceiling rests on: what training optimizes is what the scorer reports."""
    wino = WinoGrande(Path(__file__).parent / "fixtures" / "winogrande").all_examples()[:3]
    soft = random_soft()
    cases = [
        (PromptArtifact(format="chat", placement="before_input", soft_prompt=soft), antonyms.test[:4]),
        (PromptArtifact(format="chat", placement="start", soft_prompt=soft), antonyms.test[:4]),
        (PromptArtifact(format="raw", placement="marker", marker="antonyms", soft_prompt=soft), antonyms.test[:4]),
        (PromptArtifact(format="raw", placement="before_input", soft_prompt=soft), wino),  # two contexts each
        (PromptArtifact(format="chat", prefix_kv=kv_of(lm, soft).detach()), antonyms.test[:4]),
    ]
    for art, examples in cases:
        reqs = flat(scorer, art, examples)
        ref = [x.loglik for x in scorer.loglikelihood(reqs, prompt=art)]
        got = PromptForward(lm, reqs, n_prefix=art.n_prefix).loglik(range(len(reqs)), soft=art.soft_prompt,
                                                                    prefix_kv=art.prefix_kv)
        assert max(abs(a - b) for a, b in zip(ref, got.tolist(), strict=True)) < 1e-4, art.placement


def test_soft_prompt_of_a_texts_embeddings_scores_like_the_text(lm, scorer, antonyms) -> None:
    """Independent invariants: vectors equal to a text's token embeddings are that text."""
    ex = antonyms.test[:5]
    ids = init_text_ids(lm, INSTRUCTION)
    for fmt in ("chat", "raw"):
        text = logliks(scorer, PromptArtifact(format=fmt, instruction=INSTRUCTION), ex)
        soft = logliks(scorer, PromptArtifact(format=fmt, placement="before_input", soft_prompt=embeddings(lm, ids)),
                       ex)
        assert max(abs(a - b) for a, b in zip(text, soft, strict=True)) < 1e-4
        # the marker placement with the marker's own embeddings is the bare task prompt
        base = logliks(scorer, PromptArtifact(format=fmt), ex)
        marker = PromptArtifact(format=fmt, placement="marker", marker="antonyms",
                                soft_prompt=embeddings(lm, init_text_ids(lm, " antonyms")))
        assert max(abs(a - b) for a, b in zip(base, logliks(scorer, marker, ex), strict=True)) < 1e-4
    # "start" vectors and a key/value prefix of a text's tokens: the text's tokens before everything
    lead = tuple(init_text_ids(lm, "Opposites:"))
    plain = flat(scorer, PromptArtifact(format="chat"), ex)
    ref = [x.loglik for x in scorer.loglikelihood([TokenRequest(lead + r.context, r.continuation) for r in plain])]
    start = PromptArtifact(format="chat", placement="start", soft_prompt=embeddings(lm, list(lead)))
    prefix = PromptArtifact(format="chat", prefix_kv=kv_of(lm, embeddings(lm, list(lead))).detach())
    for art in (start, prefix):
        got = logliks(scorer, art, ex)
        assert max(abs(a - b) for a, b in zip(ref, got, strict=True)) < 1e-4


def test_saved_artifact_rescores_identically(lm, scorer, antonyms, tmp_path) -> None:
    soft = random_soft(3, seed=1)
    art = PromptArtifact(format="chat", placement="before_input", soft_prompt=soft, condition="soft-prompt",
                         meta={"nearest_tokens": nearest_tokens(lm, soft, k=2)})
    pre = PromptArtifact(format="raw", prefix_kv=kv_of(lm, soft).detach(), condition="prefix-tuning")
    for a in (art, pre):
        back = PromptArtifact.load(a.save(tmp_path / a.condition))
        for name in ("soft_prompt", "prefix_kv"):
            x, y = getattr(a, name), getattr(back, name)
            assert (x is None and y is None) or torch.equal(x, y)
        assert back.to_json() == a.to_json()
        assert logliks(scorer, a, antonyms.test[:4]) == logliks(scorer, back, antonyms.test[:4])


def _ctx(lm, scorer, antonyms, tmp_path=None, n_train: int = 6) -> FitContext:
    return FitContext(lm=lm, task=TaskInfo.of(Antonyms()), train=antonyms.train[:n_train], dev=antonyms.dev[:3],
                      scorer=scorer, seed=0, workdir=tmp_path)


def test_training_lowers_train_loss_and_is_deterministic(lm, scorer, antonyms, tmp_path) -> None:
    # one batch holds every train example, so each step descends on the same loss
    settings = dict(lr=0.01, steps=3, batch_size=8, eval_every=1, patience=5)
    ctx = _ctx(lm, scorer, antonyms, tmp_path)
    art, record = PromptTrainer(ctx, SoftPrompt(**settings).settings, "soft", "soft-prompt").fit()
    losses = [p["train_loss"] for p in record["curves"][1:]]
    assert losses[-1] < losses[0]
    # handed to the harness, not written by the condition: the log, and the dev ids it chose the checkpoint on
    assert ctx.reported_log is record and not list(tmp_path.iterdir())
    assert ctx.reported_selection == {"ids": [e.id for e in antonyms.dev[:3]], "metric": "dev gold NLL"}
    assert len(art.meta["nearest_tokens"]) == art.n_soft == len(init_text_ids(lm, Antonyms.instruction))
    # the artifact is the dev-best checkpoint: its dev loss is the logged one
    dev = scorer.score(art, antonyms.dev[:3], "continuation")
    assert abs(sum(s.gold_nll for s in dev) / 3 - record["winner"]["best_dev_loss"]) < 1e-9
    again, _ = PromptTrainer(_ctx(lm, scorer, antonyms), SoftPrompt(**settings).settings, "soft",
                             "soft-prompt").fit()
    assert torch.equal(art.soft_prompt, again.soft_prompt)


def test_training_stops_at_its_time_cap_with_a_last_evaluation(lm, scorer, antonyms) -> None:
    """The time cap every gradient condition shares (SearchLoop): past it, the step's prompt is evaluated and the
    trial stops cleanly, its log saying why; each evaluation keeps every dev example's loss."""
    settings = dict(lr=0.01, steps=50, batch_size=4, eval_every=10, max_minutes=1e-9)
    _, record = PromptTrainer(_ctx(lm, scorer, antonyms, n_train=4), SoftPrompt(**settings).settings, "soft",
                              "soft-prompt").fit()
    assert record["trials"][0]["stopped"] == "max_minutes (1e-09)"
    assert [(p["step"], "dev_loss" in p) for p in record["curves"]] == [(0, True), (1, False), (1, True)]
    last = record["curves"][-1]
    assert len(last["dev_losses"]) == 3 and sum(last["dev_losses"]) / 3 == last["dev_loss"]  # the same sum


def test_prefix_tuning_trains(lm, scorer, antonyms) -> None:
    art = PrefixTuning(lr=0.01, steps=2, batch_size=8, eval_every=1, init="vocab", length=3).fit(
        _ctx(lm, scorer, antonyms, n_train=4))
    assert art.prefix_kv is not None and art.prefix_kv.shape == (30, 2, 3, 3, 64) and art.soft_prompt is None


def test_prefix_reparameterisation_trains_an_mlp_and_keeps_its_output(lm, scorer, antonyms) -> None:
    settings = dict(lr=0.01, steps=3, batch_size=8, eval_every=1, patience=5, init="vocab", length=3,
                    reparam_hidden=32)
    art, record = PromptTrainer(_ctx(lm, scorer, antonyms, n_train=4), PrefixTuning(**settings).settings, "prefix",
                                "prefix-tuning").fit()
    assert art.prefix_kv.shape == (30, 2, 3, 3, 64) and art.meta["reparam_hidden"] == 32
    losses = [p["train_loss"] for p in record["curves"][1:]]
    assert losses[-1] < losses[0]  # one batch holds every train example: each step descends on the same loss
    # the kept prefix is the MLP's output at the dev-best step: the scorer gives the logged dev loss
    dev = scorer.score(art, antonyms.dev[:3], "continuation")
    assert abs(sum(s.gold_nll for s in dev) / 3 - record["winner"]["best_dev_loss"]) < 1e-9


@pytest.mark.parametrize("settings, message", [
    ({"length": 0}, "length 0"),
    ({"lr": 0}, "lr 0"),
    ({"lr": [0.01, -1]}, "lr [0.01, -1]"),
    ({"init": "zeros"}, "init 'zeros' is unknown"),
    ({"init_text": "  "}, "init_text is empty"),
    ({"placement": "middle"}, "placement 'middle' is unknown"),
    ({"steps": 0}, "steps = 0"),
])
def test_bad_settings_fail_before_training(settings, message) -> None:
    with pytest.raises(UserError, match=message.replace("[", r"\[").replace("]", r"\]")):
        SoftPrompt(**settings)


def test_bad_input_at_fit_start(lm, scorer, antonyms) -> None:
    with pytest.raises(UserError, match="tokenizes to nothing"):
        init_text_ids(lm, "")
    with pytest.raises(UserError, match="only start is possible"):
        PrefixTuning(placement="marker")
    with pytest.raises(UserError, match="reparam_hidden 0"):
        PrefixTuning(reparam_hidden=0)
    wino = WinoGrande(Path(__file__).parent / "fixtures" / "winogrande")
    ctx = FitContext(lm=lm, task=TaskInfo.of(wino), train=wino.all_examples()[:2], dev=wino.all_examples()[2:3],
                     scorer=scorer, seed=0)
    with pytest.raises(UserError, match="names no marker"):
        SoftPrompt(placement="marker").fit(ctx)


def test_divergence_stops_the_trial_not_the_sweep(lm, scorer, antonyms) -> None:
    # keys of ~1e37 overflow the attention scores at the second step: a NaN loss, as a real divergence gives
    ctx = _ctx(lm, scorer, antonyms, n_train=2)
    settings = dict(steps=2, batch_size=2, eval_every=2, init="vocab", length=2, format="raw")
    art, record = PromptTrainer(ctx, PrefixTuning(lr=[1e37, 0.01], **settings).settings, "prefix",
                                "prefix-tuning").fit()
    bad, good = record["trials"]
    assert bad["status"] == "diverged" and "nan at step 2" in bad["error"] and "lower the lr" in bad["error"]
    assert good["status"] == "ok" and record["winner"]["lr"] == 0.01 and art.prefix_kv is not None
    with pytest.raises(UserError, match="every trial diverged"):
        PrefixTuning(lr=1e37, **settings).fit(ctx)


def test_projection_scores_the_nearest_tokens_exactly(lm, scorer, antonyms, tmp_path) -> None:
    # a soft prompt made of token embeddings plus small noise projects back to those tokens
    ids = init_text_ids(lm, "Opposite word:")
    noisy = embeddings(lm, ids) + 1e-3 * random_soft(len(ids))
    src = PromptArtifact(format="chat", placement="before_input", soft_prompt=noisy, condition="soft-prompt")
    src.save(tmp_path / "soft")
    proj = SoftProjected(artifact=str(tmp_path / "soft")).fit(_ctx(lm, scorer, antonyms))
    assert proj.meta["projected_ids"] == ids
    nearest = proj.meta["soft_nearest_tokens"]
    assert [n[0][0] for n in nearest] == [lm.tokenizer.decode([i]) for i in ids] == proj.meta["projected_tokens"]
    assert all(n[0][1] > 0.99 and n[0][1] >= n[1][1] for n in nearest)
    # scored exactly as the real token ids in place of the soft vectors
    reqs = flat(scorer, proj, antonyms.test[:4])
    real = [TokenRequest(tuple(ids[-1 - t] if t < 0 else t for t in r.context), r.continuation) for r in reqs]
    got = [x.loglik for x in scorer.loglikelihood(reqs, prompt=proj)]
    ref = [x.loglik for x in scorer.loglikelihood(real)]
    assert max(abs(a - b) for a, b in zip(got, ref, strict=True)) < 1e-4


def test_cli_trains_saves_and_rescores_an_artifact(capsys, tmp_path) -> None:
    from harness.cli import main

    first, again, art_dir = tmp_path / "a.jsonl", tmp_path / "b.jsonl", tmp_path / "art"
    assert main(["eval", "--task", "antonyms", "--condition", "soft-prompt", "--set", "steps=1", "--set",
                 "batch_size=2", "--set", "lr=0.01", "--set", "format=raw", "--limit", "4",
                 "--artifact-out", str(art_dir), "--out", str(first)]) == 0
    assert (art_dir / "tensors.safetensors").exists()
    assert (tmp_path / "a.log.json").exists()  # the training log beside the output
    assert main(["eval", "--task", "antonyms", "--artifact", str(art_dir), "--limit", "4", "--out", str(again)]) == 0
    assert first.read_text() == again.read_text()  # same lines, condition label included
    assert main(["eval", "--task", "antonyms", "--artifact", str(art_dir), "--set", "lr=1", "--out",
                 str(again)]) == 2
    assert "--set has no effect with --artifact" in capsys.readouterr().err
