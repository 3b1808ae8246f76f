"""The markdown run report: writes ``reports/<run-id>.md`` (verdict first), its figures and ``verdict.json`` from a
loaded run folder and the validity audit's result, which the caller runs beside it (``harness.cli.report_run``).

Sections, in order: the verdict per (model, task[, train size]) in words with the intervals behind it; a table of
conditions; the gap ratio R on both metrics; with several train sizes, the sample-efficiency curves; with a
``[transfer]`` table, the transfer matrix and its leakage counts; the trained and searched conditions' train and dev
curves with overfitting flagged; figures; the final prompts as text; the setup (splits, models, environment, the
command); the validity checklist (the audit's items). Every number comes from ``harness.stats`` on the per-example
``scores.jsonl`` lines, or is read from the run folder, so a reader can re-derive it; the findings
(``harness.findings``) are worded by ``harness.wording``, and this module only formats them as markdown.

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
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from harness import provenance, wording
from harness.artifact import PromptArtifact
from harness.atomic import atomic_dir, write_atomic, write_json
from harness.figures import (
    board_figure,
    curves_figure,
    differences_figure,
    efficiency_figure,
    forest_figure,
    metrics_figure,
    transfer_figure,
)
from harness.findings import (
    FIT_ALPHA,
    REACH,
    Board,
    Curve,
    Group,
    TransferBlock,
    analyze_groups,
    curves,
    headline,
    overfitting,
    transfers,
)
from harness.names import check_inside
from harness.render import SLOT
from harness.run_folder import Run, is_number
from harness.stats import DEFAULT_N_BOOT, RECOVERY_THRESHOLD, Analysis, Estimate, Interval
from harness.verdict_file import verdict_json
from harness.wording import FLAG_WORDS, METRIC_LABELS, failure, format_p

if TYPE_CHECKING:  # the audit's result is handed in by the caller, which runs the audit
    from harness.audit import Audit, Item

log = logging.getLogger(__name__)


# --- formatting ------------------------------------------------------------------------------------------------------
def _num(x: float, d: int = 4, signed: bool = False) -> str:
    return f"{x:+.{d}f}" if signed else f"{x:.{d}f}"


def _iv(iv: Interval, d: int = 4, signed: bool = False) -> str:
    return f"[{_num(iv.lo, d, signed)}, {_num(iv.hi, d, signed)}]"


def _est(e: Estimate, d: int = 4, signed: bool = False) -> str:
    return f"{_num(e.value, d, signed)} {_iv(e.ci, d, signed)}"


def _p(p: float) -> str:
    return f"{p:.3g}"


def _pv(p: float, bound: bool, g: Group, adjusted: bool = False) -> str:
    return format_p(p, bound, g.analysis.n_boot, adjusted) if g.analysis is not None else f"= {p:.3g}"


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


DIRECTIONS = {1: "clearly higher than the base", -1: "clearly lower than the base"}


def _direction(clear: int) -> str:
    return DIRECTIONS.get(clear, "no clear difference from the base")


def _stats_error(g: Group) -> str:
    return wording.no_verdict(g.stats_error) if g.stats_error else ""


def _role_name(run: Run, c: str) -> str:
    role = run.role(c)
    return f"{c} ({role})" if role else c


# --- sections --------------------------------------------------------------------------------------------------------
def _header(run: Run, stamp: dict[str, Any], result: Audit, compare: Sequence[Run] = ()) -> list[str]:
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
    if compare:
        out += [f"Compared with {', '.join(f'run {o.run_id}' for o in compare)} (`promptgap report --compare`): "
                f"their trained conditions scored on the same test examples are weighed against each ceiling.", ""]
    dirty = sorted({f for i in invocations if (i.get("code") or {}).get("dirty") for f in i["code"].get("changed")
                    or []})
    if dirty:
        out += [f"**This run was made from a code tree with uncommitted changes** ({', '.join(dirty[:8])}"
                f"{', …' if len(dirty) > 8 else ''}): its commit alone does not reproduce it.", ""]
    if not result.passed:
        out += [f"**The validity audit fails** ({', '.join(i.title for i in result.failed)}): read the checklist "
                f"at the end before any number here.", ""]
    return out


def _headline_section(run: Run, groups: list[Group]) -> list[str]:
    out = ["## Headline", "",
           f"R = (text − base) / (ceiling − base): the share of the ceiling's gain a readable prompt recovers. A "
           f"verdict needs R's interval on one side of {RECOVERY_THRESHOLD}; flags say what limits it.", ""]
    for g in groups:
        h = headline(run, g)
        out += [f"### {g.name}", "", wording.markdown(wording.ceiling_line(h)), ""]
        if h.metric is None:
            continue
        header, cells = wording.headline_table(h)
        out += _table(header, [[wording.markdown(c) for c in row] for row in cells]) + [""]
        out += [f"- {wording.markdown(wording.note(n, h.per_token))}" for n in h.notes] + ([""] if h.notes else [])
    return out


def _verdict_section(run: Run, groups: list[Group]) -> list[str]:
    out = ["## Verdict in detail", ""]
    for g in groups:
        out += [f"### {g.name}", ""]
        a = g.analysis
        if g.no_r is not None:
            out += [f"**R cannot be computed**: {wording.no_verdict(g.no_r)}. No verdict is given.", ""]
            if a is not None and g.has_base:
                out += _base_differences(run, g)
            elif g.stats_error:
                out += [f"No statistics: {wording.no_verdict(g.stats_error)}.", ""]
            continue
        assert a is not None and a.ceiling is not None
        pct = round(a.confidence * 100)
        deciding = a.deciding
        out += [f"Each text prompt against the ceiling **{a.ceiling}** over the base **{a.base}**, decided on "
                f"{METRIC_LABELS[deciding][0]} ({g.ll_unit if deciding == 'loglik' else 'fraction correct'}); "
                f"{a.n_seeds} seed(s) × {a.n_examples} test examples; {pct}% paired-bootstrap intervals "
                f"({a.n_boot} replicates); an accuracy difference counts as clear only when the exact McNemar test "
                f"agrees with its interval" + (", and with several seeds only when the t-interval over seeds agrees "
                                               "too" if a.n_seeds > 1 else "") + ".", ""]
        if g.ceiling is not None and g.ceiling.chosen:
            out += [wording.ceiling_choice(g.ceiling), ""]
        seen: set[str] = set()
        for t in run.texts:
            if t in seen:
                continue
            if t not in g.usable:
                out.append(f"- **{t}**: no verdict; its cell did not succeed for every seed ({failure(g.cells[t])}).")
                continue
            twins = [x for x in a.texts if a.duplicates.get(x) == t]
            seen.update(twins)
            v = a.verdicts[t]
            name = " = ".join([t, *twins])
            others = "; ".join(f"{METRIC_LABELS[k][0]}: {lab}" for k, lab in v.by_metric.items() if k != v.metric)
            out.append(f"- **{name}**: **{v.label}**: {wording.reason(v.outcome, v.metric)}."
                       + (f" (Other metric, not deciding: {others}.)" if others else ""))
        out += ["", "<details><summary>The full reasoning per text prompt</summary>", ""]
        out += [f"- {wording.explanation(a, t)}" for t in run.texts if t in g.usable and t in a.verdicts
                and a.duplicates.get(t) not in a.texts]
        out += ["", "</details>", ""]
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
        ll_text = (f"gold log-likelihood {_est(ll.diff, signed=True)} {g.ll_unit} ({_direction(ll.clear)})"
                   if g.same_tokens.get(c, True) else "gold log-likelihood not compared (its answers are other "
                   "tokens than the base's)")
        out.append(f"- {_role_name(run, c)}: {ll_text}; accuracy {_est(acc.diff, signed=True)} "
                   f"({_direction(acc.clear)}; McNemar p = {_p(acc.mcnemar.p)})." + _flag_text(a, c))
    return out + [""]


def _flag_text(a: Analysis, c: str) -> str:
    flags = [f"{METRIC_LABELS[k][0]} {FLAG_WORDS[m.conditions[c].flag]}" for k, m in a.metrics.items()
             if m.conditions[c].flag]
    return f" Uninformative: {'; '.join(flags)}." if flags else ""


def _conditions_section(run: Run, groups: list[Group]) -> list[str]:
    out = ["## Conditions", ""]
    for g in groups:
        a = g.analysis
        out += [f"### {g.name}", ""]
        rows = []
        footnote = False
        # another LM's calls and tokens (a DSPy proposer): a column of their own, when any condition asked one
        asked = wording.any_proposer(g.costs[c] for c in run.conditions)
        proposed = {c: [wording.proposer_cost(g.costs[c])] if asked else [] for c in run.conditions}
        for c in run.conditions:
            cells = g.cells[c]
            formats = sorted({str(x.record.format) for x in cells if x.ok and x.record is not None})
            fmt = ", ".join(formats) or "—"
            if c in g.usable and a is not None:
                acc, ll = a.metrics["accuracy"].conditions[c], a.metrics["loglik"].conditions[c]
                diff = g.has_base and c != a.base and acc.diff is not None and ll.diff is not None
                comparable = g.same_tokens.get(c, True)
                footnote |= diff and not comparable
                same = a.duplicates.get(c)
                flags = "; ".join([f"= {same}"] if same else [] + [
                    f"{k}: {m.conditions[c].flag}" for k, m in a.metrics.items() if m.conditions[c].flag])
                rows.append([
                    _role_name(run, c), fmt, _est(acc.mean), _num(-ll.mean.value),
                    _est(acc.diff, signed=True) if diff else "—",
                    (_est(ll.diff, signed=True) if comparable else "— †") if diff else "—",
                    f"{_p(acc.mcnemar.p)} (b={acc.mcnemar.b}, c={acc.mcnemar.c})"
                    if diff and acc.mcnemar is not None else "—",
                    wording.cost(g.costs[c]), *proposed[c], flags or "—", f"{a.n_seeds} × {a.n_examples}",
                ])
            else:
                n_ok = sum(x.ok for x in cells)
                status = "; ".join(f"{x.status} (seed {x.seed})" + (f": {x.error}" if x.error else "")
                                   for x in cells if not x.ok) or "excluded: " + _stats_error(g)
                rows.append([_role_name(run, c), fmt, "—", "—", "—", "—", "—", wording.cost(g.costs[c]),
                             *proposed[c], status, f"{n_ok}/{len(cells)} seeds ok"])
        out += _table(["condition", "format", "accuracy [95% CI]", "gold NLL (mean)", "Δ accuracy vs base [CI]",
                       "Δ gold log-lik vs base [CI]", "McNemar p vs base", "cost (mean over seeds)",
                       *(["proposer (mean over seeds)"] if asked else []), "flags / status", "seeds × n"], rows)
        out.append("")
        notes = []
        if footnote:
            notes.append("† Not compared: the condition's answers are other tokens than the base's (raw and chat "
                         "formats tokenize continuations differently), so its log-likelihood is of another string"
                         + (" and per-token averages differ in length" if g.per_token else "") + ".")
        if a is not None:
            pct = round(a.confidence * 100)
            notes.append(f"Intervals: {pct}%; accuracy: Wilson score interval on the pooled counts; differences and "
                         f"log-likelihoods: paired bootstrap over the same test examples, {a.n_boot} replicates "
                         f"(bootstrap seed {a.seed}), BCa where defined, otherwise percentile (reasons below). "
                         f"Δ = condition − base, per example, then averaged. Gold NLL and log-likelihood are in "
                         f"{g.ll_unit}; log-likelihood = −NLL. McNemar: exact two-sided, b = condition right and "
                         f"base wrong, c = the reverse" + (", pooled over seeds." if a.n_seeds > 1 else "."))
            chance = a.metrics["accuracy"].chance
            if chance is not None:
                notes.append(f"Chance: accuracy {chance:.3f} (1/k), gold NLL {-a.metrics['loglik'].chance:.3f} "
                             f"(ln k), over k choices per example; a condition not clearly better is flagged chance.")
            if asked:
                notes.append("Cost: fit time; token positions through the task model while fitting (the shared "
                             "scorer and the training forward; a plugin's own model calls are not counted); a DSPy "
                             "search's metric calls (examples evaluated under a candidate); trained parameters kept; "
                             "tokens the prompt adds before each input. Proposer: the calls to the LM that proposed "
                             "instructions and their prompt and completion tokens, counted apart from the task "
                             "model's even when the proposer is the task model itself.")
            else:  # cells made before a proposer's cost was counted apart held its tokens in fit tokens
                notes.append("Cost: fit time; token positions through the model while fitting (the shared scorer, "
                             "the training forward and the DSPy proposer; a plugin's own model calls are not "
                             "counted); trained parameters kept; tokens the prompt adds before each input.")
            if not g.has_base:
                notes.append(f"No differences: the base {run.base!r} did not succeed for every seed "
                             f"({failure(g.cells[run.base])})." if run.base in g.cells
                             else "No differences: the config names no base ([ratio] base).")
            # only the bootstrap intervals the table shows (not a stand-in copy's, nor differences without a base)
            ests = [e for m in a.metrics.values() for c in g.usable
                    for e in (m.conditions[c].mean, m.conditions[c].diff if g.has_base else None)
                    if e is not None and e.ci.method != "wilson"]
            why: dict[str, int] = {}
            for e in ests:
                if e.ci.bca_skipped:
                    reason = wording.bca_skipped(e.ci.bca_skipped)
                    why[reason] = why.get(reason, 0) + 1
            notes += [f"Percentile instead of BCa for {k} of {len(ests)} bootstrap intervals in this table: {w}."
                      for w, k in why.items()]
        if g.stats_error:
            notes.append(f"Statistics: {_stats_error(g)}.")
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
           "when the ceiling's gain over the base is clearly positive. p tests R = 0.5 by the interval's own method "
           "(the interval excludes 0.5 exactly when p < 0.05); adjusted p: Holm over the distinct text prompts judged "
           "on that metric.", ""]
    for g in groups:
        out += [f"### {g.name}", ""]
        if g.no_r is not None:
            out += [f"R is **undefined** for every text condition: {wording.no_verdict(g.no_r)}.", ""]
            continue
        a = g.analysis
        assert a is not None and a.ceiling is not None
        gains = []
        for metric in ("loglik", "accuracy"):
            c = a.metrics[metric].conditions[a.ceiling]
            assert c.diff is not None
            mc = f", McNemar p = {_p(c.mcnemar.p)}" if c.mcnemar is not None else ""
            gains.append(f"{METRIC_LABELS[metric][0]} {_est(c.diff, signed=True)}{mc}"
                         + (f" ({FLAG_WORDS[c.flag]})" if c.flag else ""))
        out += [f"Ceiling {a.ceiling!r} over base {a.base!r}: " + "; ".join(gains) + ".", ""]
        rows = []
        for t in run.texts:
            if t not in g.usable:
                why = f"undefined: the condition did not succeed for every seed ({failure(g.cells[t])})"
                rows.append([t, why, why, "—"])
                continue
            row = [t + (f" (= {a.duplicates[t]})" if t in a.duplicates else "")]
            for metric in ("loglik", "accuracy"):
                r = a.metrics[metric].ratios[t]
                if r.value is None or r.ci is None:
                    assert r.undefined is not None
                    row.append(f"undefined: {wording.undefined(r.undefined)}")
                    continue
                s = f"{_num(r.value, 3)} {_iv(r.ci, 3)} ({r.ci.method}), p {_pv(r.p, r.p_bound, g)}"
                if r.seed_t is not None:
                    s += f"; over seeds: t {_iv(r.seed_t.ci, 3)}, p = {_p(r.seed_t.p)}"
                if r.p_adjusted is not None and r.p_adjusted != r.decision_p:
                    s += f"; adjusted p {_pv(r.p_adjusted, r.p_adjusted_bound, g, adjusted=True)}"
                if r.n_excluded:
                    s += f"; {r.n_excluded} replicates with zero ceiling gain left out"
                row.append(s)
            row.append(a.verdicts[t].label)
            rows.append(row)
        out += _table(["text condition", "R, gold log-likelihood [95% CI]", "R, accuracy [95% CI]",
                       f"verdict (decided on {METRIC_LABELS[a.deciding][0]})"], rows) + [""]
        if a.n_seeds > 1:
            out += _per_seed_ratio(run, g)
    return out


def _three_way_section(run: Run, groups: list[Group]) -> list[str]:
    """Prompt, soft prompt or fine-tune? For the groups whose ceiling candidates train both a prompt and weights."""
    shown = [g for g in groups if g.three_way is not None]
    if not shown:
        return []
    first = shown[0]
    assert first.three_way is not None
    out = ["## Prompt, soft prompt or fine-tune?", "",
           wording.three_way_intro(first.three_way.metric, first.per_token), ""]
    for g in shown:
        t = g.three_way
        assert t is not None
        out += [f"### {g.name}", ""]
        rows = []
        for c, kind in t.trains.items():
            side = t.prompt if kind == "prompt" else t.weights
            mark = " (best on dev)" if side.chosen and side.name == c else ""
            cost = g.costs.get(c)
            rows.append([c + mark, wording.TRAINS[kind], _ci(t.gains.get(c)),
                         wording.cost(cost) if cost else "not recorded"])
        out += _table(["trained condition", "trains", f"Δ {METRIC_LABELS[t.metric][0]} vs base [95% CI]",
                       "fit cost; trainable params"], rows) + [""]
        defined = [x for x in t.vs_weights if t.vs_weights[x].value is not None]
        best = max(defined, key=lambda x: t.vs_weights[x].value) if defined else None  # type: ignore[arg-type]
        out += [wording.markdown(wording.three_way_answer(t, best)), ""]
        if len(t.shares) > 1:
            out += ["The trained prompt's share of each weight-training gain: " + "; ".join(
                f"{w}: {wording.ratio_text(r)}" for w, r in t.shares.items()) + ".", ""]
        out += _table(["text prompt", f"R vs {t.prompt.name} (trained prompt) [95% CI]",
                       f"R vs {t.weights.name} (weight training) [95% CI]"],
                      [[x, wording.ratio_text(t.vs_prompt[x]), wording.ratio_text(t.vs_weights[x])]
                       for x in t.vs_prompt]) + [""]
    return out


def _per_seed_ratio(run: Run, g: Group) -> list[str]:
    """With several seeds: each seed's Δ and R on the deciding metric, the spread the t-interval reflects."""
    a = g.analysis
    assert a is not None and a.ceiling is not None
    m = a.metrics[a.deciding]
    header = ["seed", f"Δ ceiling ({a.ceiling})"]
    texts = [t for t in run.texts if t in m.ratios and a.duplicates.get(t) not in a.texts]
    header += [f"Δ {t} / R" for t in texts]
    rows = []
    ceiling_d = m.conditions[a.ceiling].diff_seeds
    for i, s in enumerate(run.seeds):
        row = [s, _num(ceiling_d.per_seed[i], 3, signed=True) if ceiling_d else "—"]
        for t in texts:
            d = m.conditions[t].diff_seeds
            r = m.ratios[t].seed_t
            row.append((_num(d.per_seed[i], 3, signed=True) if d else "—") + " / "
                       + (_num(r.per_seed[i], 3) if r else "—"))
        rows.append(row)
    return [f"Per seed, on {METRIC_LABELS[a.deciding][0]} (the verdict uses the wider of the bootstrap interval and "
            f"the t-interval over these seeds):", ""] + _table(header, rows) + [""]


