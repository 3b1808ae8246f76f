"""The one place promptgap's findings become words: verdict reasons and explanations, flags, notes, why R or a verdict
is missing, costs, reach, overfitting warnings.

The analysis (``harness.stats``) holds numbers and labels, the findings (``harness.findings``) hold verdicts, flags and
notes as data (kinds and the numbers they cite); this module writes them as sentences, and the renderers
(``harness.report``, ``harness.terminal``, ``harness.verdict_file``) only format what it writes. Emphasis is marked,
never written: a ``Text`` is a sequence of plain and ``Em`` spans, which the markdown report writes as ``**x**`` and
the terminal in bold, so no renderer has to strip another's markup.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from harness.findings import (
    PROMPT_ROLE,
    BeatenCeiling,
    Board,
    BoardThreeWay,
    CannotRank,
    CeilingChoice,
    Cost,
    FitCheck,
    FitWarning,
    Flag,
    Headline,
    MetricsDisagree,
    Multiplicity,
    NoiseFloor,
    NotAssessable,
    Note,
    NoVerdict,
    OneSeed,
    Overfitting,
    Reach,
    Row,
    StillImproving,
    ThreeWay,
    TwoSeeds,
)
from harness.stats import (
    RECOVERY_THRESHOLD,
    Analysis,
    BcaSkip,
    Estimate,
    Interval,
    MetricAnalysis,
    Outcome,
    RatioStats,
    SuiteRow,
    Undefined,
)

if TYPE_CHECKING:
    from harness.run_folder import Cell

METRIC_LABELS = {
    "loglik": ("gold log-likelihood", "minus the gold NLL in nats, per token for continuation tasks; higher is better"),
    "accuracy": ("accuracy", "fraction correct"),
}
FLAG_WORDS = {"floor": "at the floor (0 on every example)", "saturated": "saturated (1 on every example)",
              "chance": "no better than chance"}
BCA_SKIP_WORDS = {
    "several-seeds": "several seeds: the hierarchical bootstrap reports percentile intervals",
    "equal-replicates": "all bootstrap replicates are equal",
    "no-jackknife": "no jackknife estimates",
    "jackknife-undefined": "the jackknife is undefined (too few examples, or a leave-one-out estimate has a zero "
                           "denominator)",
    "jackknife-zero": "the jackknife variance is 0",
    "outside-distribution": "the estimate lies outside the bootstrap distribution",
    "degenerate-levels": "the BCa levels are degenerate",
}


# --- marked text -----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Em:
    """Emphasised words: markdown writes them as ``**text**``, the terminal in bold."""

    text: str


@dataclass(frozen=True)
class Text:
    """Words with emphasis marked, not written: plain ``str`` spans and ``Em`` spans, in order."""

    spans: tuple[str | Em, ...]

    def __add__(self, other: Text | str | Em) -> Text:
        return Text(self.spans + (other.spans if isinstance(other, Text) else (other,)))

    @property
    def plain(self) -> str:
        """The words without any emphasis."""
        return "".join(s.text if isinstance(s, Em) else s for s in self.spans)


def words(*spans: str | Em | Text) -> Text:
    """A ``Text`` from spans and other texts, in order."""
    out: list[str | Em] = []
    for s in spans:
        out.extend(s.spans if isinstance(s, Text) else (s,))
    return Text(tuple(out))


def markdown(t: Text) -> str:
    """A text as markdown: emphasis as ``**x**`` (the report, and verdict.json's flags)."""
    return "".join(f"**{s.text}**" if isinstance(s, Em) else s for s in t.spans)


def joined(sep: str, parts: Iterable[Text | str | Em]) -> Text:
    out = Text(())
    for i, p in enumerate(parts):
        out = words(out, sep, p) if i else words(out, p)
    return out


# --- numbers ---------------------------------------------------------------------------------------------------------
def est(e: Estimate, d: int = 3) -> str:
    """An estimate with its interval, signed: ``+0.123 [+0.045, +0.201]``."""
    return f"{e.value:+.{d}f} [{e.ci.lo:+.{d}f}, {e.ci.hi:+.{d}f}]"


def interval(iv: Interval) -> str:
    return f"[{iv.lo:+.3f}, {iv.hi:+.3f}]"


def format_p(p: float, bound: bool, n_boot: int, adjusted: bool = False) -> str:
    """'= p' for a measured p; where the bootstrap cannot resolve it (``bound``), '< 1/n_boot' for a p, and '<= p'
    for its Holm adjustment (the resolution times Holm's factor)."""
    if not bound:
        return f"= {p:.3g}"
    return f"<= {p:.2g}" if adjusted else f"< 1/{n_boot}"


def bca_skipped(skip: BcaSkip) -> str:
    """Why an interval is the percentile one, not BCa."""
    if skip.kind == "acceleration":
        return f"the acceleration ({skip.acceleration:.3g}) is too large for the BCa adjustment"
    return BCA_SKIP_WORDS[skip.kind]


def metric_name(metric: str, per_token: bool) -> str:
    """The metric as the headline names it (greedy exact match is a continuation task's accuracy)."""
    if metric == "accuracy":
        return "greedy exact match" if per_token else "accuracy"
    return f"gold log-likelihood ({'nats per token' if per_token else 'nats per example'})"


def short_metric(metric: str, per_token: bool) -> str:
    return metric_name(metric, per_token).split(" (")[0]


# --- the verdict -----------------------------------------------------------------------------------------------------
def undefined(u: Undefined) -> str:
    """Why R is undefined."""
    why = f"ceiling gain not clearly positive: {est(u.gain)}"
    if u.mcnemar_p is not None:
        why += f" (McNemar p = {u.mcnemar_p:.3g} does not agree)"
    elif u.seed_t is not None:
        why += f" (the t-interval over seeds, {interval(u.seed_t)}, does not agree)"
    return why


def reason(o: Outcome, metric: str) -> str:
    """The rule that gave the outcome ``o`` on ``metric``, in one sentence."""
    t = RECOVERY_THRESHOLD
    if o.rule == "same-as-base":
        return "its per-example scores equal the base's, so it is the base in effect and gets no verdict"
    if o.rule == "uninformative":
        assert o.flag is not None
        who = "the ceiling" if o.who == "ceiling" else "the text prompt"
        return f"{who} {o.condition!r} is {FLAG_WORDS[o.flag]} on {METRIC_LABELS[metric][0]}"
    if o.rule == "only-text-improves":
        return ("the text prompt clearly improves but the ceiling does not, so R is undefined; a ceiling that does not "
                "beat a readable prompt suggests an under-trained soft prompt")
    if o.rule == "neither-improves":
        return ("neither the ceiling nor the text prompt clearly improves on the base (which is not the same as "
                "showing that they do not)")
    assert o.p_adjusted is not None
    p = format_p(o.p_adjusted, o.p_adjusted_bound, o.n_boot, adjusted=o.family > 1)
    which = f"Holm-adjusted p {p} over a family of {o.family}" if o.family > 1 else f"p {p}"
    if o.rule == "r-above":
        return (f"R's interval lies above {t} ({which} for R = {t}), so the text prompt recovers most of the "
                f"ceiling's gain")
    if o.rule == "r-below":
        return (f"R's interval lies below {t} ({which} for R = {t}), so the text prompt recovers less than half of "
                f"the ceiling's gain")
    more = f"; about {o.n_needed} test examples per seed would settle it" if o.n_needed else ""
    if o.seeds_needed:
        more = (f"; the spread between seeds decides, so more examples per seed would not settle it: about "
                f"{o.seeds_needed} seeds would")
    return (f"the data cannot tell whether the text prompt recovers more or less than half of the gap ({which} for "
            f"R = {t}){more}")


def _describe(m: MetricAnalysis, ceiling: str, text: str) -> str:
    gain, tgain, r = m.conditions[ceiling].diff, m.conditions[text].diff, m.ratios[text]
    assert gain is not None and tgain is not None

    def p(cond: str) -> str:
        mc = m.conditions[cond].mcnemar
        return f" (McNemar p = {mc.p:.3g})" if mc is not None else ""

    s = f"the ceiling's difference from the base is {est(gain)}{p(ceiling)} and the text prompt's {est(tgain)}{p(text)}"
    if r.value is not None and r.ci is not None:
        s += f"; R = {r.value:.3f} [{r.ci.lo:.3f}, {r.ci.hi:.3f}]"
        if r.seed_t is not None:
            s += f" (over seeds: t-interval {interval(r.seed_t.ci)}; the wider decides)"
        if r.n_excluded:
            s += f" ({r.n_excluded} replicates with a zero ceiling gain left out)"
    else:
        assert r.undefined is not None
        s += f"; R is undefined ({undefined(r.undefined)})"
    return s


def explanation(a: Analysis, text: str) -> str:
    """The full reasoning behind ``text``'s verdict: the numbers on each metric and the rule that fired."""
    assert a.ceiling is not None
    v = a.verdicts[text]
    deciding = v.metric
    pct = round(a.confidence * 100)
    methods = sorted({e.ci.method for m in a.metrics.values() for c in (a.ceiling, text)
                      for e in (m.conditions[c].diff,) if e is not None})
    parts = [
        f"Verdict for {text!r} against the ceiling {a.ceiling!r} over the base {a.base!r}: \"{v.label}\". "
        f"Numbers are means over {a.n_seeds} seed(s) x {a.n_examples} test examples with {pct}% "
        f"paired-bootstrap intervals ({' or '.join(methods)}, {a.n_boot} replicates). "
        f"On {METRIC_LABELS[deciding][0]} ({METRIC_LABELS[deciding][1]}; the deciding metric), "
        f"{_describe(a.metrics[deciding], a.ceiling, text)}; {reason(v.outcome, deciding)}."
    ]
    for name, other in v.outcomes.items():
        if name != deciding:
            parts.append(f"On {METRIC_LABELS[name][0]} ({METRIC_LABELS[name][1]}; reported, not deciding), "
                         f"{_describe(a.metrics[name], a.ceiling, text)}; the same rules give \"{other.label}\""
                         + (f" ({reason(other, name)})" if other.label == "uninformative" else "") + ".")
    if deciding != "loglik" and "loglik" not in a.metrics:
        parts.append("No log-likelihood scores were given, so accuracy decided; it is much noisier.")
    return " ".join(parts)


# --- what a run lacks ------------------------------------------------------------------------------------------------
def failure(cells: Sequence[Cell]) -> str:
    """Why a condition is not usable: each failing seed with its status and message."""
    return "; ".join(f"seed {c.seed}: {c.status}" + (f" ({c.error})" if c.error else "") for c in cells if not c.ok)


NO_USABLE = "no condition succeeded for every seed"


def no_verdict(n: NoVerdict) -> str:
    """Why a group has no R (and so no verdict), or why a row has none."""
    if n.kind == "no-base":
        return "the config has no [ratio] section naming a base, so there is nothing to measure gains from"
    if n.kind == "no-ceiling":
        return ("the config names no ceiling condition ([ratio] ceiling is unset), so there is no gap to measure a "
                "recovery against")
    if n.kind == "base-failed":
        return f"the base {n.condition!r} did not succeed for every seed ({failure(n.cells)})"
    if n.kind == "ceiling-failed":
        return f"the ceiling {n.condition!r} did not succeed for every seed ({failure(n.cells)})"
    if n.kind == "stats-failed":
        return f"the statistics could not be computed ({n.error})"
    if n.kind == "no-usable":
        return NO_USABLE
    if n.kind == "stats-error":
        return str(n.error)
    if n.kind == "cell-failed":
        return f"its cell did not succeed for every seed ({failure(n.cells)})"
    return "no statistics"


# --- costs -----------------------------------------------------------------------------------------------------------
def _duration(s: float) -> str:
    return f"{s:.1f} s" if s < 60 else f"{s / 60:.1f} min"


def _count(x: float) -> str:
    x = float(x)
    if x >= 1e6:
        return f"{x / 1e6:.1f} M"
    if x >= 1e4:
        return f"{x / 1e3:.0f} k"
    return f"{x:.0f}"


def count(x: float | None) -> str:
    """A count for a table cell ("-" when not recorded)."""
    return "-" if x is None else _count(x)


def duration(s: float | None) -> str:
    """Seconds for a table cell ("-" when not recorded)."""
    return "-" if s is None else _duration(s)


def cost(c: Cost) -> str:
    """What fitting took, in a few words."""
    parts = []
    if c.fit_seconds is not None:
        parts.append(f"fit {_duration(c.fit_seconds)}")
    if c.fit_tokens is not None:
        parts.append(f"{_count(c.fit_tokens)} tok" if c.fit_tokens else "no model calls")
    if c.metric_calls is not None:
        parts.append(f"{_count(c.metric_calls)} metric calls")
    size = []
    if c.trainable_params:
        size.append(f"{_count(c.trainable_params)} params")
    if c.prompt_tokens is not None:
        size.append(f"+{_count(c.prompt_tokens)} prompt tok")
    return ", ".join(parts) + ("; " + ", ".join(size) if size else "") if parts or size else "not recorded"


def proposer_cost(c: Cost) -> str:
    """What another LM (a DSPy proposer) cost, apart from the task model's tokens ("-" when none was asked)."""
    if c.proposer_calls is None:
        return "-"
    return f"{_count(c.proposer_calls)} calls, {_count(c.proposer_tokens)} tok" if c.proposer_tokens is not None \
        else f"{_count(c.proposer_calls)} calls"


def any_proposer(costs: Iterable[Cost]) -> bool:
    """Whether a table needs the proposer column."""
    return any(c.proposer_calls is not None for c in costs)


# --- the headline ----------------------------------------------------------------------------------------------------
def ceiling_line(h: Headline) -> Text:
    """What the ceiling does over the base, or why there is no verdict."""
    if h.no_verdict is not None:
        return words(f"No verdict: {no_verdict(h.no_verdict)}.")
    assert h.ceiling_gain is not None
    line = words("Ceiling ", Em(str(h.ceiling)), " over base ", Em(str(h.base)),
                 f" on {metric_name(str(h.metric), h.per_token)}: {est(h.ceiling_gain)} "
                 f"({'clearly positive' if h.gain_clear else 'not clearly positive'}); cost: {cost(h.ceiling_cost)}.")
    if h.ceiling_flag:
        line = words(line, " The ceiling is ", Em(FLAG_WORDS[h.ceiling_flag]),
                     " on this metric, so it shows no gap to recover.")
    return line


def row_reason(r: Row) -> str:
    """Why a headline row has its verdict, or none."""
    if r.outcome is None:
        assert r.no_verdict is not None
        return f"no verdict: {no_verdict(r.no_verdict)}"
    return reason(r.outcome, r.metric)


def flag(f: Flag, per_token: bool) -> Text:
    """One flag of a headline row."""
    if f.kind == "identical":
        return words(f"{f.n} conditions, identical scores")
    if f.kind == "same-as-base":
        return words(f"= {f.value} (identical scores)")
    if f.kind == "metric-flag":
        return words(f"{short_metric(str(f.metric), per_token)}: {f.value}")
    if f.kind == "metric-says":
        return words(Em(f"{short_metric(str(f.metric), per_token)} says {f.value}"))
    if f.kind == "one-seed":
        return words("one seed")
    return words(f"family of {f.n} (Holm)")


def note(n: Note, per_token: bool) -> Text:
    """One note under a headline table."""
    short = short_metric
    if isinstance(n, BeatenCeiling):
        beats = (words(Em(c), f" beats the designated ceiling by {est(e)}") for c, e in n.by.items())
        return words("A stronger trained condition exists: ", joined("; ", beats),
                     f". R against {n.ceiling!r} understates the real gap; \"recovers less than half\" means less "
                     f"than half of what {n.ceiling!r} gains, and the verdicts claim no more.")
    if isinstance(n, MetricsDisagree):
        return words("The metrics disagree: ",
                     joined("; ", (words(Em(t), f" is {label} on {short(n.metric, per_token)} but {other_label} on "
                                                f"{short(other, per_token)}")
                                   for t, label, other, other_label in n.splits)),
                     ". The verdict follows the deciding metric; a prompt that raises the gold answer's likelihood "
                     "without changing what the model answers has not closed the gap for a user who reads the "
                     "answers.")
    if isinstance(n, NoiseFloor):
        return words(f"Noise floor of hand-writing: the {n.n} instructions of ", Em(n.parent),
                     f" (each scored on test in its own cell) gain {est(n.lo)} ({n.lo_name}, least) to {est(n.hi)} "
                     f"({n.hi_name}, most) over the base, median {est(n.median)}, on {short(n.metric, per_token)}; "
                     f"{n.parent} itself is the one chosen on dev. A text optimizer's gain inside this spread is no "
                     f"more than a choice of wording.")
    if isinstance(n, OneSeed):
        return words("One seed: each verdict holds for this one trained ceiling and this one run of each search, not "
                     "for the methods in general; run more seeds to see their spread.")
    if isinstance(n, TwoSeeds):
        return words("Two seeds: the t-interval over seeds, which every verdict also uses, has one degree of freedom "
                     "(its 95% point is 12.7 standard errors), so it is wide and a verdict is hard to reach; run 3 "
                     "or more seeds.")
    if isinstance(n, Multiplicity):
        return words(f"Multiplicity: {n.family} distinct text prompts are judged against the ceiling on "
                     f"{short(n.metric, per_token)}; their tests of R = {RECOVERY_THRESHOLD} are Holm-corrected at "
                     f"{n.alpha:.0%} (the p in the table is adjusted).")
    if isinstance(n, CannotRank):
        return words(f"{short(n.metric, per_token).capitalize()} cannot rank these prompts here ("
                     + "; ".join(f"{FLAG_WORDS[f]}: {', '.join(ts)}" for f, ts in n.by_flag.items())
                     + f"); the verdicts are decided on {short(n.deciding, per_token)}.")
    if isinstance(n, StillImproving):
        flagged = [f"{c}{', the ceiling' if role == 'ceiling' else ''} (seed {seed}): {fit_warning(w)}"
                   for c, role, seed, w in n.flagged]
        roles = {role for _, role, _, _ in n.flagged}
        why = (["A ceiling that could go higher makes every R overstated."] if "ceiling" in roles else []) \
            + (["A condition that could go further has its gain understated."] if roles - {"ceiling"} else [])
        return words(f"Still improving when its budget ended, on the chosen trial of {len(flagged)} condition(s): "
                     + " · ".join(flagged) + ". " + " ".join(why) + " A longer budget (more steps, or a larger "
                     "max_minutes) is the remedy.")
    if isinstance(n, NotAssessable):
        return words("Overfitting not assessable for "
                     + ", ".join(f"{c} (seed {seed})" for c, seed in n.trials)
                     + ": the log predates per-example dev losses, so a rise in dev loss has no noise scale; re-run "
                     "the condition to assess it.")
    assert isinstance(n, Overfitting)
    flagged = [f"{c} (seed {seed}): {'; '.join(fit_warning(w) for w in ws)}" for c, seed, ws in n.flagged]
    return words(f"Overfitting flagged on the chosen trial of {len(flagged)} condition(s): " + " · ".join(flagged)
                 + " (see Training curves and overfitting).")


def headline_table(h: Headline) -> tuple[list[str], list[list[Text]]]:
    """The headline table's header and cells; the verdict is emphasised."""
    metric = "gold log-lik" if h.metric == "loglik" else "accuracy"
    rows = []
    asked = any_proposer(r.cost for r in h.rows)  # another LM's cost, its own column
    for r in h.rows:
        r_text = "—"
        if r.r is not None:
            r_text = f"{r.r['value']:.3f} [{r.r['lo']:.3f}, {r.r['hi']:.3f}]"
            if r.r.get("p_adjusted") is not None:
                r_text += f", p {format_p(r.r['p_adjusted'], r.r['p_adjusted_bound'], h.n_boot, h.family > 1)}"
        verdict = words(row_reason(r)) if r.verdict is None else words(Em(r.verdict))
        says = [f for f in r.flags if f.kind == "metric-says"]
        if says and r.verdict is not None:  # the metrics disagree: the verdict word names the metric that decides
            verdict = words(Em(r.verdict), f" on {short_metric(h.metric or '', h.per_token)}",
                            *(f"; {f.value} on {short_metric(str(f.metric), h.per_token)}" for f in says))
        if r.verdict == "inconclusive" and r.n_needed:
            verdict += f" (~{r.n_needed} examples would settle it)"
        elif r.verdict == "inconclusive" and r.seeds_needed:
            verdict += f" (~{r.seeds_needed} seeds would settle it)"
        elif r.verdict == "uninformative":
            verdict += f": {row_reason(r)}"
        proposer = [words(proposer_cost(r.cost))] if asked else []
        rows.append([words(r.name), words(r_text), words(est(r.delta) if r.delta is not None else "—"),
                     words(cost(r.cost)), *proposer, verdict, flags(table_flags(r), h.per_token)])
    return (["text prompt", f"R on {metric} [95% CI]", f"Δ {metric} vs base [95% CI]", "cost",
             *(["proposer"] if asked else []), "verdict", "flags"], rows)


def table_flags(r: Row) -> list[Flag]:
    """A row's flags for the flags column: all but what the verdict cell already says (the other metric's label)."""
    return [f for f in r.flags if f.kind != "metric-says"]


def flags(fs: Sequence[Flag], per_token: bool) -> Text:
    """A row's flags, or a dash."""
    return joined("; ", (flag(f, per_token) for f in fs)) if fs else words("—")


# --- curves and overfitting ------------------------------------------------------------------------------------------
def reach(r: Reach) -> str:
    """Where a condition's gain curve reaches ``findings.REACH`` of its largest-size gain, or why not."""
    if r.kind == "no-largest":
        return "not defined: the condition or the base did not succeed at the largest train size"
    if r.kind == "no-gain":
        assert r.top is not None
        return f"not defined: no gain at the largest train size ({est(r.top)})"
    if r.kind == "not-reached":
        return "not reached"
    if r.kind == "no-train-data":
        return "uses no train data (it read no train example at any size), so its curve is flat by construction"
    assert r.gain is not None
    text = f"train {r.size}: gain {est(r.gain)}"
    share = r.share
    if share is not None and share.value is not None and share.ci is not None:
        text += f", {share.value:.2f} [{share.ci.lo:.2f}, {share.ci.hi:.2f}] of the train-{r.largest} gain"
    elif share is not None:
        text += f" (its share of the train-{r.largest} gain is undefined: that gain is not clearly positive)"
    else:
        text += " (the largest size itself)"
    return text


def fit_warnings(x: FitCheck) -> str:
    """A trial's warnings for the curves table, or why its curves cannot be judged, or a dash."""
    said = [fit_warning(w) for w in x.warnings]
    if not x.assessable:
        said.append("overfitting not assessable: the log predates per-example dev losses")
    return "; ".join(said) or "—"


def fit_warning(w: FitWarning) -> str:
    """One overfitting warning of a trial's curves."""
    if w.kind == "first-evaluation":
        return (f"the dev-selected step is the first evaluation (step {w.step}"
                + (", before any training" if w.step == 0 else "") + "): nothing learned on train improved dev")
    if w.kind == "still-improving":
        if w.z is None:
            ended = "its budget"
            if w.stopped == "steps":
                ended = "its step budget"
            elif w.stopped and w.stopped.startswith("max_minutes"):
                ended = f"its time budget ({w.stopped})"
            elif w.stopped and w.stopped.startswith("budget_tokens"):
                ended = f"its token budget ({w.stopped})"
            return f"chosen at its last evaluation (step {w.step}), where the fit ended at {ended}"
        return (f"dev loss still falls at the last evaluation ({w.dev_from:.3f} -> {w.dev_to:.3f} at step "
                f"{w.last_step}, {abs(w.z):.1f} standard errors of the paired difference)")
    return (f"from step {w.step} to step {w.last_step} dev loss rises ({w.dev_from:.3f} -> {w.dev_to:.3f}, "
            f"{w.z:.1f} standard errors of the paired difference, beyond {w.threshold:.2f}) while train loss falls "
            f"({w.train_from:.3f} -> {w.train_to:.3f}) beyond its minibatch noise")


# --- a suite's leaderboard -------------------------------------------------------------------------------------------
BOARD_MISSING = {"no-gap": "no gap", "cell-failed": "failed", "no-statistics": "no statistics"}


def ceiling_rule(candidates: Sequence[str], metric: str) -> str:
    """How a run's tasks got their ceilings: the one named, or the best of several on dev."""
    if len(candidates) == 1:
        return f"the ceiling {candidates[0]} named by the suite"
    how = "dev accuracy (ties by dev gold NLL)" if metric == "accuracy" else "dev gold NLL (lowest)"
    return (f"each task's ceiling the best of {', '.join(candidates)} on the mean over seeds of its {how}, named in "
            f"the table's last row")


def ceiling_choice(choice: CeilingChoice) -> str:
    """Why a group's ceiling is the candidate it is, with each candidate's mean dev scores; "" with one candidate."""
    if not choice.chosen:
        return ""
    said = [f"{c} {dev[1]:.4f} NLL, accuracy {dev[0]:.3f}" if dev is not None else f"{c} (no dev score: failed)"
            for c, dev in choice.dev.items()]
    return f"The ceiling {choice.name} is the best on dev of the candidates (mean over seeds): {'; '.join(said)}."


def board_missing(kind: str | None) -> str:
    """Why a leaderboard cell has no R, in a word or two."""
    return BOARD_MISSING.get(kind or "", f"no R ({kind})")


def _r(x: float, iv: Interval | None) -> str:
    return f"{x:.2f}" + (f" [{iv.lo:.2f}, {iv.hi:.2f}]" if iv is not None else "")


def board_table(b: Board) -> tuple[list[str], list[list[str]]]:
    """The leaderboard's header and rows, as the markdown and the terminal both show them."""
    above = [f"clearly above {b.reference}"] if b.reference else []
    asked = any_proposer(r.cost for r in b.rows)
    header = ["rank [95%]", "condition", "mean R [95% CI]", *b.tasks, *above, "fit tokens",
              *(["proposer tokens"] if asked else []), "fit time", "trained params"]
    rows = []
    for r in b.rows:
        s = r.suite
        rank = "-" if s.rank is None else f"{s.rank}" + (f" [{s.rank_ci[0]}, {s.rank_ci[1]}]" if s.rank_ci else "")
        cells = [board_missing(c.no_r) if c.r is None else f"{_r(c.r, c.ci)} {c.label}"
                 for c in (r.cells[t] for t in b.tasks)]
        wins = ([] if not b.reference else ["-" if r.above_reference is None
                                              else f"{r.above_reference} of {len(b.tasks)} tasks"])
        rows.append([rank, r.name + (" (reused)" if r.reused else ""), "-" if s.mean_r is None else _r(s.mean_r, s.ci),
                     *cells, *wins, count(r.cost.fit_tokens),
                     *([count(r.cost.proposer_tokens)] if asked else []), duration(r.cost.fit_seconds),
                     count(r.cost.trainable_params)])
    # the ceiling R is against, task by task (the suite's only one, or the best of its candidates on dev)
    rows.append(["", "ceiling of the task", "", *[b.ceilings.get(t) or "none usable" for t in b.tasks],
                 *[""] * (len(header) - 3 - len(b.tasks))])
    return header, rows


def board_budget(budget: int | None, budgeted: Sequence[str]) -> str | None:
    """What ``--budget-tokens`` did, for the line under the leaderboard's header; None without it."""
    if budget is None:
        return None
    who = ", ".join(budgeted) if budgeted else "none of the ranked conditions (none searches)"
    return (f"Token budget (`--budget-tokens {budget}`): each ranked condition that searches ({who}) stopped within "
            f"{budget} tokens through the model, at its best so far on dev; the fit tokens column is what each "
            f"spent, on average over seeds and tasks.")


def board_skipped(skipped: dict[str, str]) -> str | None:
    """The suite's tasks that could not be loaded where it ran, with why; None when every task ran."""
    if not skipped:
        return None
    return ("Not run here (the suite's other tasks ran): " + "; ".join(f"{t} ({why})" for t, why in skipped.items())
            + ".")


def board_mean_note(n_used: int, n_tasks: int, no_gap: Sequence[str], n_excluded: int, confidence: float) -> str:
    """What the mean R column averages, and how its intervals were made."""
    out = (f"Mean R averages {n_used} of {n_tasks} task(s)" + (f"; left out, no gap (the ceiling is not clearly above "
           f"the base, or is itself at the floor, saturated or no better than chance on the metric, so that every R "
           f"of the task is uninformative): {', '.join(no_gap)}" if no_gap else "") + ". Its interval and the rank "
           f"interval "
           f"({confidence:.0%}) come from one bootstrap that resamples seeds, then examples, inside each task (the "
           f"tasks are the suite's fixed set, not a sample); a task cell shows R, its interval and the verdict of the "
           f"task's own report.")
    if n_excluded:
        out += f" {n_excluded} replicate(s) drew a ceiling gain of exactly 0 in some task and were left out."
    return out


# --- prompt, soft prompt or fine-tune? -----------------------------------------------------------------------------
TRAINS = {"prompt": "a prompt (model frozen)", "weights": "the model's weights"}


def three_way_intro(metric: str, per_token: bool) -> str:
    return (f"Beside the deciding ceiling: each readable prompt's R against the best trained prompt (a soft prompt or "
            f"prefix, the model frozen) and against the best weight training (LoRA, full fine-tuning), each chosen "
            f"on dev, and the trained prompt's share of each weight-training gain; R = (x − base) / (y − base) on "
            f"{metric_name(metric, per_token)}, with 95% paired-bootstrap intervals, not corrected for multiplicity "
            f"(the verdicts are the deciding ceiling's).")


def three_way_answer(t: ThreeWay, best_text: str | None) -> Text:
    """The answer in one sentence: what the trained prompt recovers of the weight-training gain, and what the best
    readable prompt recovers of each."""
    share = t.shares[t.weights.name]  # type: ignore[index]
    out = words("The trained prompt ", Em(str(t.prompt.name)), " recovers ", ratio_text(share), " of ",
                Em(str(t.weights.name)), "'s gain")
    if best_text is not None:
        out += words("; the readable prompt highest here, ", Em(best_text), " (picked on test, so an optimistic "
                     "pick), recovers ", ratio_text(t.vs_prompt[best_text]), " of the trained prompt's gain and ",
                     ratio_text(t.vs_weights[best_text]), " of the weight training's")
    return out + "."


def ratio_text(r: RatioStats | None, d: int = 3) -> str:
    """R with its interval, or why it is undefined."""
    if r is None:
        return "—"
    if r.value is None or r.ci is None:
        return f"undefined ({undefined(r.undefined)})" if r.undefined is not None else "undefined"
    return f"{r.value:.{d}f} [{r.ci.lo:.{d}f}, {r.ci.hi:.{d}f}]"


def board_three_way(t: BoardThreeWay) -> tuple[str, list[str], list[list[str]]]:
    """The leaderboard's "prompt, soft prompt or fine-tune?": the sentence above the table, its header, its rows."""
    sides = "; ".join(f"{task}: {t.prompts[task]} / {t.weights[task]}" for task in t.prompts)
    intro = (f"Each task's best trained prompt (model frozen) and best weight training, each chosen on dev ({sides}). "
             f"Mean R over the tasks where that one's gain over the base is clear "
             f"({len(t.vs_prompt.tasks)} and {len(t.vs_weights.tasks)} of {len(t.prompts)}), with 95% percentile "
             f"intervals from the ranking's bootstrap; the first row is the trained prompt's share of the weight "
             f"training's gain.")

    def cell(row: SuiteRow | None) -> str:
        return "-" if row is None or row.mean_r is None else _r(row.mean_r, row.ci)

    vs_prompt = {r.name: r for r in t.vs_prompt.rows}
    vs_weights = {r.name: r for r in t.vs_weights.rows}
    rows = [[PROMPT_ROLE, "1 (itself)", cell(vs_weights.get(PROMPT_ROLE))]]
    rows += [[name, cell(vs_prompt.get(name)), cell(vs_weights.get(name))]
             for name in sorted(vs_prompt, key=lambda n: -(vs_weights[n].mean_r or -1e9) if n in vs_weights else 0)]
    return intro, ["condition", "mean R vs trained prompt [95% CI]", "mean R vs weight training [95% CI]"], rows
