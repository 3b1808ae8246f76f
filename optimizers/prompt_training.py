"""Training prompt tensors with the model frozen: settings, inits, the trials and the dev-selected sweep.

Each trial is the search kit's ``SearchLoop`` (harness/search.py: minibatches, dev evaluation and selection,
patience, the time cap, the log) with an Adam step on the kit's ``PromptForward`` and ``task_loss``, through its
``MicroBatches`` (a step that runs out of memory is redone in micro-batches with the same gradient).

Shared by ``soft-prompt`` (input-embedding vectors), ``prefix-tuning`` (per-layer key/value prefixes),
``soft-projected``, ``lora`` and ``full-finetune`` (the model's weights: the trial loop, ``run_trial``, and the
sweep; ``optimizers.weight_training``). The forward reads the same rendered token ids as the scorer
(``Renderer.requests``, with sentinel ids where soft vectors go) and runs them through the same ``harness.forward``
(embedding, mask, positions, float32 head), so the training loss and the test score are the same function of the
artifact.

Speed: the token run every training sequence shares before the first trainable position (for a soft prompt
inside the chat user turn: the whole system prompt and user header) is run once without gradients and
reused as every batch's past keys/values.
"""

from __future__ import annotations

import itertools
import logging
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from harness.artifact import FORMATS, PLACEMENTS, PromptArtifact
from harness.errors import UserError
from harness.forward import embedding_rows, kv_of
from harness.models import LoadedModel
from harness.optimizer import SELECT_ON, DevScore, FitContext, dev_score
from harness.progress import bar
from harness.search import BudgetSettings, MicroBatches, PromptForward, SearchLoop, task_loss

log = logging.getLogger(__name__)

INITS = ("text", "vocab", "random")
NEAREST_K = 5


class TrialDiverged(Exception):
    """A trial's loss became NaN or infinite; the sweep records it and goes on."""


# --- settings -----------------------------------------------------------------------------------------------------
def _as_list(value: Any) -> list:
    return list(value) if isinstance(value, list | tuple) else [value]


@dataclass
class PromptTrainingSettings(BudgetSettings):
    """Settings of the trained conditions. ``length``, ``lr`` and ``init`` take one value or a list: the sweep
    is their product, every trial is trained on train and the winner is chosen on dev. The budget (``steps``,
    ``batch_size``, ``eval_every``, ``patience``, ``select_on``, ``max_minutes``) holds for each trial."""

    who = "prompt training"

    length: int | list[int] | None = None  # virtual tokens; None: the init text's token count (8 without text)
    lr: float | list[float] = field(default_factory=lambda: [0.003, 0.03])
    init: str | list[str] = "text"  # text (init_text's embeddings), vocab (sampled tokens), random (per-dim stats)
    init_text: str | None = None  # None: the task's hand-written instruction (for placement marker: the marker)
    placement: str = "before_input"  # soft prompt only: start, before_input or marker
    marker: str | None = None  # placement marker: the text replaced (None: the task's own marker)
    format: str | None = None  # None: chat if the model has a chat template, else raw
    steps: int = 60  # optimizer steps per trial
    batch_size: int = 16  # examples per step
    patience: int = 3  # dev evaluations without improvement before a trial stops
    grad_clip: float = 1.0  # max gradient norm; 0 turns clipping off

    def __post_init__(self) -> None:
        super().__post_init__()
        who = self.who
        lengths = _as_list(self.length)
        if any(n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1) for n in lengths):
            raise UserError(f"{who}: length {self.length!r}; give a whole number >= 1 (or a list of them)")
        lrs = _as_list(self.lr)
        if not lrs or any(isinstance(x, bool) or not isinstance(x, int | float) or not x > 0 or not math.isfinite(x)
                          for x in lrs):
            raise UserError(f"{who}: lr {self.lr!r}; give a learning rate > 0 (or a list of them)")
        if not _as_list(self.init) or any(i not in INITS for i in _as_list(self.init)):
            raise UserError(f"{who}: init {self.init!r} is unknown; use {', '.join(INITS)} (or a list)")
        if self.init_text is not None and not self.init_text.strip():
            raise UserError(f"{who}: init_text is empty; give text or leave it out (the task's instruction)")
        if self.placement not in PLACEMENTS:
            raise UserError(f"{who}: placement {self.placement!r} is unknown; use {', '.join(PLACEMENTS)}")
        if self.format is not None and self.format not in FORMATS:
            raise UserError(f"{who}: format {self.format!r} is unknown; use raw or chat")
        if isinstance(self.grad_clip, bool) or not isinstance(self.grad_clip, int | float) or self.grad_clip < 0:
            raise UserError(f"{who}: grad_clip = {self.grad_clip!r}; give a number >= 0 (0: no clipping)")

    def grid(self) -> list[dict[str, Any]]:
        return [{"length": n, "lr": float(lr), "init": i}
                for n, lr, i in itertools.product(_as_list(self.length), _as_list(self.lr), _as_list(self.init))]


