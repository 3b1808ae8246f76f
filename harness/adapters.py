"""Trained weights on a loaded model for the length of one block: a LoRA adapter (PEFT) or a full fine-tune's
weights, for that artifact's scoring and for its training.

A LoRA adapter is PEFT's own layer (``peft.tuners.lora.LoraModel`` injects ``lora.Linear`` around the targeted
projections of ``lm.model``, in place), so the harness's one forward runs through it unchanged, and the weights are
PEFT's names and shapes, which ``promptgap export-peft`` writes as a PEFT folder. Outside the block the model is
the base model again, its own modules back in place: nothing computed under an adapter outlives it (the scorer keeps
nothing across calls), and a base-model score after it is the same bits as before it (tests/test_lora.py).

A zero-initialised LoRA ``B`` adds exactly 0.0 to every projection, so a fresh adapter scores the base model's bits.

Full fine-tuning (``adapter_config`` ``{"method": "full"}``) trains every parameter of the model: inside the block
each parameter's storage is swapped for the artifact's weights (or, to train, a copy of the base weights), and the
base model's own storage is put back after, untouched: the base weights are never written to.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

from harness.errors import UserError

ADAPTER = "promptgap"  # PEFT's adapter name inside the model; stripped from the artifact's weight names
LORA_KEYS = ("r", "lora_alpha", "lora_dropout", "target_modules")  # the LoraConfig fields an artifact keeps
FULL = "full"  # adapter_config["method"] of a full fine-tune (a LoRA adapter's config has no method, or "lora")


def is_full(config: dict[str, Any] | None) -> bool:
    """Whether ``config`` (an artifact's ``adapter_config``) is a full fine-tune's rather than a LoRA adapter's."""
    return config is not None and config.get("method") == FULL


def _plain(name: str) -> str:
    """A LoRA parameter's name without PEFT's adapter name (``...q_proj.lora_A.promptgap.weight`` ->
    ``...q_proj.lora_A.weight``, as PEFT's own saved adapters name it)."""
    return name.replace(f".{ADAPTER}.", ".")


def lora_config(settings: dict[str, Any]) -> Any:
    """PEFT's ``LoraConfig`` of an artifact's ``adapter_config`` (``target_modules`` None: PEFT's default for the
    model's architecture, e.g. q_proj and v_proj for Llama, Qwen, Mistral and Gemma)."""
    from peft import LoraConfig

    if is_full(settings):
        raise ValueError("a full fine-tune has no LoraConfig")
    return LoraConfig(**{k: settings.get(k) for k in LORA_KEYS if settings.get(k) is not None})


@contextlib.contextmanager
def applied(lm: Any, config: dict[str, Any] | None, weights: dict[str, torch.Tensor] | None = None
            ) -> Iterator[dict[str, torch.nn.Parameter]]:
    """``lm.model`` with a LoRA adapter of ``config`` (the artifact's ``adapter_config``) inside the block, its
    weights ``weights`` (None: PEFT's initialisation, ``B`` zero), or for a full fine-tune (``is_full(config)``)
    with every parameter's values ``weights`` (None: a copy of the base weights). Yields the trained parameters by
    their plain names (trainable: ``requires_grad`` on), which a trainer can step. Nested inside another
    ``applied`` of the same model (a dev score during training), the live weights are set aside for the block and
    put back after; with ``config`` None there, the adapter is switched off for the block (PEFT's layers then
    return their base layer's output as is; a full fine-tune's parameters their base storage). With ``config``
    None and no adapter, nothing happens."""
    wrapper, live = lm.adapter or (None, None)
    if config is None:
        if wrapper is None:
            yield {}
            return
        wrapper.disable_adapter_layers()
        try:
            yield {}
        finally:
            wrapper.enable_adapter_layers()
        return
    if live is not None:
        if weights is None:
            raise UserError("an adapter is already applied to this model; give the weights to score under it")
        _check(lm, live, weights)
        kept = {k: p.detach().clone() for k, p in live.items()}
        _load(live, weights)
        try:
            yield live
        finally:
            _load(live, kept)
        return
    grads = {n: p.requires_grad for n, p in lm.model.named_parameters()}
    base_cache, lm.cache = lm.cache, {}  # tensors derived from the base model (a float32 LM head) stay out of it
    if is_full(config):
        wrapper: Any = _FullWeights(lm.model)
    else:
        from peft.tuners.lora import LoraModel

        wrapper = LoraModel(lm.model, lora_config(config), ADAPTER)
    try:
        params = wrapper.params if is_full(config) else \
            {_plain(n): p for n, p in lm.model.named_parameters() if f".{ADAPTER}." in n}
        if weights is not None:
            _check(lm, params, weights)
            _load(params, weights)
        lm.adapter = (wrapper, params)
        yield params
    finally:
        lm.adapter, lm.cache = None, base_cache
        wrapper.unload()  # the model is the base model again (LoRA: every lora.Linear replaced by its base layer)
        for n, p in lm.model.named_parameters():
            p.requires_grad_(grads.get(n, False))


class _FullWeights:
    """A full fine-tune inside the model: every parameter (tied ones once, as ``named_parameters`` gives them) on a
    storage of its own, a copy of the base weights, trainable. Mirrors what ``applied`` uses of PEFT's
    ``LoraModel``: ``disable_adapter_layers`` (the base storage back for a block), ``enable_adapter_layers``,
    ``unload`` (the base storage back for good)."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.params = dict(model.named_parameters())
        self.base = {n: p.data for n, p in self.params.items()}
        self.trained = {n: t.clone() for n, t in self.base.items()}
        self.enable_adapter_layers()
        for p in self.params.values():
            p.requires_grad_(True)

    def _use(self, data: dict[str, torch.Tensor]) -> None:
        for n, p in self.params.items():
            p.data = data[n]

    def disable_adapter_layers(self) -> None:
        self._use(self.base)

    def enable_adapter_layers(self) -> None:
        self._use(self.trained)

    def unload(self) -> None:
        self._use(self.base)
        self.trained = {}


def _check(lm: Any, params: dict[str, torch.nn.Parameter], weights: dict[str, torch.Tensor]) -> None:
    """``weights`` name exactly the adapter's parameters, each of its shape; else a one-line error."""
    if set(weights) != set(params):
        missing = sorted(set(params) - set(weights))[:1] or sorted(set(weights) - set(params))[:1]
        raise UserError(f"the adapter's weights do not fit model {lm.name} ({len(weights)} given, {len(params)} "
                        f"expected, e.g. {missing[0]!r}); score it on the model it was trained on")
    wrong = [k for k, t in weights.items() if tuple(t.shape) != tuple(params[k].shape)]
    if wrong:
        raise UserError(f"the adapter's weight {wrong[0]} is {list(weights[wrong[0]].shape)}, model {lm.name}'s "
                        f"layer needs {list(params[wrong[0]].shape)}; score it on the model it was trained on")


def _load(params: dict[str, torch.nn.Parameter], weights: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for k, p in params.items():
            p.copy_(weights[k].to(p.device, p.dtype))


def snapshot(params: dict[str, torch.nn.Parameter]) -> dict[str, torch.Tensor]:
    """The adapter's weights now, on the host in float32 (what an artifact keeps)."""
    return {k: p.detach().float().cpu().clone() for k, p in sorted(params.items())}
