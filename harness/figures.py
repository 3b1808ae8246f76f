"""The report's figures (matplotlib, no pyplot state): condition means with intervals, and training curves."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from harness.run_folder import is_number
from harness.stats import Analysis

COLOURS = {"base": "0.55", "text": "tab:blue", "ceiling": "tab:orange", None: "tab:green"}

def _new_figure(width: float, height: float) -> Any:
    from matplotlib.figure import Figure

    # a Figure without pyplot: no global backend or state, Agg renders it on savefig
    return Figure(figsize=(width, height), layout="constrained")


def _save(fig: Any, path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    fig.savefig(path, format="png", dpi=110)


def metrics_figure(path: Path, title: str, a: Analysis, conds: Sequence[str], roles: Sequence[str | None],
                   ll_unit: str, has_base: bool) -> None:
    """Each condition's mean accuracy and gold log-likelihood with the table's intervals, coloured by role."""
    colours = COLOURS
    fig = _new_figure(max(6.0, 1.6 * len(conds) + 2), 3.6)
    axes = fig.subplots(1, 2)
    for ax, metric, label in ((axes[0], "accuracy", "accuracy"),
                              (axes[1], "loglik", f"mean gold log-likelihood ({ll_unit})")):
        ests = [a.metrics[metric].conditions[c].mean for c in conds]
        vals = [e.value for e in ests]
        # an interval may not contain its estimate (BCa); bars cannot be negative
        err = [[max(0.0, e.value - e.ci.lo) for e in ests], [max(0.0, e.ci.hi - e.value) for e in ests]]
        x = list(range(len(conds)))
        # points, not bars: log-likelihoods are negative and bars from 0 would hide the differences
        for i, role in enumerate(roles):
            ax.errorbar([i], [vals[i]], yerr=[[err[0][i]], [err[1][i]]], fmt="o", capsize=5, markersize=7,
                        color=colours[role])
        ax.set_xlim(-0.6, len(conds) - 0.4)
        ax.grid(axis="y", alpha=0.3)
        if has_base:
            ax.axhline(a.metrics[metric].conditions[a.base].mean.value, color="0.3", linestyle="--", linewidth=1)
        if a.metrics[metric].chance is not None:
            ax.axhline(a.metrics[metric].chance, color="0.5", linestyle=":", linewidth=1)
        ax.set_xticks(x, conds, rotation=20, ha="right")
        ax.set_ylabel(label)
        ax.set_title(f"{label.split(' (')[0]}, {a.n_seeds} seed(s) × {a.n_examples}", fontsize=9)
    fig.suptitle(title, fontsize=10)
    _save(fig, path)


def curves_figure(title: str, logs: list[tuple[int, list[dict[str, Any]]]], path: Path) -> None:
    """Train and dev loss (and dev accuracy) per step of a trained condition's log, one colour per seed."""
    has_acc = any(is_number(p.get("dev_accuracy")) for _, curve in logs for p in curve)
    fig = _new_figure(9.0 if has_acc else 5.5, 3.4)
    axes = fig.subplots(1, 2 if has_acc else 1, squeeze=False)[0]
    for i, (seed, curve) in enumerate(logs):
        colour = f"C{i % 10}"
        for key, style in (("train_loss", "-"), ("dev_loss", "--")):
            pts = [(p["step"], p[key]) for p in curve if is_number(p.get("step")) and is_number(p.get(key))]
            if pts:
                axes[0].plot(*zip(*pts, strict=True), style, color=colour, label=f"seed {seed} {key}")
        if has_acc:
            pts = [(p["step"], p["dev_accuracy"]) for p in curve
                   if is_number(p.get("step")) and is_number(p.get("dev_accuracy"))]
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



