"""The weight-training ceilings: a PEFT LoRA adapter (``lora``) and a full fine-tune (``full-finetune``), trained on
the same train split, loss and answer tokens as the soft prompt, swept over learning rates and selected on dev by
the same trainer (``PromptTrainer``'s sweep and trial loop); ``harness.adapters`` puts the weights in the model."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any

import torch

from harness.adapters import FULL, applied, snapshot
from harness.artifact import PromptArtifact
from harness.errors import UserError
from harness.optimizer import FitContext, Optimizer
from harness.search import PromptForward
from optimizers.prompt_training import PromptTrainer, PromptTrainingSettings, Trial, _as_list

GIB = 1024 ** 3
MEMORY_SHARE = 0.8  # full-finetune's max_train_memory default: this share of the device's free memory
TRAINING_COPIES = 4  # full fine-tuning holds per parameter: the trained copy, its gradient, Adam's two moments


@dataclass
class WeightTrainingSettings(PromptTrainingSettings):
    """The trainer's budget (``lr`` takes a list: the sweep); ``length``, ``init``, ``init_text`` and ``placement``
    do not apply: nothing is put in front of the input."""

    who = "weight training"
    placement: str = "start"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.placement != "start" or self.length is not None or self.init != "text" or self.init_text is not None \
                or self.marker is not None:
            raise UserError(f"{self.who}: placement, length, init, init_text and marker are a prompt's; trained "
                            f"weights have none of them")

    def adapter_config(self) -> dict[str, Any]:
        raise NotImplementedError

    def grid(self) -> list[dict[str, Any]]:
        return [{"length": None, "lr": float(lr), "init": "base"} for lr in _as_list(self.lr)]


@dataclass
class LoraSettings(WeightTrainingSettings):
    """LoRA's own settings beside the trainer's budget. ``target_modules`` None takes PEFT's default for the model's
    architecture (q_proj and v_proj for Llama, Qwen, Mistral and Gemma)."""

    who = "condition lora"

    r: int = 8
    lora_alpha: float = 16
    lora_dropout: float = 0.0
    target_modules: list[str] | None = None
    lr: float | list[float] = field(default_factory=lambda: [3e-4, 3e-3])

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

    def adapter_config(self) -> dict[str, Any]:
        return {"r": self.r, "lora_alpha": self.lora_alpha, "lora_dropout": self.lora_dropout,
                "target_modules": self.target_modules}


@dataclass
class FullFinetuneSettings(WeightTrainingSettings):
    """Full fine-tuning: every parameter trained (tied ones once). ``max_train_memory`` (GiB): the most the
    trained copy of the weights, their gradients and Adam's two moments may need; None takes 80% of the device's
    free memory when training starts. A model that needs more is refused before training, in one line."""

    who = "condition full-finetune"

    lr: float | list[float] = field(default_factory=lambda: [1e-5, 1e-4])
    max_train_memory: float | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        m = self.max_train_memory
        if m is not None and (isinstance(m, bool) or not isinstance(m, int | float) or not m > 0
                              or not math.isfinite(m)):
            raise UserError(f"{self.who}: max_train_memory = {m!r}; give GiB > 0 (e.g. 8), or leave it out for 80% "
                            f"of the device's free memory")

    def adapter_config(self) -> dict[str, Any]:
        return {"method": FULL}


def free_memory(device: torch.device) -> int:
    """Bytes free on ``device`` now: the accelerator's free memory, or the host's available memory for the CPU."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def check_training_memory(lm: Any, settings: FullFinetuneSettings, condition: str) -> dict[str, Any]:
    """Refuse, before training, a full fine-tune whose weights + gradients + Adam state would exceed
    ``max_train_memory``; returns the figures (kept in the fit's log)."""
    params = {id(p): p for p in lm.model.parameters()}.values()  # tied weights once
    count = sum(p.numel() for p in params)
    need = TRAINING_COPIES * sum(p.numel() * p.element_size() for p in params)
    if settings.max_train_memory is not None:
        limit, whence = int(settings.max_train_memory * GIB), f"max_train_memory {settings.max_train_memory:g} GiB"
    else:
        free = free_memory(lm.device)
        limit = int(free * MEMORY_SHARE)
        whence = f"80% of the {free / GIB:.1f} GiB free on {lm.device.type} ({limit / GIB:.2f} GiB)"
    if need > limit:
        raise UserError(f"condition {condition}: training all {count:,} parameters of {lm.name} needs {need / GIB:.2f} "
                        f"GiB for weights + gradients + Adam state, over {whence}; use lora, "
                        f"a smaller model, or set max_train_memory (GiB)")
    return {"params": count, "need_bytes": need, "limit_bytes": limit}


class WeightTrainer(PromptTrainer):
    """``PromptTrainer``'s sweep and selection, each trial the model's weights trained with Adam: a LoRA adapter
    from PEFT's initialisation (``A`` drawn from the cell's seed, ``B`` zero) or, for a full fine-tune, every
    weight from the base model's; either way a trial starts at the base model's exact scores."""

    def __init__(self, ctx: FitContext, settings: WeightTrainingSettings, condition: str) -> None:
        super().__init__(ctx, settings, "weights", condition)
        self.config = settings.adapter_config()

    def artifact(self, tensor: Any, meta: dict[str, Any] | None = None) -> PromptArtifact:
        return PromptArtifact(format=self.format, adapter=tensor, adapter_config=self.config,
                              condition=self.condition, meta=meta or {})

    def train_trial(self, trial: Trial, advance) -> Trial:
        ctx, lm = self.ctx, self.ctx.lm
        what = f"r={self.config['r']}" if "r" in self.config else "all weights"
        with torch.random.fork_rng(devices=[lm.device] if lm.device.type == "cuda" else []):
            torch.manual_seed(ctx.seed)  # PEFT draws A from torch's generator
            with applied(lm, self.config) as live:
                return self.run_trial(trial, advance, list(live.values()), lambda: None, lambda: snapshot(live),
                                      lambda flat: PromptForward(lm, flat, weights=True),
                                      f"{self.condition} {what} lr={trial.lr:g}", "weights")

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
        art, _ = WeightTrainer(ctx, self.settings, self.name).fit()  # type: ignore[arg-type]
        return art


class FullFinetune(Optimizer):
    name = "full-finetune"
    summary = "every weight of the model trained (small models: refused when it would not fit), selected on dev"
    settings_class = FullFinetuneSettings
    produces = frozenset({"weights"})

    def fit(self, ctx: FitContext) -> PromptArtifact:
        memory = check_training_memory(ctx.lm, self.settings, self.name)  # type: ignore[arg-type]
        art, _ = WeightTrainer(ctx, self.settings, self.name).fit()  # type: ignore[arg-type]
        art.meta["training_memory"] = memory
        return art
