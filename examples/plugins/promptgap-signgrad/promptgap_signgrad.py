"""A promptgap gradient plugin: sign-gradient PEZ, real tokens in the instruction slot, on the search kit alone.

PEZ (Wen et al. 2023) keeps a continuous prompt, projects it to its nearest allowed tokens in every step and moves it
by the gradient taken at that projection. This variant moves every coordinate by a fixed step against the gradient's
sign (signSGD, Bernstein et al. 2018), so a step's size does not depend on the gradient's scale. It is two hooks of
``TokenSearch``; the kit does the rest: the start, minibatches, dev evaluation and selection (only prompts that
survive being written out as text), patience, the time cap, the log, and a backward that survives running out of
memory. It imports only the public API (harness.api).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from harness.api import SlotObjective, TokenSearch, TokenSearchSettings, UserError


@dataclass
class SignGradSettings(TokenSearchSettings):
    who = "condition signgrad"  # how the kit's checks of the shared settings name this condition

    lr: float = 0.05  # each coordinate's step, in units of the embedding table's mean absolute entry

    def __post_init__(self) -> None:
        super().__post_init__()  # budget, length, init, format: checked by the kit
        if isinstance(self.lr, bool) or not isinstance(self.lr, int | float) or not self.lr > 0:
            raise UserError(f"condition signgrad: lr = {self.lr!r}; give a number > 0")


class SignGrad(TokenSearch):
    name = "signgrad"
    summary = "real tokens by sign-gradient PEZ: a continuous prompt stepped against its gradient's sign (example)"
    settings_class = SignGradSettings

    def start(self, obj: SlotObjective, ids: list[int]) -> None:
        self.vectors = obj.embed(ids).clone()  # the continuous prompt starts at the first prompt's tokens
        self.unit = float(obj.embeddings.abs().mean())  # the table's scale: lr means the same on any model

    def step(self, obj: SlotObjective, batch: list[int], gen: torch.Generator) -> tuple[list[int], float]:
        ids = obj.project(self.vectors)  # the nearest allowed tokens: the prompt this step is
        at = obj.embed(ids).clone().requires_grad_(True)
        loss = obj.backward(batch, [at], lambda: at)  # the gradient at the projection, into at.grad
        assert at.grad is not None
        self.vectors -= self.settings.lr * self.unit * at.grad.sign()
        return ids, float(loss)
