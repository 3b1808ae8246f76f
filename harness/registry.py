"""Name -> class lookup for tasks and optimizers, through Python entry points (built-ins included)."""

from __future__ import annotations

from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from harness.errors import UserError

TASK_GROUP = "promptgap.tasks"
OPTIMIZER_GROUP = "promptgap.optimizers"


def _entries(group: str) -> dict[str, Any]:
    return {ep.name: ep for ep in entry_points(group=group)}


def names(group: str) -> list[str]:
    return sorted(_entries(group))


def load(group: str, name: str, what: str) -> Any:
    eps = _entries(group)
    if name not in eps:
        valid = ", ".join(sorted(eps)) or "none (is promptgap installed? run `pip install -e .`)"
        raise UserError(f"unknown {what} {name!r}; valid: {valid}")
    return eps[name].load()


def get_task(name: str, data_dir: str | Path | None = None):
    """A task instance: a registered name, or a path to a TOML spec of a generic multiple-choice task."""
    if name.endswith(".toml"):
        from tasks.generic import SpecTask

        return SpecTask.from_toml(Path(name), data_dir=data_dir)
    return load(TASK_GROUP, name, "task")(data_dir=data_dir)


def get_optimizer(name: str):
    return load(OPTIMIZER_GROUP, name, "condition")


def origin(name: str, group: str = OPTIMIZER_GROUP) -> str:
    """The installed distribution that registers ``name`` (``promptgap`` for built-ins), for error messages."""
    ep = _entries(group).get(name)
    dist = getattr(ep, "dist", None)
    return f"{dist.name} {dist.version}" if dist is not None else "an unknown package"
