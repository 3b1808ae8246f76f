"""The comparison matrix: models x tasks x seeds x conditions, each cell fitted and scored once, resumably.

The run folder's layout and every write into it belong to ``harness.run_folder``; one cell's fit and score, and the
evidence the audit (``harness.audit``) re-derives from it (what each condition read while fitting, how often each test
example was scored, how every test request was built), belong to ``harness.cell``, which ``promptgap eval`` calls
too; this module decides what runs, in which order, on which split and artifact, and writes each cell's folder.

Three steps, whatever the executor: ``Runner`` prepares the run once (config.json, manifest.json, the split files,
the model cache) before any cell runs; ``run_cells`` fits and scores cells (in this process, or in a job that
``harness.executors`` started elsewhere: it re-reads everything from the run folder); ``gather`` rebuilds summary.csv
and the manifest's model records from what the cells and jobs wrote. The runner hands ``run_cells`` to the executor
(``executors.make``), so imports go one way: the CLI, then the runner, then the executors.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shlex
import socket
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.markup import escape

from harness import plan, provenance
from harness.config import RunConfig, ceiling_names, load_config
from harness.data import Split, leaks
from harness.errors import DiskFull, UserError, is_disk_full
from harness.names import check_inside, check_name
from harness.plan import CellKey, Plan
from harness.progress import console
from harness.render import check_row_lengths
from harness.run_folder import (
    CONFIG,
    DAMAGED,
    DONE,
    CellRecord,
    Evidence,
    RunFolder,
    SplitRecord,
    WorkerRecord,
)

log = logging.getLogger(__name__)


class Runner:
    """Runs one config into one run folder; ``run()`` returns the folder."""

    def __init__(self, config_path: str | Path, run_id: str | None = None, resume: bool = False,
                 only: list[str] | None = None, results_root: Path = Path("results"),
                 command: str | None = None, executor: str | None = None, wait: bool = True,
                 cfg: RunConfig | None = None, force_unlock: bool = False, reuse: Sequence[Path] = (),
                 recheck: bool = False) -> None:
        self.config_path = Path(config_path)
        # every check happens here, before any model or job: names, settings, roles, the executor and its resources;
        # ``cfg``: a config already loaded by load_config (and adjusted, as the demo's smoke budget)
        self.cfg: RunConfig = cfg or load_config(self.config_path, executor=executor)
        if resume and not run_id:
            raise UserError("--resume needs the --run-id of the run to continue")
        if not wait and self.cfg.executor.kind != "slurm":
            raise UserError(f"--no-wait: the {self.cfg.executor.kind} executor runs cells only while promptgap "
                            f"waits; drop --no-wait, or use --executor slurm")
        given = run_id is not None
        self.run_id = run_id if given else f"{self.cfg.name}-{datetime.now(UTC).strftime('%Y%m%d-%H%M%S')}"
        # the run id is the run folder's name and the report's (reports/<run-id>.md): one safe name, no path
        if given:
            check_name("run id", run_id, "choose another --run-id, e.g. my-study-2")
        else:
            check_name(f"run id (from [run] name, or the config's file name) of {config_path}", self.run_id,
                       "set [run] name or give --run-id")
        self.folder = RunFolder(check_inside(Path(results_root), Path(results_root) / self.run_id))
        self.force_unlock = force_unlock
        self.resume = resume
        self.wait = wait
        self.only = only
        for name in only or []:
            if name not in self.cfg.conditions:
                raise UserError(f"--only {name}: not a condition of this config; conditions: "
                                f"{', '.join(self.cfg.conditions)}")
        self.command = command or shlex.join(["promptgap", *sys.argv[1:]])
        self.code = provenance.code_state()
        # run folders whose done cells this run copies instead of computing, when they match (``_reuse``)
        self.reuse = [RunFolder(Path(r)) for r in reuse if RunFolder(Path(r)).exists() and Path(r) != self.run_dir]
        # ``recheck`` (``promptgap bench``): a done cell of this folder is kept only if it would be reused from
        # another run (``reusable``): one whose settings or scoring fingerprint no longer match is computed again
        self.recheck = recheck

    @property
    def run_dir(self) -> Path:
        return self.folder.root

    # --- preparing the folder ------------------------------------------------------------------------------
    def _prepare(self) -> None:
        from harness.jobs import live_jobs

        config_json = self.cfg.to_json()
        if self.folder.exists():
            if not self.resume:
                raise UserError(f"{self.run_dir} exists; pass --resume to continue it or choose another --run-id")
            if self.folder.read_json(CONFIG) != config_json and self.recheck:
                # bench: the suite's conditions changed (an added condition's settings); every cell that no longer
                # matches is recomputed (``_reuse``), so the folder ends as the new config says, never mixed
                log.warning("the config of %s changed since it started; cells that no longer match are recomputed",
                            self.run_id)
            elif self.folder.read_json(CONFIG) != config_json:
                raise UserError(f"{self.config_path} changed since run {self.run_id} started; "
                                f"resume with the same config or start a new --run-id")
            running = live_jobs(self.folder)
            if running:  # their cells would be computed twice, and their temp folders must not be cleared
                raise UserError(f"--resume: {len(running)} live job(s) of run {self.run_id} "
                                f"({', '.join(j.id for j in running[:5])}); wait for them (`promptgap status "
                                f"{self.run_dir}`) or cancel them first")
        elif self.resume:
            raise UserError(f"--resume: no run folder {self.run_dir}; drop --resume to start it")
        self.folder.write_config(config_json)
        invocation = {"started": provenance.now(), "command": self.command, "code": self.code,
                      "versions": provenance.versions(), "machine": provenance.machine(),
                      "host": socket.gethostname(), "executor": self.cfg.executor.to_json()}
        manifest = self.folder.read_manifest() or {
            "run_id": self.run_id, "command": self.command, "config": str(self.config_path),
            "started": invocation["started"], "code": self.code, "versions": invocation["versions"],
            "machine": invocation["machine"], "models": {}, "tasks": {}, "invocations": []}
        if manifest["invocations"] and manifest["invocations"][-1]["code"].get("commit") != self.code.get("commit"):
            log.warning("resuming %s with other code (%s) than it started with (%s); the audit will say so",
                        self.run_id, provenance.code_label(self.code), provenance.code_label(manifest["code"]))
        manifest["invocations"].append(invocation)
        self.invocation = len(manifest["invocations"]) - 1  # names this invocation's jobs folder
        self.manifest = manifest
        self.folder.write_manifest(manifest)
        self.folder.clear_unfinished()  # temp folders of cells a killed run was building

    def _reuse(self, tasks: dict[str, Any], splits: dict[tuple[str, int], Any]) -> None:
        """Copy each cell not done here from the first donor run (``reuse``) whose cell matches (``reusable``);
        the manifest's invocation counts them per donor, and each copied cell.json names its run and commit. With
        ``recheck``, first drop this folder's done cells that no longer match (they are computed again)."""
        if not self.reuse and not self.recheck:
            return
        from harness.models import pick_device, pick_dtype

        device = pick_device(self.cfg.run["device"])
        dtype = str(pick_dtype(self.cfg.run["dtype"], device)).removeprefix("torch.")
        counts: dict[str, int] = {}
        prints: dict[tuple[str, str], dict[str, Any]] = {}  # (task, optimizer) -> what this code would record
        for key in self.plan.cells(self.only):
            if key.is_transfer:  # scores this run's own source cell: never reused
                continue
            split_hash = plan.scored_split(splits[(key.task, key.seed)], key).hash
            optimizer = self.cfg.conditions[key.condition].optimizer
            if (key.task, optimizer) not in prints:
                prints[(key.task, optimizer)] = provenance.scoring_fingerprint(tasks[key.task], optimizer,
                                                                               str(device), dtype)
            fingerprint = prints[(key.task, optimizer)]
            if self.folder.finished(key):
                why = reusable(self.folder, key, self.cfg, split_hash, fingerprint) \
                    if self.recheck else None
                if why is None:
                    continue
                log.warning("recomputing %s: %s", key.label, why)
                self.folder.drop(key)  # its job would otherwise keep it as done
            for donor in self.reuse:
                why = reusable(donor, key, self.cfg, split_hash, fingerprint)
                if why is None:
                    self.folder.adopt(key, donor)
                    counts[donor.run_id] = counts.get(donor.run_id, 0) + 1
                    break
                log.info("not reusing %s from %s: %s", key.label, donor.run_id, why)
        for run_id, n in counts.items():
            log.info("reused %d cell(s) from %s", n, run_id)
        self.manifest["invocations"][-1]["reused"] = counts
        self.folder.write_manifest(self.manifest)

    # --- running -------------------------------------------------------------------------------------------
    def todo(self) -> list[CellKey]:
        """The cells to run, in run order (transfer cells after their sources): every cell of the config that is not
        done by the completeness test (``RunFolder.cell_state``): not there, failed, damaged or stale; and a transfer
        cell whose source runs again. On resume, each cell found but not done is logged with why."""
        keys = self.plan.cells(self.only)
        todo: list[CellKey] = []
        for k in keys:  # matrix order: a transfer cell's source is decided before it
            state = self.folder.cell_state(k)
            if state is not None and state.state == DONE and not (k.is_transfer and k.source in todo):
                continue
            todo.append(k)
            if state is None:
                continue
            why = ("its source cell runs again (scored again if the source's artifact changes)"
                   if state.state == DONE else state.label)
            if state.state == DAMAGED:  # a repair, said where it is seen: the damage was not the run's doing
                log.warning("recomputing %s: %s", k.label, why)
            else:
                log.info("recomputing %s: %s", k.label, why)
        return todo

    def run(self) -> Path:
        """Take the run folder's lock (``RunFolder.take_lock``), then prepare and run; the lock is held until the
        cells have run (or, with --no-wait, passed on to the submitted jobs)."""
        created = not self.run_dir.exists()
        lock = self.folder.take_lock(self.command, force=self.force_unlock)
        try:
            return self._run()
        finally:
            self.folder.release_lock(lock)
            if created:  # refused before anything was written (--resume of no run): leave no empty folder
                with contextlib.suppress(OSError):
                    self.run_dir.rmdir()

    def _run(self) -> Path:
        from harness import executors
        from harness.models import prepare_model

        tasks = [(t.build(), t) for t in self.cfg.tasks]
        self.plan = Plan.of(self.cfg, [task.name for task, _ in tasks])
        splits = {(task.name, seed): plan.split(task, task_cfg.sizes, seed)
                  for task, task_cfg in tasks for seed in self.cfg.seeds}
        for model in self.cfg.models:  # a row longer than a model reads: refused before the run folder is made
            for task, _ in tasks:
                rows = {e.id: e for (name, _), split in splits.items() if name == task.name
                        for e in (*split.train, *split.dev, *split.test)}
                check_row_lengths(model, task.name, list(rows.values()),
                                  split_special_tokens=self.cfg.run.get("split_special_tokens", False),
                                  truncate_left=self.cfg.run.get("truncate_left", False))
        self._prepare()
        for task, task_cfg in tasks:  # the split files every job checks its own split against
            for seed in self.cfg.seeds:
                split = splits[(task.name, seed)]
                self.folder.record_split(SplitRecord.of(task.name, seed, split, plan.train_sizes(task_cfg.sizes)))
            self.manifest["tasks"][task.name] = task.provenance()  # the files the splits were read from, hashed
        self.folder.write_manifest(self.manifest)
        self._reuse({task.name: task for task, _ in tasks}, splits)
        todo = self.todo()
        for model in dict.fromkeys(k.scored_model for k in todo):
            prepare_model(model)  # the embedded model's cache is built here once, never by two jobs at once
        t_run = time.perf_counter()
        try:
            with stopped_by_sigterm():
                jobs = executors.make(self.cfg.executor, self.folder, self.invocation, run_cells).run(
                    todo, wait=self.wait)
        except KeyboardInterrupt:  # a sitting ended by hand (or kill, a time limit): its cells are kept, and so is
            # the time they took
            self.manifest["invocations"][-1].update(interrupted=provenance.now(),
                                                    seconds=round(time.perf_counter() - t_run, 1))
            self.folder.write_manifest(self.manifest)
            raise
        self.manifest["invocations"][-1]["jobs"] = [j.id for j in jobs]
        self.folder.write_manifest(self.manifest)
        if not self.wait:
            return self.run_dir
        self.manifest["invocations"][-1].update(finished=provenance.now(),
                                                seconds=round(time.perf_counter() - t_run, 1))
        self.manifest["finished"] = self.manifest["invocations"][-1]["finished"]
        self.folder.write_manifest(self.manifest)
        gather(self.folder)
        return self.run_dir