def _ci(e: Estimate | None, d: int = 3) -> str:
    return "—" if e is None else _est(e, d, signed=True)


def _efficiency_section(run: Run, found: list[Curve], fig_dir: Path, link_dir: str) -> list[str]:
    if not found:
        return []
    out = ["## Sample efficiency", "",
           "Every condition fitted on each train size; the split is made once at the largest size and each smaller "
           "train set is its prefix, so dev and test are the same examples at every size and the points are paired. "
           f"Gain: the condition minus the base on the same test examples (paired bootstrap, 95%); reach: the "
           f"smallest train size whose point estimate of the gain is at least {REACH:.0%} of the largest size's, with "
           "the gain's interval there and the share of the largest-size gain it is (paired bootstrap of "
           "(point − base) / (largest − base) over the test examples).", ""]
    for cv in found:
        unit = "nats per token" if cv.per_token else "nats per example"
        metric = f"gold log-likelihood ({unit})" if cv.metric == "loglik" else "accuracy"
        out += [f"### {cv.name}", "", f"Gain over the base {run.base!r} on {metric}, by train size:", ""]
        rows = [[_role_name(run, c)] + [_ci(p.gain) for p in pts] + [wording.reach(cv.reach[c])]
                for c, pts in cv.points.items()]
        out += _table(["condition"] + [f"train {n}" for n in cv.sizes] + [f"reaches {REACH:.0%} of its largest gain"],
                      rows) + [""]
        texts = [c for c in run.texts if c in cv.points]
        if run.ceiling is not None and texts:
            out += [f"R against the ceiling {run.ceiling!r} at each size (the ceiling fitted on the same train set):",
                    ""]
            out += _table(["text condition"] + [f"train {n}" for n in cv.sizes],
                          [[t] + [wording.ratio_text(p.r) for p in cv.points[t]] for t in texts]) + [""]
        out += [f"Means on {metric}: " + "; ".join(
            f"{c} " + ", ".join(f"{p.size}: {_num(p.mean.value, 3)}" for p in pts if p.mean is not None)
            for c, pts in cv.points.items()) + ".", ""]
        if _can_draw():
            name = _file_name(cv.model, cv.task) + "-efficiency.png"
            efficiency_figure(fig_dir / name, cv, {c: run.role(c) for c in cv.points}, run.ceiling)
            out += [f"![gain and R against train size, {cv.name}]({link_dir}/{quote(name)})", "",
                    "Left: each condition's gain over the base against train size (log scale), with its paired 95% "
                    "interval. Right: R of each text condition against the ceiling at the same size.", ""]
    return out


