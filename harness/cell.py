"""One cell's path: fit a condition (or take a given artifact), score the test part once through the shared scorer,
and build the cell's records; ``promptgap eval`` and every cell of a run (``runner.run_cells``) go through
``fit_and_score``, so a cell of either is the same computation and the same records."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.artifact import PromptArtifact
from harness.data import Example, ids_hash
from harness.render import warn_control, warn_cut
from harness.run_folder import CellRecord, Evidence, score_lines, summarize


@dataclass
class Scored:
    """What a cell produced: the artifact scored, its per-example scores, their lines in the one schema
    (``run_folder.score_lines``: a run's scores.jsonl, eval's output), the condition's log, and the seconds spent
    fitting and scoring (unrounded; the record keeps them to the hundredth)."""

    artifact: PromptArtifact
    scores: list[Any]
    lines: list[dict[str, Any]]
    log: dict[str, Any] | None
    fit_seconds: float
    score_seconds: float


def fit_and_score(lm: Any, scorer: Any, task: Any, test: Sequence[Example], record: CellRecord, evidence: Evidence,
                  *, owner: str, label: str, split: str = "test", optimizer: Any = None,
                  train: Sequence[Example] = (), dev: Sequence[Example] = (), workdir: Path | None = None,
                  artifact: PromptArtifact | None = None, desc: str | None = None, score_dev: bool = False,
                  keep_log: Callable[[dict[str, Any] | None], None] | None = None) -> Scored:
    """Fit ``optimizer`` on ``train``/``dev`` with the scorer recording what it reads (or take ``artifact``, already
    checked: a saved one, or a transfer's source), then score ``test`` with the one ``Scorer.score`` call.

    ``record`` (cell.json) and ``evidence`` (evidence.json) are filled as the cell goes, so a cell that fails keeps
    what was seen until then (what fit read, control-token text met). ``label`` names the cell in its warnings (once
    per cell, whatever phase met the control-token text or cut a request, failed cells included); ``desc`` the
    scoring's progress bar (default: ``label``). ``keep_log`` gets the condition's log as soon as fitting ends (a run
cell's log.json, kept even when scoring then fails). ``score_dev``: also score the fitted artifact on all of ``dev``
    (``record.dev``; a ceiling candidate's, to choose a task's ceiling by), after fitting and outside its token count.
    The caller writes the records where they go."""
    from harness.optimizer import fit_condition

    control: dict[str, Counter[str]] = {}  # control-token text the renderer met, while fitting and scoring test
    cut: dict[str, int] = {}  # truncate_left: test examples cut (each cut request is marked in the evidence)
    try:
        t0 = time.perf_counter()
        fit_log = None
        if optimizer is not None:
            before = lm.usage.snapshot()
            with scorer.recording() as reads:  # every example the condition reads through the harness
                try:
                    fit = fit_condition(optimizer, lm, task, tuple(train), tuple(dev), scorer, record.key.seed,
                                        workdir=workdir, owner=owner)
                finally:
                    evidence.fit_reads, evidence.fit_bare_calls = reads.reads, reads.bare_calls
                    control["fit"] = reads.control
            evidence.selection = fit.selection
            if fit.selection is not None:
                record.selection = {"metric": fit.selection["metric"], "n": len(fit.selection["ids"]),
                                    "ids_hash": ids_hash(fit.selection["ids"]), "reported_by": "condition"}
            record.fit_seconds = round(fit.seconds, 2)
            spent = lm.usage.since(before)
            record.fit_tokens, record.fit_grad_tokens = spent.tokens, spent.grad_tokens
            artifact, fit_log = fit.artifact, fit.log
            if keep_log is not None:
                keep_log(fit_log)
        elif artifact is None:
            raise ValueError("fit_and_score: give an optimizer to fit or an artifact to score")
        fit_seconds = time.perf_counter() - t0
        if score_dev and dev:
            dev_lines = score_lines(scorer.score(artifact, dev, task.kind, desc=f"{label}: dev"), {})
            record.dev = summarize(dev_lines)
        record.prompt_tokens = scorer.renderer.prompt_tokens(artifact)
        record.trainable_params = artifact.trainable_params
        t0, before = time.perf_counter(), lm.usage.snapshot()
        with scorer.recording(keep_requests=True) as seen:  # evidence: each test id once, BOS, the first request
            try:
                scores = scorer.score(artifact, test, task.kind, desc=desc or label)
            finally:
                control["test"], cut = seen.control, seen.cut
        score_seconds = time.perf_counter() - t0
        record.score_seconds = round(score_seconds, 2)
        record.score_tokens = lm.usage.since(before).tokens
        evidence.test_reads, evidence.requests, evidence.example = seen.reads, seen.requests, seen.first
        lines = score_lines(scores, {"model": lm.name, "task": task.name, "condition": record.key.condition,
                                     "split": split, "split_hash": record.split_hash, "format": artifact.format})
        record.format, record.instruction_role = artifact.format, artifact.instruction_role
        for k, v in summarize(lines).items():
            setattr(record, k, v)
        return Scored(artifact, scores, lines, fit_log, fit_seconds, score_seconds)
    finally:
        if any(control.values()):  # once per cell, whatever the phase it was met in
            evidence.control_tokens = {**{phase: dict(c) for phase, c in control.items()},
                                       "as": "text" if lm.split_special_tokens else "control"}
            warn_control(label, sum(control.values(), Counter()), lm.split_special_tokens)
        warn_cut(label, cut)
