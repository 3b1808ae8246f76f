"""Every committed report stands on a committed run folder: `promptgap check` passes on it from a clone, and the
report re-rendered by the current code is the committed one, byte for byte apart from its stamp."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from harness.audit import Audit, check_report
from harness.cli import write_reports
from harness.run_folder import load_run

ROOT = Path(__file__).resolve().parent.parent
# a run's report is reports/<run-id>.md; a suite's leaderboard, reports/leaderboard-<suite run>.md, stands on the
# run folder its leaderboard.json names
BOARDS = sorted((ROOT / "reports").glob("leaderboard-*.md"))
REPORTS = sorted(p for p in (ROOT / "reports").glob("*.md") if p not in BOARDS)
# reports whose run folders were lost before run folders were committed: each is re-run into results/<run-id>/
# (hours of CPU here, docs/measured.md gives each run's time), then leaves this list
NOT_YET_RERUN: set[str] = set()
# the stamp: the comment that records the code that wrote the report, and the sentence that says it
STAMP = re.compile(r"^(<!-- promptgap-report .*-->|Written \S+ by promptgap .*)$", re.M)


def test_every_committed_report_has_its_run_folder_or_is_listed() -> None:
    missing = {p.stem for p in REPORTS if not (ROOT / "results" / p.stem / "config.json").exists()}
    assert missing == NOT_YET_RERUN & {p.stem for p in REPORTS}, "commit the run folder, or re-run it"


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    """``rendered(run_id)``: the folder the current code wrote that run's report (and a suite run's leaderboard) into,
    rendered once per module: a suite's run is the largest to render, and its report and leaderboard share it."""
    done: dict[str, tuple[Path, Audit]] = {}

    def render(run_id: str) -> tuple[Path, Audit]:
        if run_id not in done:
            out = tmp_path_factory.mktemp(run_id)
            done[run_id] = out, write_reports(ROOT / "results" / run_id, out)[2]
        return done[run_id]

    return render


@pytest.mark.parametrize("report", [p for p in REPORTS if p.stem not in NOT_YET_RERUN], ids=lambda p: p.stem)
def test_a_committed_report_checks_and_rerenders_byte_identical(report: Path, rendered) -> None:
    out, checked = rendered(report.stem)
    # `promptgap check` from a clone: the audit the report was rendered with, and the committed report not stale
    items = [*checked.items, check_report(load_run(ROOT / "results" / report.stem), report)]
    assert all(i.status != "fail" for i in items), [(i.title, i.problems) for i in items if i.status == "fail"]
    fresh = out / report.name
    assert STAMP.sub("", fresh.read_text()) == STAMP.sub("", report.read_text())
    old, new = (json.loads((d / report.stem / "verdict.json").read_text()) for d in (report.parent, out))
    for stamp in ("written", "code"):
        old.pop(stamp, None), new.pop(stamp, None)
    assert new == old


@pytest.mark.parametrize("board", BOARDS, ids=lambda p: p.stem)
def test_a_committed_leaderboard_rerenders_byte_identical_from_its_run(board: Path, rendered) -> None:
    data = json.loads((board.parent / board.stem / "leaderboard.json").read_text())
    assert (ROOT / "reports" / f"{data['run']}.md").exists(), "a leaderboard's run has its own committed report"
    fresh = rendered(data["run"])[0]  # the run's report and its leaderboard
    assert (fresh / board.name).read_text() == board.read_text()
    assert json.loads((fresh / board.stem / "leaderboard.json").read_text()) == data


def test_the_documented_check_of_the_quickstart_passes(monkeypatch) -> None:
    from harness.cli import main

    monkeypatch.chdir(ROOT)  # as docs/reports.md shows it: from the repository's root
    assert main(["check", "results/quickstart"]) == 0


def test_the_readme_shows_a_committed_leaderboards_table_as_it_is() -> None:
    """The front page's leaderboard is a copy: the table between the README's leaderboard markers is, line for line,
    the table of the committed leaderboard the marker names (regenerated reports change it; this test says so)."""
    readme = (ROOT / "README.md").read_text()
    found = re.search(r"<!-- leaderboard: (\S+) -->\n(.*?)<!-- /leaderboard -->", readme, re.S)
    assert found, "the README shows no leaderboard (<!-- leaderboard: reports/leaderboard-....md --> ... table)"
    board = (ROOT / found.group(1)).read_text().splitlines()
    start = next(i for i, line in enumerate(board) if line.startswith("| rank"))
    table = board[start:start + next(i for i, line in enumerate(board[start:]) if not line.startswith("|"))]
    shown = [line for line in found.group(2).splitlines() if line.startswith("|")]
    assert shown == table, f"copy the table of {found.group(1)} into the README"


def test_the_lite_leaderboard_leaves_out_a_task_whose_ceiling_is_at_chance() -> None:
    """BoolQ at 135M: the trained prefix is clearly above the bare prompt, yet not clearly better than guessing, so no
    R of the task means anything and the mean leaves it out. Checked from the committed scores by hand: the ceiling's
    mean gold NLL against ln 2 (two choices), with a normal interval over its 3 x 80 test examples."""
    import math

    board = json.loads((ROOT / "reports" / "leaderboard-lite-v1" / "leaderboard.json").read_text())
    cells = ROOT / "results" / board["run"] / "cells" / board["model"]
    for task, at_chance in (("boolq", True), ("antonyms-fv", False)):
        nll = [json.loads(x)["gold_nll"] for s in board["seeds"]
               for x in (cells / task / f"seed-{s}" / board["ceiling"][task] / "scores.jsonl").open()]
        k = 2 if task == "boolq" else None
        mean = sum(nll) / len(nll)
        half = 1.96 * math.sqrt(sum((v - mean) ** 2 for v in nll) / (len(nll) - 1) / len(nll))
        if at_chance:
            # clearly better than chance would put the whole interval of the NLL below ln k
            assert mean + half >= math.log(k), (mean, half)
            assert task in board["no_gap"] and not board["gap"][task]
            assert all(row["tasks"][task]["no_r"] == "no-gap" for row in board["rows"])
        else:
            assert board["gap"][task] and task in board["averaged"]