def _can_draw() -> bool:
    """Whether matplotlib is there (checked before drawing, so a missing install is one sentence, not a crash)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def _transfer_section(run: Run, blocks: list[TransferBlock], fig_dir: Path, link_dir: str) -> list[str]:
    if not blocks:
        return []
    out = ["## Transfer", "",
           "Each artifact fitted on a source task scored, as saved, on a target task's test split (and, for text, by "
           "the run's other models). Before scoring, the target test examples the source's train or dev holds are "
           "removed: the same context and answer, or the task's mirror of one (an antonym pair reversed); the "
           "numbers below are on what is left, paired with the target's own cells on the same examples. Gain: minus "
           "the target's base; R: against the target's own ceiling (95% paired bootstrap).", ""]
    for b in blocks:
        same, mirror = b.removed.get("same", 0), b.removed.get("mirror", 0)
        out += [f"### {b.name}", "",
                f"Leakage filter: {same + mirror} of {b.n_test} target test examples removed ({same} with the same "
                f"context and answer as a source train or dev example, {mirror} mirroring one); {b.n_scored} scored.",
                ""]
        if b.missing:
            out += [f"- Not usable: {m}." for m in b.missing] + [""]
        if b.error or b.analysis is None:
            out += [f"No statistics: {b.error}.", ""]
            continue
        rows = []
        for r in b.rows:
            dagger = "" if r.same_tokens else " †"
            rows.append([_role_name(run, r.condition), _ci(r.transferred.diff) + dagger, wording.ratio_text(r.r),
                         _ci(r.own.diff) if r.own is not None and r.own.diff is not None else "—",
                         "1 (the ceiling)" if r.condition == b.ceiling else wording.ratio_text(r.r_own)])
        metric = "gold log-lik" if b.analysis.deciding == "loglik" else "accuracy"
        out += _table(["condition", f"transferred: Δ {metric} vs target base [CI]",
                       f"transferred: R vs target ceiling {b.ceiling!r}" if b.ceiling else "transferred: R",
                       f"fitted on {b.target_task}: Δ {metric} [CI]", f"fitted on {b.target_task}: R"], rows) + [""]
        if not all(r.same_tokens for r in b.rows):
            out += ["† The transferred artifact's answers are other tokens than the target base's (another format), "
                    "so its log-likelihood difference compares different strings.", ""]
        if b.ceiling is None:
            out += ["R is not shown: the run has no ceiling ([ratio] ceiling) on the target.", ""]
        if _can_draw():
            name = _file_name(b.source_model, b.source_task, b.target_model, b.target_task, f"seed{b.seed}",
                              *([f"train{b.train_size}"] if b.train_size is not None else [])) + "-transfer.png"
            transfer_figure(fig_dir / name, b)
            out += [f"![transfer {b.name}]({link_dir}/{quote(name)})", "",
                    "Each condition's gain over the target's base: transferred from the source (filled) and fitted on "
                    "the target itself (open), on the same test examples, with 95% paired intervals.", ""]
    return out


def _overfitting_section(run: Run, groups: list[Group]) -> list[str]:
    found = [(g, overfitting(g)) for g in groups]
    found = [(g, o) for g, o in found if o]
    if not found:
        return []
    out = ["## Training curves and overfitting", "",
           "From each trial's train and dev curves (log.json): the dev-selected step, the mean train loss over the "
           "steps before that evaluation, the dev loss there and their gap (dev − train). Flagged: a selected step "
           "that is the first evaluation (nothing learned generalised to dev); overfitting, when from the selected "
           "step to the last evaluation the dev loss rises by more standard errors of the paired per-example "
           "difference than the threshold (Bonferroni over the pairs of evaluations, since the data choose both the "
           f"minimum and where early stopping ends, so a curve whose dev loss is noise is flagged at most "
           f"{FIT_ALPHA:.0%} of the time) while the train loss "
           "falls by more than two standard errors of the difference of the two windows' means; and still "
           "improving, when the selected step is the last evaluation, or the last evaluation's dev loss is below "
           "the one before by more than two standard errors and not clearly above the selected one. ★: the trial "
           "the condition chose.", ""]
    for g, per_condition in found:
        out += [f"### {g.name}", ""]
        rows = []
        for c, per_seed in per_condition.items():
            for seed, checks in per_seed:
                for x in checks:
                    rows.append([c, seed, x.label + (" ★" if x.winner and len(checks) > 1 else ""),
                                 f"{x.selected} ({x.evaluations} evaluations)" if x.selected is not None else "—",
                                 _num(x.train_loss, 3) if x.train_loss is not None else "—",
                                 _num(x.dev_loss, 3) if x.dev_loss is not None else "—",
                                 _num(x.gap, 3, signed=True) if x.gap is not None else "—",
                                 wording.fit_warnings(x)])
        out += _table(["condition", "seed", "trial", "selected step", "train loss", "dev loss", "gap", "warnings"],
                      rows) + [""]
    return out


def _figures_section(run: Run, groups: list[Group], fig_dir: Path, link_dir: str) -> list[str]:
    out = ["## Figures", ""]
    if not _can_draw():
        return out + ["Figures not drawn: matplotlib is not installed (`pip install matplotlib`).", ""]
    for g in groups:
        out += [f"### {g.name}", ""]
        a = g.analysis
        if a is None:
            out += [f"No figures: {_stats_error(g)}.", ""]
            continue
        roles = [run.role(c) for c in g.usable]
        stem = _file_name(g.model, g.task, *([f"train{g.train_size}"] if g.train_size is not None else []))
        name = stem + "-metrics.png"
        metrics_figure(fig_dir / name, g.name, a, g.usable, roles, g.ll_unit, g.has_base)
        out += [f"![accuracy and gold log-likelihood per condition, {g.name}]({link_dir}/{quote(name)})", "",
                "Means with 95% intervals (the table's); conditions that succeeded for every seed; grey: base (also "
                "the dashed line), blue: text, orange: ceiling, green: other; dotted: chance.", ""]
        if g.has_base and len(g.usable) > 1:
            name = stem + "-differences.png"
            differences_figure(fig_dir / name, g.name, a, [c for c in g.usable if c != a.base],
                               [run.role(c) for c in g.usable if c != a.base], g.ll_unit, g.same_tokens)
            out += [f"![paired differences from the base, {g.name}]({link_dir}/{quote(name)})", "",
                    f"Paired differences from the base {a.base!r} with 95% intervals; dotted: where a condition at "
                    f"chance would sit; conditions whose answers are other tokens than the base's have no "
                    f"log-likelihood point.", ""]
        if a.ceiling is not None and a.texts:
            name = stem + "-ratio.png"
            if forest_figure(fig_dir / name, g.name, a):
                out += [f"![R per text prompt, {g.name}]({link_dir}/{quote(name)})", "",
                        f"R on {METRIC_LABELS[a.deciding][0]} per distinct text prompt, with the interval its "
                        f"verdict uses; lines at 0 (the base), 0.5 and 1 (the ceiling).", ""]
        for c in run.conditions:
            logs = [(x.seed, x.log.get("curves")) for x in g.cells[c] if x.log and x.log.get("curves")]
            if not logs:
                continue
            name = stem + "--" + _file_name(c) + "-curves.png"
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


def _as_read_lines(run: Run, g: Group) -> list[str]:
    """One test example per format as the model read it (the harness's record of a cell's first test request),
    the base condition's where it has that format, and what the chat template reads and what promptgap pinned."""
    shown: dict[str, tuple[str, dict[str, str], PromptArtifact]] = {}
    for c in sorted(run.conditions, key=lambda c: run.role(c) != "base"):
        for x in g.cells[c]:
            if x.ok and x.artifact is not None and x.evidence is not None and x.evidence.example:
                shown.setdefault(x.artifact.format, (c, x.evidence.example, x.artifact))
    if not shown:
        return ["As the model reads them: not recorded (the code that computed these cells kept no test request's "
                "text in evidence.json; runs made since do).", ""]
    out = ["As the model reads them: one test example per format, the first test request of the condition named "
           "(recorded by the harness while it scored the test split; the continuation is what is scored).", ""]
    for fmt in sorted(shown, key=lambda f: f != "raw"):
        c, ex, art = shown[fmt]
        context = ex["context"].replace(SLOT, f"⟨soft prompt: {art.n_soft} vectors⟩")
        lead = [f"(a key/value prefix of {art.n_prefix} positions precedes every token)", ""] \
            if art.prefix_kv is not None else []
        out += [f"**{fmt}** ({c}, example `{ex['example_id']}`):", "", *lead, *_fenced(context), "",
                f"Continuation: {_tok(ex['continuation'])}", ""]
        if fmt == "chat":
            facts = (((run.manifest.get("models") or {}).get(g.model) or {}).get("tokenizer") or {}).get(
                "chat_template")
            if facts:
                pinned = ", ".join(f"{k} = {v!r}" for k, v in facts.get("pinned", {}).items()) or "nothing"
                today = {True: "**yes: results can change from day to day**", False: "no", None: "unknown"}[
                    facts.get("today_in_prompt")]
                out += [f"Chat template: reads {', '.join(facts.get('variables') or []) or 'no other variables'}; "
                        f"promptgap pinned {pinned}; today's date in the prompt: {today}.", ""]
    return out


