"""The optimizer (condition) contract, the public plugin API: one class, one ``fit`` (FitContext -> PromptArtifact).

Built-in conditions and third-party plugins use exactly this module. The harness enforces what a
plugin must not do rather than trusting it: ``FitContext`` holds only the train and dev splits and a
read-only ``TaskInfo`` (no way back to the task's data), and ``check_artifact`` validates what ``fit``
returns against the model before anything is scored.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

import torch

from harness.artifact import PromptArtifact
from harness.data import Example
from harness.errors import UserError
from harness.models import LoadedModel
from harness.scorer import Scorer


class NotForConditions(UserError, AttributeError):
    """A condition reached for something the harness keeps from it (the task's data, hence its test split)."""


@dataclass(frozen=True)
class TaskInfo:
    """What a condition may know about its task: no loader, no split, so no way to the test examples."""

    name: str
    kind: str  # "multiple_choice" or "continuation" (harness.data.TaskKind)
    instruction: str  # the task's default hand-written instruction
    summary: str = ""
    marker: str = ""  # a word of the task's template a soft prompt may replace ("" if none)

    @classmethod
    def of(cls, task: Any) -> TaskInfo:
        return cls(name=task.name, kind=task.kind, instruction=task.instruction,
                   summary=getattr(task, "summary", ""), marker=getattr(task, "marker", "") or "")

    def __getattr__(self, name: str) -> Any:  # only called for attributes a TaskInfo does not have
        raise NotForConditions(
            f"task.{name} is not available to a condition: conditions get ctx.train and ctx.dev only "
            f"(the test split is scored by the harness); task info holds name, kind, instruction, summary, marker")


@dataclass
class FitContext:
    """Everything a condition may use. It never holds the test split."""

    lm: LoadedModel
    task: TaskInfo
    train: tuple[Example, ...]
    dev: tuple[Example, ...]
    scorer: Scorer
    seed: int
    workdir: Path | None = None  # where a condition may write logs and checkpoints
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("promptgap.optimizer"))


@dataclass
class Settings:
    """Base for a condition's settings; subclasses add typed fields with defaults (PEFT-style)."""

    @classmethod
    def parse(cls, owner: str, raw: dict[str, Any]) -> Settings:
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(raw) - set(known))
        if unknown:
            valid = ", ".join(sorted(known)) or "none"
            raise UserError(f"condition {owner}: unknown setting(s) {', '.join(unknown)}; valid: {valid}")
        return cls(**raw)


class Optimizer(ABC):
    """A condition. Subclasses set ``name``, ``summary`` and ``settings_class`` and implement ``fit``."""

    name: ClassVar[str]
    summary: ClassVar[str]
    settings_class: ClassVar[type[Settings]] = Settings

    def __init__(self, **settings: Any) -> None:
        self.settings = self.settings_class.parse(self.name, settings)

    @abstractmethod
    def fit(self, ctx: FitContext) -> PromptArtifact:
        """Return the prompt artifact this condition puts in front of every test input."""


def check_artifact(artifact: Any, lm: LoadedModel, owner: str) -> PromptArtifact:
    """What ``fit`` returned, checked against the model before anything is scored; ``owner`` names the condition."""
    if not isinstance(artifact, PromptArtifact):
        raise UserError(f"{owner} returned {type(artifact).__name__}, not a PromptArtifact; "
                        f"return harness.artifact.PromptArtifact(...) from fit")
    if artifact.format == "chat" and not lm.has_chat_template:
        raise UserError(f"{owner} returned a chat-format artifact, but model {lm.name} has no chat template; "
                        f"use format='raw'")
    layers, kv_heads, head_dim = lm.kv_shape
    expected = {"soft_prompt": (None, lm.model.get_input_embeddings().embedding_dim),
                "prefix_kv": (layers, 2, kv_heads, None, head_dim)}
    for name, shape in expected.items():
        t = getattr(artifact, name, None)
        if t is None:
            continue
        if not isinstance(t, torch.Tensor) or not t.is_floating_point():
            raise UserError(f"{owner} returned {name} of type {type(t).__name__}; give a floating-point torch.Tensor")
        if t.ndim != len(shape) or any(w is not None and g != w for g, w in zip(t.shape, shape, strict=True)):
            want = "[" + ", ".join("n" if w is None else str(w) for w in shape) + "]"
            raise UserError(f"{owner} returned {name} of shape {list(t.shape)}; model {lm.name} needs {want}")
        if not torch.isfinite(t).all():
            raise UserError(f"{owner} returned {name} with NaN or infinite values; check its training (learning rate)")
    return artifact


def fit_condition(optimizer: Optimizer, lm: LoadedModel, task: Any, train: tuple[Example, ...],
                  dev: tuple[Example, ...], scorer: Scorer, seed: int, workdir: Path | None = None,
                  owner: str | None = None) -> PromptArtifact:
    """The one way the harness runs a condition: a context without the test split, then the artifact checked."""
    ctx = FitContext(lm=lm, task=TaskInfo.of(task), train=tuple(train), dev=tuple(dev), scorer=scorer, seed=seed,
                     workdir=workdir)
    return check_artifact(optimizer.fit(ctx), lm, owner or f"condition {optimizer.name}")
