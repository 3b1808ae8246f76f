"""Name -> class lookup for tasks and optimizers, through Python entry points (built-ins included).

This is the one door from harness/ into the implementations: no other harness module imports ``optimizers.*`` or
``tasks.*``. Besides named tasks and conditions, two task *sources* are entry points too (group
``promptgap.task_sources``): ``lm-eval`` (any lm-evaluation-harness task, ``lm-eval:NAME``) and ``toml`` (a generic
multiple-choice task from a TOML spec); the harness reaches them through ``source``.
"""

from __future__ import annotations

from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from harness.errors import UserError
from harness.names import is_lm_eval_name

TASK_GROUP = "promptgap.tasks"
OPTIMIZER_GROUP = "promptgap.optimizers"
SOURCE_GROUP = "promptgap.task_sources"


def _entries(group: str) -> dict[str, Any]:
    return {ep.name: ep for ep in entry_points(group=group)}


def names(group: str) -> list[str]:
    return sorted(_entries(group))


def load(group: str, name: str, what: str) -> Any:
    eps = _entries(group)
    if name not in eps:
        valid = ", ".join(sorted(eps)) or "none (is promptgap installed? run `pip install -e .`)"
        raise UserError(f"unknown {what} {name!r}; valid: {valid}")
    ep = eps[name]
    try:
        return ep.load()
    except Exception as e:  # a plugin's own bug: name it, its entry point and package, not a traceback of ours
        first = (str(e).splitlines() or [""])[0][:200]
        raise UserError(f"{what} {name!r} could not be imported: entry point {ep.group}:{name} = {ep.value} from "
                        f"package {_package(ep)} raised {type(e).__name__}: {first}; fix or uninstall that "
                        f"package") from None


def get_tasks(name: str, data_dir: str | Path | None = None, lm_eval_include: str | Path | None = None) -> list:
    """The tasks ``name`` stands for: one, except an lm-eval group (``lm-eval:GROUP``), which gives its subtasks."""
    if is_lm_eval_name(name):
        if data_dir is not None:
            raise UserError(f"task {name}: --data-dir/data_dir has no effect on an lm-eval task (its YAML names its "
                            f"data); point the task at local files with an include folder (--lm-eval-include)")
        return list(source("lm-eval").load_tasks(name, lm_eval_include))
    if lm_eval_include is not None:
        raise UserError(f"task {name}: an lm-eval include folder applies to lm-eval:NAME tasks only; drop it")
    if name.endswith(".toml"):
        return [source("toml").SpecTask.from_toml(Path(name), data_dir=data_dir)]
    return [load(TASK_GROUP, name, "task")(data_dir=data_dir)]


def get_task(name: str, data_dir: str | Path | None = None, lm_eval_include: str | Path | None = None):
    """A task instance: a registered name, a path to a TOML spec of a generic multiple-choice task, or
    ``lm-eval:NAME`` (any lm-evaluation-harness task; its YAML from lm-eval or from ``lm_eval_include``)."""
    tasks = get_tasks(name, data_dir=data_dir, lm_eval_include=lm_eval_include)
    if len(tasks) != 1:
        raise UserError(f"{name} is an lm-eval group of {len(tasks)} tasks ({', '.join(t.name for t in tasks[:4])}"
                        f"{', ...' if len(tasks) > 4 else ''}); name one of them")
    return tasks[0]


def source(name: str) -> Any:
    """A task source's module: ``lm-eval`` (the lm-evaluation-harness bridge) or ``toml`` (TOML task specs)."""
    return load(SOURCE_GROUP, name, "task source")


def get_optimizer(name: str):
    return load(OPTIMIZER_GROUP, name, "condition")


def _package(ep: Any) -> str:
    dist = getattr(ep, "dist", None)
    return f"{dist.name} {dist.version}" if dist is not None else "an unknown package"


def origin(name: str, group: str = OPTIMIZER_GROUP) -> str:
    """The installed distribution that registers ``name`` (``promptgap`` for built-ins), for error messages."""
    return _package(_entries(group).get(name))