def _prompts_section(run: Run, groups: list[Group]) -> list[str]:
    out = ["## Final prompts", ""]
    for g in groups:
        out += [f"### {g.name}", "", *_as_read_lines(run, g)]
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
    fell = [[c.label, f["where"], f["what"]] for c in run.cells.values() if c.record and c.record.fallbacks
            for f in c.record.fallbacks]
    out += ["", "Out-of-memory fallbacks (cell.json `fallbacks`; the numbers are the same, the work was cut finer): "
            + ("none." if not fell else f"{len(fell)}."), ""]
    if fell:
        out += _table(["cell", "where", "what"], fell) + [""]
    return out + _provenance_lines(run)


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


MARKS = {"pass": "✅", "fail": "❌", "warn": "⚠️", "n/a": "➖"}


def item_lines(item: Item) -> list[str]:
    """An audit item as markdown list lines."""
    label = " (reported by the condition)" if item.reported else ""
    out = [f"- {MARKS[item.status]} **{item.title}**{label}: {item.evidence}."]
    out += [f"  - {p}" for p in item.shown]
    if item.hidden:
        out.append(f"  - … and {item.hidden} more")
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
def render_report(run: Run, checked: Audit, fig_dir: Path, n_boot: int, compare: Sequence[Run] = ()) -> str:
    """The markdown of the report, with ``checked`` (the audit of ``run``, without its report item) as its checklist;
    figures and verdict.json are drawn into ``fig_dir`` and linked as ``<run-id>/<file>``. ``compare``: other runs
    whose trained conditions on the same test examples are weighed against the ceiling."""
    stamp = {"run_id": run.run_id, "written": provenance.now(),
             "code": {k: v for k, v in provenance.code_state().items() if k in ("version", "commit", "dirty")}}
    groups = analyze_groups(run, n_boot, compare)
    link_dir = quote(run.run_id)
    write_json(fig_dir / "verdict.json", verdict_json(run, groups, stamp, checked))
    lines = (_header(run, stamp, checked, compare) + _headline_section(run, groups) + _verdict_section(run, groups)
             + _conditions_section(run, groups) + _ratio_section(run, groups) + _three_way_section(run, groups)
             + _efficiency_section(run, curves(run, groups, n_boot), fig_dir, link_dir)
             + _transfer_section(run, transfers(run, n_boot), fig_dir, link_dir) + _overfitting_section(run, groups)
             + _figures_section(run, groups, fig_dir, link_dir)
             + _prompts_section(run, groups) + _setup_section(run) + _checklist_section(checked))
    return "\n".join(lines).rstrip("\n") + "\n"