def reusable(donor: RunFolder, key: CellKey, cfg: RunConfig, split_hash: str, fingerprint: dict[str, Any]
             ) -> str | None:
    """Why ``donor``'s cell of ``key`` cannot stand in for this run's, or None when it can: done, the same condition
    and settings, the same split, and the same scoring fingerprint (code, data, device, dtype, library versions) as
    this code records (``fingerprint``), and, for a ceiling candidate here, its dev score (``CellRecord.dev``). A
    transfer cell is never reused (its source is this run's)."""
    if key.is_transfer:
        return "a transfer cell"
    state = donor.cell_state(key)
    if state is None or state.state != DONE or state.record is None:
        return "not done there"
    record, spec = state.record, cfg.conditions[key.condition]
    if record.optimizer != spec.optimizer or json.dumps(record.settings, sort_keys=True) != json.dumps(
            spec.settings, sort_keys=True):
        return "other settings"
    if record.split_hash != split_hash:
        return "another split"
    if record.fingerprint is None:
        return "no scoring fingerprint recorded"
    if record.fingerprint.get("hash") != fingerprint["hash"]:
        return "another scoring fingerprint (code, data, device, dtype or library versions)"
    if record.dev is None and key.condition in ceiling_names(cfg.ratio):
        return "no dev score, which a ceiling candidate here needs"
    return None


