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

    [[tasks]]                  # a sample-efficiency curve: every condition at each train size; the split is made
    name = "antonyms"          # once at the largest and each smaller train set is a prefix (dev, test identical)
    as = "antonyms-antsynnet"  # the task's name in this run (two tasks of one family need one each)
    data = "antsynnet"         # which of the task's data files (tasks with a choice: antonyms)
    data_dir = "../../shared/data/antonyms"
    sizes = { train = [25, 50, 100, 200], dev = 50, test = 300 }

    [conditions.base-chat]     # the table name is the condition's name in results and reports
    [conditions.handwritten]
    instruction = "Give the opposite word."   # settings of the condition
    [conditions.terse]
    optimizer = "handwritten"  # a second instance of a registered condition, under its own name
    instruction = "Opposite:"

    [ratio]                    # the roles in R = (text - base) / (ceiling - base)
    base = "base-chat"
    texts = ["handwritten", "terse"]
    ceiling = "soft-prompt"    # optional until a ceiling condition is in the run; a list of trained conditions
                               # (["soft-prompt", "prefix-tuning"]): each task's ceiling is the best of them on dev

    [transfer]                 # every fitted artifact of a source task also scored on each target's test split
    tasks = { antonyms = ["antonyms-antsynnet"] }   # source -> targets: run task names, of the same kind
    # conditions = ["soft-prompt", "handwritten"]   # default: every condition but the base and paraphrase variants
    # models = true            # text artifacts also scored by the run's other models

    [executor]                 # where cells run (harness.executors); optional, `--executor` overrides kind
    kind = "slurm"             # local (default: this process), processes, slurm
    workers = 2                # processes: at most this many worker processes at once
    group = "cell"             # one job per cell, or "seed": one per model x task x seed (loads the model once)
    time = 240                 # minutes a job may run (processes and slurm); then it is stopped
    partition = "gpu"          # slurm: partition, cpus (per job), mem ("16G"), gpus (per job), extra sbatch options
    cpus = 2
    sbatch = { qos = "normal" }
    array_parallelism = 32     # slurm: jobs of one array running at once
    [executor.conditions.soft-prompt]   # per-condition overrides of time, partition, cpus, mem, gpus, sbatch
    gpus = 1

