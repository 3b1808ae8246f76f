"""Tiny random-weight models of other architectures, built from their transformers configs (no download).

The embedded model is a Llama; Gemma-2/3, Mistral and Qwen differ in what the harness must respect (sliding-window
layers, a final logit softcap, a scaled embedding). These stand in for them: the real modelling code with small
dimensions, random weights from a fixed seed, and the embedded model's tokenizer (the vocabulary is its size).
"""

from __future__ import annotations

import torch

from harness.models import LoadedModel

DIMS = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 4, "num_attention_heads": 4,
        "num_key_value_heads": 2, "head_dim": 16, "max_position_embeddings": 1024}


def tiny_lm(model_type: str, tokenizer, seed: int = 0, initializer_range: float = 0.1, **config) -> LoadedModel:
    """A LoadedModel of ``model_type`` (e.g. "gemma3_text") with small dimensions, float32 on the CPU.

    ``initializer_range`` is larger than the usual 0.02 so that attention patterns, and so the masks, matter to the
    numbers (near-zero weights give nearly uniform attention, where a lost window would hardly show).
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.for_model(model_type, vocab_size=len(tokenizer), initializer_range=initializer_range,
                               bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                               pad_token_id=tokenizer.pad_token_id, **{**DIMS, **config})
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).eval().requires_grad_(False)
    return LoadedModel(name=f"tiny-{model_type}", model=model, tokenizer=tokenizer, device=torch.device("cpu"),
                       dtype=torch.float32)


def own_logprobs(lm: LoadedModel, ids: list[int] | None = None, embeds: torch.Tensor | None = None) -> torch.Tensor:
    """The model's own forward over one whole sequence, no mask given (it builds its own, sliding windows included):
    log-probabilities [len, vocab] in float32."""
    with torch.no_grad():
        if embeds is not None:
            logits = lm.model(inputs_embeds=embeds[None]).logits[0]
        else:
            logits = lm.model(input_ids=torch.tensor([ids], device=lm.device)).logits[0]
    return torch.log_softmax(logits.float(), dim=-1)


def own_loglik(lm: LoadedModel, context: tuple[int, ...], continuation: tuple[int, ...]) -> tuple[float, bool]:
    """lm-eval's loglikelihood of one request from the model's own unmasked forward: (sum, greedy)."""
    logp = own_logprobs(lm, list(context + continuation)[:-1])[len(context) - 1 :]
    tgt = torch.tensor(continuation)
    return float(logp.gather(1, tgt[:, None]).sum()), bool((logp.argmax(-1) == tgt).all())