def differences_figure(path: Path, title: str, a: Analysis, conds: Sequence[str], roles: Sequence[str | None],
                       ll_unit: str, same_tokens: dict[str, bool]) -> None:
    """Each condition's paired difference from the base with its interval; dotted: where chance would sit."""
    fig = _new_figure(max(6.0, 1.6 * len(conds) + 2), 3.6)
    axes = fig.subplots(1, 2)
    for ax, metric, label in ((axes[0], "accuracy", "Δ accuracy"), (axes[1], "loglik", f"Δ gold log-lik ({ll_unit})")):
        m = a.metrics[metric]
        for i, (c, role) in enumerate(zip(conds, roles, strict=True)):
            d = m.conditions[c].diff
            if d is None or (metric == "loglik" and not same_tokens.get(c, True)):
                continue  # answers tokenized differently from the base's: no comparable log-likelihood
            ax.errorbar([i], [d.value], yerr=[[max(0.0, d.value - d.ci.lo)], [max(0.0, d.ci.hi - d.value)]],
                        fmt="o", capsize=5, markersize=7, color=COLOURS[role])
        ax.axhline(0, color="0.3", linestyle="--", linewidth=1)
        if m.chance is not None:
            ax.axhline(m.chance - m.conditions[a.base].mean.value, color="0.5", linestyle=":", linewidth=1)
        ax.set_xlim(-0.6, len(conds) - 0.4)
        ax.set_xticks(list(range(len(conds))), conds, rotation=20, ha="right")
        ax.grid(axis="y", alpha=0.3)
        ax.set_ylabel(label)
        ax.set_title(f"{label.split(' (')[0]} vs {a.base}", fontsize=9)
    fig.suptitle(title, fontsize=10)
    _save(fig, path)


def forest_figure(path: Path, title: str, a: Analysis) -> bool:
    """R per distinct text prompt on the deciding metric with its decision interval; False when none has an R."""
    m = a.metrics[a.deciding]
    rows = [(t, r) for t, r in m.ratios.items() if r.value is not None and r.decision is not None
            and a.duplicates.get(t) not in a.texts]
    if not rows:
        return False
    fig = _new_figure(6.0, 1.0 + 0.45 * len(rows))
    ax = fig.subplots()
    for i, (_, r) in enumerate(rows):
        ax.errorbar([r.value], [i], xerr=[[max(0.0, r.value - r.decision.lo)], [max(0.0, r.decision.hi - r.value)]],
                    fmt="o", capsize=4, color=COLOURS["text"])
    for x, style in ((0, "--"), (0.5, ":"), (1, "--")):
        ax.axvline(x, color="0.4", linestyle=style, linewidth=1)
    ax.set_yticks(list(range(len(rows))), [t for t, _ in rows])
    ax.invert_yaxis()
    ax.set_xlabel(f"R on {a.deciding} (0: the base, 1: the ceiling {a.ceiling})")
    fig.suptitle(title, fontsize=10)
    _save(fig, path)
    return True


def _errorbar(ax: Any, x: float, e: Any, **kw: Any) -> None:
    ax.errorbar([x], [e.value], yerr=[[max(0.0, e.value - e.ci.lo)], [max(0.0, e.ci.hi - e.value)]], capsize=4,
                **kw)


def efficiency_figure(path: Path, curve: Any, roles: dict[str, str | None], ceiling: str | None) -> None:
    """A sample-efficiency curve (``findings.Curve``): each condition's gain over the base against train size with
    its paired interval, and each text condition's R against the ceiling at the same size."""
    texts = [c for c, role in roles.items() if role == "text"]
    fig = _new_figure(10.0 if texts and ceiling else 5.5, 3.8)
    axes = fig.subplots(1, 2 if texts and ceiling else 1, squeeze=False)[0]
    unit = "per token" if curve.per_token else "per example"
    k = len(curve.points)
    for i, (c, pts) in enumerate(curve.points.items()):
        colour = f"C{i % 10}"
        nudge = 1 + 0.025 * (i - (k - 1) / 2)  # conditions side by side at each size, so intervals do not overlap
        shown = [p for p in pts if p.gain is not None]
        axes[0].plot([p.size * nudge for p in shown], [p.gain.value for p in shown], "-", color=colour, label=c)
        for p in shown:
            _errorbar(axes[0], p.size * nudge, p.gain, fmt="o", color=colour, markersize=4)
        if len(axes) > 1 and c in texts:
            rs = [p for p in pts if p.r is not None and p.r.value is not None and p.r.ci is not None]
            axes[1].plot([p.size * nudge for p in rs], [p.r.value for p in rs], "-o", color=colour, markersize=4,
                         label=c)
            for p in rs:
                axes[1].errorbar([p.size * nudge], [p.r.value], yerr=[[max(0.0, p.r.value - p.r.ci.lo)],
                                                                      [max(0.0, p.r.ci.hi - p.r.value)]],
                                 color=colour, capsize=4)
    metric = f"Δ gold log-lik ({unit})" if curve.metric == "loglik" else "Δ accuracy"
    axes[0].axhline(0, color="0.3", linestyle="--", linewidth=1)
    axes[0].set_ylabel(f"{metric} vs base")
    if len(axes) > 1:
        for y, style in ((0, "--"), (0.5, ":"), (1, "--")):
            axes[1].axhline(y, color="0.4", linestyle=style, linewidth=1)
        axes[1].set_ylabel(f"R (1: the ceiling {ceiling})")
    for ax in axes:
        ax.set_xscale("log")
        ax.set_xticks(curve.sizes, [str(n) for n in curve.sizes])
        ax.minorticks_off()
        ax.set_xlabel("train examples")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(curve.name, fontsize=10)
    _save(fig, path)