def write_report(run: Run, checked: Audit, reports_dir: Path = Path("reports"), n_boot: int | None = None,
                 compare: Sequence[Run] = ()) -> Path:
    """Write ``reports_dir/<run-id>.md`` and its figures in ``reports_dir/<run-id>/``; return the markdown's path.

    ``checked`` is the audit's result for ``run``, run by the caller beside the report. ``n_boot`` defaults to the
    run config's ``run.n_boot`` (else the stats module's default). The figures are drawn into a temp folder and the
    markdown is rendered before anything is replaced, so a failure leaves the previous report whole.
    """
    if n_boot is None:
        n_boot = int((run.config.get("run") or {}).get("n_boot") or DEFAULT_N_BOOT)
    reports_dir = Path(reports_dir)
    md_path = check_inside(reports_dir, reports_dir / f"{run.run_id}.md")
    with atomic_dir(reports_dir / run.run_id, root=reports_dir) as fig_dir:
        text = render_report(run, checked, fig_dir, n_boot, compare)
    write_atomic(md_path, text)
    log.info("report written: %s", md_path)
    return md_path


# --- a suite's leaderboard -------------------------------------------------------------------------------------------
LEADERBOARD_SCHEMA = "promptgap-leaderboard/1"
FIGURE = "r-vs-tokens.png"  # mean R against fit tokens, beside leaderboard.json


