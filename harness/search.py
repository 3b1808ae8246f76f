"""The search kit for methods that use the task model's gradients: the pieces, and one search loop behind them.

Everything a gradient condition (soft prompt, prefix, PEZ, GCG, or a plugin) needs, all on the harness's one
renderer and one forward, so the loss it optimises is the function the test score measures:

- the loss: ``PromptForward`` (summed continuation log-likelihoods of rendered requests as a differentiable function
  of the prompt tensors), ``task_loss`` (the loss the test metric rewards), ``MicroBatches`` (a batch's backward
  that survives running out of memory), and ``SlotObjective``: a slot of ``length`` vectors where a hand-written
  instruction goes, with the embedding table, a differentiable loss, the one-hot token gradient, the exact loss of
  many candidate token sequences at once (one scorer call: their shared prefix runs once), and the check that a
  token sequence survives being written out as text and read back in context;
- GCG's candidate pieces, as functions (nanoGCG's style): ``top_k_tokens``, ``sample_candidates``,
  ``filter_candidates``;
- the loop: ``BudgetSettings`` (steps, batch, dev evaluations, patience, the selection key, a time cap: one class,
  validated once) and ``SearchLoop`` (minibatches, dev evaluation and selection, patience, the time cap, progress and
  the log: every step's train loss and every evaluation's per-example dev losses);
- ``TokenSearch``: a condition that searches real tokens in the slot, whole but for two hooks (``start``, ``step``):
  PEZ, GCG and the example plugin ``examples/plugins/promptgap-signgrad`` are small subclasses.
"""

from __future__ import annotations

import functools
import logging
import random
import string
import time
from abc import abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, TypeVar

import torch

from harness.artifact import FORMATS, PromptArtifact
from harness.data import Example, TaskKind
from harness.errors import UserError
from harness.forward import common_prefix, embed_tokens, embedding_rows, head_logits, kv_of, run_after
from harness.models import OUT_OF_MEMORY, LoadedModel, release
from harness.optimizer import (
    SELECT_ON,
    DevScore,
    FitContext,
    Optimizer,
    Settings,
    check_budget,
    dev_score,
)
from harness.progress import bar
from harness.render import TokenRequest, soft_ids

log = logging.getLogger(__name__)

PRINTABLE = set(string.printable) - set("\x0b\x0c")
P = TypeVar("P")  # what a search keeps as its prompt: token ids, a tensor


# --- the loss -----------------------------------------------------------------------------------------------------
class PromptForward:
    """Summed log-likelihoods of token requests as a differentiable function of the prompt tensors.

    ``requests`` are the renderer's, with sentinel ids for a soft prompt. The token run all requests share
    before the first trainable position is computed once (no gradients) and reused as a past. ``weights``: the
    model's own weights are trained (a LoRA adapter), so every position is trainable and nothing is frozen.
    """

    def __init__(self, lm: LoadedModel, requests: Sequence[TokenRequest], n_prefix: int = 0,
                 weights: bool = False) -> None:
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
        self.n_frozen = 0 if n_prefix or weights else next((i for i, t in enumerate(head) if t < 0), self.n_head)
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