def transfer_figure(path: Path, block: Any) -> None:
    """A transfer block (``findings.TransferBlock``): each condition's gain over the target's base, transferred
    (filled) and fitted on the target itself (open), with paired intervals."""
    rows = block.rows
    fig = _new_figure(max(5.5, 1.2 * len(rows) + 2), 3.6)
    ax = fig.subplots()
    for i, r in enumerate(rows):
        if r.transferred.diff is not None:
            _errorbar(ax, i - 0.12, r.transferred.diff, fmt="o", color="tab:blue", markersize=6)
        if r.own is not None and r.own.diff is not None:
            _errorbar(ax, i + 0.12, r.own.diff, fmt="o", color="tab:orange", markersize=6, markerfacecolor="white")
    ax.axhline(0, color="0.3", linestyle="--", linewidth=1)
    ax.set_xticks(list(range(len(rows))), [r.condition for r in rows], rotation=20, ha="right")
    ax.set_xlim(-0.6, len(rows) - 0.4)
    ax.set_ylabel(f"Δ {'gold log-lik' if block.analysis.deciding == 'loglik' else 'accuracy'} vs target base")
    ax.grid(axis="y", alpha=0.3)
    ax.set_title("filled: transferred; open: fitted on the target", fontsize=8)
    fig.suptitle(block.name, fontsize=10)
    _save(fig, path)


def board_figure(b: Any, path: Path) -> None:
    """A suite's leaderboard as a figure: each condition's mean R over the tasks with a gap (with its interval)
    against the tokens its fit spent through the model; the conditions no other beats on both (higher R for no more
    tokens) are joined, the Pareto front."""
    pts = [(r.name, r.cost.fit_tokens or 0.0, r.suite.mean_r, r.suite.ci) for r in b.rows if r.suite.mean_r is not None]
    fig = _new_figure(6.4, 4.0)
    ax = fig.subplots()
    for name, tokens, mean, ci in pts:
        err = [[max(0.0, mean - ci.lo)], [max(0.0, ci.hi - mean)]] if ci is not None else None
        ax.errorbar([max(tokens, 1.0)], [mean], yerr=err, fmt="o", capsize=4, color=COLOURS["text"])
        ax.annotate(name, (max(tokens, 1.0), mean), textcoords="offset points", xytext=(6, 4), fontsize=8)
    front, best = [], -float("inf")
    for _name, tokens, mean, _ in sorted(pts, key=lambda p: (p[1], -p[2])):
        if mean > best:
            front.append((max(tokens, 1.0), mean))
            best = mean
    if len(front) > 1:
        ax.plot(*zip(*front, strict=True), color="0.4", linewidth=1, linestyle="--", label="Pareto front")
        ax.legend(fontsize=8)
    ax.set_xscale("log")
    ax.axhline(0.5, color="0.5", linestyle=":", linewidth=1)
    ax.set_xlabel("fit tokens through the model (mean over seeds and tasks; 0 shown at 1)")
    ax.set_ylabel(f"mean R over {len(b.stats.tasks)} task(s)")
    ax.grid(alpha=0.3)
    ax.set_title(f"{b.model}: R against each task's ceiling vs the fit's cost", fontsize=10)
    _save(fig, path)
