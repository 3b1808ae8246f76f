"""Run configs: a TOML file parsed and checked completely before any model is loaded.

    [run]
    name = "quickstart"
    models = ["smollm2-135m-instruct"]
    seeds = [0]
    n_boot = 10000            # bootstrap replicates for the report

    [[tasks]]
    name = "antonyms"          # a registered task, or a path to a TOML task spec
    # data_dir = "../../shared/data/antonyms"   # relative paths are relative to this config file
    sizes = { train = 200, dev = 50, test = "all" }

    [[tasks]]
    name = "lm-eval:arc_easy"  # any lm-evaluation-harness log-likelihood task; a group expands into its subtasks
    # lm_eval_include = "my_tasks"   # a folder of your own lm-eval YAML files (relative to this config file)

    [conditions.base-chat]     # the table name is the condition's name in results and reports
    [conditions.handwritten]
    instruction = "Give the opposite word."   # settings of the condition
    [conditions.terse]
    optimizer = "handwritten"  # a second instance of a registered condition, under its own name
    instruction = "Opposite:"

    [ratio]                    # the roles in R = (text - base) / (ceiling - base)
    base = "base-chat"
    texts = ["handwritten", "terse"]
    ceiling = "soft-prompt"    # optional until a ceiling condition is in the run
"""

from __future__ import annotations

import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from harness.errors import UserError
from tasks.base import SplitSizes
from tasks.lm_eval_task import is_lm_eval_name

RUN_KEYS = {"name", "models", "seeds", "n_boot", "batch_size", "device", "dtype"}
TASK_KEYS = {"name", "data_dir", "sizes", "lm_eval_include"}
RATIO_KEYS = {"base", "texts", "ceiling"}
TOP_KEYS = {"run", "tasks", "conditions", "ratio"}


@dataclass
class TaskConfig:
    name: str
    data_dir: str | None = None
    sizes: dict[str, int | None] | None = None
    lm_eval_include: str | None = None  # lm-eval:NAME tasks: a folder of lm-eval YAML files (absolute)
    lm_eval_group: str | None = None  # lm-eval:NAME tasks: the group it was expanded from

    def to_json(self) -> dict[str, Any]:
        # the lm-eval keys only when set, so the config.json of runs without lm-eval tasks is unchanged
        return {k: v for k, v in asdict(self).items() if v is not None or not k.startswith("lm_eval_")}

    def split_sizes(self, default: SplitSizes) -> SplitSizes:
        if self.sizes is None:
            return default
        return SplitSizes(train=self.sizes.get("train", default.train), dev=self.sizes.get("dev", default.dev),
                          test=self.sizes.get("test", default.test))


@dataclass
class ConditionConfig:
    optimizer: str
    settings: dict[str, Any] = field(default_factory=dict)


@dataclass
class RunConfig:
    """The resolved config; ``to_json`` is what a run folder's config.json holds."""

    run: dict[str, Any]
    models: list[str]
    tasks: list[TaskConfig]
    conditions: dict[str, ConditionConfig]
    ratio: dict[str, Any]

    @property
    def name(self) -> str:
        return self.run["name"]

    @property
    def seeds(self) -> list[int]:
        return self.run["seeds"]

    def to_json(self) -> dict[str, Any]:
        return {"run": self.run, "models": self.models, "tasks": [t.to_json() for t in self.tasks],
                "conditions": {k: asdict(v) for k, v in self.conditions.items()}, "ratio": self.ratio}


def _unknown(where: str, got: dict, known: set[str]) -> None:
    extra = sorted(set(got) - known)
    if extra:
        raise UserError(f"{where}: unknown key(s) {', '.join(extra)}; valid: {', '.join(sorted(known))}")


def _size(where: str, key: str, value: Any) -> int | None:
    if value == "all" and key != "dev":
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        allowed = "a whole number >= 1" + ("" if key == "dev" else ' or "all"')
        raise UserError(f"{where}: sizes.{key} = {value!r}; use {allowed}")
    return value


def _lm_eval_tasks(where: str, path: Path, name: str, raw: dict[str, Any],
                   sizes: dict[str, int | None] | None) -> list[TaskConfig]:
    """An ``lm-eval:NAME`` entry: checked without lm-eval's full task index when the name is found cheaply; a group
    (or tag) is expanded into one entry per subtask, which needs lm-eval to build it (its index and its data)."""
    from tasks.lm_eval_task import declare, load_tasks, name_kind

    if raw.get("data_dir") is not None:
        raise UserError(f"{where}: data_dir has no effect on an lm-eval task (its YAML names its data); point it at "
                        f"local files with an include YAML and lm_eval_include")
    include = raw.get("lm_eval_include")
    if include is not None:
        if not isinstance(include, str):
            raise UserError(f"{where}: lm_eval_include = {include!r}; give one folder as a string")
        include = str((path.parent / include).resolve())
    try:
        kind = name_kind(name, include)
        declare(name, include)  # so a runner that passes only the name finds the include folder
        if kind == "task":
            return [TaskConfig(name=name, sizes=sizes, lm_eval_include=include)]
        subtasks = load_tasks(name, include)
    except UserError as e:
        raise UserError(f"{where}: {e}") from None
    for sub in subtasks:
        declare(sub.name, include)
    return [TaskConfig(name=sub.name, sizes=sizes, lm_eval_include=include, lm_eval_group=sub.group)
            for sub in subtasks]


