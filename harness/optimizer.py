"""The optimizer (condition) contract, the public plugin API: one class, one ``fit`` (FitContext -> PromptArtifact).

Built-in conditions and third-party plugins use exactly this module. The harness enforces what a
plugin must not do rather than trusting it: ``FitContext`` holds only the train and dev splits and a
read-only ``TaskInfo`` (no way back to the task's data), and ``check_artifact`` validates what ``fit``
returns against the model, and against what the condition declares it produces, before anything is scored.

A condition says what it is (``Optimizer.produces``, ``needs_marker``, ``marker``, ``variants``); the harness asks
these, never a condition's class or name, so a plugin is held to the same config checks as a built-in.
"""

from __future__ import annotations

import contextlib
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

import torch

from harness.artifact import PRODUCTS, PromptArtifact
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


class BudgetSpent(Exception):
    """Raised by a search's own code (not the harness) when its next unit of work would overrun ``TokenBudget``."""


@dataclass
class TokenBudget:
    """A fit's budget in token positions through the task model (``models.Usage.tokens``: what a cell records as
    fit_tokens). ``promptgap bench --budget-tokens N`` hands it to each ranked search condition as the setting
    ``budget_tokens``; a search that honors it asks ``affords`` before each unit of work it may skip, with the most a
    unit of that kind has cost so far (``unit`` measures them), and ends at its best so far on dev. A unit whose kind
    has not run yet is estimated by ``default``: the first unit of a kind can overrun, every later one cannot."""

    lm: LoadedModel
    limit: int | None
    start: int | None = None  # the usage count the budget starts from (default: now)
    costs: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.start is None:
            self.start = self.lm.usage.tokens

    @property
    def spent(self) -> int:
        return self.lm.usage.tokens - (self.start or 0)

    def expected(self, kind: str, default: int = 0) -> int:
        return self.costs.get(kind, default)

    def affords(self, cost: int) -> bool:
        return self.limit is None or self.spent + cost <= self.limit

    @contextlib.contextmanager
    def unit(self, kind: str) -> Iterator[None]:
        """Measure a unit of work of ``kind``: its cost is the most any unit of the kind has spent."""
        before = self.spent
        try:
            yield
        finally:
            self.costs[kind] = max(self.costs.get(kind, 0), self.spent - before)


