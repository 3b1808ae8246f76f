"""Real-token prompts found with the task model's own gradients: PEZ and GCG, in the instruction slot.

Both optimise the soft prompt's loss on the train split (``gradient.SlotObjective``), keep only token sequences that
survive being written out as text and read back in context, evaluate dev through the shared scorer every
``eval_every`` steps, and return the dev-best prompt as a plain instruction: a prompt a person can copy, scored like
any hand-written one. Together they give the readable ceiling: what real tokens of a given length reach under a
given budget.

- **PEZ** (Wen et al., "Hard Prompts Made Easy", NeurIPS 2023): a continuous prompt, projected to its nearest
  allowed tokens (cosine) in every step; the gradient taken at the projection updates the continuous prompt (AdamW,
  the paper's lr 0.1 and weight decay 0.1).
- **GCG** (Zou et al. 2023; after AutoPrompt, Shin et al. 2020): the gradient of the loss with respect to one-hot
  token indicators gives each position's ``top_k`` replacement tokens; ``search_width`` candidates, each with
  ``n_replace`` positions swapped for one of them at random, are scored exactly on the step's batch, and the best
  becomes the prompt (nanoGCG's defaults: top_k 256, search_width 512, n_replace 1).
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from harness.artifact import FORMATS, PromptArtifact
from harness.errors import UserError
from harness.optimizer import SELECT_ON, FitContext, Optimizer, Settings
from harness.progress import bar
from optimizers.gradient import SlotObjective

INITS = ("text", "vocab")


@dataclass
class DiscreteSettings(Settings):
    """Shared settings of the gradient searches: they mean what they mean for the soft prompt."""

    length: int = 16  # tokens in the prompt
    init: str = "vocab"  # vocab: random allowed tokens (the papers'); text: the task's instruction, cut or filled up
    init_text: str | None = None  # None: the task's instruction
    steps: int = 100
    batch_size: int = 8  # train examples per step
    eval_every: int = 10  # steps between dev evaluations
    patience: int = 4  # dev evaluations without improvement before stopping
    select_on: str = "loss"  # dev metric: loss (gold NLL) or accuracy (ties broken by loss)
    format: str | None = None  # None: chat if the model has a chat template, else raw
    max_minutes: float | None = None  # stop the search cleanly after this long, with its best prompt so far
    ascii_only: bool = True  # printable ASCII tokens only: a prompt a person can read and type
    vocab: list[int] | None = None  # restrict the search to these token ids (tests; a domain's vocabulary)

    def __post_init__(self) -> None:
        who = f"condition {self.who}"
        for key in ("length", "steps", "batch_size", "eval_every", "patience"):
            v = getattr(self, key)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise UserError(f"{who}: {key} = {v!r}; give a whole number >= 1")
        if self.init not in INITS:
            raise UserError(f"{who}: init {self.init!r} is unknown; use {' or '.join(INITS)}")
        if self.init_text is not None and not self.init_text.strip():
            raise UserError(f"{who}: init_text is empty; give text or leave it out (the task's instruction)")
        if self.select_on not in SELECT_ON:
            raise UserError(f"{who}: select_on {self.select_on!r} is unknown; use loss or accuracy")
        if self.format is not None and self.format not in FORMATS:
            raise UserError(f"{who}: format {self.format!r} is unknown; use raw or chat")
        if self.max_minutes is not None and not (isinstance(self.max_minutes, int | float) and self.max_minutes > 0):
            raise UserError(f"{who}: max_minutes = {self.max_minutes!r}; give a positive number of minutes")
        if self.vocab is not None and (not isinstance(self.vocab, list) or not self.vocab):
            raise UserError(f"{who}: vocab = {self.vocab!r}; give a non-empty list of token ids, or leave it out")

    @property
    def who(self) -> str:
        return "pez/gcg"


@dataclass
class PEZSettings(DiscreteSettings):
    lr: float = 0.1
    weight_decay: float = 0.1
    restarts: int = 1  # prompts optimised side by side from their own random starts (PEZ's prompt_bs)

    def __post_init__(self) -> None:
        super().__post_init__()
        for key in ("lr", "weight_decay"):
            v = getattr(self, key)
            if isinstance(v, bool) or not isinstance(v, int | float) or v < 0 or (key == "lr" and v == 0):
                raise UserError(f"condition pez: {key} = {v!r}; give a number > 0 (weight_decay >= 0)")
        if isinstance(self.restarts, bool) or not isinstance(self.restarts, int) or self.restarts < 1:
            raise UserError(f"condition pez: restarts = {self.restarts!r}; give a whole number >= 1")

    @property
    def who(self) -> str:
        return "pez"


@dataclass
class GCGSettings(DiscreteSettings):
    top_k: int = 256
    search_width: int = 512
    n_replace: int = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        for key in ("top_k", "search_width", "n_replace"):
            v = getattr(self, key)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise UserError(f"condition gcg: {key} = {v!r}; give a whole number >= 1")
        if self.n_replace > self.length:
            raise UserError(f"condition gcg: n_replace {self.n_replace} exceeds length {self.length}; lower it")

    @property
    def who(self) -> str:
        return "gcg"


@dataclass
class Search:
    """One search's state: the running prompt, the dev-best one, the curve and the log."""

    init: list[int]
    best: list[int] | None = None
    best_key: tuple[float, ...] | None = None
    best_step: int = 0
    best_dev: tuple[float, float] | None = None
    since: int = 0
    curve: list[dict[str, Any]] = field(default_factory=list)
    stopped: str = "steps"


