"""A run's test requests and scores re-derived from its inputs: the audit's request check (the task data, each cell's
saved artifact and the model's tokenizer; no model) and ``promptgap check --rescore N`` (the model itself).

Each score row records ``request_hash``, the hash of the token ids its log-likelihoods were read from, as the
scorer's passes reported them back (``harness.scorer.Loglik.read``). Re-rendering the example's requests here and
hashing them must give the same value, so a score attached to the wrong example, or scored under a prompt that is
not the saved artifact, fails `promptgap check`. A re-score catches what no hash can: a log-likelihood that is not
the model's.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from harness.config import RunConfig
from harness.errors import UserError
from harness.plan import scored_split, split
from harness.run_folder import Cell, Run

RESCORE_SEED = 0  # which rows `--rescore` draws: the same ones on every check
FLOAT32_TOLERANCE = 1e-4  # nats per choice: the same requests in other passes differ in their last bits (~1e-6)


@dataclass
class Inputs:
    """What re-rendering a run's test requests needs, loaded once: each task's examples by split. ``missing``: what
    could not be loaded (data or tokenizer gone), which leaves those cells unchecked."""

    cfg: RunConfig
    tasks: dict[str, Any] = field(default_factory=dict)  # name in the run -> harness.task.Task
    splits: dict[tuple[str, int], Any] = field(default_factory=dict)  # (task, seed) -> harness.task.Split
    missing: dict[str, str] = field(default_factory=dict)  # what -> why
    changed: list[str] = field(default_factory=list)  # splits the task's data no longer give

    @classmethod
    def of(cls, run: Run) -> Inputs:
        cfg = RunConfig.from_json(run.config)
        out = cls(cfg)
        for task_cfg in cfg.tasks:
            try:
                task = task_cfg.build()
            except (UserError, OSError) as e:
                out.missing[f"task {task_cfg.alias or task_cfg.name}"] = str(e).splitlines()[0]
                continue
            out.tasks[task.name] = task
            for seed in run.seeds:
                whole = split(task, task_cfg.sizes, seed)
                rec = run.splits.get((task.name, seed))
                if rec is not None and whole.hash != rec.hash:
                    out.changed.append(f"{task.name} seed {seed}: the task's data now give split "
                                       f"{whole.hash}, the run used {rec.hash}")
                    continue
                out.splits[(task.name, seed)] = whole
        return out

    def renderer(self, model: str) -> Any:
        """The renderer the run's scorer used for ``model`` (its tokenizer, positions and token options)."""
        run = self.cfg.run
        return _renderer(model, run.get("split_special_tokens", False), run.get("truncate_left", False))

    def examples(self, cell: Cell) -> dict[str, Any] | None:
        """The test examples a cell scored, by id (None: its task's data could not be loaded)."""
        whole = self.splits.get((cell.key.scored_task, cell.key.seed))
        return None if whole is None else {e.id: e for e in scored_split(whole, cell.key).test}


@functools.lru_cache(maxsize=8)
def _renderer(model: str, split_special_tokens: bool, truncate_left: bool) -> Any:
    """A model's renderer from its tokenizer alone, built once per process: every audit (and every report, which
    runs one) re-renders requests, and reading a tokenizer costs more than rendering a split. It never records,
    so nothing of one audit stays in it for the next."""
    from harness.models import load_tokenizer, max_positions
    from harness.render import Renderer

    return Renderer(load_tokenizer(model), max_positions=max_positions(model),
                    split_special_tokens=split_special_tokens, truncate_left=truncate_left)


def scored_cells(run: Run) -> Iterator[Cell]:
    """The cells whose scores are re-derived: finished ones with score rows and an artifact."""
    for cell in run.cells.values():
        if cell.ok and cell.lines and cell.artifact is not None:
            yield cell


@dataclass
class RequestCheck:
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    rows: int = 0  # rows whose hash was compared
    unhashed: int = 0  # rows written before score rows carried a hash (their token counts were compared)
    cells: int = 0


def check_requests(run: Run) -> RequestCheck:
    """Every test score row against its example's requests, re-rendered from the task data, the cell's artifact and
    the tokenizer: the row's ``request_hash`` must be theirs (rows without one: their token counts must be)."""
    from harness.render import RequestTooLong

    out = RequestCheck()
    inputs = Inputs.of(run)
    # data that changed or is gone since the run (the provenance item says which files): nothing to re-derive from
    out.warnings += [f"{what}; its cells' requests were not re-derived" for what in inputs.changed]
    out.warnings += [f"{what}: {why}; its cells' requests were not re-derived" for what, why in inputs.missing.items()]
    for cell in scored_cells(run):
        examples = inputs.examples(cell)
        if examples is None:
            continue
        try:
            inputs.renderer(cell.key.scored_model)  # its tokenizer can be read (else: a warning, below)
        except UserError as e:
            out.warnings.append(f"{cell.label}: {e}; its requests were not re-derived")
            continue
        out.cells += 1
        unknown = [str(r.get("example_id")) for r in cell.lines if str(r.get("example_id")) not in examples]
        if unknown:
            out.problems.append(f"{cell.label}: {len(unknown)} score row(s) name no test example of its split, e.g. "
                                f"{unknown[0]!r}")
        rows = [r for r in cell.lines if str(r.get("example_id")) in examples]
        assert cell.artifact is not None
        try:
            rendered = _rendered(inputs, cell.key.scored_model, cell.artifact,
                                 tuple(examples[str(r["example_id"])] for r in rows))
        except RequestTooLong as e:
            out.problems.append(f"{cell.label}: {e}")
            continue
        wrong = []
        for row, (hashed, ntokens) in zip(rows, rendered, strict=True):
            if row.get("request_hash") is None:
                out.unhashed += 1
                if list(row.get("choice_ntokens") or []) != ntokens:
                    wrong.append(str(row["example_id"]))
                continue
            out.rows += 1
            if row["request_hash"] != hashed:
                wrong.append(str(row["example_id"]))
        if wrong:
            out.problems.append(f"{cell.label}: {len(wrong)} of {len(rows)} score row(s) were not read from their "
                                f"example's requests under the saved artifact, e.g. {wrong[0]!r}")
    if out.unhashed:
        out.warnings.append(f"{out.unhashed} score row(s) predate request hashes (written by an older promptgap): "
                            f"only their continuation token counts were compared; re-run to check them fully")
    return out