Where cells run does not change what they compute, so ``[executor]`` is not part of the resolved config a run folder
records and compares on ``--resume`` (a run may be resumed on another executor); each invocation's executor is in
the manifest. What does change the numbers is ``[run] threads`` (torch's thread count in each cell): pin it for
byte-identical results across executors.
"""

from __future__ import annotations

import copy
import re
import shutil
import tomllib
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from harness.errors import UserError
from harness.names import check_name, is_lm_eval_name
from harness.plan import TO_MODEL_SEGMENT, TO_TASK_SEGMENT, TRAIN_SEGMENT, TransferPlan, split, train_sizes

RUN_KEYS = {"name", "models", "seeds", "n_boot", "batch_size", "device", "dtype", "threads", "split_special_tokens",
            "truncate_left"}
TASK_KEYS = {"name", "as", "data", "data_dir", "sizes", "lm_eval_include"}
TRANSFER_KEYS = {"tasks", "conditions", "models"}
RATIO_KEYS = {"base", "texts", "ceiling", "metric"}
DECIDING = ("loglik", "accuracy")
TOP_KEYS = {"run", "tasks", "conditions", "ratio", "executor", "transfer"}
EXECUTORS = ("local", "processes", "slurm")
GROUPS = ("cell", "seed")
RESOURCE_KEYS = {"time", "partition", "cpus", "mem", "gpus", "sbatch"}
EXECUTOR_KEYS = {"kind", "workers", "group", "array_parallelism", "conditions"} | RESOURCE_KEYS
SLURM_COMMANDS = ("sbatch", "squeue", "srun", "scancel")  # submitit submits with sbatch and runs the job with srun
MEM = re.compile(r"\d+[KMGT]?")  # Slurm's --mem: a whole number, in megabytes or with a unit
DEFAULT_TIME = 240  # minutes; set explicitly because submitit's own defaults (2 local, 5 on Slurm) stop real cells


OPTIONAL_TASK_KEYS = ("lm_eval_include", "lm_eval_group", "alias", "data")


@dataclass
class TaskConfig:
    name: str
    data_dir: str | None = None
    sizes: dict[str, int | list[int] | None] | None = None  # train: a size, "all" (None) or a list (a curve)
    lm_eval_include: str | None = None  # lm-eval:NAME tasks: a folder of lm-eval YAML files (absolute)
    lm_eval_group: str | None = None  # lm-eval:NAME tasks: the group it was expanded from
    alias: str | None = None  # ``as``: the task's name in this run (two tasks of one family each need their own)
    data: str | None = None  # which of the task's data files (``Task.data_choices``)

    def to_json(self) -> dict[str, Any]:
        # the optional keys only when set, so the config.json of runs without them is unchanged
        return {k: v for k, v in asdict(self).items() if v is not None or k not in OPTIONAL_TASK_KEYS}

    def build(self) -> Any:
        """The task instance, with its data choice and its name in this run: the one way a run makes its tasks."""
        from harness.registry import get_task

        task = get_task(self.name, data_dir=self.data_dir, lm_eval_include=self.lm_eval_include)
        if self.data is None and self.alias is None:
            return task
        task = copy.copy(task)  # lm-eval tasks are built once per process and shared: this entry's own copy
        if self.data is not None:
            task.choose_data(self.data)
        if self.alias is not None:
            task.name = self.alias
        return task


@dataclass
class ConditionConfig:
    optimizer: str
    settings: dict[str, Any] = field(default_factory=dict)
    variant_of: str | None = None  # one of a condition's variants (``Optimizer.variants``): its spread, not judged

    def build(self) -> Any:
        """The condition (an ``harness.optimizer.Optimizer``), to ask what it is: unknown names and settings fail."""
        from harness.registry import get_optimizer

        return get_optimizer(self.optimizer)(**self.settings)


@dataclass(frozen=True)
class Resources:
    """What one job asks for. Jobs with equal resources are submitted together (one Slurm job array)."""

    time: int = DEFAULT_TIME  # minutes
    partition: str | None = None
    cpus: int = 1
    mem: str | None = None  # Slurm --mem, e.g. "8G"
    gpus: int = 0
    sbatch: tuple[tuple[str, str | int | bool], ...] = ()  # extra sbatch options (kept as a tuple: hashable)

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "sbatch": dict(self.sbatch)}


@dataclass
class ExecutorConfig:
    """``[executor]``: where the cells run (``harness.executors``)."""

    kind: str = "local"
    workers: int = 2
    group: str = "cell"
    array_parallelism: int = 64
    resources: Resources = field(default_factory=Resources)
    conditions: dict[str, Resources] = field(default_factory=dict)  # per-condition resources, overrides applied

    def for_condition(self, condition: str) -> Resources:
        return self.conditions.get(condition, self.resources)

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "workers": self.workers, "group": self.group,
                "array_parallelism": self.array_parallelism, **self.resources.to_json(),
                "conditions": {k: v.to_json() for k, v in self.conditions.items()}}


@dataclass
class RunConfig:
    """The resolved config; ``to_json`` is what a run folder's config.json holds."""

    run: dict[str, Any]
    models: list[str]
    tasks: list[TaskConfig]
    conditions: dict[str, ConditionConfig]
    ratio: dict[str, Any]
    executor: ExecutorConfig = field(default_factory=ExecutorConfig)
    transfer: TransferPlan | None = None

    @property
    def name(self) -> str:
        return self.run["name"]

    @property
    def seeds(self) -> list[int]:
        return self.run["seeds"]

    @property
    def threads(self) -> int | None:
        """torch's thread count in every cell, when the config pins it."""
        return self.run.get("threads")

    def to_json(self) -> dict[str, Any]:
        return {"run": self.run, "models": self.models, "tasks": [t.to_json() for t in self.tasks],
                "conditions": {k: asdict(v) for k, v in self.conditions.items()}, "ratio": self.ratio,
                **({"transfer": self.transfer.to_json()} if self.transfer is not None else {})}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RunConfig:
        """The config a run folder recorded (checked when the run started), as a job reads it back."""
        return cls(run=dict(data["run"]), models=list(data["models"]),
                   tasks=[TaskConfig(**t) for t in data["tasks"]],
                   conditions={k: ConditionConfig(**v) for k, v in data["conditions"].items()},
                   ratio=dict(data.get("ratio") or {}), transfer=TransferPlan.from_json(data.get("transfer")))


def _unknown(where: str, got: dict, known: set[str]) -> None:
    extra = sorted(set(got) - known)
    if extra:
        raise UserError(f"{where}: unknown key(s) {', '.join(extra)}; valid: {', '.join(sorted(known))}")


def _size(where: str, key: str, value: Any) -> int | list[int] | None:
    if key == "train" and isinstance(value, list):  # a sample-efficiency curve
        if not value or any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in value) \
                or len(set(value)) != len(value):
            raise UserError(f"{where}: sizes.train = {value!r}; give distinct whole numbers >= 1, e.g. "
                            f"[25, 50, 100, 200]")
        return sorted(value)
    if value == "all" and key != "dev":
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        allowed = "a whole number >= 1" + ("" if key == "dev" else ' or "all"')
        raise UserError(f"{where}: sizes.{key} = {value!r}; use {allowed}")
    return value


