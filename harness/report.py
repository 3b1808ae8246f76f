"""The run report: reads a ``results/<run-id>/`` folder and writes ``reports/<run-id>.md`` (verdict first) and figures.

Sections, in order: the verdict per (model, task) in words with the intervals behind it; a table of conditions; the
gap ratio R on both metrics; figures; the final prompts as text; the setup (splits, models, environment, the command);
a validity checklist computed from the run folder itself. Every number comes from ``harness.stats`` on the per-example
``scores.jsonl`` lines, or is read from the run folder, so a reader can re-derive it.

Conditions enter the statistics only when their cell succeeded for every seed; failed or missing cells are listed,
never dropped silently. R is never printed when it cannot be computed (no ceiling in the config, a role condition
failed, or the ceiling's gain is not clearly positive): the report says why instead.

The report is written atomically: the markdown and the figure folder are built under temporary names in
``reports_dir`` and renamed into place, so a failure leaves the previous report (or none), never half of one.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from harness.artifact import PromptArtifact
from harness.data import Example, Split, ids_hash
from harness.errors import UserError
from harness.stats import (
    DEFAULT_N_BOOT,
    METRIC_LABELS,
    RECOVERY_THRESHOLD,
    Analysis,
    Estimate,
    Interval,
    analyze_records,
)

log = logging.getLogger(__name__)

PARTS = ("train", "dev", "test")
MARKS = {"pass": "✅", "fail": "❌", "n/a": "➖ n/a"}
MAX_PROBLEMS = 12  # problems listed per checklist item; the rest are counted
VERDICT_WORDS = {
    "text-closes-gap": f"the readable prompt recovers most of the ceiling's gain: R is above {RECOVERY_THRESHOLD} "
                       f"with confidence",
    "soft-only": f"the readable prompt recovers less than half of the ceiling's gain, the rest needs the soft "
                 f"prompt: R is below {RECOVERY_THRESHOLD} with confidence",
    "inconclusive": "the data do not settle whether the readable prompt recovers more or less than half of the "
                    "ceiling's gain",
    "neither": "neither the ceiling nor the readable prompt clearly improves on the base",
}


# --- the run folder --------------------------------------------------------------------------------------------------
@dataclass
class Cell:
    """One (model, task, seed, condition) cell as found on disk; ``status`` is the runner's, or missing/invalid."""

    model: str
    task: str
    seed: int
    condition: str
    path: Path | None = None
    info: dict[str, Any] = field(default_factory=dict)
    status: str = "missing"
    error: str | None = None
    records: list[dict[str, Any]] = field(default_factory=list)
    artifact: PromptArtifact | None = None
    log: dict[str, Any] | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def label(self) -> str:
        return f"{self.model} / {self.task} / seed {self.seed} / {self.condition}"


@dataclass
class SplitFile:
    task: str
    seed: int
    path: Path
    ids: dict[str, list[str]]  # train/dev/test ids as written; a malformed part is an empty list
    hash: str | None  # the hash the file states
    malformed: list[str] = field(default_factory=list)

    @property
    def split(self) -> Split:
        """A ``Split`` of placeholder examples with these ids, so the hashes come from ``Split`` itself."""
        def part(name: str) -> tuple[Example, ...]:
            return tuple(Example(str(i), ("",), ("",), 0) for i in self.ids[name])
        return Split(part("train"), part("dev"), part("test"))


@dataclass
class Run:
    dir: Path
    run_id: str
    config: dict[str, Any]
    manifest: dict[str, Any]
    models: list[str]
    tasks: list[str]
    seeds: list[int]
    conditions: list[str]
    base: str | None
    texts: list[str]
    ceiling: str | None
    splits: dict[tuple[str, int], SplitFile]
    cells: dict[tuple[str, str, int, str], Cell]  # every expected cell (missing ones included), in matrix order
    extra_cells: list[Cell]  # cells on disk outside the config's matrix
    summary: list[dict[str, str]] | None  # summary.csv rows, None when the file is missing

    def cell(self, model: str, task: str, seed: int, condition: str) -> Cell:
        return self.cells[(model, task, seed, condition)]

    def role(self, condition: str) -> str | None:
        if condition == self.base:
            return "base"
        if condition == self.ceiling:
            return "ceiling"
        if condition in self.texts:
            return "text"
        return None


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"{path}: cannot be read as JSON ({e}); the run folder is damaged") from None


def _visible(path: Path, root: Path) -> bool:
    # hidden names are the runner's temp folders of unfinished cells
    return not any(p.startswith(".") for p in path.relative_to(root).parts)


def _load_cell(path: Path) -> Cell | None:
    try:
        info = json.loads((path / "cell.json").read_text())
        cell = Cell(str(info["model"]), str(info["task"]), int(info["seed"]), str(info["condition"]), path, info)
    except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        log.warning("%s: unreadable cell.json (%s); ignored", path, e)
        return None
    cell.status = str(info.get("status") or "missing")
    cell.error = info.get("error")
    if (path / "log.json").exists():
        try:
            cell.log = json.loads((path / "log.json").read_text())
        except (OSError, json.JSONDecodeError) as e:
            log.warning("%s: unreadable log.json (%s); its curves are not drawn", path, e)
    if (path / "artifact").exists():
        try:
            cell.artifact = PromptArtifact.load(path / "artifact")
        except UserError as e:
            log.warning("%s", e)
    if not cell.ok:
        return cell
    # a cell the runner calls ok but whose scores cannot be read is not usable for the statistics
    try:
        lines = (path / "scores.jsonl").read_text().splitlines()
        cell.records = [json.loads(x) for x in lines if x.strip()]
    except (OSError, json.JSONDecodeError) as e:
        cell.status, cell.error = "invalid", f"scores.jsonl cannot be read ({e})"
    return cell


def _load_split(path: Path) -> SplitFile | None:
    try:
        data = json.loads(path.read_text())
        task, seed = str(data["task"]), int(data["seed"])
    except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        log.warning("%s: unreadable split file (%s); ignored", path, e)
        return None
    ids: dict[str, list[str]] = {}
    malformed = []
    for part in PARTS:
        v = data.get(part)
        ids[part] = [str(x) for x in v] if isinstance(v, list) else []
        if not isinstance(v, list):
            malformed.append(part)
    return SplitFile(task, seed, path, ids, data.get("hash"), malformed)


