"""The one exception type for mistakes a user can fix: the CLI prints it as one line and exits 2."""

from __future__ import annotations

import errno
from pathlib import Path


class UserError(Exception):
    """Bad input: the message names the input and the fix."""


class DiskFull(UserError):
    """No space (or quota) left where promptgap writes ``path``; the writer left nothing half-written behind.

    ``hint`` says how to go on; a caller that knows more (the runner: finished cells are intact) replaces it."""

    def __init__(self, path: str | Path, hint: str = "free space there and run the command again") -> None:
        self.path = Path(path)
        self.hint = hint
        super().__init__(f"no space left on the device to write {self.path}; {hint}")

    def with_hint(self, hint: str) -> DiskFull:
        return DiskFull(self.path, hint)


def is_disk_full(e: BaseException) -> bool:
    """An OSError saying the device is full or the user's quota is spent."""
    return isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT)
