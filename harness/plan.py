"""The design of a run: the cell key, the cells a config asks for and their order, and the one split each cell uses.

A run is models x tasks x seeds x train sizes x conditions, plus the transfer cells that score a fitted cell's
artifact on another task's test split or by another model. This module is the one place that knows that design:

- ``CellKey``: what one cell is; ``CellKey.parts`` turns it into folder names (the run folder stores by it).
- ``Plan``: the cells a config asks for, in run order (sources, then the transfer cells that depend on them:
  ``CellKey.wave``), and the (model, task, train size) groups the report compares conditions in. The runner's to-do
  list and the reader's expected cells are the same ``Plan.cells``.
- ``split``: the one split of a task for a seed (made at the task's largest train size), and ``fitted_split`` /
  ``scored_split``: the part of it a cell fits on (train cut to its train size, a prefix, so every size of a curve is
  scored on the same dev and test) and scores. They work on a ``Split`` (examples, when a cell runs) and on a
  ``SplitRecord`` (ids, when the audit reads a run folder) alike.

config.py parses and validates a config into a ``RunConfig``; ``Plan.of`` reads the design from it. Adding an axis
means a field of ``CellKey``, a loop in ``Plan.cells`` and the analysis that reads it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Protocol, TypeVar

from harness.data import Split
from harness.task import SplitSizes


def slug(name: str) -> str:
    """A model or task name as one folder name (hub ids hold a slash)."""
    return name.replace("/", "--")


# --- the key -------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CellKey:
    """What one cell is: a condition fitted and scored for one model, task and seed.

    ``train_size``: fitted on the first that many train examples of the split (a sample-efficiency curve; None: the
    split's whole train part). ``target_task``/``target_model``: a transfer cell, which fits nothing: the artifact
    of its ``source`` cell is scored on the target task's test split and/or by the target model (None: the source's).
    """

    model: str
    task: str
    seed: int
    condition: str
    train_size: int | None = None
    target_task: str | None = None
    target_model: str | None = None

    def parts(self) -> tuple[str, ...]:
        """The cell's folder below ``cells/``; the new axes add a segment only when set, so older run folders keep
        their layout."""
        out = [slug(self.model), slug(self.task), f"seed-{self.seed}"]
        if self.train_size is not None:
            out.append(f"{TRAIN_SEGMENT}{self.train_size}")
        if self.target_model is not None:
            out.append(f"{TO_MODEL_SEGMENT}{slug(self.target_model)}")
        if self.target_task is not None:
            out.append(f"{TO_TASK_SEGMENT}{slug(self.target_task)}")
        return (*out, self.condition)

    @property
    def is_transfer(self) -> bool:
        return self.target_task is not None or self.target_model is not None

    @property
    def scored_model(self) -> str:
        """The model that scores the cell's test split (and fits it, unless it is a transfer)."""
        return self.target_model or self.model

    @property
    def scored_task(self) -> str:
        """The task whose test split the cell scores."""
        return self.target_task or self.task

    @property
    def source(self) -> CellKey:
        """The cell whose artifact a transfer cell scores (a cell that fits is its own source)."""
        return replace(self, target_task=None, target_model=None)

    @property
    def wave(self) -> int:
        """When the cell may run: 0 for cells that fit, 1 for transfer cells (after every source)."""
        return int(self.is_transfer)

    @property
    def label(self) -> str:
        size = f" / train {self.train_size}" if self.train_size is not None else ""
        target = " / ".join(x for x in (self.target_model, self.target_task) if x is not None)
        return f"{self.model} / {self.task} / seed {self.seed}{size} / {self.condition}" + (
            f" -> {target}" if target else "")

    def to_json(self) -> dict[str, Any]:
        # the new axes only when set, so the cell.json of a plain cell is as before
        return {k: v for k, v in asdict(self).items() if v is not None}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CellKey:
        """From cell.json, a job's arguments or a summary.csv row (where an unset axis is an empty string)."""
        def opt(name: str, kind: type) -> Any:
            v = data.get(name)
            return None if v is None or v == "" else kind(v)

        return cls(str(data["model"]), str(data["task"]), int(data["seed"]), str(data["condition"]),
                   opt("train_size", int), opt("target_task", str), opt("target_model", str))


TRAIN_SEGMENT, TO_MODEL_SEGMENT, TO_TASK_SEGMENT = "train-", "to-model-", "to-task-"
AXES = ("train_size", "target_task", "target_model")  # the key's optional fields: summary.csv columns when used
KEY_FIELDS = tuple(f.name for f in fields(CellKey))


@dataclass
class TransferPlan:
    """``[transfer]`` resolved: which fitted artifacts are also scored where (run task and condition names)."""

    tasks: dict[str, list[str]]  # source task -> the tasks whose test splits its artifacts are scored on
    conditions: list[str]  # the conditions whose artifacts transfer
    across_models: list[str] = field(default_factory=list)  # of those, scored by the run's other models too (text)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> TransferPlan | None:
        if not data:
            return None
        return cls({str(k): [str(t) for t in v] for k, v in (data.get("tasks") or {}).items()},
                   [str(c) for c in data.get("conditions") or []], [str(c) for c in data.get("across_models") or []])


