"""The public API for gradient methods: a prompt slot's task loss, differentiable and for many candidates at once.

A gradient condition (soft prompt, prefix, PEZ, GCG, or a plugin) needs four things, all here and all on the
harness's one renderer and one forward, so the loss it optimises is the function the test score measures:
``PromptForward`` (summed continuation log-likelihoods of rendered requests as a differentiable function of the
prompt tensors), ``task_loss`` (the loss the test metric rewards), and ``SlotObjective``, which puts a slot of
``length`` vectors where a hand-written instruction goes and offers the embedding table, a differentiable loss, an
exact loss for many candidate token sequences at once (one scorer call: their shared prefix runs once), and the
check that a token sequence survives being written out as text and read back in context.
"""

from __future__ import annotations

import string
from collections.abc import Sequence
from typing import Any

import torch

from harness.artifact import PromptArtifact
from harness.data import Example, TaskKind
from harness.errors import UserError
from harness.forward import common_prefix, embed_tokens, embedding_rows, head_logits, kv_of, run_after
from harness.models import LoadedModel
from harness.optimizer import FitContext
from harness.render import TokenRequest, soft_ids

PRINTABLE = set(string.printable) - set("\x0b\x0c")


class PromptForward:
    """Summed log-likelihoods of token requests as a differentiable function of the prompt tensors.

    ``requests`` are the renderer's, with sentinel ids for a soft prompt. The token run all requests share
    before the first trainable position is computed once (no gradients) and reused as a past.
    """

    def __init__(self, lm: LoadedModel, requests: Sequence[TokenRequest], n_prefix: int = 0) -> None:
        self.lm = lm
        self.requests = list(requests)
        self.seqs = [(r.context + r.continuation)[:-1] for r in self.requests]
        self.n_prefix = n_prefix
        # the shared head; each row keeps a token of its own (in sorted order the first and last bound the rest)
        ordered = sorted(self.seqs)
        self.n_head = min(common_prefix(ordered[0], ordered[-1]), min(map(len, self.seqs)) - 1)
        head = self.seqs[0][: self.n_head]
        # the head up to the first trainable position (none after a prefix) is computed once, without gradients;
        # the rest of the head runs once per step at batch size 1, its keys/values shared by the batch's rows
        self.n_frozen = 0 if n_prefix else next((i for i, t in enumerate(head) if t < 0), self.n_head)
        self.frozen_head: torch.Tensor | None = None
        if self.n_frozen:
            with torch.no_grad():
                ids = torch.tensor([head[: self.n_frozen]], device=lm.device)
                self.frozen_head = kv_of(lm, embed_tokens(lm.model, ids, None)[0])

    def loglik(self, index: Sequence[int], soft: torch.Tensor | None = None,
               prefix_kv: torch.Tensor | None = None) -> torch.Tensor:
        """Summed continuation log-likelihood of requests ``index`` (a tensor with gradients)."""
        lm, dev = self.lm, self.lm.device
        soft = None if soft is None else soft.to(dev, lm.dtype)
        past = self.frozen_head if prefix_kv is None else prefix_kv.to(dev, lm.dtype)
        if self.n_head > self.n_frozen:
            ids = torch.tensor([self.seqs[0][self.n_frozen : self.n_head]], device=dev)
            _, head = run_after(lm, ids, [ids.shape[1]], past, soft)
            past = head[:, :, 0] if past is None else torch.cat([past, head[:, :, 0]], dim=3)
        rows = [self.seqs[i][self.n_head :] for i in index]
        width = max(map(len, rows))
        ids = torch.zeros(len(rows), width, dtype=torch.long)
        for r, row in enumerate(rows):
            ids[r, : len(row)] = torch.tensor(row)
        hidden, _ = run_after(lm, ids.to(dev), [len(r) for r in rows], past, soft)
        where_row, where_pos, targets, owner = [], [], [], []
        for r, i in enumerate(index):
            req = self.requests[i]
            for j, tok in enumerate(req.continuation):
                where_row.append(r)
                where_pos.append(len(req.context) - 1 + j - self.n_head)
                targets.append(tok)
                owner.append(r)
        h = hidden[torch.tensor(where_row, device=dev), torch.tensor(where_pos, device=dev)]
        logp = torch.log_softmax(head_logits(lm, h), dim=-1)
        tok_lp = logp.gather(1, torch.tensor(targets, device=dev)[:, None])[:, 0]
        return torch.zeros(len(index), device=dev, dtype=tok_lp.dtype).index_add(0, torch.tensor(owner, device=dev),
                                                                                tok_lp)


