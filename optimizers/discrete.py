"""Real-token prompts found with the task model's own gradients: PEZ and GCG, in the instruction slot.

Both optimise the soft prompt's loss on the train split (``harness.search.SlotObjective``), keep only token
sequences that survive being written out as text and read back in context, evaluate dev through the shared scorer every
``eval_every`` steps, and return the dev-best prompt as a plain instruction: a prompt a person can copy, scored like
any hand-written one. Together they give the readable ceiling: what real tokens of a given length reach under a
given budget. Both are ``TokenSearch`` conditions of the search kit (harness/search.py): each is its settings and
two hooks, ``start`` and ``step``.

- **PEZ** (Wen et al., "Hard Prompts Made Easy", NeurIPS 2023): a continuous prompt, projected to its nearest
  allowed tokens (cosine) in every step; the gradient taken at the projection updates the continuous prompt (AdamW,
  the paper's lr 0.1 and weight decay 0.1).
- **GCG** (Zou et al. 2023; after AutoPrompt, Shin et al. 2020): the gradient of the loss with respect to one-hot
  token indicators gives each position's ``top_k`` replacement tokens; ``search_width`` candidates, each with
  ``n_replace`` positions swapped for one of them at random, are scored exactly on the step's batch, and the best
  becomes the prompt (nanoGCG's defaults: top_k 256, search_width 512, n_replace 1).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from harness.api import (
    SlotObjective,
    TokenSearch,
    TokenSearchSettings,
    UserError,
    filter_candidates,
    sample_candidates,
    top_k_tokens,
)


@dataclass
class PEZSettings(TokenSearchSettings):
    who = "condition pez"

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


@dataclass
class GCGSettings(TokenSearchSettings):
    who = "condition gcg"

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


class PEZ(TokenSearch):
    name = "pez"
    summary = "real tokens by projected gradients (PEZ): a continuous prompt projected to its nearest tokens"
    settings_class = PEZSettings

    def start(self, obj: SlotObjective, ids: list[int]) -> None:
        s: PEZSettings = self.settings  # type: ignore[assignment]
        allowed = obj.allowed_ids
        # the first start is the search's own; more restarts draw random allowed tokens from the search's generator
        gen = torch.Generator().manual_seed(len(ids) * 7919 + int(sum(ids)))
        starts = [ids] + [[int(allowed[i]) for i in torch.randint(0, len(allowed), (len(ids),), generator=gen)]
                          for _ in range(s.restarts - 1)]
        self.prompts = [obj.embed(x).clone().requires_grad_(True) for x in starts]
        self.opt = torch.optim.AdamW(self.prompts, lr=s.lr, weight_decay=s.weight_decay)

    def step(self, obj: SlotObjective, batch: list[int], gen: torch.Generator) -> tuple[list[int], float]:
        """Each prompt moves by the gradient taken at its projection; the best projection on the batch is the
        step's prompt (as PEZ tracks the best of its batch of prompts)."""
        self.opt.zero_grad(set_to_none=True)
        best: tuple[float, list[int]] | None = None
        for prompt in self.prompts:
            ids = obj.project(prompt)
            projected = obj.embed(ids).clone().requires_grad_(True)
            loss = obj.backward(batch, [projected], lambda p=projected: p)
            if not torch.isfinite(loss):
                raise UserError(f"condition {self.name}: the loss became {loss.item()}; lower lr")
            prompt.grad = projected.grad  # moves the continuous prompt
            value = float(loss)
            if best is None or value < best[0]:
                best = (value, ids)
        self.opt.step()
        assert best is not None
        return best[1], best[0]


class GCG(TokenSearch):
    name = "gcg"
    summary = "real tokens by greedy coordinate gradient (GCG): top-k token swaps from one-hot gradients, best kept"
    settings_class = GCGSettings

    def start(self, obj: SlotObjective, ids: list[int]) -> None:
        self.ids = list(ids)

    def step(self, obj: SlotObjective, batch: list[int], gen: torch.Generator) -> tuple[list[int], float]:
        s: GCGSettings = self.settings  # type: ignore[assignment]
        grad, loss = obj.token_gradient(self.ids, batch)
        top = top_k_tokens(grad, obj.allowed, s.top_k)
        # only prompts that survive being written out as text can be the answer
        candidates = filter_candidates(obj, sample_candidates(self.ids, top, s.search_width, s.n_replace, gen))
        if not candidates:
            return list(self.ids), loss
        losses = obj.losses(candidates, batch)
        k = min(range(len(candidates)), key=lambda i: losses[i])
        self.ids = candidates[k]
        return list(self.ids), losses[k]