@contextlib.contextmanager
def stopped_by_sigterm():
    """SIGTERM (``kill``, a scheduler's time limit, a shutdown) ends a sitting as Ctrl-C does, so the manifest records
    when it stopped and how long it ran; the previous handler is restored after. Only the main thread can."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def gather(folder: RunFolder) -> None:
    """After the cells ran (anywhere): the model records the jobs wrote into manifest.json, and summary.csv from the
    cell folders. Only the process that prepared the run (or `promptgap report`) calls this."""
    if not folder.exists():
        raise UserError(f"{folder.root} is not a run folder (no config.json); give results/<run-id>")
    manifest = folder.read_manifest()
    if manifest is not None:
        for worker in folder.workers():  # oldest first: the latest invocation's record of a model wins
            manifest["models"].update(worker.models)
        proposers = folder.proposers()  # which LM proposed for which condition, and where (never a key)
        if proposers:
            manifest["proposers"] = proposers
        folder.write_manifest(manifest)
    folder.write_summary()


def pin_threads(cfg: RunConfig) -> int:
    """torch's thread count for the cells of this process: the config's ``[run] threads``, else the CPUs Slurm
    gave the job (without cgroups torch would start a thread per core of the node), else torch's default."""
    import torch

    threads = cfg.threads or int(os.environ.get("SLURM_CPUS_PER_TASK", "0")) or None
    if threads:
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def run_cells(run_dir: str | Path, keys: Sequence[CellKey], invocation: int, job: str, executor: str,
              after_cell: Callable[[], None] | None = None) -> None:
    """Fit and score ``keys`` into the run folder: the one path of a cell, whatever the executor.

    Everything is read back from the run folder (config.json; the split, rebuilt from the data and checked against
    the split file written before any cell ran), so a job on another machine computes what this one would. Cells
    already finished are skipped (a requeued job goes on where it stopped). Cells run in waves (``CellKey.wave``):
    transfer cells after the cells that fit, since they score those cells' artifacts. Each model is loaded once
    per wave. This process writes only its cells and its own worker record (``jobs/<invocation>/worker-<job>``).
    """
    import torch

    threads = torch.get_num_threads()
    try:
        _run_cells(run_dir, keys, invocation, job, executor, after_cell)
    finally:  # a run inside a longer process (a notebook, the tests) leaves its thread count as it found it
        torch.set_num_threads(threads)


