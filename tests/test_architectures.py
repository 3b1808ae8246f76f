"""Other architectures through the one forward: sliding-window layers (Gemma-2/3, Mistral, Qwen2), a final logit
softcap (Gemma-2) and a scaled embedding (Gemma), on tiny random-weight models built from their configs.

The expected numbers are the model's own forward over each whole request with no mask given, where transformers
builds every layer's mask itself, sliding windows included.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tiny import own_loglik, own_logprobs, tiny_lm

from harness.artifact import PromptArtifact
from harness.errors import UserError
from harness.forward import attention_kinds, embed_tokens
from harness.render import TokenRequest
from harness.scorer import Scorer
from harness.search import PromptForward
from tasks.winogrande import WinoGrande

WINDOW = 6  # shorter than every request below (raw WinoGrande contexts are about 15 tokens, chat ones 60)

# (model type, config overrides): each marks sliding layers its own way
SLIDING = {
    "gemma3": ("gemma3_text", {"sliding_window": WINDOW,
                               "layer_types": ["sliding_attention", "full_attention"] * 2}),
    "gemma2": ("gemma2", {"sliding_window": WINDOW, "final_logit_softcapping": 3.0}),
    "mistral": ("mistral", {"sliding_window": WINDOW}),
    "qwen2": ("qwen2", {"use_sliding_window": True, "sliding_window": WINDOW, "max_window_layers": 2}),
}


@pytest.fixture(scope="module")
def requests(lm) -> list[TokenRequest]:
    """WinoGrande requests, raw and chat with an instruction: a prefix tree with a shared root, branches and
    continuations, every request longer than the window."""
    scorer = Scorer(lm)
    examples = WinoGrande(Path(__file__).parent / "fixtures" / "winogrande").all_examples()[:6]
    out = []
    for art in (PromptArtifact(format="raw"), PromptArtifact(format="chat", instruction="Fill in the blank.")):
        out += [r for reqs in scorer.renderer.requests(art, examples) for r in reqs]
    assert min(len(r.context) for r in out) > WINDOW
    return out


@pytest.mark.parametrize("family", sorted(SLIDING))
def test_scorer_keeps_the_sliding_window(lm, requests, family) -> None:
    model_type, config = SLIDING[family]
    tiny = tiny_lm(model_type, lm.tokenizer, **config)
    assert any(w == WINDOW for w in attention_kinds(tiny).values())
    ours = Scorer(tiny, batch_size=4).loglikelihood(requests)
    for o, r in zip(ours, requests, strict=True):
        ll, greedy = own_loglik(tiny, r.context, r.continuation)
        # batched (padded rows, batch 4) against one row alone: float32 sums in another order, whose rounding grows
        # with the sum's size (~|ll| * 2**-24 per addition); the window's own effect is > 0.1 (the test below)
        assert abs(o.loglik - ll) < 1e-6 * max(1.0, abs(ll)), (family, o.loglik, ll)
        assert o.greedy == greedy


def test_the_window_changes_the_numbers(lm, requests) -> None:
    """The check above can fail: the same weights with a window longer than every request give other numbers."""
    model_type, config = SLIDING["gemma3"]
    short = tiny_lm(model_type, lm.tokenizer, **config)
    long = tiny_lm(model_type, lm.tokenizer, **{**config, "sliding_window": 4096})
    diffs = [abs(own_loglik(short, r.context, r.continuation)[0] - own_loglik(long, r.context, r.continuation)[0])
             for r in requests]
    assert max(diffs) > 0.1


@pytest.mark.parametrize("family", ["gemma3", "mistral"])
def test_training_forward_keeps_the_sliding_window(lm, requests, family) -> None:
    """The differentiable forward (a frozen shared head as the past, then the rows) against the model's own forward,
    with a soft prompt in the slot (compared through inputs_embeds)."""
    model_type, config = SLIDING[family]
    tiny = tiny_lm(model_type, lm.tokenizer, **config)
    examples = WinoGrande(Path(__file__).parent / "fixtures" / "winogrande").all_examples()[:3]
    soft = torch.randn(3, tiny.model.config.hidden_size, generator=torch.Generator().manual_seed(1))
    art = PromptArtifact(format="chat", placement="before_input", soft_prompt=soft)
    reqs = [r for reqs in Scorer(tiny).renderer.requests(art, examples) for r in reqs]
    fwd = PromptForward(tiny, reqs)
    assert fwd.n_frozen > WINDOW  # the shared chat header is a past longer than the window
    with torch.no_grad():
        ours = fwd.loglik(range(len(reqs)), soft=soft)
    for o, r in zip(ours.tolist(), reqs, strict=True):
        seq = torch.tensor([list(r.context + r.continuation)[:-1]])
        with torch.no_grad():
            logp = own_logprobs(tiny, embeds=embed_tokens(tiny.model, seq, soft)[0])[len(r.context) - 1 :]
        ref = float(logp.gather(1, torch.tensor(r.continuation)[:, None]).sum())
        # float32 sums of ~90 nats round at ~1e-5; the window's own effect is > 0.1 (the test above)
        assert abs(o - ref) < 1e-6 * max(1.0, abs(ref))


def test_unsupported_layer_types_are_refused(lm) -> None:
    tiny = tiny_lm("gemma3_text", lm.tokenizer, sliding_window=WINDOW)
    tiny.model.config.layer_types = ["chunked_attention"] * 4
    with pytest.raises(UserError, match="chunked_attention"):
        attention_kinds(tiny)


def test_random_init_has_the_scale_of_a_scaled_embedding(lm) -> None:
    """Gemma's embedding module multiplies its table by sqrt(hidden) (8 here): random init vectors drawn from the
    vocabulary's statistics have the norm of the module's output rows, not of the raw table's."""
    from optimizers.prompt_training import init_vectors

    tiny = tiny_lm("gemma3_text", lm.tokenizer, initializer_range=0.02)
    table = tiny.model.get_input_embeddings()
    with torch.no_grad():
        rows = table(torch.arange(table.num_embeddings))
    want = rows.norm(dim=1).pow(2).mean().sqrt()  # the root-mean-square norm of what the layers read
    raw = table.weight.norm(dim=1).pow(2).mean().sqrt()
    assert want > 5 * raw  # the scale is real: the raw table's statistics would be far off
    vectors = init_vectors(tiny, "random", 512, None, torch.Generator().manual_seed(0))
    got = vectors.norm(dim=1).pow(2).mean().sqrt()
    assert abs(float(got / want) - 1) < 0.05
