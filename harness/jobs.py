"""Which of a run's jobs still run: Slurm's queue for Slurm jobs, the process table for local ones.

Below both the run folder (whose lock is held by a run's live jobs once the process that submitted them returned)
and the executors (which wait on them and report their states), so neither imports the other for it.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the records are the run folder's; this module only reads their fields
    from harness.run_folder import JobRecord, RunFolder

log = logging.getLogger(__name__)

ALIVE_SLURM = {"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED",
               "RESIZING", "SUSPENDED", "STOPPED", "SIGNALING", "STAGE_OUT", "RESV_DEL_HOLD"}
WAITING_SLURM = {"PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESV_DEL_HOLD"}


def squeue() -> dict[str, str] | None:
    """Every job Slurm still lists, with its state (array tasks one by one); None when squeue cannot be asked."""
    if shutil.which("squeue") is None:
        return None
    try:
        out = subprocess.run(["squeue", "--noheader", "--array", "--format=%i|%T"], capture_output=True, text=True,
                             timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        log.warning("squeue failed: %s", out.stderr.strip())
        return None
    return dict(line.strip().split("|", 1) for line in out.stdout.splitlines() if "|" in line)


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (ended, not yet reaped by its parent) is not running
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


@dataclass
class JobState:
    job: JobRecord
    state: str  # running, waiting, ended, unknown


def job_states(records: Sequence[JobRecord]) -> list[JobState]:
    """Each job's state: Slurm jobs from squeue, local ones from the process table of the host that started them."""
    queue = squeue() if any(r.executor == "slurm" for r in records) else None
    out = []
    for r in records:
        if r.executor == "slurm":
            state = queue.get(r.id) if queue is not None else None
            out.append(JobState(r, "unknown" if queue is None else "ended" if state not in ALIVE_SLURM
                                else "waiting" if state in WAITING_SLURM else "running"))
        elif r.host != socket.gethostname():
            out.append(JobState(r, "unknown"))
        else:  # this process's own earlier local job (a second run in one process) is not running: we are here
            alive = int(r.id) != os.getpid() and process_alive(int(r.id))
            out.append(JobState(r, "running" if alive else "ended"))
    return out


def live_jobs(folder: RunFolder, records: Sequence[JobRecord] | None = None) -> list[JobRecord]:
    """The jobs (of ``records``, default every job of the run) that are still queued or running."""
    records = folder.jobs() if records is None else records
    return [s.job for s in job_states(records) if s.state in ("running", "waiting")]