def condition_variants(name: str, condition: Any) -> dict[str, ConditionConfig]:
    """The variants ``condition`` declares (``Optimizer.variants``) as conditions of their own, ``<name>.0``,
    ``<name>.1``, ..., so each is scored on test in its own cell (a `paraphrases` condition's: the noise floor)."""
    return {f"{name}.{i}": ConditionConfig(v.optimizer, dict(v.settings), variant_of=name)
            for i, v in enumerate(condition.variants())}


def _whole(where: str, key: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise UserError(f"{where}: {key} = {value!r}; give a whole number >= {minimum}")
    return value


def _resources(where: str, raw: dict[str, Any], base: Resources) -> Resources:
    """``raw``'s resource keys over ``base``, each checked for its type."""
    _unknown(where, raw, RESOURCE_KEYS)
    out = asdict(base)
    out["sbatch"] = base.sbatch
    if "time" in raw:
        out["time"] = _whole(where, "time", raw["time"], 1)
    if "cpus" in raw:
        out["cpus"] = _whole(where, "cpus", raw["cpus"], 1)
    if "gpus" in raw:
        out["gpus"] = _whole(where, "gpus", raw["gpus"], 0)
    if "partition" in raw:
        if not isinstance(raw["partition"], str) or not raw["partition"].strip():
            raise UserError(f"{where}: partition = {raw['partition']!r}; give a partition name, e.g. \"gpu\"")
        out["partition"] = raw["partition"]
    if "mem" in raw:
        if not isinstance(raw["mem"], str) or not MEM.fullmatch(raw["mem"]):
            raise UserError(f"{where}: mem = {raw['mem']!r}; give Slurm's --mem as text with a unit, e.g. \"16G\"")
        out["mem"] = raw["mem"]
    if "sbatch" in raw:
        extra = raw["sbatch"]
        if not isinstance(extra, dict) or not all(isinstance(v, str | int | bool) for v in extra.values()):
            raise UserError(f"{where}: sbatch = {extra!r}; give a table of sbatch options without the dashes, "
                            f"e.g. sbatch = {{ qos = \"high\", exclusive = true }}")
        out["sbatch"] = tuple(sorted({**dict(base.sbatch), **extra}.items()))
    return Resources(**out)


def _executor(path: Path, raw: Any, conditions: dict[str, ConditionConfig], kind: str | None) -> ExecutorConfig:
    """``[executor]`` checked, with ``kind`` (``--executor``) over the config's; a Slurm executor needs sbatch here."""
    where = f"config {path} [executor]"
    if not isinstance(raw, dict):
        raise UserError(f"{where}: not a table; write [executor] with kind = \"slurm\" and its settings")
    _unknown(where, raw, EXECUTOR_KEYS)
    kind = kind or raw.get("kind", "local")
    if kind not in EXECUTORS:
        raise UserError(f"executor {kind!r} is unknown; use {', '.join(EXECUTORS)} (in [executor] kind or "
                        f"--executor)")
    group = raw.get("group", "cell")
    if group not in GROUPS:
        raise UserError(f"{where}: group = {group!r}; use \"cell\" (one job per cell) or \"seed\" (one job per "
                        f"model x task x seed)")
    resources = _resources(where, {k: v for k, v in raw.items() if k in RESOURCE_KEYS}, Resources())
    overrides = raw.get("conditions", {})
    if not isinstance(overrides, dict):
        raise UserError(f"{where}: conditions is not a table; write [executor.conditions.NAME] with resource keys")
    per_condition = {}
    for name, body in overrides.items():
        if name not in conditions:
            raise UserError(f"{where}: conditions.{name} is not a condition of this run; conditions: "
                            f"{', '.join(conditions)}")
        if not isinstance(body, dict):
            raise UserError(f"{where}: conditions.{name} is not a table; give resource keys, e.g. gpus = 1")
        per_condition[name] = _resources(f"{where} conditions.{name}", body, resources)
    cfg = ExecutorConfig(kind=kind, workers=_whole(where, "workers", raw.get("workers", 2), 1), group=group,
                         array_parallelism=_whole(where, "array_parallelism", raw.get("array_parallelism", 64), 1),
                         resources=resources, conditions=per_condition)
    if kind == "slurm":
        missing = [c for c in SLURM_COMMANDS if shutil.which(c) is None]
        if missing:
            raise UserError(f"executor slurm: no {', '.join(missing)} on the PATH; run promptgap on a Slurm login "
                            f"node (or .ci/slurm-up here), or use --executor processes")
    return cfg


def _lm_eval_tasks(where: str, path: Path, name: str, raw: dict[str, Any],
                   sizes: dict[str, int | None] | None) -> list[TaskConfig]:
    """An ``lm-eval:NAME`` entry: checked without lm-eval's full task index when the name is found cheaply; a group
    (or tag) is expanded into one entry per subtask, which needs lm-eval to build it (its index and its data)."""
    from harness.registry import source

    lm_eval = source("lm-eval")
    if raw.get("data_dir") is not None:
        raise UserError(f"{where}: data_dir has no effect on an lm-eval task (its YAML names its data); point it at "
                        f"local files with an include YAML and lm_eval_include")
    include = raw.get("lm_eval_include")
    if include is not None:
        if not isinstance(include, str):
            raise UserError(f"{where}: lm_eval_include = {include!r}; give one folder as a string")
        include = str((path.parent / include).resolve())
    try:
        kind = lm_eval.name_kind(name, include)
        lm_eval.declare(name, include)  # so a runner that passes only the name finds the include folder
        if kind == "task":
            return [TaskConfig(name=name, sizes=sizes, lm_eval_include=include)]
        subtasks = lm_eval.load_tasks(name, include)
    except UserError as e:
        raise UserError(f"{where}: {e}") from None
    for sub in subtasks:
        lm_eval.declare(sub.name, include)
    return [TaskConfig(name=sub.name, sizes=sizes, lm_eval_include=include, lm_eval_group=sub.group)
            for sub in subtasks]


def read_toml(path: str | Path, what: str = "config") -> dict[str, Any]:
    """A TOML file as a dict, or a one-line error naming it."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} {path} does not exist")
    try:
        return tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"{what} {path}: not valid TOML ({e})") from None


def load_config(path: str | Path, executor: str | None = None) -> RunConfig:
    """Parse and check ``path``: every name, key, setting and role, before anything slow happens. ``executor``
    (``--executor``) replaces the config's ``[executor] kind``."""
    return config_from(read_toml(path), Path(path), executor)


def config_from(raw: dict[str, Any], path: Path, executor: str | None = None) -> RunConfig:
    """``load_config`` on a config already read (a suite with conditions added): ``path`` names it in errors and
    anchors its relative paths."""
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
    if "threads" in run:  # only when given: a config without it keeps the config.json of runs made before
        _whole(f"config {path} [run]", "threads", run["threads"], 1)
    if "split_special_tokens" in run and not isinstance(run["split_special_tokens"], bool):  # also only when given
        raise UserError(f"config {path} [run]: split_special_tokens = {run['split_special_tokens']!r}; give true "
                        f"(control-token text in the data stays text) or false (it becomes control tokens, as in "
                        f"lm-eval; the default)")
    if "truncate_left" in run and not isinstance(run["truncate_left"], bool):  # also only when given
        raise UserError(f"config {path} [run]: truncate_left = {run['truncate_left']!r}; give true (a request longer "
                        f"than the model's positions is cut from the left, as lm-eval cuts it) or false (it is "
                        f"refused; the default)")

    tasks = []
    names: list[str] = []  # each entry's name in the run (its ``as``, else the task's own name)
    built: dict[str, Any] = {}  # run task name -> task instance, for the checks that need its kind and marker
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
        alias, data = t.get("as"), t.get("data")
        if alias is not None:
            check_name(f"{where}: as =", alias, "give the task's name in this run in that alphabet")
        if data is not None and (not isinstance(data, str) or not data.strip() or "/" in data):
            raise UserError(f"{where}: data = {data!r}; give a name (text without '/')")
        sizes = t.get("sizes")
        if sizes is not None:
            _unknown(f"{where} sizes", sizes, {"train", "dev", "test"})
            sizes = {k: _size(where, k, v) for k, v in sizes.items()}
        if is_lm_eval_name(name):
            entries = _lm_eval_tasks(where, path, name, t, sizes)
            if alias is not None and len(entries) > 1:
                raise UserError(f"{where}: as = {alias!r} on the group {name}, which gives {len(entries)} tasks; "
                                f"name a single task to alias it")
            if data is not None:
                raise UserError(f"{where}: data applies to tasks with data choices (antonyms); an lm-eval task's "
                                f"YAML names its data")
            for entry in entries:
                entry.alias = alias
            tasks += entries
            names += [alias or e.name for e in entries]
            continue
        if "lm_eval_include" in t:
            raise UserError(f"{where}: lm_eval_include applies to lm-eval:NAME tasks only; drop it")
        entry = TaskConfig(name=name, data_dir=data_dir, sizes=sizes, alias=alias, data=data)
        try:
            task = entry.build()  # unknown task, missing data folder, unknown data choice: fail now
        except UserError as e:
            raise UserError(f"{where}: {e}") from None
        built[task.name] = task
        names.append(task.name)
        tasks.append(entry)
    seen: set[str] = set()
    for name in names:  # the run's task names become folders (cells/<model>/<task>, splits/<task>)
        check_name(f"config {path}: task", name, "give the entry a name of its own with as = \"...\"", task=True)
        if name in seen:
            raise UserError(f"config {path}: task {name} is listed twice (a group's subtasks count too); list each "
                            f"task once, or give each entry of one family its own name with as = \"...\"")
        seen.add(name)
    entries = dict(zip(names, tasks, strict=True))

    def instance(name: str) -> Any:
        """The run's task ``name``, built once (an lm-eval task only when a check needs it)."""
        if name not in built:
            built[name] = entries[name].build()
        return built[name]

    for name, entry in entries.items():
        curve = train_sizes(entry.sizes)
        if curve:  # the pool must hold the largest train size beside dev and test
            try:
                split(instance(name), entry.sizes, seeds[0])
            except UserError as e:
                raise UserError(f"config {path} task {name}: sizes.train = {curve}: {e}") from None

    conditions: dict[str, ConditionConfig] = {}
    # trained weights (a LoRA adapter, a full fine-tune) are never a prompt whose share of the gain is asked: a
    # ceiling or nothing
    weights: set[str] = set()
    raw_conditions = raw.get("conditions", {})
    if not raw_conditions:
        raise UserError(f"config {path}: no [conditions.*]; add e.g. [conditions.base-raw]")
    for name, body in raw_conditions.items():
        # a condition's name is its cell's folder; a paraphrase variant's too (<name>.N, checked for its length)
        fix = "rename the [conditions.NAME] table (optimizer = \"...\" inside it keeps the condition)"
        check_name(f"config {path}: condition", name, fix)
        settings = dict(body)
        optimizer = str(settings.pop("optimizer", name))
        conditions[name] = ConditionConfig(optimizer=optimizer, settings=settings)
        condition = conditions[name].build()  # unknown condition or setting: fail now
        if "weights" in condition.produces:
            weights.add(name)
        variants = condition_variants(name, condition)
        for variant, spec in variants.items():
            check_name(f"config {path}: condition", variant, fix)
            try:
                spec.build()  # a plugin's variant is checked as its own condition would be
            except UserError as e:
                raise UserError(f"config {path}: condition {name}: variant {variant}: {e}") from None
        conditions.update(variants)

    ratio = dict(raw.get("ratio", {}))
    _unknown(f"config {path} [ratio]", ratio, RATIO_KEYS)
    if ratio:
        if len(conditions) < 2:
            raise UserError(f"config {path} [ratio]: a ratio compares conditions, but the run has only "
                            f"{len(conditions)}; add conditions or remove [ratio]")
        if "base" not in ratio:
            raise UserError(f"config {path} [ratio]: missing base; name the condition every gain is measured from")
        ratio.setdefault("ceiling", None)
        if isinstance(ratio["ceiling"], list):  # candidates: each task's ceiling is the best of them on dev
            ratio["ceiling"] = _names(f"config {path} [ratio]", "ceiling", ratio["ceiling"], conditions, "condition")
            if len(ratio["ceiling"]) == 1:
                ratio["ceiling"] = ratio["ceiling"][0]
        elif ratio["ceiling"] is not None and not isinstance(ratio["ceiling"], str):
            raise UserError(f"config {path} [ratio]: ceiling = {ratio['ceiling']!r}; give a condition's name, or a "
                            f"list of trained conditions (each task's ceiling is then the best of them on dev)")
        ceilings = ceiling_names(ratio)
        texts = ratio.get("texts", [c for c in conditions if c != ratio["base"] and c not in ceilings
                                    and conditions[c].variant_of is None and c not in weights])
        if isinstance(texts, str):
            texts = [texts]
        ratio["texts"] = texts
        ratio.setdefault("metric", "loglik")
        if ratio["metric"] not in DECIDING:
            raise UserError(f"config {path} [ratio]: metric {ratio['metric']!r} is unknown; use loglik (the gold "
                            f"log-likelihood, the default) or accuracy")
        for role, name in [("base", ratio["base"])] + [("ceiling", c) for c in ceilings]:
            if name not in conditions:
                raise UserError(f"config {path} [ratio]: {role} {name!r} is not a condition of this run; "
                                f"conditions: {', '.join(conditions)}")
        for t in texts:
            if t not in conditions:
                raise UserError(f"config {path} [ratio]: text {t!r} is not a condition of this run; "
                                f"conditions: {', '.join(conditions)}")
            if t in weights:
                raise UserError(f"config {path} [ratio]: text {t!r} trains the model's weights, not a prompt; name it "
                                f"as a ceiling (ceiling = [...]) or leave it out of texts")
        if not texts:
            raise UserError(f"config {path} [ratio]: no text condition to compare; list texts = [...]")
        if ratio["base"] in ceilings or ratio["base"] in texts:
            raise UserError(f"config {path} [ratio]: base {ratio['base']!r} also plays another role; give each "
                            f"role its own condition")
        both = [t for t in texts if t in ceilings]
        if both:
            raise UserError(f"config {path} [ratio]: {both[0]!r} is both a ceiling and a text; give each role its "
                            f"own condition")
    transfer = _transfer(path, raw.get("transfer"), entries, instance, conditions, ratio, models)
    if len(ceiling_names(ratio)) > 1 and (transfer is not None or any(train_sizes(t.sizes) for t in tasks)):
        raise UserError(f"config {path} [ratio]: ceiling = {ratio['ceiling']}: several ceilings are chosen task by "
                        f"task on dev, but [transfer] and train-size curves weigh every task against one; name one")
    if transfer is not None or any(train_sizes(t.sizes) for t in tasks):
        for name in conditions:  # the new axes are folder segments beside condition names
            if name.startswith((TRAIN_SEGMENT, TO_MODEL_SEGMENT, TO_TASK_SEGMENT)):
                raise UserError(f"config {path}: condition {name!r} starts like a train-size or transfer folder "
                                f"({TRAIN_SEGMENT}, {TO_MODEL_SEGMENT}, {TO_TASK_SEGMENT}); rename it")
    return RunConfig(run=run, models=models, tasks=tasks, conditions=conditions, ratio=ratio,
                     executor=_executor(path, raw.get("executor", {}), conditions, executor), transfer=transfer)


def ceiling_names(ratio: Mapping[str, Any] | None) -> list[str]:
    """The ceiling candidates of a checked ``[ratio]``: ``ceiling`` is one condition's name, or a list of trained
    conditions among which each task's ceiling is the best on dev (``findings.choose_ceiling``)."""
    c = (ratio or {}).get("ceiling")
    return [] if c is None else [c] if isinstance(c, str) else [str(x) for x in c]


def _names(where: str, key: str, value: Any, known: Any, what: str) -> list[str]:
    """``value`` as a non-empty list of names of ``known`` (a name alone counts as a list of one), in order, once."""
    value = [value] if isinstance(value, str) else value
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise UserError(f"{where}: {key} = {value!r}; give a list of {what} names")
    for v in value:
        if v not in known:
            raise UserError(f"{where}: {key}: {v!r} is not a {what} of this run; {what}s: {', '.join(known)}")
    return list(dict.fromkeys(value))


def _transfer(path: Path, raw: Any, entries: dict[str, TaskConfig], instance: Any,
              conditions: dict[str, ConditionConfig], ratio: dict[str, Any], models: list[str]) -> TransferPlan | None:
    """``[transfer]`` checked against the run's tasks (same kind; a condition that replaces a marker only where the
    target has the same marker) and resolved to a ``TransferPlan``."""
    from harness.artifact import TENSOR_PRODUCTS

    if raw is None:
        return None
    where = f"config {path} [transfer]"
    if not isinstance(raw, dict):
        raise UserError(f"{where}: not a table; write [transfer] with tasks = {{ SOURCE = [\"TARGET\"] }}")
    _unknown(where, raw, TRANSFER_KEYS)
    pairs = raw.get("tasks", {})
    if not isinstance(pairs, dict) or not (pairs or raw.get("models")):
        raise UserError(f"{where}: tasks = {pairs!r}; give a table source task -> list of target tasks, e.g. "
                        f"tasks = {{ antonyms = [\"antonyms-antsynnet\"] }} (or models = true)")
    plan: dict[str, list[str]] = {}
    for source, targets in pairs.items():
        _names(where, "tasks", [source], entries, "task")
        for target in _names(where, f"tasks.{source}", targets, entries, "task"):
            if target == source:
                raise UserError(f"{where}: {source} -> {source}: a task's own cells already score its artifacts on "
                                f"its test split; name another task")
            src, tgt = instance(source), instance(target)
            if src.kind != tgt.kind:
                raise UserError(f"{where}: {source} ({src.kind}) -> {target} ({tgt.kind}): a prompt transfers only "
                                f"between tasks of the same kind")
        plan[source] = _names(where, f"tasks.{source}", targets, entries, "task")

    variants = {c for c, spec in conditions.items() if spec.variant_of is not None}
    default = [c for c in conditions if c != ratio.get("base") and c not in variants]
    chosen = _names(where, "conditions", raw.get("conditions", default), conditions, "condition")
    built = {c: conditions[c].build() for c in chosen}
    for c, condition in built.items():
        if not condition.needs_marker():
            continue
        for source, targets in plan.items():
            marker = condition.marker(getattr(instance(source), "marker", "") or "")
            for target in targets:
                theirs = getattr(instance(target), "marker", "") or ""
                if theirs != marker:
                    raise UserError(f"{where}: {c} puts its soft prompt in place of the marker {marker!r} of "
                                    f"{source}, but {target} " + (f"marks {theirs!r}" if theirs else "has no marker")
                                    + "; leave the condition out of conditions, or put its prompt before the input")
    across = raw.get("models", False)
    if not isinstance(across, bool):
        raise UserError(f"{where}: models = {across!r}; give true (text artifacts scored by every model of the run) "
                        f"or false")
    if across and len(models) < 2:
        raise UserError(f"{where}: models = true scores text artifacts on the run's other models, but the run has "
                        f"one model; add models to [run] or drop models")
    # trained tensors belong to the model they were trained on; only text crosses models
    texts = [c for c, condition in built.items() if not set(condition.produces) & TENSOR_PRODUCTS] if across else []
    return TransferPlan(plan, list(chosen), texts)


def shrink(cfg: RunConfig) -> RunConfig:
    """The same matrix on a tiny budget (a smoke test of the path, not a measurement): small splits, a few
    training steps, the smallest searches. Every changed setting is checked again."""
    from harness.registry import get_optimizer

    small = {"steps": 4, "eval_every": 2, "batch_size": 4, "num_candidates": 1, "num_trials": 1, "breadth": 2,
             "depth": 1, "max_bootstrapped_demos": 1, "max_labeled_demos": 1}
    for t in cfg.tasks:
        t.sizes = {"train": 12, "dev": 6, "test": 24}
    for c in cfg.conditions.values():
        cls = get_optimizer(c.optimizer)
        known = set(cls.settings_class.__dataclass_fields__)
        c.settings.update({k: v for k, v in small.items() if k in known})
        cls(**c.settings)
    cfg.run["n_boot"] = min(cfg.run["n_boot"], 1000)
    return cfg
