"""The optimizer (condition) contract: one class, one ``fit`` that turns a FitContext into a PromptArtifact."""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

from harness.artifact import PromptArtifact
from harness.data import Example
from harness.errors import UserError
from harness.models import LoadedModel
from harness.scorer import Scorer


@dataclass
class FitContext:
    """Everything a condition may use. It never holds the test split."""

    lm: LoadedModel
    task: Any  # tasks.base.Task: its kind, default instruction and example format
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