def _run_cells(run_dir: str | Path, keys: Sequence[CellKey], invocation: int, job: str, executor: str,
               after_cell: Callable[[], None] | None = None) -> None:
    from harness.models import deterministic, load_model, release
    from harness.scorer import Scorer

    deterministic()  # on in a job when the invocation that started it asked (--deterministic)
    folder = RunFolder(run_dir)
    cfg = RunConfig.from_json(folder.read_json(CONFIG))
    worker = WorkerRecord(invocation=invocation, job=job, executor=executor, host=socket.gethostname(),
                          pid=os.getpid(), threads=pin_threads(cfg), started=provenance.now())
    folder.write_worker(worker)
    code = provenance.code_state()
    tasks = {}
    for task_cfg in cfg.tasks:
        task = task_cfg.build()
        tasks[task.name] = (task, task_cfg)
    splits: dict[tuple[str, int], Split] = {}

    def split_of(name: str, seed: int) -> Split:
        if (name, seed) not in splits:
            task, task_cfg = tasks[name]
            split = plan.split(task, task_cfg.sizes, seed)
            folder.check_split(SplitRecord.of(task.name, seed, split, plan.train_sizes(task_cfg.sizes)))
            splits[(name, seed)] = split
        return splits[(name, seed)]

    cell_job = {"invocation": invocation, "id": job, "executor": executor, "host": worker.host}
    lm = scorer = None
    for wave in Plan.waves(keys):
        todo = [k for k in wave if not folder.finished(k)]
        for key in todo:  # every split first: a changed data file stops the job before any cell
            split_of(key.task, key.seed)
            split_of(key.scored_task, key.seed)
        for model_name in dict.fromkeys(k.scored_model for k in todo):
            if lm is None or lm.name != model_name:
                if lm is not None:  # the previous model's memory is given back before the next one loads
                    device = lm.device
                    lm = scorer = None
                    release(device)
                lm = load_model(model_name, device=cfg.run["device"], dtype=cfg.run["dtype"],
                                split_special_tokens=cfg.run.get("split_special_tokens", False),
                                truncate_left=cfg.run.get("truncate_left", False))
                worker.models[model_name] = provenance.model_record(model_name, lm)
                folder.write_worker(worker)
                scorer = Scorer(lm, batch_size=cfg.run["batch_size"])
            for key in (k for k in todo if k.scored_model == model_name):
                _run_cell(folder, cfg, code, cell_job, lm, scorer, tasks[key.scored_task][0],
                          plan.fitted_split(split_of(key.task, key.seed), key),
                          plan.scored_split(split_of(key.scored_task, key.seed), key), key)
                if after_cell is not None:
                    after_cell()
    worker.finished = provenance.now()
    folder.write_worker(worker)