class PrefixReparam(torch.nn.Module):
    """Li & Liang's reparameterisation of a key/value prefix: an MLP (hidden -> mid -> tanh -> every layer's
    keys and values) of a table of ``n`` vectors, trained in place of the prefix itself because that trains
    more stably; as in PEFT's ``prefix_projection``, only the prefix it produces is kept after training.
    The table starts as the trial's init vectors; the MLP's weights are drawn from ``seed``."""

    def __init__(self, vectors: torch.Tensor, kv_shape: tuple[int, int, int], mid: int, seed: int) -> None:
        super().__init__()
        self.kv_shape = kv_shape
        layers, kv_heads, head_dim = kv_shape
        self.table = torch.nn.Parameter(vectors.detach().float().clone())
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.mlp = torch.nn.Sequential(torch.nn.Linear(vectors.shape[1], mid), torch.nn.Tanh(),
                                           torch.nn.Linear(mid, layers * 2 * kv_heads * head_dim))

    def forward(self) -> torch.Tensor:
        """The prefix [layers, 2, kv_heads, n, head_dim]."""
        layers, kv_heads, head_dim = self.kv_shape
        n = self.table.shape[0]
        return self.mlp(self.table).view(n, layers, 2, kv_heads, head_dim).permute(1, 2, 3, 0, 4)


# --- initialization -----------------------------------------------------------------------------------------------
def init_text_ids(lm: LoadedModel, text: str) -> list[int]:
    """The token ids of an init text as it reads in the middle of a prompt; an error when there are none."""
    ids = lm.tokenizer.encode(text, add_special_tokens=False)
    if not ids:
        raise UserError(f"init_text {text!r} tokenizes to nothing; give text with at least one token")
    return ids


def init_vectors(lm: LoadedModel, init: str, length: int | None, text_ids: list[int] | None,
                 gen: torch.Generator) -> torch.Tensor:
    """Starting vectors [length, hidden] (float32, CPU): a text's embeddings (cut, or filled up with sampled
    vocabulary tokens as Lester et al. do), sampled vocabulary tokens, or draws from the per-dimension mean and
    standard deviation of the vocabulary's input vectors (the embedding module's output, so a scaled embedding's
    vectors get its scale). Random draws come from ``gen`` on the host, so a seed gives the same vectors on any
    device; the table's work runs on the model's device."""
    vocab = lm.model.get_input_embeddings().num_embeddings
    if init == "text":
        assert text_ids is not None
        n = length or len(text_ids)
        ids = text_ids[:n] + torch.randint(0, vocab, (max(0, n - len(text_ids)),), generator=gen).tolist()
    elif init == "vocab":
        ids = torch.randint(0, vocab, (length or 8,), generator=gen).tolist()
    else:
        rows = embedding_rows(lm)
        noise = torch.randn(length or 8, rows.shape[1], generator=gen).to(rows.device)
        return (rows.mean(0) + noise * rows.std(0)).cpu()
    return embedding_rows(lm, torch.tensor(ids)).cpu()