def board_name(run_id: str) -> str:
    """The leaderboard's name in the reports folder: ``leaderboard-<suite run>`` (bench-smoke-v2 -> -smoke-v2)."""
    return "leaderboard-" + run_id.removeprefix("bench-")


def leaderboard_json(b: Board, suite: dict[str, Any], run: Run, checked: Audit, report: str) -> dict[str, Any]:
    """leaderboard.json: the board as numbers and labels (``harness/schemas/leaderboard.schema.json``)."""
    def iv(x: Interval | None) -> list[float] | None:
        return None if x is None else [x.lo, x.hi]

    return {"schema": LEADERBOARD_SCHEMA, "suite": suite, "run": run.run_id, "report": report,
            "audit": {"passed": checked.passed, "failed": [i.title for i in checked.failed]}, "model": b.model,
            "metric": b.metric, "base": b.base, "ceiling": b.ceilings, "ceiling_candidates": run.ceilings,
            "seeds": run.seeds, "tasks": b.tasks,
            "gap": b.gap, "averaged": b.stats.tasks, "no_gap": b.stats.no_gap, "n_boot": b.stats.n_boot,
            "confidence": b.stats.confidence, "excluded_replicates": b.stats.n_excluded,
            "reference": b.reference, "figure": FIGURE if b.stats.tasks else None,
            "three_way": None if b.three_way is None else {
                "prompts": b.three_way.prompts, "weights": b.three_way.weights,
                "vs_prompt": {x.name: {"mean_r": x.mean_r, "ci": iv(x.ci)} for x in b.three_way.vs_prompt.rows},
                "vs_weights": {x.name: {"mean_r": x.mean_r, "ci": iv(x.ci)} for x in b.three_way.vs_weights.rows}},
            "rows": [{"condition": r.name, "rank": r.suite.rank, "rank_ci": list(r.suite.rank_ci or []) or None,
                      "mean_r": r.suite.mean_r, "mean_r_ci": iv(r.suite.ci), "reused_cells": r.reused,
                      "above_reference": r.above_reference,
                      "cost": r.cost.to_json(),
                      "tasks": {t: {"r": c.r, "ci": iv(c.ci), "verdict": c.label, "no_r": c.no_r}
                                for t, c in r.cells.items()}} for r in b.rows]}


