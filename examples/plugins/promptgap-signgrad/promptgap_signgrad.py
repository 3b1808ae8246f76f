"""A promptgap gradient plugin: sign-gradient coordinate search over real tokens, on the search kit alone.

To first order, swapping the token at position i for token t changes the loss by grad[i, t] - grad[i, ids[i]], with
``grad`` the gradient with respect to one-hot token indicators. Each step takes that sign as the guide: per position,
the ``per_position`` allowed tokens the gradient favours most, only those whose sign says they lower the loss; all
such one-token swaps, with the prompt itself, are scored exactly on the step's batch, and the best is kept (so a
step never raises the batch's loss). A deterministic cousin of GCG (which samples swaps) and AutoPrompt. It is two
hooks of ``TokenSearch``; the kit does the rest: the start, minibatches, dev evaluation and selection (only prompts
that survive being written out as text), patience, the time cap, the log, and a backward that survives running out
of memory. It imports only the public API (harness.api).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from harness.api import SlotObjective, TokenSearch, TokenSearchSettings, UserError, filter_candidates, top_k_tokens


@dataclass
class SignGradSettings(TokenSearchSettings):
    who = "condition signgrad"  # how the kit's checks of the shared settings name this condition

    per_position: int = 2  # swaps tried per position: the tokens whose gradient favours them most

    def __post_init__(self) -> None:
        super().__post_init__()  # budget, length, init, format: checked by the kit
        if isinstance(self.per_position, bool) or not isinstance(self.per_position, int) or self.per_position < 1:
            raise UserError(f"condition signgrad: per_position = {self.per_position!r}; give a whole number >= 1")


class SignGrad(TokenSearch):
    name = "signgrad"
    summary = "real tokens by sign-gradient coordinate search: swaps the gradient says lower the loss (example)"
    settings_class = SignGradSettings

    def start(self, obj: SlotObjective, ids: list[int]) -> None:
        self.ids = list(ids)

    def step(self, obj: SlotObjective, batch: list[int], gen: torch.Generator) -> tuple[list[int], float]:
        grad, loss = obj.token_gradient(self.ids, batch)  # [length, vocab]; survives out-of-memory errors
        top = top_k_tokens(grad, obj.allowed, self.settings.per_position).to(grad.device)
        change = grad.gather(1, top) - grad[torch.arange(len(self.ids)), torch.tensor(self.ids)][:, None]
        swaps = [self.ids[:i] + [int(t)] + self.ids[i + 1 :] for i in range(len(self.ids))
                 for t, d in zip(top[i], change[i], strict=True) if d < 0]
        tried = [self.ids, *filter_candidates(obj, swaps)]  # the prompt itself too: a step keeps it unless beaten
        losses = obj.losses(tried, batch)  # exact, in one scorer call
        k = min(range(len(tried)), key=losses.__getitem__)
        self.ids = tried[k]
        return list(self.ids), losses[k]