def _transfer_artifact(folder: RunFolder, lm: Any, key: CellKey, fitted: Split, scored: Split, record: CellRecord,
                       evidence: Evidence, owner: str) -> tuple[Any, tuple[Any, ...]]:
    """A transfer cell's artifact (its source's, as saved) and the target test examples left once those the
    source was fitted on (its train and dev, by content key or the task's mirror rule) are removed."""
    from harness.optimizer import check_artifact

    artifact = folder.artifact(key.source)
    if artifact is None:
        source = folder.cell_state(key.source)
        raise UserError(f"its source cell ({key.source.label}) has no artifact: "
                        f"{source.label if source is not None else 'it has not run'}; nothing to transfer")
    record.source_artifact = folder.artifact_hash(key.source)
    if key.target_model is not None and (artifact.soft_prompt is not None or artifact.prefix_kv is not None):
        raise UserError(f"the artifact holds tensors trained for {key.model}; only text transfers to another model")
    check_artifact(artifact, lm, owner)
    seen = {e.content_key for e in (*fitted.train, *fitted.dev)}
    removed = leaks([(e.id, e.content_key, e.mirror_keys) for e in scored.test], seen)
    evidence.leakage = {"removed": removed, "fitted_on": len(seen)}
    record.removed = {rule: sum(r == rule for r in removed.values()) for rule in ("same", "mirror")}
    test = tuple(e for e in scored.test if e.id not in removed)
    if not test:
        raise UserError(f"all {len(scored.test)} test examples of {key.scored_task} are in the source's train or "
                        f"dev; nothing is left to score")
    return artifact, test