def render_leaderboard(b: Board, suite: dict[str, Any], run: Run, checked: Audit, report: str) -> str:
    """The leaderboard's markdown: the first screen answers which condition recovers most of the trained gain, at
    what cost, and how sure the numbers are; each task's detail is in the run's own report. Everything in it comes
    from the run folder (the commands and times from its manifest), so it re-renders the same from a clone."""
    invocations = run.manifest.get("invocations") or []
    commands = list(dict.fromkeys(str(i.get("command")) for i in invocations if i.get("command")))
    seconds = sum(float(i.get("seconds") or 0) for i in invocations)
    reused = sum(sum((i.get("reused") or {}).values()) for i in invocations)
    machine = (run.manifest.get("machine") or {}).get("platform", "not recorded")
    cpus = (run.manifest.get("machine") or {}).get("cpu_count")
    out = []
    if not checked.passed:
        out += [f"**The validity audit of this run fails** ({', '.join(i.title for i in checked.failed)}): "
                f"`promptgap check results/{run.run_id}` says why; read no number below before that.", ""]
    out += [f"# Leaderboard: suite {suite['name']} v{suite['version']}", "",
            f"Model {b.model}; metric {METRIC_LABELS[b.metric][0]}; R = (text - {b.base}) / (ceiling - "
            f"{b.base}), {wording.ceiling_rule(run.ceilings, b.metric)}; seeds {', '.join(map(str, run.seeds))}; "
            f"{b.stats.n_boot} bootstrap replicates.", "",
            "Command: " + (", ".join(f"`{c}`" for c in commands) or "not recorded")
            + f". Cells computed in {wording.duration(seconds)} over {len(invocations)} sitting(s) "
            f"({reused} cell(s) copied from earlier runs) on {machine}"
            + (f", {cpus} CPUs" if cpus else "") + f". Run folder: `results/{run.run_id}`; per-task detail: [{report}]"
            f"({quote(report)}).", ""]
    budget = wording.board_budget(suite.get("budget_tokens"), [c for c, body in (run.config.get("conditions") or {})
                                                               .items() if "budget_tokens" in (body.get("settings")
                                                                                               or {})])
    for line in (budget, wording.board_skipped(suite.get("skipped") or {})):
        if line:
            out += [line, ""]
    header, rows = wording.board_table(b)
    out += _table(header, rows)
    if b.stats.tasks:
        out += ["", f"![mean R against fit tokens]({quote(board_name(run.run_id))}/{FIGURE})"]
    out += ["", wording.board_mean_note(len(b.stats.tasks), len(b.tasks), b.stats.no_gap, b.stats.n_excluded,
                                        b.stats.confidence), ""]
    if b.three_way is not None:
        intro, header, rows = wording.board_three_way(b.three_way)
        out += ["## Prompt, soft prompt or fine-tune?", "", intro, ""] + _table(header, rows) + [""]
    return "\n".join(out) + "\n"


def write_leaderboard(b: Board, suite: dict[str, Any], run: Run, checked: Audit, reports_dir: Path,
                      report: Path) -> Path:
    """``reports_dir/leaderboard-<suite run>.md`` and ``leaderboard-<suite run>/leaderboard.json``, each written
    whole; returns the markdown's path."""
    reports_dir = Path(reports_dir)
    name = board_name(run.run_id)
    md_path = check_inside(reports_dir, reports_dir / f"{name}.md")
    rel = report.relative_to(reports_dir).as_posix() if report.is_relative_to(reports_dir) else str(report)
    text = render_leaderboard(b, suite, run, checked, rel)
    with atomic_dir(reports_dir / name, root=reports_dir) as tmp:
        write_json(tmp / "leaderboard.json", leaderboard_json(b, suite, run, checked, rel))
        if b.stats.tasks:
            board_figure(b, tmp / FIGURE)
    write_atomic(md_path, text)
    return md_path
