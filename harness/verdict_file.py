"""verdict.json, the headline as data for pipelines: the findings' numbers and labels, their reasons and flags as
``harness.wording`` words them; ``harness/schemas/verdict.schema.json`` describes it. It only formats."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from harness import wording
from harness.findings import Group, headline
from harness.run_folder import Run
from harness.stats import Estimate

if TYPE_CHECKING:  # the audit's result is handed in by the caller, which runs the audit
    from harness.audit import Audit


def verdict_json(run: Run, groups: list[Group], stamp: dict[str, Any], audit: Audit) -> dict[str, Any]:
    """The headline of each group with the audit's outcome; flags and notes in the report's words, as plain text
    (emphasis is the markdown's and the terminal's business, not a pipeline's)."""
    out: dict[str, Any] = {"schema": "promptgap-verdict/1", "run_id": run.run_id, "written": stamp["written"],
                           "code": stamp["code"], "audit": {"passed": audit.passed,
                                                            "failed": [i.title for i in audit.failed]}, "groups": []}
    for g in groups:
        h = headline(run, g)
        a = g.analysis
        no_verdict = g.no_r or g.stats_error
        out["groups"].append({
            "model": g.model, "task": g.task, **({"train_size": g.train_size} if g.train_size is not None else {}),
            "base": run.base, "ceiling": g.ceiling.name if g.ceiling is not None else None, "metric": h.metric,
            "n_seeds": a.n_seeds if a else None, "n_examples": a.n_examples if a else None,
            "confidence": a.confidence if a else None, "correction": "holm", "family_size": h.family,
            "ceiling_gain": _est_json(h.ceiling_gain), "ceiling_beaten_by": h.beaten_by,
            "no_verdict_reason": wording.no_verdict(no_verdict) if no_verdict is not None else None,
            "notes": [wording.note(n, h.per_token).plain for n in h.notes],
            "rows": [{"texts": r.texts, "verdict": r.verdict, "reason": wording.row_reason(r), "R": r.r,
                      "delta": _est_json(r.delta),
                      "flags": [wording.flag(f, h.per_token).plain for f in r.flags],
                      "n_needed": r.n_needed, "seeds_needed": r.seeds_needed, "cost": r.cost.to_json()}
                     for r in h.rows]})
    return out


def _est_json(e: Estimate | None) -> dict[str, float] | None:
    return None if e is None else {"value": e.value, "lo": e.ci.lo, "hi": e.ci.hi}
