"""The reference conditions: the bare task prompt (raw and chat format) and a hand-written instruction."""

from __future__ import annotations

from dataclasses import dataclass

from harness.artifact import FORMATS, PromptArtifact
from harness.errors import UserError
from optimizers.base import FitContext, Optimizer, Settings


class BaseRaw(Optimizer):
    name = "base-raw"
    summary = "the task prompt alone, plain text (lm-eval's default format)"

    def fit(self, ctx: FitContext) -> PromptArtifact:
        return PromptArtifact(format="raw", condition=self.name)


class BaseChat(Optimizer):
    name = "base-chat"
    summary = "the task prompt alone, in the model's chat template (lm-eval's --apply_chat_template)"

    def fit(self, ctx: FitContext) -> PromptArtifact:
        if not ctx.lm.has_chat_template:
            raise UserError(f"condition {self.name}: model {ctx.lm.name} has no chat template; use base-raw")
        return PromptArtifact(format="chat", condition=self.name)


@dataclass
class HandwrittenSettings(Settings):
    instruction: str | None = None  # None: the task's own default instruction
    format: str | None = None  # None: chat if the model has a chat template, else raw

    def __post_init__(self) -> None:
        if self.format is not None and self.format not in FORMATS:
            raise UserError(f"condition handwritten: format {self.format!r} is unknown; use raw or chat")
        if self.instruction is not None and not self.instruction.strip():
            raise UserError("condition handwritten: the instruction is empty; give text or leave it out")


class Handwritten(Optimizer):
    name = "handwritten"
    summary = "a hand-written instruction before the task prompt (the task's default, or one from the config)"
    settings_class = HandwrittenSettings

    def fit(self, ctx: FitContext) -> PromptArtifact:
        s: HandwrittenSettings = self.settings  # type: ignore[assignment]
        fmt = s.format or ("chat" if ctx.lm.has_chat_template else "raw")
        return PromptArtifact(format=fmt, instruction=s.instruction or ctx.task.instruction, condition=self.name)