# --- readability --------------------------------------------------------------------------------------------------
def _nearest(lm: LoadedModel, soft: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosine similarities and ids [n, k] (on the host) of the vocabulary tokens whose input embeddings are nearest;
    computed on the model's device."""
    weight = torch.nn.functional.normalize(embedding_rows(lm), dim=1)
    sims = torch.nn.functional.normalize(soft.float().to(weight.device), dim=1) @ weight.T
    top = sims.topk(k, dim=1)
    return top.values.cpu(), top.indices.cpu()


def nearest_tokens(lm: LoadedModel, soft: torch.Tensor, k: int = NEAREST_K) -> list[list[list]]:
    """For each soft vector, its ``k`` nearest vocabulary tokens by cosine, as [token text, similarity] pairs."""
    sims, ids = _nearest(lm, soft, k)
    return [[[lm.tokenizer.decode([int(t)]), round(float(c), 4)] for c, t in zip(cs, ts, strict=True)]
            for cs, ts in zip(sims, ids, strict=True)]


def project(lm: LoadedModel, soft: torch.Tensor) -> tuple[list[int], torch.Tensor]:
    """Each soft vector replaced by its nearest token (cosine): the token ids and their exact embeddings."""
    ids = [int(i) for i in _nearest(lm, soft, 1)[1][:, 0]]
    return ids, embedding_rows(lm, torch.tensor(ids)).cpu()


# --- trials and the sweep -----------------------------------------------------------------------------------------
@dataclass
class Trial:
    length: int | None
    lr: float
    init: str
    status: str = "ok"
    error: str | None = None
    best_step: int | None = None
    best_dev_loss: float | None = None
    best_dev_accuracy: float | None = None
    stopped: str | None = None  # why training ended: steps, patience or max_minutes (...)
    curve: list[dict[str, Any]] = field(default_factory=list)
    artifact: PromptArtifact | None = field(default=None, repr=False)

    def record(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "artifact"}


class PromptTrainer:
    """Trains one kind of prompt tensor ("soft" or "prefix") for a FitContext, sweeping the settings' grid; its sweep
    and ``run_trial`` also train the model's weights (kind "weights", ``optimizers.weight_training.WeightTrainer``)."""

    def __init__(self, ctx: FitContext, settings: PromptTrainingSettings, kind: str, condition: str) -> None:
        if kind not in ("soft", "prefix", "weights"):
            raise ValueError(kind)
        self.ctx, self.s, self.kind, self.condition = ctx, settings, kind, condition
        lm = ctx.lm
        self.format = settings.format or ("chat" if lm.has_chat_template else "raw")
        if self.format == "chat" and not lm.has_chat_template:
            raise UserError(f"condition {condition}: model {lm.name} has no chat template; set format = \"raw\"")
        self.placement = settings.placement if kind == "soft" else "start"
        self.marker = ""
        if self.placement == "marker":
            self.marker = settings.marker or getattr(ctx.task, "marker", "") or ""
            if not self.marker:
                raise UserError(f"condition {condition}: placement marker, but task {ctx.task.name} names no marker; "
                                f"set marker = \"<a word of the task's template>\"")
        text = settings.init_text
        if text is None:
            text = (" " + self.marker) if self.placement == "marker" else ctx.task.instruction
        self.text_ids = init_text_ids(lm, text) if kind != "weights" and "text" in _as_list(settings.init) else None
        self.micro = MicroBatches(lm, condition)  # one for the sweep: a size that ran out of memory stays halved
        if not ctx.train:
            raise UserError(f"condition {condition}: no training examples; give the task a train split")
        if not ctx.dev:
            raise UserError(f"condition {condition}: no dev examples to select on; give the task a dev split")

    # --- one trial ------------------------------------------------------------------------------------------------
    def artifact(self, tensor: torch.Tensor, meta: dict[str, Any] | None = None) -> PromptArtifact:
        if self.kind == "soft":
            return PromptArtifact(format=self.format, placement=self.placement, marker=self.marker,
                                  soft_prompt=tensor, condition=self.condition, meta=meta or {})
        return PromptArtifact(format=self.format, prefix_kv=tensor, condition=self.condition, meta=meta or {})

    def _loss(self, fwd: PromptForward, flat: list, batch: list[int], spans: list[tuple[int, int]],
              tensor: torch.Tensor) -> torch.Tensor:
        """The mean task loss of train examples ``batch`` (``spans``: each one's requests in ``flat``)."""
        ctx = self.ctx
        req_index = [j for a, b in spans for j in range(a, b)]
        loglik = fwd.loglik(req_index, soft=tensor if self.kind == "soft" else None,
                            prefix_kv=tensor if self.kind == "prefix" else None)
        local, pos = [], 0
        for a, b in spans:
            local.append((pos, pos + b - a))
            pos += b - a
        return task_loss(ctx.task.kind, [ctx.train[i] for i in batch], local, loglik,
                         [len(flat[j].continuation) for j in req_index])

    def train_trial(self, trial: Trial, advance) -> Trial:
        ctx, s, lm = self.ctx, self.s, self.ctx.lm
        seed = ctx.seed
        gen = torch.Generator().manual_seed(seed)
        vectors = init_vectors(lm, trial.init, trial.length, self.text_ids, gen)
        n = trial.length = vectors.shape[0]
        mid = getattr(s, "reparam_hidden", None) if self.kind == "prefix" else None
        if mid:  # the prefix is an MLP's output; only that output is kept
            reparam = PrefixReparam(vectors, lm.kv_shape, mid, seed).to(lm.device)
            params, current = list(reparam.parameters()), reparam
        else:
            if self.kind == "soft":
                param = vectors.clone().to(lm.device).requires_grad_(True)
            else:  # the prefix starts as the keys/values the init vectors produce
                with torch.no_grad():
                    param = kv_of(lm, vectors.to(lm.device, lm.dtype)).float().clone().requires_grad_(True)
            params, current = [param], lambda: param

        def snapshot() -> torch.Tensor:
            with torch.no_grad():
                return current().detach().float().cpu().clone()

        return self.run_trial(trial, advance, params, current, snapshot,
                              lambda flat: PromptForward(lm, flat, n_prefix=n if self.kind == "prefix" else 0),
                              f"{self.condition} n={n} lr={trial.lr:g} {trial.init}", "prompt tensor")

    def run_trial(self, trial: Trial, advance, params: list[torch.Tensor], current: Callable[[], Any],
                  snapshot: Callable[[], Any], forward: Callable[[list], PromptForward], desc: str,
                  what: str) -> Trial:
        """A trial trained on train with Adam and its dev-best checkpoint kept, whatever it trains: ``params``
        (Adam's), ``current()`` the tensor the loss reads (None: the model's own weights, an adapter),
        ``snapshot()`` what a checkpoint keeps (``self.artifact`` of it is scored on dev), ``forward`` the
        ``PromptForward`` of the train requests, ``what`` the trained thing's name in a divergence message."""
        ctx, s = self.ctx, self.s
        per_example = ctx.scorer.renderer.requests(self.artifact(snapshot()), ctx.train)
        flat = [r for reqs in per_example for r in reqs]
        spans, k = [], 0
        for reqs in per_example:
            spans.append((k, k + len(reqs)))
            k += len(reqs)
        fwd = forward(flat)
        opt = torch.optim.Adam(params, lr=trial.lr)

        def step(number: int, batch: list[int]) -> float:
            opt.zero_grad(set_to_none=True)
            loss = self.micro.backward(
                batch, lambda part: self._loss(fwd, flat, part, [spans[i] for i in part], current()), params)
            if s.grad_clip:
                torch.nn.utils.clip_grad_norm_(params, s.grad_clip)
            opt.step()
            # one wait for the device per step: the loss and whether every tensor stayed finite
            value, finite = torch.stack([loss.float(), torch.stack([torch.isfinite(p).all() for p in params]).all()
                                         .float()]).tolist()
            if not math.isfinite(value):
                raise TrialDiverged(f"loss became {value} at step {number} (lr {trial.lr}); lower the lr")
            if not finite:
                raise TrialDiverged(f"the {what} became non-finite at step {number} (lr {trial.lr}); lower the lr")
            return value

        loop = SearchLoop(ctx, s, random.Random(ctx.seed), step, snapshot,
                          lambda tensor: (dev_score(ctx, self.artifact(tensor)), {}), desc, advance=advance,
                          curve=trial.curve)  # the trial's own list: one that diverges keeps its curve so far
        try:
            loop.run()
        finally:
            if loop.best_dev is not None:
                trial.best_step, trial.best_dev_loss, trial.best_dev_accuracy = (loop.best_step, loop.best_dev.loss,
                                                                                 loop.best_dev.accuracy)
        trial.stopped = loop.stopped
        if loop.best is None:  # the fit's token budget was spent before this trial could evaluate anything
            trial.status, trial.error = "skipped", f"not run: {loop.stopped}"
            return trial
        trial.artifact = self.artifact(loop.best)
        return trial

    # --- the sweep ------------------------------------------------------------------------------------------------
    def fit(self) -> tuple[PromptArtifact, dict[str, Any]]:
        """Every trial of the grid on train, the winner by the dev metric; returns it and the log (log.json)."""
        trials = [Trial(**g) for g in self.s.grid()]
        with bar(f"training {self.condition}", self.s.steps * len(trials)) as advance:
            for t in trials:
                try:
                    self.train_trial(t, advance)
                except TrialDiverged as e:
                    t.status, t.error = "diverged", str(e)
                    log.warning("%s: trial length=%s lr=%s init=%s diverged: %s", self.condition, t.length, t.lr,
                                t.init, e)
        ok = [t for t in trials if t.status == "ok"]
        if not ok:
            raise UserError(f"condition {self.condition}: every trial diverged ({trials[0].error}); lower lr")
        # the first of equals: grid order
        winner = min(ok, key=lambda t: DevScore(t.best_dev_loss, t.best_dev_accuracy, ()).key(self.s.select_on))
        art = winner.artifact
        assert art is not None
        meta: dict[str, Any] = {"n_virtual_tokens": winner.length, "lr": winner.lr, "init": winner.init,
                                "best_step": winner.best_step, "dev_loss": winner.best_dev_loss,
                                "dev_accuracy": winner.best_dev_accuracy}
        if getattr(self.s, "reparam_hidden", None):
            meta["reparam_hidden"] = self.s.reparam_hidden
        if self.kind == "soft":
            assert art.soft_prompt is not None
            meta["nearest_tokens"] = nearest_tokens(self.ctx.lm, art.soft_prompt)
        art.meta = meta
        record = {"select_metric": self.s.select_on, "kind": self.kind,
                  "winner": winner.record(), "curves": winner.curve, "trials": [t.record() for t in trials],
                  "n_train": len(self.ctx.train), "n_dev": len(self.ctx.dev)}
        self.ctx.report_log(record)
        # checkpoints and the sweep's winner were chosen by these examples (every dev evaluation scores all of dev)
        self.ctx.report_selection([e.id for e in self.ctx.dev], SELECT_ON[self.s.select_on])
        return art, record
