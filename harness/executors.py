"""Where the matrix's cells run: in this process (``local``), in local worker processes (``processes``) or as Slurm
jobs (``slurm``), the last two through submitit; and what state each cell is in (``promptgap status``).

Executors only decide where a cell runs. The runner prepares the run folder once before anything runs (config,
manifest, split files, the model cache) and gathers summary.csv and the manifest's model records afterwards; it hands
the executor the job to run (``RunCells``: ``harness.runner.run_cells``), which every job calls on its cell keys, the
same function the local executor calls in-process. This module imports neither the runner nor the CLI.

Grouping rule: with ``group = "cell"`` (the default) each cell is one job, so cells run side by side and a killed job
loses one cell; with ``group = "seed"`` the cells of one model x task x seed that ask for the same resources are one
job, which loads the model once (worth it for a model that takes minutes to load). Jobs with equal resources are
submitted together: on Slurm, one job array.

Dependent cells: a transfer cell scores the artifact of another cell, so cells come in waves (``CellKey.wave``: the
cells that fit, then the transfer cells) and no job mixes waves. ``local`` runs the waves in order (``run_cells``);
``processes`` starts a wave's jobs once every job of the waves before it has ended; ``slurm`` submits every wave at
once, each later wave's arrays with ``--dependency=afterany`` on the earlier waves' arrays (afterany: a transfer cell
whose source failed still runs, and records why it has nothing to score).

State comes from the cell folders and from the job records this module writes at submission, never from Slurm's
accounting (``sacct`` needs slurmdbd, and submitit reads job states from it): a cell is done, failed or damaged as
the one completeness test (``RunFolder.cell_state``) judges its folder; otherwise its latest job is asked about
(squeue for Slurm jobs, the process table for local ones). A job that has ended without writing its cell (cancelled,
timed out, out of memory, node failure) leaves that cell failed, with the job's log; ``promptgap run --resume``
submits exactly the cells that are not done.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import socket
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import submitit

from harness import provenance
from harness.config import ExecutorConfig, Resources
from harness.errors import UserError
from harness.jobs import job_states, live_jobs
from harness.logs import setup_logging
from harness.plan import CellKey
from harness.progress import console, enabled
from harness.run_folder import DAMAGED, DONE, FAILED, STALE, JobRecord, RunFolder, load_run

log = logging.getLogger(__name__)

POLL_SECONDS = 2.0  # how often a waiting run looks at the cell folders and the queue
SIGNAL_DELAY_S = 90  # a job is warned (USR2) this long before its time limit (a quarter of a short limit)


# the job the runner hands an executor: ``run_cells(run_dir, keys, invocation=, job=, executor=, after_cell=)``, a
# module-level function, so a job pickles it by name and imports it where it runs
RunCells = Callable[..., None]


class CellJob(submitit.helpers.Checkpointable):
    """What a job runs: ``run`` (the runner's ``run_cells``) on its keys. Checkpointable, so a preempted Slurm job is
    requeued (submitit resubmits the same call; finished cells are skipped). A job that reaches its time limit is not
    requeued (``max_num_timeout=0``): the same cell would hit the same limit again; raise ``time`` and resume."""

    def __init__(self, run: RunCells) -> None:
        self.run = run

    def __call__(self, run_dir: str, keys: list[dict[str, Any]], invocation: int, executor: str) -> None:
        setup_logging(logging.INFO)
        job = submitit.JobEnvironment().job_id
        self.run(run_dir, [CellKey.from_json(k) for k in keys], invocation=invocation, job=job, executor=executor)


def signal_delay(res: Resources) -> int:
    return min(SIGNAL_DELAY_S, res.time * 15)


def groups(cfg: ExecutorConfig, keys: Sequence[CellKey]) -> list[tuple[Resources, list[CellKey]]]:
    """The jobs for ``keys`` by the grouping rule (module doc), each with its resources, in matrix order; a job
    holds cells of one wave only."""
    out: dict[tuple[Any, ...], tuple[Resources, list[CellKey]]] = {}
    for k in keys:
        res = cfg.for_condition(k.condition)
        label = (k,) if cfg.group == "cell" else (k.wave, k.scored_model, k.task, k.seed, res)
        out.setdefault(label, (res, []))[1].append(k)
    return list(out.values())


def wave_of(keys: Sequence[CellKey]) -> int:
    return max(k.wave for k in keys)


class Executor(ABC):
    kind: str

    def __init__(self, cfg: ExecutorConfig, folder: RunFolder, invocation: int, run_cells: RunCells) -> None:
        self.cfg = cfg
        self.folder = folder
        self.invocation = invocation
        self.run_cells = run_cells  # the job every cell runs in (the runner's run_cells)

    def record(self, job_id: str, keys: list[CellKey], job: Any = None) -> JobRecord:
        rec = JobRecord(invocation=self.invocation, id=str(job_id), executor=self.kind, cells=keys,
                        submitted=provenance.now(), host=socket.gethostname(),
                        stdout=str(job.paths.stdout) if job is not None else None,
                        stderr=str(job.paths.stderr) if job is not None else None)
        self.folder.write_job(rec)
        return rec

    def args(self, keys: list[CellKey]) -> tuple[Any, ...]:
        # the run folder by its absolute path: a job may start in another folder (or on another node)
        return str(self.folder.root.absolute()), [k.to_json() for k in keys], self.invocation, self.kind

    @abstractmethod
    def run(self, keys: list[CellKey], wait: bool = True) -> list[JobRecord]:
        """Run (or submit) ``keys``; with ``wait``, return when every job has ended."""


class Local(Executor):
    """This process, one cell after another (each model loaded once)."""

    kind = "local"

    def run(self, keys: list[CellKey], wait: bool = True) -> list[JobRecord]:
        if not keys:
            return []
        rec = self.record(str(os.getpid()), keys)
        self.run_cells(self.folder.root, keys, invocation=self.invocation, job=rec.id, executor=self.kind,
                  after_cell=self.folder.write_summary)
        return [rec]


class Processes(Executor):
    """Local worker processes through submitit's local executor, at most ``workers`` at once (submitit's starts every
    job it is given at once, so the queue is held here)."""

    kind = "processes"

    def run(self, keys: list[CellKey], wait: bool = True) -> list[JobRecord]:
        executor = submitit.LocalExecutor(folder=self.folder.jobs_dir(self.invocation), max_num_timeout=0)
        queue = groups(self.cfg, keys)
        running: list[tuple[Any, JobRecord]] = []
        records: list[JobRecord] = []

        def launch() -> None:
            nonlocal running
            running = [(j, r) for j, r in running if not j.done()]
            # a job of a later wave waits until every job of the waves before it has ended (its sources)
            while queue and len(running) < self.cfg.workers and \
                    all(wave_of(r.cells) >= wave_of(queue[0][1]) for _, r in running):
                res, ks = queue.pop(0)
                executor.update_parameters(timeout_min=res.time, signal_delay_s=signal_delay(res))
                job = executor.submit(CellJob(self.run_cells), *self.args(ks))
                running.append((job, self.record(job.job_id, ks, job)))
                records.append(running[-1][1])

        try:
            follow(self.folder, keys, step=launch, alive=lambda: bool(queue or running))
        except BaseException:  # an interrupted run stops its workers; their unfinished cells are left out
            for job, _ in running:
                job.cancel(check=False)
            raise
        return records


class Slurm(Executor):
    """Slurm jobs through submitit: one array per set of equal resources."""

    kind = "slurm"

    def run(self, keys: list[CellKey], wait: bool = True) -> list[JobRecord]:
        by_resources: dict[tuple[int, Resources], list[list[CellKey]]] = {}
        for res, ks in groups(self.cfg, keys):
            by_resources.setdefault((wave_of(ks), res), []).append(ks)
        records: list[JobRecord] = []
        earlier: list[str] = []  # the array ids of the waves submitted so far
        for wave in sorted({w for w, _ in by_resources}):
            arrays = []
            for (w, res), job_keys in by_resources.items():
                if w == wave:
                    jobs = self._submit(res, job_keys, earlier)
                    records += [self.record(job.job_id, ks, job) for job, ks in zip(jobs, job_keys, strict=True)]
                    arrays += [str(job.job_id).split("_")[0] for job in jobs]
            earlier += list(dict.fromkeys(arrays))
        if wait:
            try:
                follow(self.folder, keys, alive=lambda: any(live_jobs(self.folder, records)))
            except KeyboardInterrupt:
                console.print(f"stopped waiting; the {len(records)} Slurm job(s) go on: `promptgap status "
                              f"{self.folder.root}`, then `promptgap report {self.folder.root}`")
                raise
        return records

    def _submit(self, res: Resources, job_keys: list[list[CellKey]], after: list[str]) -> list[Any]:
        """One array of jobs with resources ``res``, held until the arrays ``after`` have ended."""
        executor = submitit.SlurmExecutor(folder=self.folder.jobs_dir(self.invocation), max_num_timeout=0)
        params: dict[str, Any] = {"job_name": f"promptgap-{self.folder.run_id}", "time": res.time,
                                  "cpus_per_task": res.cpus, "signal_delay_s": signal_delay(res),
                                  "array_parallelism": self.cfg.array_parallelism}
        params.update({k: v for k, v in (("partition", res.partition), ("mem", res.mem),
                                          ("gpus_per_node", res.gpus or None)) if v is not None})
        extra = dict(res.sbatch)
        if after:
            extra["dependency"] = "afterany:" + ":".join(after)
        if extra:
            params["additional_parameters"] = extra
        executor.update_parameters(**params)
        try:  # submitit prints sbatch's refusal itself; it is in the one-line error instead
            with contextlib.redirect_stderr(io.StringIO()), executor.batch():
                jobs = [executor.submit(CellJob(self.run_cells), *self.args(ks)) for ks in job_keys]
        except (submitit.core.utils.UncompletedJobError, submitit.core.utils.FailedSubmissionError, OSError) as e:
            first = next((x for x in str(e).splitlines() if "sbatch: error" in x), str(e).splitlines()[0])
            raise UserError(f"sbatch refused the jobs ({first.strip()}); check [executor] partition, mem, "
                            f"gpus and sbatch") from None
        return jobs


EXECUTORS: dict[str, type[Executor]] = {"local": Local, "processes": Processes, "slurm": Slurm}


def make(cfg: ExecutorConfig, folder: RunFolder, invocation: int, run_cells: RunCells) -> Executor:
    """The executor of ``cfg.kind``; ``run_cells`` is the job it runs (the runner's, handed down: no import back)."""
    return EXECUTORS[cfg.kind](cfg, folder, invocation, run_cells)


# --- job and cell states ------------------------------------------------------------------------------------------
@dataclass
class CellState:
    key: CellKey
    state: str  # done, running, failed, damaged, pending
    error: str | None = None  # failed: the error; damaged: which file and what is wrong; pending: why
    job: JobRecord | None = None
    legacy: bool = False  # written before cell.json listed its files (``run_folder.Completeness.legacy``)

    @property
    def log(self) -> str | None:
        return self.job.stderr if self.job is not None else None


def cell_states(folder: RunFolder, keys: Sequence[CellKey]) -> list[CellState]:
    """The state of each cell, from its folder and its latest job (module doc)."""
    records = folder.jobs()
    latest: dict[CellKey, JobRecord] = {}
    for r in records:  # oldest invocation first: later jobs of a cell replace earlier ones
        for k in r.cells:
            latest[k] = r
    unique = {(r.invocation, r.id): r for r in latest.values()}
    states = {(s.job.invocation, s.job.id): s.state for s in job_states(list(unique.values()))}
    out = []
    for k in keys:
        # the one completeness test, as `check`, the report and --resume judge cells
        judged, job = folder.cell_state(k), latest.get(k)
        status = judged.state if judged is not None else None
        legacy = judged is not None and judged.legacy
        job_state = states.get((job.invocation, job.id)) if job is not None else None
        if status == DONE:
            out.append(CellState(k, "done", job=job, legacy=legacy))
        elif job_state == "running":
            out.append(CellState(k, "running", job=job))
        elif job_state == "waiting":
            out.append(CellState(k, "pending", "queued", job=job))
        elif status == FAILED:
            out.append(CellState(k, "failed", judged.problem, job=job, legacy=legacy))
        elif status == DAMAGED:
            out.append(CellState(k, "damaged", f"{judged.problem}; `promptgap run --resume` recomputes it", job=job,
                                 legacy=legacy))
        elif status == STALE:
            out.append(CellState(k, "pending", f"{judged.problem}; `promptgap run --resume` scores it again",
                                 job=job))
        elif job_state == "ended":
            what = {"slurm": "its Slurm job", "processes": "its worker process"}.get(job.executor,
                                                                                  "the `promptgap run` process")
            out.append(CellState(k, "failed", f"{what} {job.id} ended without writing the cell (cancelled, killed, "
                                              f"timed out, out of memory or node failure)", job=job))
        elif job_state == "unknown":
            out.append(CellState(k, "pending", f"job {job.id}: its state cannot be read here "
                                               f"({'no squeue' if job.executor == 'slurm' else 'another host'})",
                                 job=job))
        else:
            out.append(CellState(k, "pending", "not submitted", job=job))
    return out


def status(run_dir: str | Path) -> list[CellState]:
    """Every cell of a run folder's matrix, with its state."""
    run = load_run(run_dir)
    return cell_states(run.folder, list(run.cells))


def counts(states: Sequence[CellState]) -> dict[str, int]:
    out = dict.fromkeys(("done", "running", "failed", "damaged", "pending"), 0)
    for s in states:
        out[s.state] += 1
    return out


def print_status(run_dir: Path, states: Sequence[CellState]) -> None:
    from rich.console import Console
    from rich.markup import escape

    out = Console(highlight=False, soft_wrap=True)
    c = counts(states)
    out.print(f"[bold]{escape(str(run_dir))}[/]: {len(states)} cells: [green]{c['done']} done[/], "
              f"[cyan]{c['running']} running[/], [red]{c['failed']} failed[/], "
              + (f"[red]{c['damaged']} damaged[/], " if c["damaged"] else "") + f"{c['pending']} pending")
    legacy = sum(s.legacy for s in states)
    if legacy:
        out.print(f"  {legacy} legacy cell(s): written before cells listed their files; judged by the files they "
                  f"have")
    for s in states:
        if s.state == "damaged":
            out.print(f"  [red]damaged[/] {escape(s.key.label)}: {escape(s.error or '')}")
    for s in states:
        if s.state == "running":
            out.print(f"  [cyan]running[/] {escape(s.key.label)} (job {s.job.id if s.job else '?'})")
    for s in states:
        if s.state == "failed":
            out.print(f"  [red]failed[/]  {escape(s.key.label)}: {escape(s.error or '')}")
            out.print(f"          job {s.job.id} log: {s.log}" if s.job and s.log else
                      f"          job {s.job.id} ({s.job.executor}, in the process of `promptgap run`)" if s.job else
                      "          no job")


def follow(folder: RunFolder, keys: Sequence[CellKey], alive: Callable[[], bool],
           step: Callable[[], None] | None = None) -> None:
    """Wait while ``alive()``, showing the cells' progress; summary.csv is rewritten whenever a cell finishes."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True, disable=not enabled()) as progress:
        bar = progress.add_task("cells", total=len(keys))
        finished = -1
        while True:
            if step is not None:
                step()
            going = alive()
            c = counts(cell_states(folder, keys))
            if c["done"] + c["failed"] + c["damaged"] != finished:
                finished = c["done"] + c["failed"] + c["damaged"]
                folder.write_summary()
            progress.update(bar, completed=finished, description=f"cells: {c['done']} done, {c['running']} running, "
                                                                 f"{c['failed']} failed, {c['damaged']} damaged, "
                                                                 f"{c['pending']} pending")
            if not going:
                return
            time.sleep(POLL_SECONDS)
