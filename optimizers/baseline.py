"""The reference conditions: the bare task prompt (raw and chat), a hand-written instruction, paraphrases of it
(the noise floor a text optimizer must beat), and k solved train examples as demos."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from harness.artifact import FORMATS, PromptArtifact
from harness.errors import UserError
from harness.optimizer import SELECT_ON, FitContext, Optimizer, Settings, Variant, choose_on_dev


class BaseRaw(Optimizer):
    name = "base-raw"
    summary = "the task prompt alone, plain text (lm-eval's default format)"
    produces = frozenset()  # the task prompt alone

    def fit(self, ctx: FitContext) -> PromptArtifact:
        return PromptArtifact(format="raw", condition=self.name)


class BaseChat(Optimizer):
    name = "base-chat"
    summary = "the task prompt alone, in the model's chat template (lm-eval's --apply_chat_template)"
    produces = frozenset()

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
    produces = frozenset({"text"})

    def fit(self, ctx: FitContext) -> PromptArtifact:
        s: HandwrittenSettings = self.settings  # type: ignore[assignment]
        return PromptArtifact(format=_format(ctx, s.format), instruction=s.instruction or ctx.task.instruction,
                              condition=self.name)


def _format(ctx: FitContext, fmt: str | None) -> str:
    return fmt or ("chat" if ctx.lm.has_chat_template else "raw")


@dataclass
class ParaphrasesSettings(Settings):
    """``instructions``: hand-written paraphrases of the task's instruction (which is always the first). In a run
    config each also becomes a condition of its own (``paraphrases.1``, ...), scored on test like any other: their
    spread is the noise floor of hand-writing; this condition is the one chosen on dev."""

    instructions: list[str] = field(default_factory=list)
    format: str | None = None
    select_on: str = "loss"

    def __post_init__(self) -> None:
        if not isinstance(self.instructions, list) or not self.instructions:
            raise UserError("condition paraphrases: instructions is empty; give a list of paraphrases of the task's "
                            "instruction, e.g. instructions = [\"Write the opposite word.\"]")
        if not all(isinstance(t, str) and t.strip() for t in self.instructions):
            raise UserError("condition paraphrases: every instruction must be non-empty text")
        if self.format is not None and self.format not in FORMATS:
            raise UserError(f"condition paraphrases: format {self.format!r} is unknown; use raw or chat")
        if self.select_on not in SELECT_ON:
            raise UserError(f"condition paraphrases: select_on {self.select_on!r} is unknown; use loss or accuracy")

    def texts(self, task_instruction: str) -> list[str]:
        return list(dict.fromkeys([task_instruction, *self.instructions]))


class Paraphrases(Optimizer):
    name = "paraphrases"
    summary = "the task's instruction and hand-written paraphrases of it, the best on dev (their spread: a noise floor)"
    settings_class = ParaphrasesSettings
    produces = frozenset({"text"})

    def fit(self, ctx: FitContext) -> PromptArtifact:
        s: ParaphrasesSettings = self.settings  # type: ignore[assignment]
        fmt = _format(ctx, s.format)
        texts = s.texts(ctx.task.instruction)
        candidates = [PromptArtifact(format=fmt, instruction=t, condition=self.name, meta={"paraphrase": i})
                      for i, t in enumerate(texts)]
        best, tried = choose_on_dev(ctx, candidates, s.select_on, label=self.name)
        ctx.report_log({"select_metric": s.select_on,
                        "tried": [{"instruction": t, **x} for t, x in zip(texts, tried, strict=True)]})
        return best

    def variants(self) -> list[Variant]:
        """Each instruction as a hand-written condition of its own (the first, with no instruction set, is the
        task's own), so each is scored on test in its own cell: their spread is the noise floor."""
        s: ParaphrasesSettings = self.settings  # type: ignore[assignment]
        fmt = {"format": s.format} if s.format else {}
        return [Variant("handwritten", dict(fmt)),
                *(Variant("handwritten", {"instruction": text, **fmt}) for text in s.instructions)]


@dataclass
class FewShotSettings(Settings):
    """``k``: how many demos (a list sweeps, the best on dev wins). Unlike lm-eval, which draws demos for each
    test document, the demos are one fixed set, the same before every input: a prompt a person could copy."""

    k: int | list[int] = field(default_factory=lambda: [1, 3, 5])
    format: str | None = None
    select_on: str = "loss"

    def __post_init__(self) -> None:
        ks = self.k if isinstance(self.k, list) else [self.k]
        if not ks or any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in ks):
            raise UserError(f"condition fewshot: k = {self.k!r}; give a whole number >= 1 or a list of them")
        if self.format is not None and self.format not in FORMATS:
            raise UserError(f"condition fewshot: format {self.format!r} is unknown; use raw or chat")
        if self.select_on not in SELECT_ON:
            raise UserError(f"condition fewshot: select_on {self.select_on!r} is unknown; use loss or accuracy")

    @property
    def ks(self) -> list[int]:
        return list(dict.fromkeys(self.k if isinstance(self.k, list) else [self.k]))


class FewShot(Optimizer):
    name = "fewshot"
    summary = "k solved train examples as demos (one fixed set drawn with the seed), k chosen on dev"
    settings_class = FewShotSettings
    produces = frozenset({"demos"})

    def fit(self, ctx: FitContext) -> PromptArtifact:
        s: FewShotSettings = self.settings  # type: ignore[assignment]
        if max(s.ks) > len(ctx.train):
            raise UserError(f"condition {self.name}: k = {max(s.ks)} demos asked for but train has only "
                            f"{len(ctx.train)} examples; lower k or raise the train size")
        # one shuffle of train for the seed; each k takes its first k, so a larger k extends a smaller one's set
        order = list(ctx.train)
        random.Random(f"fewshot-{ctx.seed}").shuffle(order)
        candidates = [PromptArtifact(format=_format(ctx, s.format), demos=[e.solved_text() for e in order[:k]],
                                     condition=self.name, meta={"k": k, "demo_ids": [e.id for e in order[:k]]})
                      for k in s.ks]
        best, tried = choose_on_dev(ctx, candidates, s.select_on, label=self.name)
        ctx.report_log({"select_metric": s.select_on,
                        "tried": [{**c.meta, **x} for c, x in zip(candidates, tried, strict=True)]})
        best.meta.update(next(x for c, x in zip(candidates, tried, strict=True) if c is best))
        return best
