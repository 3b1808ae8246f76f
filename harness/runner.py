"""The comparison matrix: models x tasks x seeds x conditions, each cell fitted and scored once, resumably.

The run folder's layout and every write into it belong to ``harness.run_folder``; this module decides what runs,
in which order, and records the evidence the audit (``harness.audit``) re-derives: what each condition read while
fitting, how often each test example was scored, and how every test request was built.
"""

from __future__ import annotations

import logging
import shlex
import sys
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.markup import escape

from harness import provenance
from harness.config import RunConfig, load_config
from harness.data import Split, ids_hash
from harness.errors import UserError
from harness.progress import console
from harness.run_folder import CellKey, CellRecord, Evidence, RunFolder, SplitRecord, score_lines, summarize

log = logging.getLogger(__name__)


class Runner:
    """Runs one config into one run folder; ``run()`` returns the folder."""

    def __init__(self, config_path: str | Path, run_id: str | None = None, resume: bool = False,
                 only: list[str] | None = None, results_root: Path = Path("results"),
                 command: str | None = None, cfg: RunConfig | None = None) -> None:
        self.config_path = Path(config_path)
        # every check happens in load_config, before any model; ``cfg``: a config already loaded (and adjusted)
        self.cfg: RunConfig = cfg or load_config(self.config_path)
        if resume and not run_id:
            raise UserError("--resume needs the --run-id of the run to continue")
        self.run_id = run_id or f"{self.cfg.name}-{datetime.now(UTC).strftime('%Y%m%d-%H%M%S')}"
        self.folder = RunFolder(Path(results_root) / self.run_id)
        self.resume = resume
        self.only = only
        for name in only or []:
            if name not in self.cfg.conditions:
                raise UserError(f"--only {name}: not a condition of this config; conditions: "
                                f"{', '.join(self.cfg.conditions)}")
        self.command = command or shlex.join(["promptgap", *sys.argv[1:]])
        self.code = provenance.code_state()

    @property
    def run_dir(self) -> Path:
        return self.folder.root

    # --- preparing the folder ------------------------------------------------------------------------------
    def _prepare(self) -> None:
        config_json = self.cfg.to_json()
        if self.folder.exists():
            if not self.resume:
                raise UserError(f"{self.run_dir} exists; pass --resume to continue it or choose another --run-id")
            if self.folder.read_json("config.json") != config_json:
                raise UserError(f"{self.config_path} changed since run {self.run_id} started; "
                                f"resume with the same config or start a new --run-id")
        elif self.resume:
            raise UserError(f"--resume: no run folder {self.run_dir}; drop --resume to start it")
        self.folder.write_config(config_json)
        invocation = {"started": provenance.now(), "command": self.command, "code": self.code,
                      "versions": provenance.versions(), "machine": provenance.machine()}
        manifest = self.folder.read_manifest() or {
            "run_id": self.run_id, "command": self.command, "config": str(self.config_path),
            "started": invocation["started"], "code": self.code, "versions": invocation["versions"],
            "machine": invocation["machine"], "models": {}, "tasks": {}, "invocations": []}
        if manifest["invocations"] and manifest["invocations"][-1]["code"].get("commit") != self.code.get("commit"):
            log.warning("resuming %s with other code (%s) than it started with (%s); the audit will say so",
                        self.run_id, provenance.code_label(self.code), provenance.code_label(manifest["code"]))
        manifest["invocations"].append(invocation)
        self.manifest = manifest
        self.folder.write_manifest(manifest)
        self.folder.clear_unfinished()  # temp folders of cells a killed run was building

    def _split(self, task: Any, task_cfg: Any, seed: int) -> Split:
        split = task.split(seed, task_cfg.split_sizes(task.default_sizes))
        self.folder.record_split(SplitRecord.of(task.name, seed, split))
        return split

    # --- running -------------------------------------------------------------------------------------------
    def run(self) -> Path:
        from harness.models import load_model
        from harness.registry import get_task
        from harness.scorer import Scorer

        self._prepare()
        tasks = [(get_task(t.name, data_dir=t.data_dir), t) for t in self.cfg.tasks]
        splits = {(task.name, seed): self._split(task, t, seed) for task, t in tasks for seed in self.cfg.seeds}
        for task, _ in tasks:  # the files the splits were read from, hashed
            self.manifest["tasks"][task.name] = task.provenance()
        self.folder.write_manifest(self.manifest)
        conditions = [c for c in self.cfg.conditions if not self.only or c in self.only]
        t_run = time.perf_counter()
        for model_name in self.cfg.models:
            todo = [CellKey(model_name, task.name, seed, c) for task, _ in tasks for seed in self.cfg.seeds
                    for c in conditions]
            todo = [k for k in todo if not self.folder.finished(k)]
            if not todo:
                continue
            lm = load_model(model_name, device=self.cfg.run["device"], dtype=self.cfg.run["dtype"])
            self.manifest["models"][model_name] = provenance.model_record(model_name, lm)
            self.folder.write_manifest(self.manifest)
            scorer = Scorer(lm, batch_size=self.cfg.run["batch_size"])
            by_name = {task.name: task for task, _ in tasks}
            for key in todo:
                self._run_cell(lm, scorer, by_name[key.task], splits[(key.task, key.seed)], key)
                self.folder.write_summary()
        self.folder.write_summary()
        self.manifest["invocations"][-1].update(finished=provenance.now(),
                                                seconds=round(time.perf_counter() - t_run, 1))
        self.manifest["finished"] = self.manifest["invocations"][-1]["finished"]
        self.folder.write_manifest(self.manifest)
        return self.run_dir

    def _run_cell(self, lm: Any, scorer: Any, task: Any, split: Split, key: CellKey) -> None:
        import torch

        from harness.registry import get_optimizer, origin
        from optimizers.base import fit_condition

        spec = self.cfg.conditions[key.condition]
        owner = f"condition {key.condition} ({spec.optimizer}, from {origin(spec.optimizer)})"
        record = CellRecord(key=key, optimizer=spec.optimizer, settings=spec.settings, split_hash=split.hash,
                            n_train=len(split.train), n_dev=len(split.dev), device=str(lm.device),
                            dtype=str(lm.dtype).removeprefix("torch."), threads=torch.get_num_threads(),
                            code={k: self.code.get(k) for k in ("version", "commit", "dirty")})
        evidence = Evidence()
        with self.folder.new_cell(key) as cell:
            try:
                optimizer = get_optimizer(spec.optimizer)(**spec.settings)
                before = lm.usage.snapshot()
                with scorer.recording() as reads:  # every example the condition reads through the harness
                    try:
                        fit = fit_condition(optimizer, lm, task, split.train, split.dev, scorer, key.seed,
                                            workdir=cell.workdir, owner=owner)
                    finally:
                        evidence.fit_reads, evidence.fit_bare_calls = reads.reads, reads.bare_calls
                evidence.selection = fit.selection
                if fit.selection is not None:
                    record.selection = {"metric": fit.selection["metric"], "n": len(fit.selection["ids"]),
                                        "ids_hash": ids_hash(fit.selection["ids"]), "reported_by": "condition"}
                record.fit_seconds = round(fit.seconds, 2)
                spent = lm.usage.since(before)
                record.fit_tokens, record.fit_grad_tokens = spent.tokens, spent.grad_tokens
                record.prompt_tokens = scorer.renderer.prompt_tokens(fit.artifact)
                record.trainable_params = fit.artifact.trainable_params
                cell.log(fit.log)
                t0, before = time.perf_counter(), lm.usage.snapshot()
                with scorer.recording(keep_requests=True) as seen:
                    scores = scorer.score(fit.artifact, split.test, task.kind, desc=key.label)
                record.score_seconds = round(time.perf_counter() - t0, 2)
                record.score_tokens = lm.usage.since(before).tokens
                evidence.test_reads, evidence.requests = seen.reads, seen.requests
                lines = score_lines(scores, {"model": lm.name, "task": task.name, "condition": key.condition,
                                             "split": "test", "split_hash": split.hash,
                                             "format": fit.artifact.format})
                cell.scores(lines)
                cell.artifact(fit.artifact)
                record.status, record.format = "ok", fit.artifact.format
                record.instruction_role = fit.artifact.instruction_role
                for k, v in summarize(lines).items():
                    setattr(record, k, v)
                console.print(f"[green]done[/] {key.label}: accuracy {record.accuracy:.4f}, "
                              f"gold NLL {record.gold_nll:.4f}")
            except Exception as e:  # a failing condition is reported in its cell; the matrix goes on
                log.debug("cell %s failed", key.label, exc_info=True)
                record.status = "error"
                record.error = str(e) if str(e).startswith(owner) else f"{owner}: {type(e).__name__}: {e}"
                record.traceback = traceback.format_exc(limit=8)
                console.print(f"[red]failed[/] {key.label}: {escape(record.error)}")
            record.finished = provenance.now()
            cell.evidence(evidence)
            cell.finish(record)  # cell.json last; the folder appears when the block ends
