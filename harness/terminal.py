"""The terminal's view of a run: each group's headline table (rich), what the markdown report's first screen says.
It only formats: the words come from ``harness.wording``, emphasis in bold."""

from __future__ import annotations

from pathlib import Path

from harness import wording
from harness.findings import Board, analyze_groups, headline
from harness.run_folder import load_run
from harness.stats import DEFAULT_N_BOOT
from harness.wording import Em, Text


def rich_markup(t: Text) -> str:
    """A text as rich markup: its words escaped, emphasis in bold."""
    from rich.markup import escape

    return "".join(f"[bold]{escape(s.text)}[/]" if isinstance(s, Em) else escape(s) for s in t.spans)


def print_headlines(run_dir: Path, n_boot: int | None = None) -> None:
    """The headline tables in the terminal (rich)."""
    import shutil

    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    run = load_run(Path(run_dir))
    n_boot = n_boot or int((run.config.get("run") or {}).get("n_boot") or DEFAULT_N_BOOT)
    console = Console(highlight=False, width=max(120, shutil.get_terminal_size((120, 40)).columns))
    for g in analyze_groups(run, n_boot):
        h = headline(run, g)
        console.print(f"\n[bold]{escape(g.name)}[/]")
        console.print(rich_markup(wording.ceiling_line(h)))
        if h.metric is None:
            continue
        header, cells = wording.headline_table(h)
        # flags every row shares are said once, under the table
        common = set.intersection(*(set(wording.table_flags(r)) for r in h.rows)) if h.rows else set()
        table = Table(*header, show_lines=False)
        for r, row in zip(h.rows, cells, strict=True):
            flags = wording.flags([f for f in wording.table_flags(r) if f not in common], h.per_token)
            table.add_row(*(rich_markup(c) for c in [*row[:-1], flags]))
        console.print(table)
        if common:
            said = sorted(wording.flag(f, h.per_token).plain for f in common)
            console.print(f"Every row: {escape('; '.join(said))}", style="dim")
        for note in h.notes:
            console.print("- " + rich_markup(wording.note(note, h.per_token)), style="dim")


def print_board(b: Board) -> None:
    """A suite's leaderboard in the terminal (rich): the rows the markdown shows."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    header, rows = wording.board_table(b)
    table = Table(*header, title=f"{b.model}: R against each task's ceiling, rank order")
    for row in rows:
        table.add_row(*(escape(c) for c in row))
    Console(highlight=False).print(table)