def task_loss(kind: TaskKind, examples: Sequence[Example], spans: Sequence[tuple[int, int]],
              loglik: torch.Tensor, n_tokens: Sequence[int]) -> torch.Tensor:
    """The loss the test metric rewards: for multiple choice, cross-entropy of the gold choice under a softmax
    over the choices' summed log-likelihoods; for continuations, the gold continuation's mean token NLL."""
    losses = []
    for ex, (a, b) in zip(examples, spans, strict=True):
        if kind == "continuation":
            losses.append(-loglik[a] / n_tokens[a])
        else:
            losses.append(torch.logsumexp(loglik[a:b], 0) - loglik[a + ex.gold])
    return torch.stack(losses).mean()


def _losses_of(kind: TaskKind, examples: Sequence[Example], per_example: Sequence[Sequence[float]],
               n_tokens: Sequence[Sequence[int]]) -> float:
    """``task_loss`` on plain numbers: the mean over ``examples`` of each one's loss from its choices' logliks."""
    total = 0.0
    for ex, lls, ns in zip(examples, per_example, n_tokens, strict=True):
        if kind == "continuation":
            total += -lls[0] / ns[0]
        else:
            top = max(lls)
            total += top + float(torch.tensor([x - top for x in lls]).exp().sum().log()) - lls[ex.gold]
    return total / len(examples)