class MicroBatches:
    """A batch's forward and backward, whole or, after running out of memory, in micro-batches whose gradients add
    up to the batch's (each micro-batch's mean loss weighted by its share). An out-of-memory error halves the
    micro-batch and runs the step again from zero gradients; the size then holds for the rest of the search (one
    ``MicroBatches`` per search) and is recorded in ``lm.fallbacks``."""

    def __init__(self, lm: LoadedModel, owner: str) -> None:
        self.lm, self.owner = lm, owner
        self.size: int | None = None  # examples per micro-batch, once a whole batch ran out of memory

    def backward(self, batch: Sequence[int], loss_of: Callable[[list[int]], torch.Tensor],
                 params: Sequence[torch.Tensor]) -> torch.Tensor:
        """Accumulates into ``params``' ``.grad`` the gradient of the mean loss over ``batch``, where
        ``loss_of(part)`` is the mean loss of the examples ``part`` (built anew for each micro-batch). Returns the
        batch's loss (detached, float32)."""
        batch = list(batch)
        while True:
            size = self.size or len(batch)
            try:
                total = torch.zeros((), device=self.lm.device)
                for a in range(0, len(batch), size):
                    part = batch[a : a + size]
                    loss = loss_of(part) * (len(part) / len(batch))
                    loss.backward()
                    total = total + loss.detach().float()
                return total
            except OUT_OF_MEMORY:
                if size == 1:
                    raise
            for p in params:  # outside the handler, whose frame holds the failed step's tensors
                p.grad = None
            self.size = max(1, min(size, len(batch)) // 2)
            self.lm.fallbacks.append({"where": "training", "what": f"{self.owner}: out of memory in a step of {size} "
                                      f"examples; micro-batches of {self.size} with gradient accumulation from then "
                                      f"on"})
            log.warning("%s: %s", self.owner, self.lm.fallbacks[-1]["what"])
            release(self.lm.device)


class SlotObjective:
    """The task loss of ``length`` prompt vectors placed where a hand-written instruction goes (inside the chat
    user turn in chat format), on the train split. What a gradient search over prompts needs:

    - ``embeddings`` [vocab, hidden]: every token's input vector as the model reads it (scaled where the model's
      embedding scales, as Gemma's does), ``allowed`` [vocab]: the tokens a search may use (no special tokens;
      printable ASCII text when ``ascii_only``; only ``vocab`` when given), ``allowed_ids``: their ids;
    - ``loss(vectors, batch)``: the mean task loss over train examples ``batch`` (indices), differentiable in
      ``vectors`` [length, hidden]; ``backward(batch, params, vectors)``: its gradient accumulated into ``params``,
      surviving out-of-memory errors as training does (``MicroBatches``); ``token_gradient(ids, batch)``: the
      gradient with respect to one-hot token indicators [length, vocab] (GCG's, AutoPrompt's);
    - ``losses(candidates, batch)``: the exact loss of each candidate token sequence, all in one scorer call, so
      the tokens every candidate shares before the slot run once;
    - ``project(vectors)``: each vector's nearest allowed token by cosine (PEZ's projection);
    - ``round_trips(ids)``: whether ``ids`` written out as text and rendered as the instruction are exactly ``ids``
      in context (after the chat header, before the block separator); only such prompts can be copied as text;
    - ``artifact(ids)``: the text prompt, its ids and tokens in ``meta``; ``dev(ids)``: its ``DevScore`` through
      the shared scorer.
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
        self.allowed_ids = torch.nonzero(self.allowed).flatten()
        self.batches = MicroBatches(lm, condition)

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

    def backward(self, batch: Sequence[int], params: Sequence[torch.Tensor],
                 vectors: Callable[[], torch.Tensor]) -> torch.Tensor:
        """The gradient of the mean task loss over ``batch``, accumulated into ``params``' ``.grad``, with
        ``vectors()`` (built from ``params``) in the slot; after an out-of-memory error, in micro-batches
        (``MicroBatches``). Returns the batch's loss (detached)."""
        return self.batches.backward(batch, lambda part: self.loss(vectors(), part), params)

    def token_gradient(self, ids: Sequence[int], batch: Sequence[int]) -> tuple[torch.Tensor, float]:
        """The gradient of the loss of ``ids`` with respect to one-hot token indicators [length, vocab], and the
        loss: a negative entry says that token in that position lowers the loss, to first order."""
        onehot = torch.zeros(len(ids), self.embeddings.shape[0], device=self.embeddings.device)
        onehot[torch.arange(len(ids)), torch.tensor(list(ids))] = 1
        onehot.requires_grad_(True)
        loss = self.backward(batch, [onehot], lambda: onehot @ self.embeddings)
        assert onehot.grad is not None
        return onehot.grad, float(loss)

    @functools.cached_property
    def _unit(self) -> torch.Tensor:
        return torch.nn.functional.normalize(self.embeddings[self.allowed], dim=1)

    def project(self, vectors: torch.Tensor) -> list[int]:
        """The nearest allowed token of each vector [length, hidden], by cosine (PEZ's ``nn_project``)."""
        sims = torch.nn.functional.normalize(vectors.detach(), dim=1) @ self._unit.T
        return [int(self.allowed_ids[i]) for i in sims.argmax(dim=1)]

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

    def dev(self, ids: Sequence[int]) -> DevScore:
        """The text prompt's dev loss (mean gold NLL), accuracy and per-example losses, through the shared scorer."""
        art = PromptArtifact(format=self.format, instruction=self.text(ids))
        return dev_score(self.ctx, art, desc=f"{self.condition}: dev")


# --- GCG's candidates, as functions (nanoGCG's style) --------------------------------------------------------------
def top_k_tokens(grad: torch.Tensor, allowed: torch.Tensor, k: int) -> torch.Tensor:
    """Each position's ``k`` allowed tokens whose one-hot gradient ``grad`` [length, vocab] is most negative, i.e.
    the swaps that lower the loss most to first order: token ids [length, k] on the host."""
    masked = grad.masked_fill(~allowed, float("inf"))
    return (-masked).topk(min(k, int(allowed.sum())), dim=1).indices.cpu()


def sample_candidates(ids: Sequence[int], top: torch.Tensor, width: int, n_replace: int,
                      gen: torch.Generator) -> list[list[int]]:
    """``width`` draws of ``ids`` with ``n_replace`` random positions swapped for one of that position's ``top``
    tokens at random; the distinct ones, without ``ids`` itself, in the order drawn."""
    candidates: list[list[int]] = []
    seen = {tuple(ids)}
    for _ in range(width):
        cand = list(ids)
        for pos in torch.randperm(len(cand), generator=gen)[:n_replace].tolist():
            cand[pos] = int(top[pos, int(torch.randint(0, top.shape[1], (1,), generator=gen))])
        if tuple(cand) not in seen:
            seen.add(tuple(cand))
            candidates.append(cand)
    return candidates


def filter_candidates(obj: SlotObjective, candidates: Sequence[Sequence[int]]) -> list[list[int]]:
    """The candidates that survive being written out as text and read back in context (nanoGCG's ``filter_ids``,
    in the prompt's real context): only those can be the answer of a search whose prompt is text."""
    return [list(c) for c in candidates if obj.round_trips(c)]


# --- the loop -----------------------------------------------------------------------------------------------------
def _whole(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, int) and value >= 1


@dataclass
class BudgetSettings(Settings):
    """A gradient search's budget and selection, shared by every gradient condition; ``SearchLoop`` reads them.
    Subclasses change defaults by declaring the field again and name their condition in errors with ``who``."""

    who: ClassVar[str] = "search"  # how errors name the condition, e.g. "condition gcg"

    steps: int = 100
    batch_size: int = 8  # train examples per step
    eval_every: int = 10  # steps between dev evaluations
    patience: int = 4  # dev evaluations without improvement before stopping
    select_on: str = "loss"  # dev metric: loss (gold NLL) or accuracy (ties broken by loss)
    max_minutes: float | None = None  # stop the search cleanly after this long, with its best prompt so far
    budget_tokens: int | None = None  # stop within this many tokens through the model (optimizer.TokenBudget)

    def __post_init__(self) -> None:
        for key in ("steps", "batch_size", "eval_every", "patience"):
            if not _whole(getattr(self, key)):
                raise UserError(f"{self.who}: {key} = {getattr(self, key)!r}; give a whole number >= 1")
        if self.select_on not in SELECT_ON:
            raise UserError(f"{self.who}: select_on {self.select_on!r} is unknown; use loss or accuracy")
        if self.max_minutes is not None and (isinstance(self.max_minutes, bool)
                                             or not isinstance(self.max_minutes, int | float) or self.max_minutes <= 0):
            raise UserError(f"{self.who}: max_minutes = {self.max_minutes!r}; give a positive number of minutes")
        check_budget(self.who, self.budget_tokens)


def _no_progress(n: int = 1, note: str | None = None) -> None:
    return None


@dataclass
class SearchLoop(Generic[P]):
    """One search: minibatches of train (reshuffled by ``rng`` each epoch), a step on each, dev evaluations (step 0,
    every ``eval_every`` steps, the last) that keep the dev-best prompt, early stopping after ``patience``
    evaluations without improvement, a clean stop after ``max_minutes`` or before a step that, with the dev
    evaluation after it, would overrun ``budget_tokens`` (``optimizer.TokenBudget``), progress and the log.

    The method is three functions: ``step(number, batch)`` takes a step and returns its train loss;
    ``current()`` is the prompt now (kept when it is the best); ``evaluate(prompt)`` returns its ``DevScore`` (None:
    it may not be chosen, e.g. text that does not round-trip) and notes for the log. ``describe()`` adds fields to
    every logged point (e.g. the prompt as text). ``curve`` gets a point per step (``step``, ``train_loss``) and one
    per evaluation (also ``dev_loss``, ``dev_accuracy`` and ``dev_losses``, each dev example's gold NLL); it and the
    best so far are filled as the loop goes, so a step that raises leaves them as far as it got."""

    ctx: FitContext
    budget: BudgetSettings
    rng: random.Random
    step: Callable[[int, list[int]], float]
    current: Callable[[], P]
    evaluate: Callable[[P], tuple[DevScore | None, dict[str, Any]]]
    label: str  # names the search in progress notes and log lines
    describe: Callable[[], dict[str, Any]] = dict
    advance: Callable[..., None] = _no_progress  # harness.progress.bar's advance(n, note)
    curve: list[dict[str, Any]] = field(default_factory=list)
    best: P | None = None
    best_step: int = 0
    best_dev: DevScore | None = None
    since: int = 0  # evaluations since the best
    stopped: str = "steps"  # why the loop ended: steps, patience, max_minutes (...) or budget_tokens (...)
    seconds: float = 0.0
    tokens: int = 0  # token positions the loop spent through the model

    def run(self) -> SearchLoop[P]:
        b = self.budget
        order = list(range(len(self.ctx.train)))
        batches: list[list[int]] = []
        t0 = time.monotonic()
        meter = self.ctx.token_budget(b.budget_tokens)
        if "eval" in meter.costs and not meter.affords(meter.expected("eval")):
            # a later search of the fit (a sweep's next trial) that cannot afford even its first evaluation
            self.stopped = f"budget_tokens ({b.budget_tokens})"
            self.advance(b.steps)
            return self
        with meter.unit("eval"):
            self._evaluate(0, None)
        for step in range(1, b.steps + 1):
            # a step is taken only if it and the dev evaluation that may choose it fit the budget (a first step is
            # estimated at one dev evaluation's cost)
            if not meter.affords(meter.expected("step", meter.expected("eval")) + meter.expected("eval")):
                self.stopped = f"budget_tokens ({b.budget_tokens})"
                self.advance(b.steps - step + 1)
                break
            if not batches:
                self.rng.shuffle(order)
                batches = [order[i : i + b.batch_size] for i in range(0, len(order), b.batch_size)]
            with meter.unit("step"):
                loss = self.step(step, batches.pop(0))
            self.advance(1, f"{self.label}: loss {loss:.3f}")
            self.curve.append({"step": step, "train_loss": loss, **self.describe()})
            late = b.max_minutes is not None and time.monotonic() - t0 > 60 * b.max_minutes
            # no next step and its evaluation fit: this is the last step, evaluated now (the check before it kept
            # room for that evaluation)
            spent = not meter.affords(meter.expected("step") + meter.expected("eval"))
            if step % b.eval_every == 0 or step == b.steps or late or spent:
                with meter.unit("eval"):
                    since = self._evaluate(step, loss)
                if since >= b.patience:
                    self.stopped = "patience"
                    self.advance(b.steps - step)
                    break
            if late:
                self.stopped = f"max_minutes ({b.max_minutes})"
                self.advance(b.steps - step)
                break
            if spent:
                self.stopped = f"budget_tokens ({b.budget_tokens})"
                self.advance(b.steps - step)
                break
        self.seconds = time.monotonic() - t0
        self.tokens = meter.spent
        return self

    def _evaluate(self, step: int, loss: float | None) -> int:
        """Scores the current prompt on dev, keeps it if it is the best; returns evaluations since the best."""
        prompt = self.current()
        point: dict[str, Any] = {"step": step, "train_loss": loss, **self.describe(), "dev_loss": None,
                                 "dev_accuracy": None}
        scored, notes = self.evaluate(prompt)
        point.update(notes)
        if scored is not None:
            point.update(dev_loss=scored.loss, dev_accuracy=scored.accuracy, dev_losses=list(scored.losses))
        select_on = self.budget.select_on
        if scored is not None and (self.best_dev is None or scored.key(select_on) < self.best_dev.key(select_on)):
            self.best, self.best_step, self.best_dev, self.since = prompt, step, scored, 0
        else:
            self.since += 1
        self.ctx.log.info("%s step %d: %s", self.label, step, {k: v for k, v in point.items() if k != "dev_losses"})
        self.curve.append(point)
        return self.since


# --- a real-token search, whole but for two hooks -------------------------------------------------------------------
INITS = ("text", "vocab")


@dataclass
class TokenSearchSettings(BudgetSettings):
    """The settings of a search over real tokens in the instruction slot (``TokenSearch``)."""

    who: ClassVar[str] = "condition token search"

    length: int = 16  # tokens in the prompt
    init: str = "vocab"  # vocab: random allowed tokens (the papers'); text: the task's instruction, cut or filled up
    init_text: str | None = None  # None: the task's instruction
    format: str | None = None  # None: chat if the model has a chat template, else raw
    ascii_only: bool = True  # printable ASCII tokens only: a prompt a person can read and type
    vocab: list[int] | None = None  # restrict the search to these token ids (tests; a domain's vocabulary)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not _whole(self.length):
            raise UserError(f"{self.who}: length = {self.length!r}; give a whole number >= 1")
        if self.init not in INITS:
            raise UserError(f"{self.who}: init {self.init!r} is unknown; use {' or '.join(INITS)}")
        if self.init_text is not None and not self.init_text.strip():
            raise UserError(f"{self.who}: init_text is empty; give text or leave it out (the task's instruction)")
        if self.format is not None and self.format not in FORMATS:
            raise UserError(f"{self.who}: format {self.format!r} is unknown; use raw or chat")
        if self.vocab is not None and (not isinstance(self.vocab, list) or not self.vocab):
            raise UserError(f"{self.who}: vocab = {self.vocab!r}; give a non-empty list of token ids, or leave it out")


class TokenSearch(Optimizer):
    """A condition that searches real tokens in the instruction slot with the task model's gradients and returns
    the dev-best prompt that survives the text round trip, as a plain instruction.

    A subclass sets ``name``, ``summary`` and ``settings_class`` (a ``TokenSearchSettings``) and writes two hooks:
    ``start(obj, ids)``, called once with the ``SlotObjective`` and the first prompt's token ids, and
    ``step(obj, batch, gen)``, one step on train examples ``batch`` that returns the new prompt's ids and its train
    loss on the batch (``gen``: the search's seeded random generator). ``fit`` does the rest: the objective, the
    start (``init``), the ``SearchLoop`` (text that does not round-trip is never evaluated as a choice), the
    artifact, the log and the selection report."""

    produces = frozenset({"text"})  # real tokens, returned as the instruction's text
    settings_class: ClassVar[type[Settings]] = TokenSearchSettings

    @abstractmethod
    def start(self, obj: SlotObjective, ids: list[int]) -> None:
        """Set up the search's state from the first prompt ``ids``."""

    @abstractmethod
    def step(self, obj: SlotObjective, batch: list[int], gen: torch.Generator) -> tuple[list[int], float]:
        """One optimisation step on ``batch``: the new prompt ids and their train loss on the batch."""

    def fit(self, ctx: FitContext) -> PromptArtifact:
        s: TokenSearchSettings = self.settings  # type: ignore[assignment]
        if not ctx.dev:
            raise UserError(f"condition {self.name}: no dev examples to select on; give the task a dev split")
        obj = SlotObjective(ctx, s.length, s.format, s.vocab, s.ascii_only, condition=self.name)
        rng = random.Random(f"{self.name}-{ctx.seed}")
        gen = torch.Generator().manual_seed(rng.randrange(2**31))
        init = self._first(ctx, obj, s, gen)
        self.start(obj, init)
        now = list(init)

        def step(number: int, batch: list[int]) -> float:
            nonlocal now
            now, loss = self.step(obj, batch, gen)
            return loss

        def evaluate(ids: list[int]) -> tuple[DevScore | None, dict[str, Any]]:
            text = obj.round_trips(ids)  # only a prompt that is text may be chosen
            return (obj.dev(ids) if text else None), {"round_trip": text}

        with bar(f"{self.name}: steps", s.steps) as advance:
            run = SearchLoop(ctx, s, rng, step, lambda: list(now), evaluate, self.name,
                             lambda: {"prompt": obj.text(now)}, advance).run()
        assert run.best is not None and run.best_dev is not None
        changed = sum(a != b for a, b in zip(run.best, init, strict=True))
        meta = {"method": self.name, "init_ids": init, "init_text": obj.text(init), "best_step": run.best_step,
                "dev_loss": run.best_dev.loss, "dev_accuracy": run.best_dev.accuracy, "positions_changed": changed,
                "stopped": run.stopped}
        art = obj.artifact(run.best, meta)  # the artifact holds no time: the same seed gives the same artifact
        ctx.report_log({"select_metric": s.select_on, "settings": s.__dict__, "curves": run.curve, **meta,
                        "seconds": round(run.seconds, 1), "prompt": art.instruction, "ids": run.best})
        ctx.report_selection([e.id for e in ctx.dev], SELECT_ON[s.select_on])
        return art

    def _first(self, ctx: FitContext, obj: SlotObjective, s: TokenSearchSettings, gen: torch.Generator) -> list[int]:
        """The first prompt: random allowed tokens, or the init text cut or filled up with them; one that is text."""
        allowed = obj.allowed_ids.cpu()
        sample = [int(allowed[i]) for i in torch.randint(0, len(allowed), (s.length,), generator=gen)]
        if s.init == "vocab":
            ids = sample
        else:
            text = obj.lm.tokenizer.encode(s.init_text or ctx.task.instruction, add_special_tokens=False)
            ids = (text + sample)[: s.length]
        if not obj.round_trips(ids):  # a start that cannot be written as text: random allowed tokens instead
            for _ in range(50):
                ids = [int(allowed[i]) for i in torch.randint(0, len(allowed), (s.length,), generator=gen)]
                if obj.round_trips(ids):
                    break
        return ids