class _Discrete(Optimizer):
    """The loop both searches share: batches, dev evaluations, early stopping, the time cap, the artifact."""

    produces = frozenset({"text"})  # real tokens, returned as the instruction's text

    def fit(self, ctx: FitContext) -> PromptArtifact:
        s: DiscreteSettings = self.settings  # type: ignore[assignment]
        if not ctx.dev:
            raise UserError(f"condition {self.name}: no dev examples to select on; give the task a dev split")
        obj = SlotObjective(ctx, s.length, s.format, s.vocab, s.ascii_only, condition=self.name)
        rng = random.Random(f"{self.name}-{ctx.seed}")
        gen = torch.Generator().manual_seed(rng.randrange(2**31))
        search = Search(init=self._init(ctx, obj, s, gen))
        self.start(obj, search.init)
        order = list(range(len(ctx.train)))
        batches: list[list[int]] = []
        t0 = time.monotonic()
        self._evaluate(obj, s, search, 0, search.init, None)
        ids = search.init
        with bar(f"{self.name}: steps", s.steps) as advance:
            for step in range(1, s.steps + 1):
                if not batches:
                    rng.shuffle(order)
                    batches = [order[i : i + s.batch_size] for i in range(0, len(order), s.batch_size)]
                batch = batches.pop(0)
                ids, loss = self.step(obj, batch, gen)
                advance(1, f"{self.name}: loss {loss:.3f}")
                search.curve.append({"step": step, "train_loss": loss, "prompt": obj.text(ids)})
                late = s.max_minutes is not None and time.monotonic() - t0 > 60 * s.max_minutes
                if step % s.eval_every == 0 or step == s.steps or late:
                    if self._evaluate(obj, s, search, step, ids, loss) >= s.patience:
                        search.stopped = "patience"
                        advance(s.steps - step)
                        break
                if late:
                    search.stopped = f"max_minutes ({s.max_minutes})"
                    advance(s.steps - step)
                    break
        assert search.best is not None and search.best_dev is not None
        changed = sum(a != b for a, b in zip(search.best, search.init, strict=True))
        meta = {"method": self.name, "init_ids": search.init, "init_text": obj.text(search.init),
                "best_step": search.best_step, "dev_loss": search.best_dev[0], "dev_accuracy": search.best_dev[1],
                "positions_changed": changed, "stopped": search.stopped}
        art = obj.artifact(search.best, meta)  # the artifact holds no time: the same seed gives the same artifact
        ctx.report_log({"select_metric": s.select_on, "settings": s.__dict__, "curves": search.curve, **meta,
                        "seconds": round(time.monotonic() - t0, 1), "prompt": art.instruction, "ids": search.best})
        ctx.report_selection([e.id for e in ctx.dev], "dev accuracy" if s.select_on == "accuracy" else "dev gold NLL")
        return art

    def _init(self, ctx: FitContext, obj: SlotObjective, s: DiscreteSettings, gen: torch.Generator) -> list[int]:
        allowed = torch.nonzero(obj.allowed.cpu()).flatten()
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

    def _evaluate(self, obj: SlotObjective, s: DiscreteSettings, search: Search, step: int, ids: list[int],
                  loss: float | None) -> int:
        """Dev loss and accuracy of the prompt (text that round-trips only); returns evaluations since the best."""
        point: dict[str, Any] = {"step": step, "train_loss": loss, "prompt": obj.text(ids), "dev_loss": None,
                                 "dev_accuracy": None, "round_trip": obj.round_trips(ids)}
        if point["round_trip"]:
            dev_loss, dev_acc = obj.dev(ids)
            point.update(dev_loss=dev_loss, dev_accuracy=dev_acc)
            key = (-dev_acc, dev_loss) if s.select_on == "accuracy" else (dev_loss,)
            if search.best_key is None or key < search.best_key:
                search.best, search.best_key, search.best_step = list(ids), key, step
                search.best_dev, search.since = (dev_loss, dev_acc), 0
            else:
                search.since += 1
        else:
            search.since += 1
        obj.ctx.log.info("%s step %d: %s", self.name, step, point)
        search.curve.append(point)
        return search.since

    def start(self, obj: SlotObjective, ids: list[int]) -> None:
        raise NotImplementedError

    def step(self, obj: SlotObjective, batch: list[int], gen: torch.Generator) -> tuple[list[int], float]:
        """One optimisation step on ``batch``: the new prompt ids and their train loss on the batch."""
        raise NotImplementedError


