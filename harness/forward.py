"""The one forward pass through the frozen model, shared by the scorer and every gradient condition.

Rows of token ids (sentinel ids, negative, stand for soft-prompt vectors: ``render.soft_id``) run after a past of
keys/values, with exact position ids and an explicit 4D mask that hides padding; the LM head runs only where a
log-probability is read, in float32 whatever the model's dtype (a bf16 head rounds logits of 16-32 in steps of
0.125), with any final softcap applied after it. The scorer (no gradients, a different past per row: its prefix
tree) writes keys into one preallocated buffer; training (gradients, one past shared by the batch) uses a
transformers cache, since in-place writes into a buffer cannot be differentiated.

The scorer's passes read the keys/values that every row of a pass shares (the chat template's head, an instruction,
a trained prefix) once, where they are kept, instead of copying them into every row's buffer: ``tree_attention``,
registered with transformers as the attention of models loaded with ``sdpa``, attends over that shared run and each
row's own keys in one softmax, and leaves every other forward to ``sdpa``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from harness.errors import UserError
from harness.models import LoadedModel


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """The length of the common prefix of two sequences."""
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def embed_tokens(model: torch.nn.Module, ids: torch.Tensor, soft: torch.Tensor | None,
                 check: bool = True) -> torch.Tensor:
    """The model's input embeddings of ``ids``, with each sentinel id (negative, ``render.soft_id(i)``)
    replaced by row ``i`` of ``soft``: how the scorer and the training forward both read a soft prompt.

    Differentiable in ``soft``. Embedding modules that scale their output (Gemma) are called as the model
    calls them, so soft vectors live in the space the model's layers read. ``check=False`` skips the checks of
    the sentinels against ``soft`` (each one waits for the device): for callers that checked the ids on the host.
    """
    emb = model.get_input_embeddings()(ids.clamp(min=0))
    if soft is None:
        if check and bool((ids < 0).any()):
            raise ValueError("soft-prompt sentinel ids but no soft_prompt")
        return emb
    is_soft = ids < 0
    index = -1 - ids.clamp(max=-1)
    if check and bool((index[is_soft] >= soft.shape[0]).any()):
        raise ValueError(f"a sentinel id asks for a soft vector beyond the {soft.shape[0]} given")
    return torch.where(is_soft[..., None], soft.to(emb.dtype)[index], emb)


def embedding_rows(lm: LoadedModel, ids: torch.Tensor | None = None, chunk: int = 8192) -> torch.Tensor:
    """Input vectors as the model's layers read them [n, hidden] (float32, on the model's device): the embedding
    module's output, scale included (Gemma multiplies its table by sqrt(hidden), about 50x at 2304 wide), for
    ``ids`` or the whole vocabulary, ``chunk`` rows at a time."""
    table = lm.model.get_input_embeddings()
    if ids is None:
        if type(table) is torch.nn.Embedding and table.weight.dtype == torch.float32:
            return table.weight.detach()  # the module returns its rows as they are: no copy of the table
        ids = torch.arange(table.num_embeddings, device=lm.device)
    with torch.no_grad():
        return torch.cat([table(ids[a : a + chunk].to(lm.device)).float() for a in range(0, len(ids), chunk)])


FULL, SLIDING = "full_attention", "sliding_attention"


def attention_kinds(lm: LoadedModel) -> dict[str, int | None]:
    """The model's kinds of attention layer as transformers defines them: {layer type: its window, None for full}.

    A sliding-window layer sees only the last ``sliding_window`` keys (itself included). transformers builds its own
    masks per layer type (``config.layer_types``; without them, every layer slides when ``sliding_window`` is set, as in
    Mistral), but returns an explicit 4D mask unchanged, so ours must carry the window. Other layer types (chunked,
    linear or recurrent layers) have no key/value past this forward could hand over; they are refused.
    """
    cfg = lm.model.config.get_text_config()
    window = getattr(cfg, "sliding_window", None) or None
    types = getattr(cfg, "layer_types", None)
    if types is None:
        return {SLIDING: window} if window else {FULL: None}
    unknown = sorted(set(types) - {FULL, SLIDING})
    if unknown:
        raise UserError(f"model {lm.name} has {', '.join(unknown)} layers; promptgap's forward runs full and "
                        f"sliding-window attention only (layer types: {', '.join(sorted(set(types)))})")
    if SLIDING in types and not window:
        raise UserError(f"model {lm.name} marks sliding-window layers but its config gives no sliding_window")
    return {t: (window if t == SLIDING else None) for t in sorted(set(types))}


def attention_mask(key_valid: torch.Tensor, n_past: int, width: int, dtype: torch.dtype,
                   window: int | None = None) -> torch.Tensor:
    """[rows, 1, width, n_past + width] additive mask: a query at row position j (absolute n_past + j) sees valid
    keys up to itself, and within a sliding ``window`` only the last ``window`` of them (as transformers'
    ``sliding_window_overlay``: key index > query index - window). Every row's valid keys are contiguous and end at
    its query, so index distance is position distance. A padded query sees itself, so no row is all -inf (NaN would
    survive the masking)."""
    dev = key_valid.device
    q = torch.arange(width, device=dev)[:, None] + n_past
    k = torch.arange(n_past + width, device=dev)[None, :]
    causal = k <= q
    if window is not None:
        causal &= k > q - window
    allowed = (causal[None] & key_valid[:, None, :]) | (k == q)[None]
    mask = torch.zeros(allowed.shape, dtype=dtype, device=dev)
    mask.masked_fill_(~allowed, torch.finfo(dtype).min)
    return mask[:, None]


def shared_mask(q_positions: torch.Tensor, n_shared: int, dtype: torch.dtype,
                window: int | None = None) -> torch.Tensor:
    """[rows, 1, width, n_shared] additive mask over a shared run of keys at positions 0..n_shared-1, which every
    query follows: all visible, except beyond a sliding ``window`` (key position > query position - window)."""
    k = torch.arange(n_shared, device=q_positions.device)
    mask = torch.zeros(*q_positions.shape, n_shared, dtype=dtype, device=q_positions.device)
    if window is not None:
        mask.masked_fill_(k <= q_positions[..., None] - window, torch.finfo(dtype).min)
    return mask[:, None]


def layer_masks(lm: LoadedModel, key_valid: torch.Tensor, n_past: int, width: int, dtype: torch.dtype,
                q_positions: torch.Tensor | None = None, n_shared: int = 0) -> torch.Tensor | dict[str, torch.Tensor]:
    """The mask the model's layers take: one tensor when every layer attends alike, else one per layer type (the
    mapping transformers' hybrid models, Gemma-2/3, Qwen2/3 with sliding layers and others, accept in its place).
    With ``n_shared`` keys read once for every row (``tree_attention``), their columns come first."""
    kinds = attention_kinds(lm)
    masks = {t: attention_mask(key_valid, n_past, width, dtype, w) for t, w in kinds.items()}
    if n_shared:
        masks = {t: torch.cat([shared_mask(q_positions, n_shared, dtype, kinds[t]), m], dim=-1)
                 for t, m in masks.items()}
    return next(iter(masks.values())) if len(masks) == 1 else masks


TREE_ATTENTION = "promptgap_tree"
# a pass's attention scores at once, in elements: larger passes run in blocks of queries (a long row's first pass)
TREE_SCORES = 8 * 2**20


def tree_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                   attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                   tree_shared: torch.Tensor | None = None, **kwargs) -> tuple[torch.Tensor, None]:
    """Attention over keys/values every row shares plus each row's own, for the scorer's passes.

    ``tree_shared`` [layers, 2, kv_heads, n_shared, head_dim] (the scorer's forward passes it; any other forward
    has none and runs transformers' ``sdpa`` unchanged) is read once for all rows, never copied per row; the mask's
    first ``n_shared`` columns are its. Query heads are grouped by the key/value head they read, so grouped-query
    models need no repeated keys either. Scores and the softmax are float32 whatever the dtype, as in transformers'
    eager attention.
    """
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    if tree_shared is None:
        return ALL_ATTENTION_FUNCTIONS["sdpa"](module, query, key, value, attention_mask, dropout=dropout,
                                               scaling=scaling, **kwargs)
    rows, q_heads, width, dim = query.shape
    kv_heads, n_keys = key.shape[1], key.shape[2]
    groups = q_heads // kv_heads
    shared = tree_shared[module.layer_idx]  # [2, kv_heads, n_shared, head_dim]
    n_shared = shared.shape[2]
    scale = dim**-0.5 if scaling is None else scaling
    softcap = kwargs.get("softcap")
    step = max(1, TREE_SCORES // max(1, rows * q_heads * (n_shared + n_keys)))
    outs = []
    for a in range(0, width, step):  # blocks of queries bound the scores' memory; each query's numbers alike
        b = min(width, a + step)
        w = b - a
        # [rows, kv_heads, groups * w, dim]: the query heads that read one key/value head, side by side
        q = query[:, :, a:b].reshape(rows, kv_heads, groups * w, dim)
        scores = torch.matmul(q, key.transpose(-1, -2))
        if n_shared:  # every row's queries against the shared keys, in one product: [kv_heads, rows*groups*w, n]
            qs = q.transpose(0, 1).reshape(kv_heads, rows * groups * w, dim)
            s_shared = torch.matmul(qs, shared[0].transpose(-1, -2)).view(kv_heads, rows, groups * w, n_shared)
            scores = torch.cat([s_shared.transpose(0, 1), scores], dim=-1)
        scores = scores.float() * scale
        if softcap is not None:
            scores = torch.tanh(scores / softcap) * softcap
        scores = scores.view(rows, kv_heads, groups, w, n_shared + n_keys)
        if attention_mask is not None:
            scores = scores + attention_mask[:, :, None, a:b]
        probs = torch.softmax(scores, dim=-1).to(value.dtype).view(rows, kv_heads, groups * w, n_shared + n_keys)
        out = torch.matmul(probs[..., n_shared:], value)
        if n_shared:
            ps = probs[..., :n_shared].transpose(0, 1).reshape(kv_heads, rows * groups * w, n_shared)
            out = out + torch.matmul(ps, shared[1]).view(kv_heads, rows, groups * w, dim).transpose(0, 1)
        outs.append(out.view(rows, q_heads, w, dim))
    out = outs[0] if len(outs) == 1 else torch.cat(outs, dim=2)
    return out.transpose(1, 2).contiguous(), None


def use_tree_attention(lm: LoadedModel) -> bool:
    """Give ``lm``'s model ``tree_attention`` if it runs transformers' ``sdpa`` (the default; ``tree_attention``
    runs every other forward through it unchanged). Models loaded with another attention keep it, and their
    scorer copies shared keys into each row. Returns whether the model has it."""
    from transformers import AttentionInterface, AttentionMaskInterface
    from transformers.masking_utils import sdpa_mask

    if lm.model.config._attn_implementation == "sdpa":
        AttentionInterface.register(TREE_ATTENTION, tree_attention)
        AttentionMaskInterface.register(TREE_ATTENTION, sdpa_mask)  # masks built from 2D ones: as for sdpa
        lm.model.set_attn_implementation(TREE_ATTENTION)
    return lm.model.config._attn_implementation == TREE_ATTENTION


def _inputs(lm: LoadedModel, ids: torch.Tensor, soft: torch.Tensor | None) -> dict[str, torch.Tensor]:
    """Token ids, or with soft vectors the input embeddings (the scorer checked every sentinel on the host)."""
    if soft is None:
        return {"input_ids": ids}
    return {"inputs_embeds": embed_tokens(lm.model, ids, soft, check=False)}


def _count(lm: LoadedModel, lengths: Sequence[int]) -> None:
    lm.usage.tokens += sum(lengths)
    if torch.is_grad_enabled():
        lm.usage.grad_tokens += sum(lengths)


def run_tree_rows(lm: LoadedModel, rows: list[list[int]], pasts: list[Sequence[torch.Tensor]], starts: list[int],
                  soft: torch.Tensor | None = None, shared: Sequence[torch.Tensor] = ()
                  ) -> tuple[torch.Tensor, int, torch.Tensor]:
    """No gradients: run right-padded ``rows``, each after its own past, left-padded to one width. A row's past is
    ``shared`` (key/value runs [layers, 2, kv_heads, n, head_dim] every row has, first; only for a model with
    ``tree_attention``) then its own list of runs, in order (its ancestors' own tokens in the scorer's prefix tree, so
    an ancestor's keys are stored once however many rows descend from it), ``starts[i]`` long in all.

    Each row's own keys/values live in one buffer [layers, 2, rows, kv_heads, own past + width, head_dim]: the own
    pasts are copied in once and each layer writes its new keys in place (no per-layer concat); the shared runs are
    read where they are. Returns (buffer, own past width, hidden). Token counting is the caller's (the scorer counts
    a level once, outside its worker threads).
    """
    dev = lm.device
    width = max(len(r) for r in rows)
    n_shared = sum(seg.shape[3] for seg in shared)
    if n_shared and lm.model.config._attn_implementation != TREE_ATTENTION:
        raise RuntimeError("shared keys/values need tree_attention (forward.use_tree_attention)")
    starts = [s - n_shared for s in starts]  # each row's own past
    n_past = max(starts)
    # built whole on the host and copied once: one transfer per pass, not one per row
    ids = torch.tensor([r + [0] * (width - len(r)) for r in rows], dtype=torch.long).to(dev, non_blocking=True)
    meta = torch.tensor([starts, [len(r) for r in rows]], dtype=torch.long).to(dev, non_blocking=True)
    k = torch.arange(n_past + width, device=dev)[None, :]
    key_valid = (k >= n_past - meta[0][:, None]) & (k < n_past + meta[1][:, None])
    positions = meta[0][:, None] + n_shared + torch.arange(width, device=dev)[None, :]

    layers, kv_heads, head_dim = lm.kv_shape
    buf = torch.empty(layers, 2, len(rows), kv_heads, n_past + width, head_dim, dtype=lm.dtype, device=dev)
    for i, segments in enumerate(pasts):
        at = n_past - starts[i]
        buf[:, :, i, :, :at] = 0  # masked, but garbage could be NaN, and NaN survives masking
        for seg in segments:
            buf[:, :, i, :, at : at + seg.shape[3]] = seg
            at += seg.shape[3]
        if at != n_past:
            raise RuntimeError(f"row {i}: its past holds {at - n_past + starts[i]} positions, not {starts[i]}")
    mask = layer_masks(lm, key_valid, n_past, width, lm.dtype, positions, n_shared)
    # the shared run as one tensor [layers, 2, kv_heads, n_shared, head_dim] (copied only when the tree keeps it in
    # pieces); without one, sdpa runs as in every other forward (as fast here, and the same numbers as before)
    extra = {"tree_shared": shared[0] if len(shared) == 1 else torch.cat(list(shared), dim=3)} if n_shared else {}
    out = lm.model.base_model(**_inputs(lm, ids, soft), attention_mask=mask, position_ids=positions,
                              **{lm.cache_kwarg: _BufferCache(buf, n_past)}, use_cache=True, **extra)
    return buf, n_past, out.last_hidden_state


def run_after(lm: LoadedModel, ids: torch.Tensor, lengths: Sequence[int], past: torch.Tensor | None,
              soft: torch.Tensor | None = None, embeds: torch.Tensor | None = None
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Differentiable: run right-padded rows (token ``ids`` with sentinels for ``soft``, or ready ``embeds``) after
    one ``past`` [layers, 2, kv_heads, n, head_dim] shared by every row (positions continue after it).

    Returns (hidden [rows, width, hidden], new keys/values [layers, 2, rows, kv_heads, width, head_dim]).
    """
    from transformers import DynamicCache

    x = embeds if embeds is not None else embed_tokens(lm.model, ids, soft)
    rows, width = x.shape[:2]
    dev = x.device
    _count(lm, lengths)
    n_past = 0 if past is None else past.shape[3]
    valid = torch.arange(width, device=dev)[None, :] < torch.tensor(list(lengths), device=dev)[:, None]
    key_valid = torch.cat([torch.ones(rows, n_past, dtype=torch.bool, device=dev), valid], dim=1)
    positions = (torch.arange(width, device=dev) + n_past)[None, :].expand(rows, -1)
    cache = DynamicCache()
    if past is not None:
        for layer in range(past.shape[0]):
            k, v = (past[layer, j].unsqueeze(0).expand(rows, -1, -1, -1) for j in (0, 1))
            cache.update(k, v, layer)
    out = lm.model.base_model(inputs_embeds=x, attention_mask=layer_masks(lm, key_valid, n_past, width, x.dtype),
                              position_ids=positions, **{lm.cache_kwarg: cache}, use_cache=True)
    new = torch.stack([torch.stack([layer.keys[:, :, n_past:], layer.values[:, :, n_past:]])
                       for layer in cache.layers])
    return out.last_hidden_state, new


def kv_of(lm: LoadedModel, vectors: torch.Tensor) -> torch.Tensor:
    """Keys/values [layers, 2, kv_heads, n, head_dim] of a run of input vectors at positions 0..n-1."""
    _, new = run_after(lm, None, [vectors.shape[0]], None, embeds=vectors[None])  # type: ignore[arg-type]
    return new[:, :, 0]


def head_logits(lm: LoadedModel, hidden: torch.Tensor) -> torch.Tensor:
    """The LM head on ``hidden`` in float32 (float64 kept), then any final logit softcap: the numbers a bf16 model
    gives are its hidden states', not its rounding's."""
    head = lm.model.get_output_embeddings()
    weight, bias = head.weight, getattr(head, "bias", None)
    if weight.dtype not in (torch.float32, torch.float64) and weight.requires_grad:
        # a head being trained (full fine-tuning): cast anew on every call, so that it is differentiable and current
        weight, bias = weight.float(), None if bias is None else bias.float()
    elif weight.dtype not in (torch.float32, torch.float64):
        key = ("head32", weight.data_ptr())
        if key not in lm.cache:  # one float32 copy of the head per model, made on first use
            lm.cache.clear()
            lm.cache[key] = (weight.detach().float(), None if bias is None else bias.detach().float())
        weight, bias = lm.cache[key]
    logits = F.linear(hidden.to(weight.dtype), weight, bias)
    softcap = getattr(lm.model.config.get_text_config(), "final_logit_softcapping", None)
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    return logits


def _buffer_cache_classes():
    """A transformers Cache over a preallocated buffer (defined lazily: transformers imports slowly)."""
    from transformers.cache_utils import Cache, DynamicLayer

    class BufferLayer(DynamicLayer):
        def __init__(self, keys: torch.Tensor, values: torch.Tensor, filled: int) -> None:
            super().__init__()
            self.buf_keys, self.buf_values, self.filled = keys, values, filled
            self.keys, self.values = keys[:, :, :filled], values[:, :, :filled]
            self.dtype, self.device, self.is_initialized = keys.dtype, keys.device, True

        def update(self, key_states, value_states, *args, **kwargs):
            end = self.filled + key_states.shape[-2]
            self.buf_keys[:, :, self.filled : end] = key_states
            self.buf_values[:, :, self.filled : end] = value_states
            self.filled = end
            self.keys, self.values = self.buf_keys[:, :, :end], self.buf_values[:, :, :end]
            return self.keys, self.values

        def get_seq_length(self) -> int:
            return self.filled

    class BufferCache(Cache):
        def __init__(self, buf: torch.Tensor, filled: int) -> None:
            super().__init__(layers=[BufferLayer(buf[i, 0], buf[i, 1], filled) for i in range(buf.shape[0])])

    return BufferCache


_BUFFER_CACHE = None


def _BufferCache(buf: torch.Tensor, filled: int):  # noqa: N802 - stands in for a class
    global _BUFFER_CACHE
    if _BUFFER_CACHE is None:
        _BUFFER_CACHE = _buffer_cache_classes()
    return _BUFFER_CACHE(buf, filled)