def _run_cell(folder: RunFolder, cfg: RunConfig, code: dict[str, Any], job: dict[str, Any], lm: Any, scorer: Any,
              task: Any, fitted: Split, scored: Split, key: CellKey) -> None:
    """One cell: fit the condition on ``fitted`` (a transfer cell: take its source's artifact) and score the test
    part of ``scored`` (``plan.scored_split``: the fitted split itself, or a transfer target's) through the shared
    scorer."""
    import torch

    from harness import cell as cell_path
    from harness.registry import get_optimizer, origin

    spec = cfg.conditions[key.condition]
    owner = f"condition {key.condition} ({spec.optimizer}, from {origin(spec.optimizer)})"
    record = CellRecord(key=key, optimizer=spec.optimizer, settings=spec.settings,
                        split_hash=scored.hash,
                        n_train=0 if key.is_transfer else len(fitted.train),
                        n_dev=0 if key.is_transfer else len(fitted.dev), device=str(lm.device),
                        dtype=str(lm.dtype).removeprefix("torch."), threads=torch.get_num_threads(),
                        deterministic=torch.are_deterministic_algorithms_enabled(),
                        code={k: code.get(k) for k in ("version", "commit", "dirty")}, job=job,
                        fingerprint=provenance.scoring_fingerprint(task, spec.optimizer, str(lm.device),
                                                                   str(lm.dtype).removeprefix("torch.")))
    evidence = Evidence()
    fell_back = len(lm.fallbacks)
    with folder.new_cell(key) as cell:
        try:
            optimizer = artifact = None
            test = scored.test
            if key.is_transfer:  # nothing is fitted: the source's artifact, on what is left of the target's test
                artifact, test = _transfer_artifact(folder, lm, key, fitted, scored, record, evidence, owner)
            else:
                optimizer = get_optimizer(spec.optimizer)(**spec.settings)
            done = cell_path.fit_and_score(lm, scorer, task, test, record, evidence, owner=owner, label=key.label,
                                           optimizer=optimizer, train=fitted.train, dev=fitted.dev,
                                           workdir=cell.workdir, artifact=artifact, keep_log=cell.log,
                                           score_dev=key.condition in ceiling_names(cfg.ratio))
            cell.scores(done.lines)
            # what the condition says another LM cost it, kept beside the task model's tokens (``FitContext``)
            record.proposer = (done.log or {}).get("proposer_usage")
            record.metric_calls = (done.log or {}).get("metric_calls")
            if key.is_transfer:
                cell.artifact_copy(folder, key.source)
            else:
                cell.artifact(done.artifact)
            record.status = "ok"
            console.print(f"[green]done[/] {key.label}: accuracy {record.accuracy:.4f}, "
                          f"gold NLL {record.gold_nll:.4f}")
        except DiskFull:
            raise  # not the condition's failure: the run stops, this cell is not written, --resume redoes it
        except Exception as e:  # a failing condition is reported in its cell; the matrix goes on
            if is_disk_full(e):  # a condition's own write (its working files) on a full disk
                raise DiskFull(folder.cell_dir(key)) from None
            log.debug("cell %s failed", key.label, exc_info=True)
            record.status = "error"
            record.error = str(e) if str(e).startswith(owner) else f"{owner}: {type(e).__name__}: {e}"
            record.traceback = traceback.format_exc(limit=8)
            console.print(f"[red]failed[/] {key.label}: {escape(record.error)}")
        record.fallbacks = lm.fallbacks[fell_back:] or None
        record.finished = provenance.now()
        cell.evidence(evidence)
        cell.finish(record)  # cell.json last; the folder appears when the block ends