class PEZ(_Discrete):
    name = "pez"
    summary = "real tokens by projected gradients (PEZ): a continuous prompt projected to its nearest tokens"
    settings_class = PEZSettings

    def start(self, obj: SlotObjective, ids: list[int]) -> None:
        s: PEZSettings = self.settings  # type: ignore[assignment]
        self.allowed_ids = torch.nonzero(obj.allowed).flatten()
        self.unit = torch.nn.functional.normalize(obj.embeddings[obj.allowed], dim=1)
        # the first start is the search's own; more restarts draw random allowed tokens from the search's generator
        gen = torch.Generator().manual_seed(len(ids) * 7919 + int(sum(ids)))
        starts = [ids] + [[int(self.allowed_ids[i]) for i in torch.randint(0, len(self.allowed_ids), (len(ids),),
                                                                            generator=gen)]
                          for _ in range(s.restarts - 1)]
        self.prompts = [obj.embed(x).clone().requires_grad_(True) for x in starts]
        self.opt = torch.optim.AdamW(self.prompts, lr=s.lr, weight_decay=s.weight_decay)

    def project(self, vectors: torch.Tensor) -> list[int]:
        """The nearest allowed token of each vector, by cosine (PEZ's ``nn_project``)."""
        sims = torch.nn.functional.normalize(vectors.detach(), dim=1) @ self.unit.T
        return [int(self.allowed_ids[i]) for i in sims.argmax(dim=1)]

    def step(self, obj: SlotObjective, batch: list[int], gen: torch.Generator) -> tuple[list[int], float]:
        """Each prompt moves by the gradient taken at its projection; the best projection on the batch is the
        step's prompt (as PEZ tracks the best of its batch of prompts)."""
        self.opt.zero_grad(set_to_none=True)
        best: tuple[float, list[int]] | None = None
        for prompt in self.prompts:
            ids = self.project(prompt)
            projected = obj.embed(ids).clone().requires_grad_(True)
            loss = obj.loss(projected, batch)
            if not torch.isfinite(loss):
                raise UserError(f"condition {self.name}: the loss became {loss.item()}; lower lr")
            (prompt.grad,) = torch.autograd.grad(loss, [projected])  # moves the continuous prompt
            value = float(loss.detach())
            if best is None or value < best[0]:
                best = (value, ids)
        self.opt.step()
        assert best is not None
        return best[1], best[0]


class GCG(_Discrete):
    name = "gcg"
    summary = "real tokens by greedy coordinate gradient (GCG): top-k token swaps from one-hot gradients, best kept"
    settings_class = GCGSettings

    def start(self, obj: SlotObjective, ids: list[int]) -> None:
        self.ids = list(ids)

    def step(self, obj: SlotObjective, batch: list[int], gen: torch.Generator) -> tuple[list[int], float]:
        s: GCGSettings = self.settings  # type: ignore[assignment]
        n_vocab = obj.embeddings.shape[0]
        onehot = torch.zeros(len(self.ids), n_vocab, device=obj.embeddings.device)
        onehot[torch.arange(len(self.ids)), torch.tensor(self.ids)] = 1
        onehot.requires_grad_(True)
        loss = obj.loss(onehot @ obj.embeddings, batch)
        (grad,) = torch.autograd.grad(loss, [onehot])
        grad[:, ~obj.allowed] = float("inf")
        top = (-grad).topk(min(s.top_k, int(obj.allowed.sum())), dim=1).indices.cpu()  # [length, k]
        candidates: list[list[int]] = []
        seen = {tuple(self.ids)}
        for _ in range(s.search_width):
            cand = list(self.ids)
            for pos in torch.randperm(len(cand), generator=gen)[: s.n_replace].tolist():
                cand[pos] = int(top[pos, int(torch.randint(0, top.shape[1], (1,), generator=gen))])
            if tuple(cand) not in seen:
                seen.add(tuple(cand))
                candidates.append(cand)
        # only prompts that survive being written out as text can be the answer
        candidates = [c for c in candidates if obj.round_trips(c)]
        if not candidates:
            return list(self.ids), float(loss)
        losses = obj.losses(candidates, batch)
        k = min(range(len(candidates)), key=lambda i: losses[i])
        self.ids = candidates[k]
        return list(self.ids), losses[k]
