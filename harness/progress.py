"""Rich progress bars for long loops, written to stderr so stdout stays clean for results."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

console = Console(stderr=True)


def enabled() -> bool:
    return os.environ.get("PROMPTGAP_PROGRESS", "1") != "0"


@contextmanager
def bar(description: str, total: int) -> Iterator[Progress.advance]:
    """Yield ``advance(n, note=None)``; a note (e.g. the current loss) replaces the description after it.
    The bar disappears when the loop ends."""
    if not enabled() or total <= 0:
        yield lambda n=1, note=None: None
        return
    with Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=True,
    ) as p:
        task = p.add_task(description, total=total)

        def advance(n: int = 1, note: str | None = None) -> None:
            if note is not None:
                p.update(task, description=f"{description}: {note}")
            p.advance(task, n)

        yield advance