def _ordered(names: Iterable[str], preferred: Sequence[str]) -> list[str]:
    """Unique names, those in ``preferred`` first in its order, the rest in first-seen order."""
    seen = list(dict.fromkeys(names))
    return [n for n in preferred if n in seen] + [n for n in seen if n not in preferred]


def load_run(run_dir: Path) -> Run:
    """Read a run folder: config, manifest, splits, every cell of the config's matrix (missing ones marked)."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.json").exists():
        raise UserError(f"{run_dir} is not a run folder (no config.json); give results/<run-id>")
    config = _read_json(run_dir / "config.json")
    manifest = _read_json(run_dir / "manifest.json") if (run_dir / "manifest.json").exists() else {}
    ratio = config.get("ratio") or {}
    conditions = list(config.get("conditions") or {})

    splits: dict[tuple[str, int], SplitFile] = {}
    for path in sorted(run_dir.glob("splits/*/seed-*.json")):
        if _visible(path, run_dir) and (sf := _load_split(path)) is not None:
            splits[(sf.task, sf.seed)] = sf
    found: dict[tuple[str, str, int, str], Cell] = {}
    for path in sorted(run_dir.glob("cells/*/*/seed-*/*/cell.json")):
        if _visible(path, run_dir) and (c := _load_cell(path.parent)) is not None:
            found[(c.model, c.task, c.seed, c.condition)] = c

    # a task given as a spec path in the config is named by the spec inside the run, so tasks come from the run
    config_tasks = [str(t.get("name")) for t in config.get("tasks", [])]
    tasks = _ordered([t for t, _ in splits] + [k[1] for k in found], config_tasks)
    models = [str(m) for m in config.get("models", [])]
    seeds = [int(s) for s in (config.get("run") or {}).get("seeds", [])]
    cells: dict[tuple[str, str, int, str], Cell] = {}
    for m in models:
        for t in tasks:
            for s in seeds:
                for c in conditions:
                    cells[(m, t, s, c)] = found.pop((m, t, s, c), None) or Cell(
                        m, t, s, c, error="no cell.json: not run, or the run stopped before this cell")
    for c in found.values():
        log.warning("%s: cell outside the config's matrix; not reported", c.path)

    summary = None
    if (run_dir / "summary.csv").exists():
        with open(run_dir / "summary.csv", newline="") as f:
            summary = list(csv.DictReader(f))
    return Run(dir=run_dir, run_id=run_dir.name, config=config, manifest=manifest, models=models, tasks=tasks,
               seeds=seeds, conditions=conditions, base=ratio.get("base"), texts=list(ratio.get("texts") or []),
               ceiling=ratio.get("ceiling"), splits=splits, cells=cells, extra_cells=list(found.values()),
               summary=summary)


# --- the analysis of one (model, task) -------------------------------------------------------------------------------
@dataclass
class Group:
    """One (model, task): which conditions the statistics use, the analysis, and why R may be missing."""

    model: str
    task: str
    cells: dict[str, list[Cell]]  # condition -> its cells, one per seed
    usable: list[str]  # conditions ok in every seed: the only ones in the statistics
    analysis: Analysis | None
    has_base: bool  # differences are from the configured base (else the table shows means only)
    r_reason: str | None  # why R cannot be computed for any text condition; None when it can
    stats_error: str | None = None
    per_token: bool = False  # continuation task: gold NLL is per token

    @property
    def name(self) -> str:
        return f"{self.model} / {self.task}"


def _failure(cells: Sequence[Cell]) -> str:
    """Why a condition is not usable: each failing seed with its status and message."""
    return "; ".join(f"seed {c.seed}: {c.status}" + (f" ({c.error})" if c.error else "") for c in cells if not c.ok)


def _analyze_group(run: Run, model: str, task: str, n_boot: int) -> Group:
    cells = {c: [run.cell(model, task, s, c) for s in run.seeds] for c in run.conditions}
    usable = [c for c in run.conditions if cells[c] and all(x.ok for x in cells[c])]
    base, ceiling = run.base, run.ceiling
    if base is None:
        r_reason = "the config has no [ratio] section naming a base, so there is nothing to measure gains from"
    elif ceiling is None:
        r_reason = ("the config names no ceiling condition ([ratio] ceiling is unset), so there is no gap to measure "
                    "a recovery against")
    elif base not in usable:
        r_reason = f"the base {base!r} did not succeed for every seed ({_failure(cells.get(base, []))})"
    elif ceiling not in usable:
        r_reason = f"the ceiling {ceiling!r} did not succeed for every seed ({_failure(cells.get(ceiling, []))})"
    else:
        r_reason = None
    has_base = base in usable
    per_token = any("greedy_match" in r for c in usable for x in cells[c] for r in x.records[:1])
    group = Group(model, task, cells, usable, None, has_base, r_reason, per_token=per_token)
    if not usable:
        group.stats_error = "no condition succeeded for every seed"
        return group
    records = {c: {x.seed: x.records for x in cells[c]} for c in usable}
    ref = base if has_base else usable[0]
    if len(records) == 1:
        # the statistics need a second condition; a copy of the only one gives its mean and interval unchanged
        records[f"{ref} (copy)"] = records[ref]
    use_ceiling = ceiling if r_reason is None else None
    texts = [t for t in run.texts if t in usable] if use_ceiling else []
    try:
        group.analysis = analyze_records(records, base=ref, ceiling=use_ceiling, texts=texts, n_boot=n_boot)
    except UserError as e:
        group.stats_error = str(e)
        group.r_reason = group.r_reason or f"the statistics could not be computed ({e})"
    return group


# --- formatting ------------------------------------------------------------------------------------------------------
def _num(x: float, d: int = 4, signed: bool = False) -> str:
    return f"{x:+.{d}f}" if signed else f"{x:.{d}f}"


def _iv(iv: Interval, d: int = 4, signed: bool = False) -> str:
    return f"[{_num(iv.lo, d, signed)}, {_num(iv.hi, d, signed)}]"


def _est(e: Estimate, d: int = 4, signed: bool = False) -> str:
    return f"{_num(e.value, d, signed)} {_iv(e.ci, d, signed)}"


def _p(p: float) -> str:
    return f"{p:.3g}"


def _cell_text(s: Any) -> str:
    """Text safe inside a markdown table cell."""
    return str(s).replace("\\", "\\\\").replace("|", "\\|").replace("\n", "<br>")


def _table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(_cell_text(x) for x in row) + " |" for row in rows]
    return out


def _fenced(text: str, info: str = "text") -> list[str]:
    # a fence longer than any backtick run inside, so prompts holding ``` render verbatim
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return [fence + info, text, fence]


def _code(s: Any) -> str:
    s = str(s)
    tick = "``" if "`" in s else "`"
    return f"{tick}{s}{tick}" if s else "(empty)"


def _file_name(*parts: str) -> str:
    return "--".join(re.sub(r"[^A-Za-z0-9._-]+", "_", p) for p in parts)


def _direction(e: Estimate) -> str:
    if e.ci.lo > 0:
        return "clearly higher than the base"
    if e.ci.hi < 0:
        return "clearly lower than the base"
    return "no clear difference from the base"


def _ll_unit(group: Group) -> str:
    return "nats per token" if group.per_token else "nats per example"


def _role_name(run: Run, c: str) -> str:
    role = run.role(c)
    return f"{c} ({role})" if role else c


# --- sections --------------------------------------------------------------------------------------------------------
def _header(run: Run) -> list[str]:
    tests = sorted({len(sf.ids["test"]) for sf in run.splits.values()})
    n_test = ", ".join(f"{n}" for n in tests) if tests else "unknown"
    line = (f"Models: {', '.join(run.models) or 'none'}; tasks: {', '.join(run.tasks) or 'none'}; "
            f"seeds: {', '.join(map(str, run.seeds)) or 'none'}; {n_test} test examples per seed; "
            f"{len(run.conditions)} conditions ({', '.join(run.conditions)}).")
    return [f"# promptgap report: {run.run_id}", "", line, ""]


def _verdict_section(run: Run, groups: list[Group]) -> list[str]:
    out = ["## Verdict", ""]
    for g in groups:
        out += [f"### {g.name}", ""]
        a = g.analysis
        if g.r_reason is not None:
            out += [f"**R cannot be computed**: {g.r_reason}. No verdict is given.", ""]
            if a is not None and g.has_base:
                out += _base_differences(run, g)
            elif g.stats_error:
                out += [f"No statistics: {g.stats_error}.", ""]
            continue
        assert a is not None and a.ceiling is not None
        for t in run.texts:
            if t not in g.usable:
                out += [f"- **{t}**: no verdict; its cell did not succeed for every seed ({_failure(g.cells[t])}).",
                        ""]
                continue
            v = a.verdicts[t]
            r = a.metrics[v.metric].ratios[t]
            r_text = (f"R on {METRIC_LABELS[v.metric][0]} = {_num(r.value, 3)} {_iv(r.ci, 3)}"
                      if r.value is not None and r.ci is not None else f"R undefined: {r.reason}")
            out += [f"- **{t}** against the ceiling **{a.ceiling}**: **{v.label}**: {VERDICT_WORDS[v.label]}; "
                    f"{r_text}.", "", f"  {v.explanation}", ""]
    return out


def _base_differences(run: Run, g: Group) -> list[str]:
    """Without a verdict, what the run does show: each other condition against the base, in words."""
    a = g.analysis
    assert a is not None
    others = [c for c in g.usable if c != a.base]
    if not others:
        return []
    pct = round(a.confidence * 100)
    out = [f"What the run does show: differences from the base {a.base!r} ({pct}% paired-bootstrap intervals, "
           f"{a.n_seeds} seed(s) x {a.n_examples} test examples):", ""]
    for c in others:
        ll = a.metrics["loglik"].conditions[c]
        acc = a.metrics["accuracy"].conditions[c]
        assert ll.diff is not None and acc.diff is not None and acc.mcnemar is not None
        out.append(f"- {_role_name(run, c)}: gold log-likelihood {_est(ll.diff, signed=True)} {_ll_unit(g)} "
                   f"({_direction(ll.diff)}); accuracy {_est(acc.diff, signed=True)} ({_direction(acc.diff)}; "
                   f"McNemar p = {_p(acc.mcnemar.p)}).")
    return out + [""]


def _conditions_section(run: Run, groups: list[Group]) -> list[str]:
    out = ["## Conditions", ""]
    for g in groups:
        a = g.analysis
        out += [f"### {g.name}", ""]
        rows = []
        for c in run.conditions:
            cells = g.cells[c]
            formats = sorted({str(x.info.get("format")) for x in cells if x.ok})
            fmt = ", ".join(formats) or "—"
            if c in g.usable and a is not None:
                acc, ll = a.metrics["accuracy"].conditions[c], a.metrics["loglik"].conditions[c]
                diff = g.has_base and c != a.base and acc.diff is not None and ll.diff is not None
                rows.append([
                    _role_name(run, c), fmt, _est(acc.mean), _num(-ll.mean.value),
                    _est(acc.diff, signed=True) if diff else "—",
                    _est(ll.diff, signed=True) if diff else "—",
                    f"{_p(acc.mcnemar.p)} (b={acc.mcnemar.b}, c={acc.mcnemar.c})"
                    if diff and acc.mcnemar is not None else "—",
                    f"{a.n_seeds} × {a.n_examples}", "ok",
                ])
            else:
                n_ok = sum(x.ok for x in cells)
                status = "; ".join(f"{x.status} (seed {x.seed})" + (f": {x.error}" if x.error else "")
                                   for x in cells if not x.ok) or "excluded: " + (g.stats_error or "")
                rows.append([_role_name(run, c), fmt, "—", "—", "—", "—", "—", f"{n_ok}/{len(cells)} seeds ok",
                             status])
        out += _table(["condition", "format", "accuracy [95% CI]", "gold NLL (mean)", "Δ accuracy vs base [CI]",
                       "Δ gold log-lik vs base [CI]", "McNemar p vs base", "seeds × n", "status"], rows)
        out.append("")
        notes = []
        if a is not None:
            pct = round(a.confidence * 100)
            notes.append(f"Intervals: {pct}% paired bootstrap over the same test examples, {a.n_boot} replicates "
                         f"(bootstrap seed {a.seed}); BCa where defined, otherwise percentile (reasons below). "
                         f"Δ = condition − base, per example, then averaged. Gold NLL and log-likelihood are in "
                         f"{_ll_unit(g)}; log-likelihood = −NLL. McNemar: exact two-sided, b = condition right and "
                         f"base wrong, c = the reverse" + (", pooled over seeds." if a.n_seeds > 1 else "."))
            if not g.has_base:
                notes.append(f"No differences: the base {run.base!r} did not succeed for every seed "
                             f"({_failure(g.cells[run.base])})." if run.base in g.cells
                             else "No differences: the config names no base ([ratio] base).")
            # only the intervals the table shows (not a stand-in copy's, nor differences without a base)
            ests = [e for m in a.metrics.values() for c in g.usable
                    for e in (m.conditions[c].mean, m.conditions[c].diff if g.has_base else None) if e is not None]
            why: dict[str, int] = {}
            for e in ests:
                if e.ci.note:
                    reason = e.ci.note.removeprefix("BCa not used: ")
                    why[reason] = why.get(reason, 0) + 1
            notes += [f"Percentile instead of BCa for {k} of {len(ests)} intervals in this table: {w}."
                      for w, k in why.items()]
        if g.stats_error:
            notes.append(f"Statistics: {g.stats_error}.")
        if any(c not in g.usable for c in run.conditions):
            notes.append("Conditions that did not succeed for every seed are excluded from all statistics.")
        out += [f"- {n}" for n in notes] + [""]
        failed = [x for c in run.conditions for x in g.cells[c] if not x.ok]
        if failed:
            out += ["Failed or missing cells:", ""]
            for x in failed:
                where = f" (`{x.path.relative_to(run.dir)}`)" if x.path else ""
                out.append(f"- seed {x.seed}, {x.condition}: **{x.status}**{where}")
                if x.error:
                    out += ["", *("  " + s for s in _fenced(str(x.error))), ""]
            if out[-1] != "":
                out.append("")
        if len(run.seeds) > 1:
            out += ["Per seed, from each cell.json (accuracy / mean gold NLL):", ""]
            per_seed = []
            for c in run.conditions:
                per_seed.append([c] + [f"{_num(x.info['accuracy'])} / {_num(x.info['gold_nll'])}"
                                       if x.ok and _is_num(x.info.get("accuracy")) and _is_num(x.info.get("gold_nll"))
                                       else x.status for x in g.cells[c]])
            out += _table(["condition"] + [f"seed {s}" for s in run.seeds], per_seed) + [""]
    return out


def _is_num(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def _ratio_section(run: Run, groups: list[Group]) -> list[str]:
    out = ["## Gap-recovered ratio R", "",
           "R = (text − base) / (ceiling − base), from the mean per-example differences to the base; defined only "
           "when the ceiling's gain over the base is clearly positive (the lower end of its interval is above 0).", ""]
    for g in groups:
        out += [f"### {g.name}", ""]
        if g.r_reason is not None:
            out += [f"R is **undefined** for every text condition: {g.r_reason}.", ""]
            continue
        a = g.analysis
        assert a is not None and a.ceiling is not None
        gains = []
        for metric in ("loglik", "accuracy"):
            gain = a.metrics[metric].conditions[a.ceiling].diff
            assert gain is not None
            gains.append(f"{METRIC_LABELS[metric][0]} {_est(gain, signed=True)}")
        out += [f"Ceiling {a.ceiling!r} over base {a.base!r}: " + "; ".join(gains) + ".", ""]
        rows = []
        for t in run.texts:
            if t not in g.usable:
                why = f"undefined: the condition did not succeed for every seed ({_failure(g.cells[t])})"
                rows.append([t, why, why, "—"])
                continue
            row = [t]
            for metric in ("loglik", "accuracy"):
                r = a.metrics[metric].ratios[t]
                if r.value is None or r.ci is None:
                    row.append(f"undefined: {r.reason}")
                    continue
                s = f"{_num(r.value, 3)} {_iv(r.ci, 3)} ({r.ci.method})"
                if r.n_excluded:
                    s += f"; {r.n_excluded} replicates with zero ceiling gain left out"
                row.append(s)
            row.append(a.verdicts[t].label)
            rows.append(row)
        out += _table(["text condition", "R, gold log-likelihood [95% CI]", "R, accuracy [95% CI]",
                       "verdict (decided on log-likelihood)"], rows) + [""]
    return out


def _figures_section(run: Run, groups: list[Group], fig_dir: Path, link_dir: str) -> list[str]:
    out = ["## Figures", ""]
    try:
        import matplotlib  # noqa: F401  (checked here so a missing install is one sentence, not a crash)
    except ImportError:
        return out + ["Figures not drawn: matplotlib is not installed (`pip install matplotlib`).", ""]
    for g in groups:
        out += [f"### {g.name}", ""]
        if g.analysis is not None:
            name = _file_name(g.model, g.task) + "-metrics.png"
            _metrics_figure(run, g, fig_dir / name)
            out += [f"![accuracy and gold log-likelihood per condition, {g.name}]({link_dir}/{quote(name)})", "",
                    "Means with 95% bootstrap intervals (the table's); conditions that succeeded for every seed; "
                    "grey: base (also the dashed line), blue: text, orange: ceiling, green: other.", ""]
        else:
            out += [f"No metrics figure: {g.stats_error}.", ""]
        for c in run.conditions:
            logs = [(x.seed, x.log.get("curves")) for x in g.cells[c] if x.log and x.log.get("curves")]
            if not logs:
                continue
            name = _file_name(g.model, g.task, c) + "-curves.png"
            _curves_figure(f"{g.name} / {c}", logs, fig_dir / name)
            out += [f"![training curves of {c}, {g.name}]({link_dir}/{quote(name)})", "",
                    f"{c}: train and dev loss (and dev accuracy) per step from log.json, one colour per seed.", ""]
    return out


def _new_figure(width: float, height: float) -> Any:
    from matplotlib.figure import Figure

    # a Figure without pyplot: no global backend or state, Agg renders it on savefig
    return Figure(figsize=(width, height), layout="constrained")


def _save(fig: Any, path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    fig.savefig(path, format="png", dpi=110)


def _metrics_figure(run: Run, g: Group, path: Path) -> None:
    a = g.analysis
    assert a is not None
    conds = g.usable
    colours = {"base": "0.55", "text": "tab:blue", "ceiling": "tab:orange", None: "tab:green"}
    fig = _new_figure(max(6.0, 1.6 * len(conds) + 2), 3.6)
    axes = fig.subplots(1, 2)
    for ax, metric, label in ((axes[0], "accuracy", "accuracy"),
                              (axes[1], "loglik", f"mean gold log-likelihood ({_ll_unit(g)})")):
        ests = [a.metrics[metric].conditions[c].mean for c in conds]
        vals = [e.value for e in ests]
        # an interval may not contain its estimate (BCa); bars cannot be negative
        err = [[max(0.0, e.value - e.ci.lo) for e in ests], [max(0.0, e.ci.hi - e.value) for e in ests]]
        x = list(range(len(conds)))
        # points, not bars: log-likelihoods are negative and bars from 0 would hide the differences
        for i, c in enumerate(conds):
            ax.errorbar([i], [vals[i]], yerr=[[err[0][i]], [err[1][i]]], fmt="o", capsize=5, markersize=7,
                        color=colours[run.role(c)])
        ax.set_xlim(-0.6, len(conds) - 0.4)
        ax.grid(axis="y", alpha=0.3)
        if g.has_base:
            ax.axhline(a.metrics[metric].conditions[a.base].mean.value, color="0.3", linestyle="--", linewidth=1)
        ax.set_xticks(x, conds, rotation=20, ha="right")
        ax.set_ylabel(label)
        ax.set_title(f"{label.split(' (')[0]}, {a.n_seeds} seed(s) × {a.n_examples}", fontsize=9)
    fig.suptitle(g.name, fontsize=10)
    _save(fig, path)


def _curves_figure(title: str, logs: list[tuple[int, list[dict[str, Any]]]], path: Path) -> None:
    has_acc = any(_is_num(p.get("dev_accuracy")) for _, curve in logs for p in curve)
    fig = _new_figure(9.0 if has_acc else 5.5, 3.4)
    axes = fig.subplots(1, 2 if has_acc else 1, squeeze=False)[0]
    for i, (seed, curve) in enumerate(logs):
        colour = f"C{i % 10}"
        for key, style in (("train_loss", "-"), ("dev_loss", "--")):
            pts = [(p["step"], p[key]) for p in curve if _is_num(p.get("step")) and _is_num(p.get(key))]
            if pts:
                axes[0].plot(*zip(*pts, strict=True), style, color=colour, label=f"seed {seed} {key}")
        if has_acc:
            pts = [(p["step"], p["dev_accuracy"]) for p in curve
                   if _is_num(p.get("step")) and _is_num(p.get("dev_accuracy"))]
            if pts:
                axes[1].plot(*zip(*pts, strict=True), "-o", color=colour, markersize=3, label=f"seed {seed}")
    axes[0].set_xlabel("step")
    axes[0].set_ylabel("loss")
    axes[0].legend(fontsize=7)
    if has_acc:
        axes[1].set_xlabel("step")
        axes[1].set_ylabel("dev accuracy")
        axes[1].legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    _save(fig, path)


def _meta_lines(meta: dict[str, Any]) -> list[str]:
    out: list[str] = []
    if "nearest_tokens" in meta:
        out += ["Nearest vocabulary tokens of the soft prompt (`meta.nearest_tokens`):", ""]
        out += _nearest_table(meta["nearest_tokens"]) + [""]
    if "proposals" in meta:
        props = meta["proposals"]
        props = props if isinstance(props, list) else [props]
        out += [f"Proposals considered (`meta.proposals`, {len(props)}):", ""]
        for i, p in enumerate(props, 1):
            out.append(f"{i}. {_code(p if isinstance(p, str) else json.dumps(p, ensure_ascii=False))}")
        out.append("")
    rest = {k: v for k, v in meta.items() if k not in ("nearest_tokens", "proposals")}
    if rest:
        out += ["Other artifact metadata:", ""]
        for k, v in rest.items():
            s = json.dumps(v, ensure_ascii=False)
            out.append(f"- `{k}`: {_code(s if len(s) <= 300 else s[:300] + ' …')}")
        out.append("")
    return out


def _tok(t: Any) -> str:
    # JSON quoting shows leading spaces and control characters in tokens
    return _code(json.dumps(t, ensure_ascii=False)) if isinstance(t, str) else _code(t)


def _nearest_table(value: Any) -> list[str]:
    if isinstance(value, dict):
        return _table(["key", "nearest tokens"], [[k, _tokens(v)] for k, v in value.items()])
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        keys = list(dict.fromkeys(k for v in value for k in v))
        return _table(keys, [[_tokens(v.get(k, "")) for k in keys] for v in value])
    if isinstance(value, list):
        return _table(["position", "nearest tokens"], [[i, _tokens(v)] for i, v in enumerate(value)])
    return [_code(json.dumps(value, ensure_ascii=False))]


def _tokens(v: Any) -> str:
    if isinstance(v, list):
        return ", ".join(_tok(t) if not isinstance(t, list | tuple) else " ".join(_tok(u) for u in t) for t in v)
    return _tok(v) if isinstance(v, str) else str(v)


def _prompts_section(run: Run, groups: list[Group]) -> list[str]:
    out = ["## Final prompts", ""]
    for g in groups:
        out += [f"### {g.name}", ""]
        for c in run.conditions:
            out += [f"#### {_role_name(run, c)}", ""]
            # seeds with an identical artifact are shown once
            distinct: list[tuple[PromptArtifact, list[int]]] = []
            for x in g.cells[c]:
                if x.artifact is None:
                    out.append(f"- seed {x.seed}: no artifact ({x.status}).")
                    continue
                for art, seeds in distinct:
                    if art == x.artifact:
                        seeds.append(x.seed)
                        break
                else:
                    distinct.append((x.artifact, [x.seed]))
            if any(x.artifact is None for x in g.cells[c]):
                out.append("")
            for art, seeds in distinct:
                out += [f"Seed(s) {', '.join(map(str, seeds))}: format **{art.format}**, instruction role "
                        f"{art.instruction_role}, {len(art.demos)} demo(s).", ""]
                out += (["Instruction:", "", *_fenced(art.instruction), ""] if art.instruction
                        else ["Instruction: (none)", ""])
                for i, d in enumerate(art.demos, 1):
                    out += [f"Demo {i}:", "", *_fenced(d), ""]
                if art.meta:
                    out += _meta_lines(art.meta)
    return out


def _setup_section(run: Run) -> list[str]:
    out = ["## Setup", "", f"Models: {', '.join(run.models)}.", "", "Splits (ids in splits/; hashes of the ordered "
           "ids, `harness.data.ids_hash`; the split hash combines the three):", ""]
    rows = []
    for (task, seed), sf in sorted(run.splits.items(), key=lambda kv: (run.tasks.index(kv[0][0])
                                                                       if kv[0][0] in run.tasks else 0, kv[0][1])):
        h = sf.split.hashes
        rows.append([task, seed, len(sf.ids["train"]), len(sf.ids["dev"]), len(sf.ids["test"]), sf.hash,
                     h["train"], h["dev"], h["test"]])
    out += _table(["task", "seed", "train", "dev", "test", "split hash", "train ids hash", "dev ids hash",
                   "test ids hash"], rows) if rows else ["No split files found."]
    out += ["", "Conditions as configured:", ""]
    conds = run.config.get("conditions") or {}
    out += _table(["condition", "role", "optimizer", "settings"],
                  [[c, run.role(c) or "—", conds[c].get("optimizer", c),
                    _code(json.dumps(conds[c].get("settings") or {}, ensure_ascii=False))] for c in run.conditions])
    m = run.manifest
    out += ["", "Environment (manifest.json):" if m else "Environment: **manifest.json is missing**.", ""]
    if m:
        versions = m.get("versions") or {}
        machine = m.get("machine") or {}
        out += _table(["", "value"],
                      [["run id", m.get("run_id", "—")], ["git commit", m.get("git_commit") or "—"],
                       ["started", m.get("started", "—")], ["finished", m.get("finished") or "not recorded"],
                       *([["resumed", ", ".join(m["resumed"])]] if m.get("resumed") else []),
                       *[[k, v] for k, v in versions.items()], *[[f"machine {k}", v] for k, v in machine.items()]])
        out += ["", "To reproduce:", "", *_fenced(str(m.get("command", "(not recorded)")), "bash"), ""]
        if m.get("config"):
            out += [f"Config file: `{m['config']}` (resolved copy in `config.json`).", ""]
    return out


# --- the validity checklist ------------------------------------------------------------------------------------------
@dataclass
class Check:
    title: str
    status: str  # pass, fail or n/a
    evidence: str
    problems: list[str] = field(default_factory=list)


def _verdict_of(problems: list[str], passed: str, title: str, checked: str) -> Check:
    """``passed`` is the evidence when nothing is wrong; otherwise what was checked and how many problems, listed."""
    if problems:
        return Check(title, "fail", f"{checked}: {len(problems)} problem(s)", problems)
    return Check(title, "pass", passed)


def _ok_cells(run: Run) -> list[Cell]:
    return [c for c in run.cells.values() if c.ok]


def _check_disjoint(run: Run) -> Check:
    problems = []
    for (task, seed), sf in run.splits.items():
        where = f"{task} seed {seed}"
        problems += [f"{where}: {p} is missing or not a list" for p in sf.malformed]
        owner: dict[str, str] = {}
        for part in PARTS:
            for i in sf.ids[part]:
                if i in owner:
                    problems.append(f"{where}: id {i!r} is in {owner[i]} and in {part}"
                                    if owner[i] != part else f"{where}: id {i!r} repeats in {part}")
                else:
                    owner[i] = part
    missing = [f"{t} seed {s}: no split file" for t in run.tasks for s in run.seeds if (t, s) not in run.splits]
    sizes = sorted({tuple(len(sf.ids[p]) for p in PARTS) for sf in run.splits.values()})
    return _verdict_of(missing + problems, f"{len(run.splits)} split file(s), train/dev/test sizes "
                       f"{', '.join('/'.join(map(str, s)) for s in sizes)}; no id in two parts or twice in one",
                       "Train, dev and test ids are disjoint",
                       f"the ids of {len(run.splits)} split file(s) compared across and within train, dev and test")


def _check_split_hashes(run: Run) -> Check:
    problems = []
    for sf in run.splits.values():
        if sf.hash != sf.split.hash:
            problems.append(f"{sf.path.relative_to(run.dir)}: states hash {sf.hash} but its ids hash to "
                            f"{sf.split.hash}")
    n = 0
    for m in run.models:
        for t in run.tasks:
            for s in run.seeds:
                sf = run.splits.get((t, s))
                got: dict[str, list[str]] = {}
                for c in run.conditions:
                    cell = run.cell(m, t, s, c)
                    if cell.status == "missing":
                        continue
                    n += 1
                    h = cell.info.get("split_hash")
                    got.setdefault(str(h), []).append(c)
                    if sf is None:
                        problems.append(f"{cell.label}: no split file for its task and seed")
                    elif h != sf.hash:
                        problems.append(f"{cell.label}: split_hash {h} but the split file's hash is {sf.hash}")
                    bad = sorted({str(r.get("split_hash")) for r in cell.records} - {str(h)})
                    if bad:
                        problems.append(f"{cell.label}: scores.jsonl lines carry split_hash {', '.join(bad)}, "
                                        f"cell.json {h}")
                if len(got) > 1:
                    problems.append(f"{m} / {t} / seed {s}: conditions use different splits: "
                                    + "; ".join(f"{h}: {', '.join(cs)}" for h, cs in got.items()))
    return _verdict_of(problems, f"{len(run.splits)} split file(s) re-hashed from their ids; {n} cell(s) and their "
                       f"scores.jsonl lines carry their split file's hash, shared by all conditions of a "
                       f"(model, task, seed)", "Every cell used its seed's split, the same for all conditions",
                       f"{len(run.splits)} split file(s) re-hashed from their ids and compared with the split_hash of "
                       f"{n} cell(s) and their scores.jsonl lines")


def _check_test_once(run: Run) -> Check:
    problems = []
    n = 0
    for cell in run.cells.values():
        if cell.status == "missing":
            continue
        scored = cell.info.get("test_scored")
        if not cell.ok:
            if not isinstance(scored, int) or scored > 1:
                problems.append(f"{cell.label} ({cell.status}): test_scored = {scored!r}")
            continue
        n += 1
        sf = run.splits.get((cell.task, cell.seed))
        test = sf.ids["test"] if sf else None
        ids = [str(r.get("example_id")) for r in cell.records]
        if scored != 1:
            problems.append(f"{cell.label}: test_scored = {scored!r}, not 1")
        if not (len(ids) == cell.info.get("n") == (len(test) if test is not None else None)):
            problems.append(f"{cell.label}: {len(ids)} scores.jsonl lines, n = {cell.info.get('n')}, "
                            f"{len(test) if test is not None else 'no'} test ids")
        if test is not None and (len(set(ids)) != len(ids) or set(ids) != set(test)):
            problems.append(f"{cell.label}: the scored example ids are not exactly the test ids, each once")
    return _verdict_of(problems, f"{n} ok cell(s): test_scored = 1, and scores.jsonl holds each test id of the "
                       f"split exactly once (lines = n = test size)",
                       "The test split was scored exactly once per condition",
                       f"test_scored, n, scores.jsonl lines and their example ids of {n} ok cell(s) against the "
                       f"split's test ids")


def _check_fit_ids(run: Run) -> Check:
    problems = []
    n = 0
    for cell in run.cells.values():
        if cell.status == "missing":
            continue
        sf = run.splits.get((cell.task, cell.seed))
        if sf is None:
            problems.append(f"{cell.label}: no split file to compare with")
            continue
        n += 1
        for part in ("train", "dev"):
            got, want = cell.info.get(f"fit_{part}_ids_hash"), ids_hash(sf.ids[part])
            if got != want:
                problems.append(f"{cell.label}: fit_{part}_ids_hash = {got} but the split's {part} ids hash to {want}")
    return _verdict_of(problems, f"{n} cell(s): the ids given to fitting hash to the split's train and dev ids, "
                       f"which the first check shows hold no test id", "No fitting step received test ids",
                       f"fit_train_ids_hash and fit_dev_ids_hash of {n} cell(s) against the hashes of their split's "
                       f"train and dev ids")


def _check_formats(run: Run) -> Check:
    """The conditions compared in R must share a format family; other conditions (e.g. base-raw beside
    base-chat) are there to show what the format itself does, and are listed, not judged."""
    problems = []
    summary = []
    compared = [c for c in run.conditions if run.role(c)] or run.conditions
    others = [c for c in run.conditions if c not in compared]
    for m in run.models:
        for t in run.tasks:
            by_fmt: dict[str, list[str]] = {}
            for c in compared:
                for s in run.seeds:
                    cell = run.cell(m, t, s, c)
                    if not cell.ok:
                        continue
                    fmt = str(cell.info.get("format"))
                    if c not in by_fmt.setdefault(fmt, []):
                        by_fmt[fmt].append(c)
                    bad = sorted({str(r.get("format")) for r in cell.records} - {fmt})
                    if bad:
                        problems.append(f"{cell.label}: scores.jsonl lines in format {', '.join(bad)}, cell.json "
                                        f"{fmt}")
            if len(by_fmt) > 1:
                problems.append(f"{m} / {t}: mixed formats: "
                                + "; ".join(f"{f}: {', '.join(cs)}" for f, cs in by_fmt.items()))
            elif by_fmt:
                summary.append(f"{m} / {t}: all {next(iter(by_fmt))}")
    if others:
        summary.append(f"not in the ratio, not judged: {', '.join(others)}")
    return _verdict_of(problems, "; ".join(summary) or "no ok cells", "Every condition in the ratio rendered in the "
                       "same format family", "the format of every ok cell (cell.json and scores.jsonl) of the "
                       "ratio's conditions, per (model, task)")


def _check_bos(run: Run) -> Check:
    problems = []
    counts = set()
    cells = _ok_cells(run)
    for cell in cells:
        b = cell.info.get("bos_count")
        counts.add(b)
        if not isinstance(b, int) or b > 1:
            problems.append(f"{cell.label}: bos_count = {b!r}")
    return _verdict_of(problems, f"{len(cells)} ok cell(s), bos_count in {sorted(map(str, counts))} (BOS tokens at "
                       f"the start of the first scored request's context)", "A single BOS per request",
                       f"bos_count of {len(cells)} ok cell(s)")


def _check_same_tokens(run: Run) -> Check:
    """Per-token NLLs and summed log-likelihoods are only comparable when each gold continuation is the same
    tokens in every compared condition; raw and chat formats tokenize continuations differently (lm-eval drops
    the delimiter under chat, and the template's trailing newline joins the continuation)."""
    title = "Gold continuations have the same token counts in every condition of the ratio"
    compared = [c for c in run.conditions if run.role(c)] or run.conditions
    problems, checked = [], 0
    for m in run.models:
        for t in run.tasks:
            for s in run.seeds:
                counts: dict[str, dict[str, list[int]]] = {}
                for c in compared:
                    cell = run.cell(m, t, s, c)
                    if cell.ok:
                        counts[c] = {r["example_id"]: r.get("choice_ntokens") for r in cell.records}
                if len(counts) < 2:
                    continue
                first, *rest = counts
                for c in rest:
                    differ = [i for i, n in counts[c].items() if counts[first].get(i) != n]
                    checked += len(counts[c])
                    if differ:
                        problems.append(f"{m} / {t} / seed {s}: {c} vs {first}: {len(differ)} example(s) differ, "
                                        f"e.g. {differ[0]}")
    return _verdict_of(problems, f"{checked} example(s) compared: equal token counts", title,
                       "choice_ntokens per example across the ratio's conditions")


def _check_ceiling_dev(run: Run) -> Check:
    title = "The ceiling's settings were chosen on dev"
    if run.ceiling is None:
        return Check(title, "n/a", "the config names no ceiling")
    problems = []
    cells = [c for c in run.cells.values() if c.condition == run.ceiling]
    for cell in cells:
        if not cell.ok:
            problems.append(f"{cell.label}: {cell.status}; nothing to check")
        elif cell.log is None:
            problems.append(f"{cell.label}: no log.json")
        elif cell.log.get("selected_on") != "dev":
            problems.append(f"{cell.label}: log.json selected_on = {cell.log.get('selected_on')!r}")
    return _verdict_of(problems, f"{len(cells)} cell(s) of {run.ceiling!r}: log.json says selected_on = \"dev\"",
                       title, f"log.json selected_on of {len(cells)} cell(s) of {run.ceiling!r}")


def _check_complete(run: Run) -> Check:
    bad = [f"{c.label}: {c.status}" + (f" ({c.error})" if c.error else "") for c in run.cells.values() if not c.ok]
    return _verdict_of(bad, f"all {len(run.cells)} cell(s) of models × tasks × seeds × conditions are ok",
                       "Every cell of the matrix succeeded (statistics use only conditions ok in every seed)",
                       f"{len(run.cells) - len(bad)} of {len(run.cells)} cell(s) of models × tasks × seeds × "
                       f"conditions ok")


def _check_numbers(run: Run) -> Check:
    problems = []
    cells = _ok_cells(run)
    rows = {(r.get("model"), r.get("task"), r.get("seed"), r.get("condition")): r for r in run.summary or []}
    for cell in cells:
        recs = cell.records
        if not recs:
            problems.append(f"{cell.label}: scores.jsonl is empty")
            continue
        try:
            acc = sum(bool(r["correct"]) for r in recs) / len(recs)
            nll = sum(float(r["gold_nll"]) for r in recs) / len(recs)
        except (KeyError, TypeError, ValueError) as e:
            problems.append(f"{cell.label}: scores.jsonl lacks a field ({e})")
            continue
        for key, want in (("accuracy", acc), ("gold_nll", nll)):
            got = cell.info.get(key)
            if not _is_num(got) or abs(got - want) > 1e-9 * max(1.0, abs(want)):
                problems.append(f"{cell.label}: cell.json {key} = {got} but scores.jsonl gives {want:.6f}")
        wrong = {k for r in recs for k in ("model", "task", "condition") if k in r and r[k] != getattr(cell, k)}
        if wrong:
            problems.append(f"{cell.label}: scores.jsonl lines name another {', '.join(sorted(wrong))}")
    if run.summary is None:
        problems.append("summary.csv is missing")
    else:
        for cell in run.cells.values():
            if cell.status == "missing":
                continue
            row = rows.get((cell.model, cell.task, str(cell.seed), cell.condition))
            if row is None:
                problems.append(f"{cell.label}: no summary.csv row")
                continue
            for key in ("status", "split_hash", "format", "n"):
                want = cell.info.get(key)
                if str(row.get(key) or "") != ("" if want is None else str(want)):
                    problems.append(f"{cell.label}: summary.csv {key} = {row.get(key)!r}, cell.json {want!r}")
            for key in ("accuracy", "gold_nll"):
                want = cell.info.get(key)
                try:
                    same = (not row.get(key) and want is None) or abs(float(row[key]) - float(want)) <= 1e-9
                except (TypeError, ValueError):
                    same = False
                if not same:
                    problems.append(f"{cell.label}: summary.csv {key} = {row.get(key)!r}, cell.json {want!r}")
    return _verdict_of(problems, f"{len(cells)} ok cell(s): cell.json accuracy and mean gold NLL equal the means of "
                       f"their scores.jsonl lines, and summary.csv repeats cell.json",
                       "Reported numbers match the per-example scores",
                       "cell.json accuracy and gold NLL against the means of scores.jsonl, and summary.csv against "
                       "cell.json")


def checklist(run: Run) -> list[Check]:
    """The validity checks, each computed from the run folder."""
    return [_check_disjoint(run), _check_split_hashes(run), _check_test_once(run), _check_fit_ids(run),
            _check_formats(run), _check_bos(run), _check_same_tokens(run), _check_ceiling_dev(run),
            _check_complete(run), _check_numbers(run)]


def _checklist_section(checks: list[Check]) -> list[str]:
    out = ["## Validity checklist", "", "Computed from the run folder when this report was written.", ""]
    for ch in checks:
        out.append(f"- {MARKS[ch.status]} **{ch.title}**: {ch.evidence}.")
        for p in ch.problems[:MAX_PROBLEMS]:
            out.append(f"  - {p}")
        if len(ch.problems) > MAX_PROBLEMS:
            out.append(f"  - … and {len(ch.problems) - MAX_PROBLEMS} more")
    return out + [""]


# --- writing ---------------------------------------------------------------------------------------------------------
def render_report(run: Run, fig_dir: Path, n_boot: int) -> str:
    """The markdown of the report; figures are drawn into ``fig_dir`` and linked as ``<run-id>/<file>``."""
    groups = [_analyze_group(run, m, t, n_boot) for m in run.models for t in run.tasks]
    link_dir = quote(run.run_id)
    lines = (_header(run) + _verdict_section(run, groups) + _conditions_section(run, groups)
             + _ratio_section(run, groups) + _figures_section(run, groups, fig_dir, link_dir)
             + _prompts_section(run, groups) + _setup_section(run) + _checklist_section(checklist(run)))
    return "\n".join(lines).rstrip("\n") + "\n"


def write_report(run_dir: Path, reports_dir: Path = Path("reports"), n_boot: int | None = None) -> Path:
    """Write ``reports_dir/<run-id>.md`` and its figures in ``reports_dir/<run-id>/``; return the markdown's path.

    ``n_boot`` defaults to the run config's ``run.n_boot`` (else the stats module's default). Both outputs are built
    under temporary names and renamed into place, replacing any previous report of the run.
    """
    run = load_run(Path(run_dir))
    if n_boot is None:
        n_boot = int((run.config.get("run") or {}).get("n_boot") or DEFAULT_N_BOOT)
    reports_dir = Path(reports_dir)
    reports_dir.mkdir(parents=True, exist_ok=True)
    md_path, fig_dir = reports_dir / f"{run.run_id}.md", reports_dir / run.run_id
    tmp_fig = Path(tempfile.mkdtemp(dir=reports_dir, prefix=f".{run.run_id}.tmp-"))
    fd, tmp_name = tempfile.mkstemp(dir=reports_dir, prefix=f".{run.run_id}.md.", suffix=".tmp")
    tmp_md = Path(tmp_name)
    old_fig: Path | None = None
    # mkstemp/mkdtemp create private files; a report is meant to be read, so use the usual umask modes
    umask = os.umask(0)
    os.umask(umask)
    tmp_md.chmod(0o666 & ~umask)
    tmp_fig.chmod(0o777 & ~umask)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(render_report(run, tmp_fig, n_boot))
        if fig_dir.exists():
            old_fig = reports_dir / f".{run.run_id}.old-{uuid.uuid4().hex[:8]}"
            os.replace(fig_dir, old_fig)
        try:
            os.replace(tmp_fig, fig_dir)
            os.replace(tmp_md, md_path)
        except BaseException:
            # put the previous figures back, so the previous report stays whole
            if old_fig is not None:
                if fig_dir.exists():
                    shutil.rmtree(fig_dir, ignore_errors=True)
                os.replace(old_fig, fig_dir)
                old_fig = None
            raise
    finally:
        tmp_md.unlink(missing_ok=True)
        shutil.rmtree(tmp_fig, ignore_errors=True)
        if old_fig is not None:
            shutil.rmtree(old_fig, ignore_errors=True)
    log.info("report written: %s", md_path)
    return md_path