# (renderer, artifact's JSON, examples) -> each example's request hash and continuation token counts. Rendering is
# the audit's whole cost (tokenizing every test request of every cell) and a process often audits the same cells
# again: a report audits its run, a leaderboard over a run that copied another's cells audits those cells a second
# time. The key holds everything a rendering reads: the renderer's settings, the artifact's JSON (its tensors' values
# are never rendered, only their shapes, which the JSON lists) and the examples themselves, compared by content.
_RENDERED: dict[tuple[Any, ...], list[tuple[str, list[int]]] | str] = {}
_RENDERED_CELLS = 4096  # about 200 bytes per example: a few tens of MB at most


def _rendered(inputs: Inputs, model: str, artifact: Any, examples: tuple[Any, ...]) -> list[tuple[str, list[int]]]:
    """Each example's ``request_hash`` and continuation token counts under ``artifact``, rendered once per process
    (a request too long for the model raises ``RequestTooLong`` each time it is asked)."""
    import json

    from harness.render import RequestTooLong, request_hash

    run = inputs.cfg.run
    key = (model, run.get("split_special_tokens", False), run.get("truncate_left", False),
           json.dumps(artifact.to_json(), sort_keys=True), examples)
    if key not in _RENDERED:
        if len(_RENDERED) >= _RENDERED_CELLS:
            _RENDERED.clear()
        try:
            requests = inputs.renderer(model).requests(artifact, list(examples))
            _RENDERED[key] = [(request_hash(reqs), [len(r.continuation) for r in reqs]) for reqs in requests]
        except RequestTooLong as e:
            _RENDERED[key] = str(e)
    done = _RENDERED[key]
    if isinstance(done, str):
        raise RequestTooLong(done)
    return done


@dataclass
class Rescore:
    problems: list[str] = field(default_factory=list)
    rows: int = 0
    cells: int = 0
    largest: float = 0.0  # the largest difference found, nats
    tolerance: float = FLOAT32_TOLERANCE
    dtype: str = "float32"


def rescore(run: Run, n: int, device: str = "auto") -> Rescore:
    """``n`` test rows of every scored cell (drawn with ``RESCORE_SEED``; all of them when ``n`` is as large),
    scored again by the model under the cell's artifact: each choice's log-likelihood must agree with the row
    within ``FLOAT32_TOLERANCE`` in float32, ``harness.models.BF16_TOLERANCE`` in bf16 (whose numbers move with
    how requests share a pass)."""
    from harness.models import BF16_TOLERANCE, load_model, release
    from harness.scorer import Scorer

    if n < 1:
        raise UserError(f"--rescore {n}: give how many test rows of each cell to score again (1 or more)")
    inputs = Inputs.of(run)
    if inputs.changed or inputs.missing:
        why = "; ".join([*inputs.changed, *(f"{k}: {v}" for k, v in inputs.missing.items())])
        raise UserError(f"--rescore: the run's test examples cannot be rebuilt ({why}); restore the task data")
    out = Rescore()
    cells = list(scored_cells(run))
    cfg = inputs.cfg.run
    for model in dict.fromkeys(c.key.scored_model for c in cells):
        lm = load_model(model, device=device if device != "auto" else cfg.get("device", "auto"),
                        dtype=cfg.get("dtype", "auto"), split_special_tokens=cfg.get("split_special_tokens", False),
                        truncate_left=cfg.get("truncate_left", False))
        scorer = Scorer(lm, batch_size=cfg.get("batch_size", 32))
        out.dtype = str(lm.dtype).removeprefix("torch.")
        out.tolerance = FLOAT32_TOLERANCE if out.dtype == "float32" else BF16_TOLERANCE
        for cell in (c for c in cells if c.key.scored_model == model):
            examples = inputs.examples(cell)
            assert examples is not None and cell.artifact is not None
            rows = [r for r in cell.lines if str(r.get("example_id")) in examples]
            drawn = rows if n >= len(rows) else random.Random(RESCORE_SEED).sample(rows, n)
            scores = scorer.score(cell.artifact, [examples[str(r["example_id"])] for r in drawn],
                                  inputs.tasks[cell.key.scored_task].kind, desc=f"re-scoring {cell.label}")
            out.cells += 1
            bad = []
            for row, s in zip(drawn, scores, strict=True):
                out.rows += 1
                diff = max(abs(float(a) - b) for a, b in zip(row["choice_loglik"], s.choice_loglik, strict=True))
                out.largest = max(out.largest, diff)
                if diff > out.tolerance:
                    bad.append((str(row["example_id"]), diff))
            if bad:
                out.problems.append(f"{cell.label}: {len(bad)} of {len(drawn)} re-scored row(s) differ from the "
                                    f"recorded log-likelihoods by more than {out.tolerance:g} nats, e.g. "
                                    f"{bad[0][0]!r} by {bad[0][1]:.3g}")
        device_used = lm.device
        lm = scorer = None
        release(device_used)
    return out