def load_config(path: str | Path) -> RunConfig:
    """Parse and check ``path``: every name, key, setting and role, before anything slow happens."""
    from harness.registry import get_optimizer, get_task

    path = Path(path)
    if not path.exists():
        raise UserError(f"config {path} does not exist")
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"config {path}: not valid TOML ({e})") from None
    _unknown(f"config {path}", raw, TOP_KEYS)

    run = dict(raw.get("run", {}))
    _unknown(f"config {path} [run]", run, RUN_KEYS)
    run.setdefault("name", path.stem)
    run.setdefault("models", ["smollm2-135m-instruct"])
    run.setdefault("seeds", [0])
    run.setdefault("n_boot", 10_000)
    run.setdefault("batch_size", 32)
    run.setdefault("device", "auto")
    run.setdefault("dtype", "auto")
    seeds = run["seeds"]
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and not isinstance(s, bool)
                                                           for s in seeds):
        raise UserError(f"config {path} [run]: seeds = {seeds!r}; give a non-empty list of integers, e.g. [0, 1, 2]")
    if len(set(seeds)) != len(seeds):
        raise UserError(f"config {path} [run]: seeds {seeds} repeat a seed; list each once")
    models = run.pop("models")
    if not isinstance(models, list) or not models or not all(isinstance(m, str) for m in models):
        raise UserError(f"config {path} [run]: models = {models!r}; give a non-empty list of model names")
    for key in ("n_boot", "batch_size"):
        if not isinstance(run[key], int) or run[key] < 1:
            raise UserError(f"config {path} [run]: {key} = {run[key]!r}; give a whole number >= 1")

    tasks = []
    raw_tasks = raw.get("tasks", [])
    if not isinstance(raw_tasks, list) or not raw_tasks:
        raise UserError(f"config {path}: no [[tasks]]; add at least one, e.g. [[tasks]] name = \"antonyms\"")
    for i, t in enumerate(raw_tasks):
        where = f"config {path} [[tasks]] #{i + 1}"
        _unknown(where, t, TASK_KEYS)
        if "name" not in t:
            raise UserError(f"{where}: missing name; give a task name from `promptgap list`")
        name, data_dir = str(t["name"]), t.get("data_dir")
        if name.endswith(".toml"):
            name = str((path.parent / name).resolve())
        if data_dir is not None:
            data_dir = str((path.parent / data_dir).resolve())
        sizes = t.get("sizes")
        if sizes is not None:
            _unknown(f"{where} sizes", sizes, {"train", "dev", "test"})
            sizes = {k: _size(where, k, v) for k, v in sizes.items()}
        if is_lm_eval_name(name):
            tasks += _lm_eval_tasks(where, path, name, t, sizes)
            continue
        if "lm_eval_include" in t:
            raise UserError(f"{where}: lm_eval_include applies to lm-eval:NAME tasks only; drop it")
        get_task(name, data_dir=data_dir)  # unknown task, missing data folder: fail now
        tasks.append(TaskConfig(name=name, data_dir=data_dir, sizes=sizes))
    seen: set[str] = set()
    for t in tasks:
        if t.name in seen:
            raise UserError(f"config {path}: task {t.name} is listed twice (a group's subtasks count too); "
                            f"list each task once")
        seen.add(t.name)

    conditions: dict[str, ConditionConfig] = {}
    raw_conditions = raw.get("conditions", {})
    if not raw_conditions:
        raise UserError(f"config {path}: no [conditions.*]; add e.g. [conditions.base-raw]")
    for name, body in raw_conditions.items():
        settings = dict(body)
        optimizer = str(settings.pop("optimizer", name))
        get_optimizer(optimizer)(**settings)  # unknown condition or setting: fail now
        conditions[name] = ConditionConfig(optimizer=optimizer, settings=settings)

    ratio = dict(raw.get("ratio", {}))
    _unknown(f"config {path} [ratio]", ratio, RATIO_KEYS)
    if ratio:
        if len(conditions) < 2:
            raise UserError(f"config {path} [ratio]: a ratio compares conditions, but the run has only "
                            f"{len(conditions)}; add conditions or remove [ratio]")
        if "base" not in ratio:
            raise UserError(f"config {path} [ratio]: missing base; name the condition every gain is measured from")
        texts = ratio.get("texts", [c for c in conditions if c not in (ratio["base"], ratio.get("ceiling"))])
        if isinstance(texts, str):
            texts = [texts]
        ratio["texts"] = texts
        ratio.setdefault("ceiling", None)
        for role in ("base", "ceiling"):
            if ratio[role] is not None and ratio[role] not in conditions:
                raise UserError(f"config {path} [ratio]: {role} {ratio[role]!r} is not a condition of this run; "
                                f"conditions: {', '.join(conditions)}")
        for t in texts:
            if t not in conditions:
                raise UserError(f"config {path} [ratio]: text {t!r} is not a condition of this run; "
                                f"conditions: {', '.join(conditions)}")
        if not texts:
            raise UserError(f"config {path} [ratio]: no text condition to compare; list texts = [...]")
        if ratio["base"] == ratio["ceiling"] or ratio["base"] in texts:
            raise UserError(f"config {path} [ratio]: base {ratio['base']!r} also plays another role; give each "
                            f"role its own condition")
    return RunConfig(run=run, models=models, tasks=tasks, conditions=conditions, ratio=ratio)