# --- sizes ---------------------------------------------------------------------------------------------------------
def train_sizes(sizes: dict[str, Any] | None) -> list[int] | None:
    """A config's ``sizes`` table -> the sample-efficiency curve's train sizes, ascending (None: no curve)."""
    train = (sizes or {}).get("train")
    return sorted(train) if isinstance(train, list) else None


def split_sizes(sizes: dict[str, Any] | None, default: SplitSizes) -> SplitSizes:
    """The sizes a task's split is made with: the config's, else the task's default; for a curve, the largest train
    size (the others are its prefixes)."""
    if sizes is None:
        return default
    train = sizes.get("train", default.train)
    return SplitSizes(train=max(train) if isinstance(train, list) else train,
                      dev=sizes.get("dev", default.dev), test=sizes.get("test", default.test))


def split(task: Any, sizes: dict[str, Any] | None, seed: int) -> Split:
    """The one split of ``task`` for ``seed`` that every cell of a run uses (a config's ``sizes`` table, or None
    for the task's default sizes): the config check, the runner, every job and ``promptgap eval`` make it here."""
    return task.split(seed, split_sizes(sizes, task.default_sizes))


class _Prefixable(Protocol):
    def prefix(self, n_train: int) -> Any: ...


S = TypeVar("S", bound=_Prefixable)


def fitted_split(whole: S, key: CellKey) -> S:
    """The split ``key``'s artifact is fitted on, from its task's ``whole`` split: train cut to the key's train
    size (a ``Split`` or a ``SplitRecord``)."""
    return whole if key.train_size is None else whole.prefix(key.train_size)


def scored_split(whole: S, key: CellKey) -> S:
    """The split whose test part ``key`` scores, from the scored task's ``whole`` split: a transfer cell scores the
    target's whole split; a cell that fits, its own fitted split (the same test part; the train part is what
    the audit's leakage and selection checks compare against)."""
    return whole if key.is_transfer else fitted_split(whole, key)


# --- the plan ------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PlannedTask:
    """A task of the plan: its name in the run and its train sizes ((None,): one train size, no curve)."""

    name: str
    sizes: tuple[int | None, ...] = (None,)


@dataclass
class Plan:
    """The cells of a run and their order: models x tasks x seeds x train sizes x conditions, then transfers."""

    models: list[str]
    tasks: list[PlannedTask]
    seeds: list[int]
    conditions: list[str]
    transfer: TransferPlan | None = None

    @classmethod
    def of(cls, cfg: Any, task_names: Sequence[str]) -> Plan:
        """The plan of a ``RunConfig``; ``task_names``: the run's name of each config task entry, from the built
        tasks (a TOML spec's entry is named by its path, its task by the spec)."""
        return cls(list(cfg.models), [PlannedTask(n, tuple(train_sizes(t.sizes) or [None]))
                                      for n, t in zip(task_names, cfg.tasks, strict=True)],
                   list(cfg.seeds), list(cfg.conditions), cfg.transfer)

    def sizes(self, task: str) -> list[int | None]:
        """``task``'s train sizes ([None]: no curve)."""
        return next((list(t.sizes) for t in self.tasks if t.name == task), [None])

    def groups(self) -> list[tuple[str, str, int | None]]:
        """(model, task, train size) in run order: the cells of one group are the conditions of one comparison."""
        return [(m, t.name, n) for m in self.models for t in self.tasks for n in t.sizes]

    def cells(self, conditions: Sequence[str] | None = None) -> list[CellKey]:
        """Every cell the plan asks for (of ``conditions`` only, when given), in run order: models x tasks x seeds
        x train sizes x conditions, then the transfer cells (each after its source)."""
        chosen = list(self.conditions) if conditions is None else [c for c in self.conditions if c in conditions]
        keys = [CellKey(m, t.name, s, c, n) for m in self.models for t in self.tasks for s in self.seeds
                for n in t.sizes for c in chosen]
        if self.transfer is None:
            return keys
        moving = [c for c in self.transfer.conditions if c in chosen]
        for m in self.models:
            for t in self.tasks:
                targets = self.transfer.tasks.get(t.name, [])
                for s in self.seeds:
                    for n in t.sizes:
                        for c in moving:
                            to = [(None, tt) for tt in targets]
                            if c in self.transfer.across_models:
                                to += [(m2, tt) for m2 in self.models if m2 != m for tt in (None, *targets)]
                            keys += [CellKey(m, t.name, s, c, n, target_task=tt, target_model=tm) for tm, tt in to]
        return keys

    @staticmethod
    def waves(keys: Sequence[CellKey]) -> list[list[CellKey]]:
        """``keys`` in the order they may run: the cells that fit, then the transfer cells that score their
        artifacts (``CellKey.wave``)."""
        return [[k for k in keys if k.wave == w] for w in sorted({k.wave for k in keys})]