class SlotObjective:
    """The task loss of ``length`` prompt vectors placed where a hand-written instruction goes (inside the chat
    user turn in chat format), on the train split. What a gradient search over prompts needs:

    - ``embeddings`` [vocab, hidden]: every token's input vector as the model reads it (scaled where the model's
      embedding scales, as Gemma's does), and ``allowed`` [vocab]: the tokens a search may use (no special tokens;
      printable ASCII text when ``ascii_only``; only ``vocab`` when given);
    - ``loss(vectors, batch)``: the mean task loss over train examples ``batch`` (indices), differentiable in
      ``vectors`` [length, hidden];
    - ``losses(candidates, batch)``: the exact loss of each candidate token sequence, all in one scorer call, so
      the tokens every candidate shares before the slot run once;
    - ``round_trips(ids)``: whether ``ids`` written out as text and rendered as the instruction are exactly ``ids``
      in context (after the chat header, before the block separator); only such prompts can be copied as text;
    - ``artifact(ids)``: the text prompt, its ids and tokens in ``meta``; ``dev(ids)``: its dev loss and accuracy
      through the shared scorer.
    """

    def __init__(self, ctx: FitContext, length: int, fmt: str | None = None, vocab: Sequence[int] | None = None,
                 ascii_only: bool = True, condition: str = "") -> None:
        lm = ctx.lm
        if length < 1:
            raise UserError(f"condition {condition}: length {length}; give 1 or more tokens")
        if not ctx.train:
            raise UserError(f"condition {condition}: no training examples; give the task a train split")
        self.ctx, self.lm, self.length, self.condition = ctx, lm, length, condition
        self.format = fmt or ("chat" if lm.has_chat_template else "raw")
        self.template = PromptArtifact(format=self.format, placement="instruction", condition=condition,
                                       soft_prompt=torch.zeros(length, lm.model.get_input_embeddings().embedding_dim))
        per_example = ctx.scorer.renderer.requests(self.template, ctx.train)
        self.requests = [r for reqs in per_example for r in reqs]
        self.spans, k = [], 0
        for reqs in per_example:
            self.spans.append((k, k + len(reqs)))
            k += len(reqs)
        self.forward = PromptForward(lm, self.requests)
        self.embeddings = embedding_rows(lm)  # the module's own output: a scale (Gemma) rounded as the model rounds it
        self.allowed = self._allowed(vocab, ascii_only)
        if not bool(self.allowed.any()):
            raise UserError(f"condition {condition}: no token is allowed; widen vocab or set ascii_only = false")

    def _allowed(self, vocab: Sequence[int] | None, ascii_only: bool) -> torch.Tensor:
        tok = self.lm.tokenizer
        n = self.embeddings.shape[0]
        allowed = torch.zeros(n, dtype=torch.bool)
        ids = range(n) if vocab is None else [int(i) for i in vocab if 0 <= int(i) < n]
        special = set(getattr(tok, "all_special_ids", []) or [])
        for i in ids:
            if i in special:
                continue
            text = tok.decode([i])
            if not text or (ascii_only and not (set(text) <= PRINTABLE and text.strip())):
                continue
            allowed[i] = True
        return allowed.to(self.lm.device)

    # --- losses ------------------------------------------------------------------------------------------------
    def embed(self, ids: Sequence[int]) -> torch.Tensor:
        """The exact input vectors of ``ids`` [len, hidden] (float32)."""
        return self.embeddings[torch.tensor(list(ids), device=self.embeddings.device)]

    def loss(self, vectors: torch.Tensor, batch: Sequence[int]) -> torch.Tensor:
        """Mean task loss of train examples ``batch`` with ``vectors`` in the slot; differentiable."""
        index = [j for i in batch for j in range(*self.spans[i])]
        loglik = self.forward.loglik(index, soft=vectors)
        local, pos = [], 0
        for i in batch:
            a, b = self.spans[i]
            local.append((pos, pos + b - a))
            pos += b - a
        return task_loss(self.ctx.task.kind, [self.ctx.train[i] for i in batch], local, loglik,
                         [len(self.requests[j].continuation) for j in index])

    def filled(self, ids: Sequence[int], index: Sequence[int]) -> list[TokenRequest]:
        """The train requests ``index`` with ``ids`` in the slot (real tokens in place of the sentinels)."""
        slot = soft_ids(self.length)
        out = []
        for j in index:
            r = self.requests[j]
            at = next(k for k in range(len(r.context)) if r.context[k : k + self.length] == slot)
            out.append(TokenRequest(r.context[:at] + tuple(ids) + r.context[at + self.length :], r.continuation))
        return out

    @torch.no_grad()
    def losses(self, candidates: Sequence[Sequence[int]], batch: Sequence[int]) -> list[float]:
        """The exact mean task loss of each candidate token sequence on train examples ``batch``, in one call."""
        index = [j for i in batch for j in range(*self.spans[i])]
        reqs = [r for ids in candidates for r in self.filled(ids, index)]
        results = self.ctx.scorer.loglikelihood(reqs, desc=f"{self.condition}: candidates",
                                                of=[self.ctx.train[i] for i in batch])
        out, k = [], 0
        examples = [self.ctx.train[i] for i in batch]
        for _ in candidates:
            per_example, ntoks = [], []
            for i in batch:
                a, b = self.spans[i]
                per_example.append([x.loglik for x in results[k : k + b - a]])
                ntoks.append([x.n_tokens for x in results[k : k + b - a]])
                k += b - a
            out.append(_losses_of(self.ctx.task.kind, examples, per_example, ntoks))
        return out

    # --- as text -----------------------------------------------------------------------------------------------
    def text(self, ids: Sequence[int]) -> str:
        return self.lm.tokenizer.decode(list(ids))

    def round_trips(self, ids: Sequence[int], examples: int = 4) -> bool:
        """Whether the text of ``ids``, rendered as the instruction, gives exactly ``ids`` in context (checked on
        the first ``examples`` train examples: the boundary with the input differs between inputs)."""
        text = self.text(ids)
        if not text.strip():
            return False
        art = PromptArtifact(format=self.format, instruction=text)
        n = min(examples, len(self.ctx.train))
        rendered = [r for reqs in self.ctx.scorer.renderer.requests(art, self.ctx.train[:n]) for r in reqs]
        index = [j for i in range(n) for j in range(*self.spans[i])]
        return rendered == self.filled(ids, index)

    def artifact(self, ids: Sequence[int], meta: dict[str, Any] | None = None) -> PromptArtifact:
        tok = self.lm.tokenizer
        return PromptArtifact(format=self.format, instruction=self.text(ids), condition=self.condition,
                              meta={"ids": [int(i) for i in ids], "tokens": [tok.decode([int(i)]) for i in ids],
                                    "round_trip": self.round_trips(ids), **(meta or {})})

    def dev(self, ids: Sequence[int]) -> tuple[float, float]:
        """Dev loss (mean gold NLL) and accuracy of the text prompt, through the shared scorer."""
        art = PromptArtifact(format=self.format, instruction=self.text(ids))
        scores = self.ctx.scorer.score(art, self.ctx.dev, self.ctx.task.kind, desc=f"{self.condition}: dev")
        return sum(s.gold_nll for s in scores) / len(scores), sum(s.correct for s in scores) / len(scores)