def check_budget(who: str, value: Any) -> None:
    """``budget_tokens`` as a setting: None (no budget) or a whole number of tokens >= 1."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise UserError(f"{who}: budget_tokens = {value!r}; give a whole number of tokens >= 1 (or leave it out)")


@dataclass
class FitContext:
    """Everything a condition may use. It never holds the test split.

    A condition hands the harness what only it knows through two calls: ``report_log(record)`` (its curves,
    trials, candidates: the harness writes them as the cell's log.json) and ``report_selection(ids, metric)``
    (which examples and which metric chose its result; the audit checks the ids and labels the claim as
    reported by the condition). Files it writes into ``workdir`` are kept in the cell's ``files/`` folder.
    """

    lm: LoadedModel
    task: TaskInfo
    train: tuple[Example, ...]
    dev: tuple[Example, ...]
    scorer: Scorer
    seed: int
    workdir: Path | None = None  # a folder of the condition's own, for files it wants kept (or scratch)
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("promptgap.optimizer"))
    reported_log: dict[str, Any] | None = field(default=None, repr=False)
    reported_selection: dict[str, Any] | None = field(default=None, repr=False)
    tokens_at_start: int = field(default=0, init=False, repr=False)  # usage when the fit began
    _budget: TokenBudget | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.tokens_at_start = self.lm.usage.tokens

    def token_budget(self, limit: int | None) -> TokenBudget:
        """The fit's one token budget (``budget_tokens``), counted from the fit's start and shared by every search
        of the fit (a sweep's trials), with the costs its units measured."""
        if self._budget is None or self._budget.limit != limit:
            self._budget = TokenBudget(self.lm, limit, start=self.tokens_at_start)
        return self._budget

    def report_log(self, record: dict[str, Any]) -> None:
        """The condition's log (anything JSON): curves, trials, candidates. The harness writes it as log.json."""
        if not isinstance(record, dict):
            raise UserError(f"report_log takes a dict (JSON object), not {type(record).__name__}")
        self.reported_log = record

    def report_selection(self, ids: Sequence[str], metric: str) -> None:
        """The examples (by id) and the metric the condition chose its result on, e.g.
        ``ctx.report_selection([e.id for e in ctx.dev], "dev gold NLL")``. Call it once the choice is made."""
        ids = [str(i) for i in ids]
        if not ids:
            raise UserError("report_selection: no example ids; give the ids the choice was made on")
        self.reported_selection = {"ids": ids, "metric": str(metric)}


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


@dataclass
class Variant:
    """A prompt a condition stands for besides its own, scored in a cell of its own: a registered condition and
    its settings (``Optimizer.variants``)."""

    optimizer: str
    settings: dict[str, Any] = field(default_factory=dict)


class Optimizer(ABC):
    """A condition. Subclasses set ``name``, ``summary`` and ``settings_class`` and implement ``fit``; one whose
    artifact holds more than text and demos declares it in ``produces``."""

    name: ClassVar[str]
    summary: ClassVar[str]
    settings_class: ClassVar[type[Settings]] = Settings
    # What the artifact may hold, in the words of harness.artifact.PRODUCTS; every fit is checked against it (a
    # property where it depends on the settings). The default, text and demos, is the one the harness treats most
    # freely (text crosses models), so a condition that trains tensors must declare them ("soft", "prefix") to be
    # held to their rules when its config is checked, not only when a cell fails.
    produces: frozenset[str] = frozenset({"text", "demos"})

    def __init__(self, **settings: Any) -> None:
        self.settings = self.settings_class.parse(self.name, settings)
        declared = self.produces
        if isinstance(declared, str) or not isinstance(declared, set | frozenset | tuple | list) \
                or not set(declared) <= set(PRODUCTS):
            raise UserError(f"condition {self.name}: produces = {declared!r}; declare a set of "
                            f"{', '.join(PRODUCTS)}, e.g. produces = frozenset({{\"soft\"}})")

    @abstractmethod
    def fit(self, ctx: FitContext) -> PromptArtifact:
        """Return the prompt artifact this condition puts in front of every test input."""

    def needs_marker(self) -> bool:
        """Whether the prompt takes the place of a marker word of the task's template (``TaskInfo.marker``): it
        then transfers only to tasks that mark the same text."""
        return False

    def marker(self, task_marker: str) -> str:
        """The text the prompt replaces on a task whose own marker is ``task_marker`` ("" for none); asked only
        where ``needs_marker()``."""
        return task_marker

    def variants(self) -> list[Variant]:
        """Prompts this condition stands for besides its own, each scored in a cell of its own (``<name>.0``,
        ``<name>.1``, ... in a run, in this order) and reported as its spread, not judged: e.g. the paraphrases
        whose spread is the noise floor of hand-writing. None by default."""
        return []


# the dev metrics a condition may select on, and how its selection is reported (``FitContext.report_selection``)
SELECT_ON = {"loss": "dev gold NLL", "accuracy": "dev accuracy (ties by gold NLL)"}


@dataclass(frozen=True)
class DevScore:
    """A prompt's scores on all of dev through the shared scorer: the mean gold NLL, the accuracy, and each
    example's gold NLL (in ``ctx.dev`` order)."""

    loss: float
    accuracy: float
    losses: tuple[float, ...]

    def key(self, select_on: str) -> tuple[float, ...]:
        """The selection key, lower is better: the loss, or the accuracy with the loss breaking ties."""
        return (-self.accuracy, self.loss) if select_on == "accuracy" else (self.loss,)


def dev_score(ctx: FitContext, artifact: PromptArtifact, desc: str = "dev") -> DevScore:
    """``artifact`` scored on all of dev by the shared scorer: the numbers test scoring gives, on dev."""
    scores = ctx.scorer.score(artifact, ctx.dev, ctx.task.kind, desc=desc)
    return DevScore(sum(s.gold_nll for s in scores) / len(scores), sum(s.correct for s in scores) / len(scores),
                    tuple(s.gold_nll for s in scores))


def choose_on_dev(ctx: FitContext, candidates: Sequence[PromptArtifact], select_on: str = "loss",
                  label: str = "candidate") -> tuple[PromptArtifact, list[dict[str, Any]]]:
    """Score each candidate on all of dev through the shared scorer and return the best with every candidate's
    scores: by mean gold NLL (``loss``), or by accuracy with ties broken by loss; the first of equals wins.
    Reports the selection (dev ids and metric) to the harness."""
    if not ctx.dev:
        raise UserError(f"{label}: no dev examples to choose on; give the task a dev split")
    if select_on not in SELECT_ON:
        raise UserError(f"{label}: select_on {select_on!r} is unknown; use loss or accuracy")
    tried: list[dict[str, Any]] = []
    best: tuple[tuple[float, ...], PromptArtifact] | None = None
    for i, art in enumerate(candidates):
        scored = dev_score(ctx, art, desc=f"{label} {i + 1}/{len(candidates)}: dev")
        tried.append({"dev_loss": scored.loss, "dev_accuracy": scored.accuracy})
        ctx.log.info("%s %d: dev gold NLL %.4f, accuracy %.4f", label, i + 1, scored.loss, scored.accuracy)
        key = scored.key(select_on)
        if best is None or key < best[0]:
            best = (key, art)
    assert best is not None
    ctx.report_selection([e.id for e in ctx.dev], SELECT_ON[select_on])
    return best[1], tried


FIELDS = {"text": "an instruction", "demos": "demos", "soft": "a soft_prompt", "prefix": "a prefix_kv",
          "weights": "trained weights (a LoRA adapter, a full fine-tune)"}


def check_artifact(artifact: Any, lm: LoadedModel, owner: str,
                   produces: frozenset[str] | set[str] | None = None) -> PromptArtifact:
    """What ``fit`` returned, checked against the model before anything is scored; ``owner`` names the condition.
    ``produces``: what the condition declares (``Optimizer.produces``); None for a saved artifact, which has none."""
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
    if artifact.adapter is not None and not all(torch.isfinite(t).all() for t in artifact.adapter.values()):
        raise UserError(f"{owner} returned trained weights with NaN or infinite values; check its training (learning "
                        f"rate)")
    # last: a tensor of the wrong shape is named as such first, whatever the declaration
    undeclared = sorted(artifact.parts - set(produces), key=PRODUCTS.index) if produces is not None else []
    if undeclared:
        said = ", ".join(sorted(produces, key=PRODUCTS.index)) or "nothing"
        raise UserError(f"{owner} returned {' and '.join(FIELDS[p] for p in undeclared)} but declares produces = "
                        f"{said}; add {', '.join(map(repr, undeclared))} to its produces (a run then checks its "
                        f"config as such) or return what it declares")
    return artifact


@dataclass
class Fit:
    """A fitted condition: its checked artifact and what it reported through the context."""

    artifact: PromptArtifact
    log: dict[str, Any] | None  # FitContext.report_log
    selection: dict[str, Any] | None  # FitContext.report_selection
    seconds: float


def fit_condition(optimizer: Optimizer, lm: LoadedModel, task: Any, train: tuple[Example, ...],
                  dev: tuple[Example, ...], scorer: Scorer, seed: int, workdir: Path | None = None,
                  owner: str | None = None) -> Fit:
    """The one way the harness runs a condition: a context without the test split, then the artifact checked.
    (``harness.cell.fit_and_score`` wraps this in ``scorer.recording()``: evidence of what the condition read.)"""
    ctx = FitContext(lm=lm, task=TaskInfo.of(task), train=tuple(train), dev=tuple(dev), scorer=scorer, seed=seed,
                     workdir=workdir)
    t0 = time.perf_counter()
    artifact = optimizer.fit(ctx)
    seconds = time.perf_counter() - t0
    artifact = check_artifact(artifact, lm, owner or f"condition {optimizer.name}", frozenset(optimizer.produces))
    return Fit(artifact, ctx.reported_log, ctx.reported_selection, seconds)
