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

import json
import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from harness import provenance
from harness.artifact import PromptArtifact
from harness.atomic import atomic_dir, write_atomic
from harness.audit import Audit, audit, item_lines
from harness.errors import UserError
from harness.figures import curves_figure, metrics_figure
from harness.run_folder import Cell, Run, is_number, load_run
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

VERDICT_WORDS = {
    "text-closes-gap": f"the readable prompt recovers most of the ceiling's gain: R is above {RECOVERY_THRESHOLD} "
                       f"with confidence",
    "soft-only": f"the readable prompt recovers less than half of the ceiling's gain, the rest needs the soft "
                 f"prompt: R is below {RECOVERY_THRESHOLD} with confidence",
    "inconclusive": "the data do not settle whether the readable prompt recovers more or less than half of the "
                    "ceiling's gain",
    "neither": "neither the ceiling nor the readable prompt clearly improves on the base",
}


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
    per_token = any("greedy_match" in r for c in usable for x in cells[c] for r in x.lines[:1])
    group = Group(model, task, cells, usable, None, has_base, r_reason, per_token=per_token)
    if not usable:
        group.stats_error = "no condition succeeded for every seed"
        return group
    records = {c: {x.seed: x.lines for x in cells[c]} for c in usable}
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
def _header(run: Run, stamp: dict[str, Any], result: Audit) -> list[str]:
    tests = sorted({len(sf.ids["test"]) for sf in run.splits.values()})
    n_test = ", ".join(f"{n}" for n in tests) if tests else "unknown"
    line = (f"Models: {', '.join(run.models) or 'none'}; tasks: {', '.join(run.tasks) or 'none'}; "
            f"seeds: {', '.join(map(str, run.seeds)) or 'none'}; {n_test} test examples per seed; "
            f"{len(run.conditions)} conditions ({', '.join(run.conditions)}).")
    invocations = run.manifest.get("invocations") or []
    ran = "; ".join(dict.fromkeys(provenance.code_label(i.get("code")) for i in invocations)) or "not recorded"
    out = [f"# promptgap report: {run.run_id}", "", f"<!-- promptgap-report {json.dumps(stamp)} -->", "", line, "",
           f"Written {stamp['written']} by {provenance.code_label(stamp['code'])}, from the run folder; its cells "
           f"were computed by {ran}.", ""]
    dirty = sorted({f for i in invocations if (i.get("code") or {}).get("dirty") for f in i["code"].get("changed")
                    or []})
    if dirty:
        out += [f"**This run was made from a code tree with uncommitted changes** ({', '.join(dirty[:8])}"
                f"{', …' if len(dirty) > 8 else ''}): its commit alone does not reproduce it.", ""]
    if not result.passed:
        out += [f"**The validity audit fails** ({', '.join(i.title for i in result.failed)}): read the checklist "
                f"at the end before any number here.", ""]
    return out


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
            formats = sorted({str(x.record.format) for x in cells if x.ok and x.record is not None})
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
                per_seed.append([c] + [f"{_num(x.record.accuracy)} / {_num(x.record.gold_nll)}"
                                       if x.ok and x.record is not None and is_number(x.record.accuracy)
                                       and is_number(x.record.gold_nll)
                                       else x.status for x in g.cells[c]])
            out += _table(["condition"] + [f"seed {s}" for s in run.seeds], per_seed) + [""]
    return out


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
            metrics_figure(fig_dir / name, g.name, g.analysis, g.usable, [run.role(c) for c in g.usable],
                           _ll_unit(g), g.has_base)
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
            curves_figure(f"{g.name} / {c}", logs, fig_dir / name)
            out += [f"![training curves of {c}, {g.name}]({link_dir}/{quote(name)})", "",
                    f"{c}: train and dev loss (and dev accuracy) per step from log.json, one colour per seed.", ""]
    return out


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
    out = ["## Setup", "", f"Models: {', '.join(run.models)}.", "", "Splits (ids and content keys in splits/; hashes "
           "of the ordered ids, `harness.data.ids_hash`; the split hash combines the three):", ""]
    rows = []
    for (task, seed), sf in sorted(run.splits.items(), key=lambda kv: (run.tasks.index(kv[0][0])
                                                                       if kv[0][0] in run.tasks else 0, kv[0][1])):
        h = sf.part_hashes()
        rows.append([task, seed, len(sf.ids["train"]), len(sf.ids["dev"]), len(sf.ids["test"]), sf.hash,
                     h["train"], h["dev"], h["test"]])
    out += _table(["task", "seed", "train", "dev", "test", "split hash", "train ids hash", "dev ids hash",
                   "test ids hash"], rows) if rows else ["No split files found."]
    out += ["", "Conditions as configured:", ""]
    conds = run.config.get("conditions") or {}
    out += _table(["condition", "role", "optimizer", "settings"],
                  [[c, run.role(c) or "—", conds[c].get("optimizer", c),
                    _code(json.dumps(conds[c].get("settings") or {}, ensure_ascii=False))] for c in run.conditions])
    return out + [""] + _provenance_lines(run)


def _short(digest: Any) -> str:
    return f"`{str(digest)[:16]}`" if digest else "—"


