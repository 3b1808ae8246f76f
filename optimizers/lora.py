"""The weight-training ceiling: a PEFT LoRA adapter trained on the same train split, loss and answer tokens as the
soft prompt, swept over learning rates and selected on dev by the same trainer (``PromptTrainer``'s sweep)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from harness.adapters import applied, snapshot
from harness.artifact import PromptArtifact
from harness.errors import UserError
from harness.optimizer import FitContext, Optimizer
from harness.search import PromptForward
from optimizers.prompt_training import PromptTrainer, PromptTrainingSettings, Trial, _as_list


@dataclass
class LoraSettings(PromptTrainingSettings):
    """LoRA's own settings beside the trainer's budget (``lr`` takes a list: the sweep). ``target_modules`` None
    takes PEFT's default for the model's architecture (q_proj and v_proj for Llama, Qwen, Mistral and Gemma).
    ``length``, ``init``, ``init_text`` and ``placement`` do not apply: nothing is put in front of the input."""

    who = "condition lora"

    r: int = 8
    lora_alpha: float = 16
    lora_dropout: float = 0.0
    target_modules: list[str] | None = None
    lr: float | list[float] = field(default_factory=lambda: [3e-4, 3e-3])
    placement: str = "start"

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.r, bool) or not isinstance(self.r, int) or self.r < 1:
            raise UserError(f"{self.who}: r = {self.r!r}; give the adapter's rank, a whole number >= 1 (e.g. 8)")
        if isinstance(self.lora_alpha, bool) or not isinstance(self.lora_alpha, int | float) \
                or not self.lora_alpha > 0 or not math.isfinite(self.lora_alpha):
            raise UserError(f"{self.who}: lora_alpha = {self.lora_alpha!r}; give a number > 0 (e.g. 16)")
        if isinstance(self.lora_dropout, bool) or not isinstance(self.lora_dropout, int | float) \
                or not 0 <= self.lora_dropout < 1:
            raise UserError(f"{self.who}: lora_dropout = {self.lora_dropout!r}; give a number in [0, 1)")
        if self.target_modules is not None and (not isinstance(self.target_modules, list) or not self.target_modules
                                                or not all(isinstance(m, str) and m for m in self.target_modules)):
            raise UserError(f"{self.who}: target_modules = {self.target_modules!r}; give module names, e.g. "
                            f"[\"q_proj\", \"v_proj\"], or leave it out for PEFT's default")
        if self.placement != "start" or self.length is not None:
            raise UserError(f"{self.who}: placement and length are a prompt's; a LoRA adapter has neither")

    def adapter_config(self) -> dict[str, Any]:
        return {"r": self.r, "lora_alpha": self.lora_alpha, "lora_dropout": self.lora_dropout,
                "target_modules": self.target_modules}

    def grid(self) -> list[dict[str, Any]]:
        return [{"length": None, "lr": float(lr), "init": "zero"} for lr in _as_list(self.lr)]


class LoraTrainer(PromptTrainer):
    """``PromptTrainer``'s sweep and selection, each trial an adapter trained with Adam from PEFT's initialisation
    (``A`` drawn from the cell's seed, ``B`` zero: the trial starts at the base model's exact scores)."""

    def __init__(self, ctx: FitContext, settings: LoraSettings, condition: str) -> None:
        super().__init__(ctx, settings, "lora", condition)
        self.config = settings.adapter_config()

    def artifact(self, tensor: Any, meta: dict[str, Any] | None = None) -> PromptArtifact:
        return PromptArtifact(format=self.format, adapter=tensor, adapter_config=self.config,
                              condition=self.condition, meta=meta or {})

    def train_trial(self, trial: Trial, advance) -> Trial:
        ctx, lm = self.ctx, self.ctx.lm
        with torch.random.fork_rng(devices=[lm.device] if lm.device.type == "cuda" else []):
            torch.manual_seed(ctx.seed)  # PEFT draws A from torch's generator
            with applied(lm, self.config) as live:
                return self.run_trial(trial, advance, list(live.values()), lambda: None, lambda: snapshot(live),
                                      lambda flat: PromptForward(lm, flat, weights=True),
                                      f"{self.condition} r={self.config['r']} lr={trial.lr:g}", "adapter")

    def fit(self) -> tuple[PromptArtifact, dict[str, Any]]:
        art, record = super().fit()
        for k in ("n_virtual_tokens", "init"):
            art.meta.pop(k, None)
        art.meta.update(self.config)
        return art, record


class Lora(Optimizer):
    name = "lora"
    summary = "a trained LoRA adapter (PEFT) on the model's own weights, swept over lr and selected on dev"
    settings_class = LoraSettings
    produces = frozenset({"weights"})

    def fit(self, ctx: FitContext) -> PromptArtifact:
        art, _ = LoraTrainer(ctx, self.settings, self.name).fit()  # type: ignore[arg-type]
        return art
