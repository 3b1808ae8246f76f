"""Names that become paths: the one check of a name where it enters, and the one check that a path stays under its
root.

Run ids, condition names and task names (and aliases) become folder and file names (``results/<run-id>/``,
``cells/.../<task>/seed-0/<condition>/``, ``reports/<run-id>.md``), so each is checked where it enters promptgap
(the config, ``--run-id``, the task a plugin or an lm-eval YAML names) against one alphabet: letters, digits,
``.``, ``_`` and ``-``, starting with a letter or digit, at most ``MAX_NAME`` characters. That refuses ``.``,
``..``, any ``/`` (a nested or escaping folder, and two run ids sharing one report name), hidden names (the atomic
writer's temp folders are hidden) and names too long for a file system; it accepts every name in configs/, the
paraphrase variants ``<name>.N`` and lm-eval's task and group names (``lm-eval:`` + such a name, e.g.
``lm-eval:arc_easy``). Model names are hub ids or folders, not names: they are made into one folder name by
``run_folder.slug``, and ``check_inside`` catches what still escapes.
"""

from __future__ import annotations

import re
from pathlib import Path

from harness.errors import UserError

MAX_NAME = 120  # well under the 255 bytes of a file name, with room for the temp-name and ".md" decorations
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
LM_EVAL_PREFIX = "lm-eval:"  # a task name with this prefix is an lm-evaluation-harness task
ALPHABET = (f"1 to {MAX_NAME} letters, digits, '.', '_' or '-', starting with a letter or digit (it becomes a "
            f"folder name)")


def is_safe_name(name: object, task: bool = False) -> bool:
    """Whether ``name`` is in the alphabet; a task name may carry the ``lm-eval:`` prefix before it."""
    if not isinstance(name, str):
        return False
    bare = name.removeprefix(LM_EVAL_PREFIX) if task else name
    return len(name) <= MAX_NAME and NAME.fullmatch(bare) is not None


def check_name(what: str, name: object, fix: str, task: bool = False) -> str:
    """``name`` if it is safe, else a one-line ``UserError``: ``what`` names where it came from, ``fix`` the fix."""
    if not is_safe_name(name, task=task):
        shown = name if not isinstance(name, str) or len(name) <= 60 else name[:40] + f"... ({len(name)} characters)"
        raise UserError(f"{what} {shown!r} is not a safe name: use {ALPHABET}; {fix}")
    return name  # type: ignore[return-value]  # is_safe_name checked it is a str


def check_inside(root: Path, path: Path) -> Path:
    """``path``, after checking that it lies strictly below ``root`` once both are resolved (``..`` and symlinks
    followed): the guard of every folder promptgap builds, replaces or removes below a root."""
    r, p = Path(root).resolve(), Path(path).resolve()
    if p == r or r not in p.parents:
        raise UserError(f"{path} is not inside {root} (it resolves to {p}); a name that becomes a folder must not "
                        f"climb out of it: rename it")
    return path


def is_lm_eval_name(name: str) -> bool:
    """Whether a task name asks for an lm-evaluation-harness task (``lm-eval:NAME``)."""
    return name.startswith(LM_EVAL_PREFIX)


def bare_name(name: str) -> str:
    """``lm-eval:NAME`` -> ``NAME``; an empty name is a UserError."""
    bare = name.removeprefix(LM_EVAL_PREFIX).strip()
    if not bare:
        raise UserError(f"task {name!r}: give an lm-eval task or group name after '{LM_EVAL_PREFIX}', e.g. "
                        f"{LM_EVAL_PREFIX}arc_easy")
    return bare