def _provenance_lines(run: Run) -> list[str]:
    """Where every number came from: the code of each invocation, the model files, the data files, the machine."""
    m = run.manifest
    if not m:
        return ["Provenance: **manifest.json is missing**.", ""]
    out = ["Code that computed the cells (one row per `promptgap run` invocation):", ""]
    out += _table(["started", "finished", "code", "uncommitted changes"],
                  [[inv.get("started", "—"), inv.get("finished") or "not recorded (stopped?)",
                    provenance.code_label(inv.get("code")), ", ".join((inv.get("code") or {}).get("changed") or [])
                    or "none"] for inv in m.get("invocations") or []])
    out += ["", "Models (content hashes: sha256, first 16 hex digits; full values in manifest.json):", ""]
    rows = []
    for name, rec in (m.get("models") or {}).items():
        file = rec.get("file") or {}
        files = (rec.get("folder") or {}).get("files") or {}
        weights = {k: v for k, v in files.items() if k.endswith((".safetensors", ".bin", ".gguf"))}
        source = rec.get("source", "—")
        if rec.get("package"):
            source += f" ({rec['package']} {rec.get('package_version')})"
        if rec.get("revision"):
            source += f", revision {rec['revision']}"
        quant = rec.get("quantization") or {}
        tok = rec.get("tokenizer") or {}
        rows.append([name, source, Path(file["path"]).name if file.get("path") else ", ".join(weights) or "—",
                     _short(file.get("sha256") or next(iter(weights.values()), {}).get("sha256")),
                     quant.get("file_type") or "—", f"{rec.get('dtype')} on {rec.get('device')}",
                     f"BOS {tok.get('bos_token')!r}, added by the tokenizer: {tok.get('adds_bos')}"])
    out += _table(["model", "source", "file", "sha256", "quantization", "ran as", "tokenizer"], rows) if rows \
        else ["No model recorded."]
    out += ["", "Data files:", ""]
    rows = [[task, src.get("path") or src.get("hub"), src.get("bytes") or src.get("rows") or "—",
             _short(src.get("sha256") or src.get("fingerprint"))]
            for task, rec in (m.get("tasks") or {}).items() for src in rec.get("sources") or []]
    out += _table(["task", "file", "bytes (rows)", "sha256 (fingerprint)"], rows) if rows else ["None recorded."]
    versions = m.get("versions") or {}
    machine = m.get("machine") or {}
    out += ["", "Libraries and machine (first invocation):", ""]
    out += _table(["", "value"], [*[[k, v] for k, v in versions.items()],
                                  *[[f"machine {k}", v] for k, v in machine.items()]])
    out += ["", "To reproduce:", "", *_fenced(str(m.get("command", "(not recorded)")), "bash"), ""]
    if m.get("config"):
        out += [f"Config file: `{m['config']}` (resolved copy in `config.json`).", ""]
    return out


def _checklist_section(result: Audit) -> list[str]:
    out = ["## Validity checklist", "",
           f"`promptgap check {result.run_id}` when this report was written: **{result.summary()}**. Each item is "
           f"re-derived from the run folder's files; items marked \"reported by the condition\" rest on what the "
           f"condition said, checked against the split and against what it read.", ""]
    for item in result.items:
        out += item_lines(item)
    return out + [""]


# --- writing ---------------------------------------------------------------------------------------------------------
def render_report(run: Run, fig_dir: Path, n_boot: int) -> str:
    """The markdown of the report; figures are drawn into ``fig_dir`` and linked as ``<run-id>/<file>``."""
    result = audit(run, with_report=False)
    stamp = {"run_id": run.run_id, "written": provenance.now(),
             "code": {k: v for k, v in provenance.code_state().items() if k in ("version", "commit", "dirty")}}
    groups = [_analyze_group(run, m, t, n_boot) for m in run.models for t in run.tasks]
    link_dir = quote(run.run_id)
    lines = (_header(run, stamp, result) + _verdict_section(run, groups) + _conditions_section(run, groups)
             + _ratio_section(run, groups) + _figures_section(run, groups, fig_dir, link_dir)
             + _prompts_section(run, groups) + _setup_section(run) + _checklist_section(result))
    return "\n".join(lines).rstrip("\n") + "\n"


def write_report(run_dir: Path, reports_dir: Path = Path("reports"), n_boot: int | None = None) -> Path:
    """Write ``reports_dir/<run-id>.md`` and its figures in ``reports_dir/<run-id>/``; return the markdown's path.

    ``n_boot`` defaults to the run config's ``run.n_boot`` (else the stats module's default). The figures are drawn
    into a temp folder and the markdown is rendered before anything is replaced, so a failure leaves the previous
    report whole.
    """
    run = load_run(Path(run_dir))
    if n_boot is None:
        n_boot = int((run.config.get("run") or {}).get("n_boot") or DEFAULT_N_BOOT)
    reports_dir = Path(reports_dir)
    md_path = reports_dir / f"{run.run_id}.md"
    with atomic_dir(reports_dir / run.run_id) as fig_dir:
        text = render_report(run, fig_dir, n_boot)
    write_atomic(md_path, text)
    log.info("report written: %s", md_path)
    return md_path
