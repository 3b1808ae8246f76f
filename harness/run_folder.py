"""The run folder's one owner: its layout, the cell key, the records written there, and the one reader of them.

    results/<run-id>/
      config.json                   the resolved config (``RunConfig.to_json``)
      manifest.json                 provenance: command, code state, versions, machine, model and data file hashes
      lock.json                     ``LockRecord``: the one `promptgap run` writing here (host, pid, start), while
                                    it runs (or, once it has returned, while its jobs do: ``jobs``)
      summary.csv                   one row per cell (``SUMMARY_FIELDS``)
      splits/<task>/seed-<s>.json   ``SplitRecord``: the ordered ids and content keys of train, dev and test (with a
                                    list of train sizes, made at the largest: each smaller train set is a prefix)
      cells/<model>/<task>/seed-<s>/[train-<n>/][to-model-<m>/][to-task-<t>/]<condition>/
                                    one cell, named by its ``CellKey``; the bracketed segments only when the key has
                                    a train size (a point of a sample-efficiency curve) or a transfer target (the
                                    artifact of the cell without them, scored on another task's test or model)
          cell.json                 ``CellRecord``, written last, listing every other file the cell needs with
                                    its size and sha256: ``RunFolder.cell_state`` (the one completeness test)
                                    judges the cell done, failed, damaged or stale by it
          scores.jsonl              one line per test example (the ``eval`` schema)
          evidence.json             ``Evidence``: what the harness saw at the boundary while fitting and scoring
                                    (a transfer cell: the target test examples its leakage filter removed)
          artifact/                 the prompt artifact (artifact.json, tensors.safetensors); a transfer cell keeps
                                    a copy of its source's, whose hash its cell.json records
          log.json                  the condition's log, as the condition handed it over (``FitContext.report_log``)
          files/                    the condition's working folder (``FitContext.workdir``), as it left it
      jobs/<n>/                     what invocation n of `promptgap run` sent where (``harness.executors``):
          job-<id>.json             ``JobRecord``: the job's cells, executor, log paths; written by the submitter
          worker-<id>.json          ``WorkerRecord``: host, threads, the model records; written by that job alone
          <id>_0_log.out/.err ...   submitit's own files (pickles, logs) for processes and slurm jobs

Every write goes through ``harness.atomic``; a cell is built in a hidden temp folder and renamed into place, so a
run killed at any moment holds only whole cells. Nothing else in promptgap builds a path inside a run folder: the
runner writes through ``RunFolder``, and the report, ``check`` and ``status`` read through ``load_run``. Jobs running
at the same time never write the same file: each writes its own cells and its own worker record, and only the
process that submitted them writes config.json, manifest.json, summary.csv and the job records.

The design of a run (the cell key, the cells a config asks for, which split each uses) is ``harness.plan``'s; this
module stores by ``CellKey.parts`` and reads a run back with its ``Plan``: the reader's expected cells are the
runner's to-do list. A transfer cell whose source's artifact changed since it was scored is not finished.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import logging
import math
import os
import socket
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from harness.artifact import ARTIFACT_FILE, TENSOR_FILE, WEIGHTS_FILE, PromptArtifact
from harness.atomic import (
    atomic_dir,
    clear_temporaries,
    create_new,
    json_text,
    remove_dir,
    remove_if_same,
    write_atomic,
    write_json,
)
from harness.config import ceiling_names
from harness.data import Split, ids_hash
from harness.errors import UserError
from harness.names import check_inside
from harness.plan import AXES, KEY_FIELDS, CellKey, Plan, PlannedTask, TransferPlan, fitted_split, scored_split, slug
from harness.provenance import now

log = logging.getLogger(__name__)

PARTS = ("train", "dev", "test")
# the costs that reproduce (token counts, sizes); seconds depend on the machine and stay in cell.json and the report,
# so that the same config gives the same summary.csv, byte for byte, whatever the executor
SUMMARY_FIELDS = ["model", "task", "condition", "seed", "split_hash", "n", "accuracy", "gold_nll", "format", "status",
                  "fit_tokens", "prompt_tokens", "trainable_params"]
CONFIG, MANIFEST, SUMMARY, JOBS, LOCK = "config.json", "manifest.json", "summary.csv", "jobs", "lock.json"
CELL, SCORES, EVIDENCE, LOG, ARTIFACT, FILES = "cell.json", "scores.jsonl", "evidence.json", "log.json", "artifact", \
    "files"
TRANSFER_FIELDS = ("source_artifact", "removed")


# --- the records ---------------------------------------------------------------------------------------------------
@dataclass
class SplitRecord:
    """A split as the run used it: per part the ordered example ids and their content keys (``Example.content_key``),
    and the split hash (``Split.hash``) computed from the ids. ``mirrors``: per part, each example's mirror keys
    (``Example.mirror_keys``), when the task has that rule. ``train_sizes``: the sample-efficiency curve's train
    sizes; the split holds the largest, and each smaller train set is a prefix of it (``prefix``)."""

    task: str
    seed: int
    hash: str
    ids: dict[str, list[str]]
    content: dict[str, list[str]] | None = None  # None in run folders written before content keys were recorded
    mirrors: dict[str, list[list[str]]] | None = None
    train_sizes: list[int] | None = None

    @classmethod
    def of(cls, task: str, seed: int, split: Split, train_sizes: Sequence[int] | None = None) -> SplitRecord:
        mirrors = ({p: [list(e.mirror_keys) for e in split.part(p)] for p in PARTS}
                   if any(e.mirror_keys for p in PARTS for e in split.part(p)) else None)
        return cls(task, seed, split.hash, {p: [e.id for e in split.part(p)] for p in PARTS},
                   {p: [e.content_key for e in split.part(p)] for p in PARTS}, mirrors,
                   list(train_sizes) if train_sizes else None)

    def to_json(self) -> dict[str, Any]:
        return {"task": self.task, "seed": self.seed, "hash": self.hash, **self.ids,
                **({"content": self.content} if self.content is not None else {}),
                **({"mirrors": self.mirrors} if self.mirrors is not None else {}),
                **({"train_sizes": self.train_sizes} if self.train_sizes is not None else {})}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SplitRecord:
        ids = {}
        for p in PARTS:
            if not isinstance(data.get(p), list):
                raise ValueError(f"part {p!r} is missing or not a list")
            ids[p] = [str(x) for x in data[p]]
        content, mirrors, sizes = data.get("content"), data.get("mirrors"), data.get("train_sizes")
        for name, value in (("content", content), ("mirrors", mirrors)):
            if value is not None and not (isinstance(value, dict) and all(isinstance(value.get(p), list)
                                                                          for p in PARTS)):
                raise ValueError(f"{name} is not a list per part")
        if sizes is not None and not (isinstance(sizes, list) and all(isinstance(n, int) for n in sizes)):
            raise ValueError("train_sizes is not a list of whole numbers")
        return cls(str(data["task"]), int(data["seed"]), str(data.get("hash")), ids,
                   {p: [str(x) for x in content[p]] for p in PARTS} if content is not None else None,
                   {p: [[str(k) for k in x] for x in mirrors[p]] for p in PARTS} if mirrors is not None else None,
                   sizes)

    def prefix(self, n_train: int) -> SplitRecord:
        """The same split with only the first ``n_train`` train ids (the hash recomputed), as ``Split.prefix`` cuts
        a split of examples; ``plan.fitted_split`` says which cell uses which."""
        def cut(d: dict[str, list[Any]] | None) -> dict[str, list[Any]] | None:
            return None if d is None else {**d, "train": d["train"][:n_train]}

        out = replace(self, ids=cut(self.ids), content=cut(self.content), mirrors=cut(self.mirrors), train_sizes=None)
        out.hash = out.computed_hash()
        return out

    def items(self, part: str) -> list[tuple[str, str, list[str]]]:
        """(id, content key, mirror keys) of ``part``'s examples (``harness.data.leaks``' input)."""
        content = (self.content or {}).get(part) or [""] * len(self.ids[part])
        mirrors = (self.mirrors or {}).get(part) or [[] for _ in self.ids[part]]
        return list(zip(self.ids[part], content, mirrors, strict=False))

    def part_hashes(self) -> dict[str, str]:
        return {p: ids_hash(self.ids[p]) for p in PARTS}

    def computed_hash(self) -> str:
        """``Split.hash`` recomputed from the ids as written."""
        return ids_hash([f"{k}={v}" for k, v in self.part_hashes().items()])


@dataclass
class CellRecord:
    """cell.json: the cell's key, what ran, its outcome and its summary numbers (means of scores.jsonl)."""

    key: CellKey
    optimizer: str
    settings: dict[str, Any]
    split_hash: str
    status: str = "error"  # ok or error
    error: str | None = None
    traceback: str | None = None
    n: int = 0
    accuracy: float | None = None
    gold_nll: float | None = None
    format: str | None = None
    instruction_role: str | None = None
    n_train: int = 0
    n_dev: int = 0
    fit_seconds: float | None = None
    score_seconds: float | None = None
    fit_tokens: int | None = None  # token positions through the model while fitting (models.Usage), padding excluded
    fit_grad_tokens: int | None = None  # of those, in passes with gradients (training)
    score_tokens: int | None = None  # the same for scoring the test split
    prompt_tokens: int | None = None  # tokens the prompt adds before each input: its text, plus virtual tokens
    trainable_params: int | None = None  # numbers in the trained tensors kept (soft prompt, key/value prefix)
    device: str | None = None
    dtype: str | None = None
    threads: int | None = None
    deterministic: bool | None = None  # torch's deterministic algorithms were on (--deterministic)
    code: dict[str, Any] | None = None  # provenance.code_state() of the process that ran the cell
    job: dict[str, Any] | None = None  # the job that ran it: {"invocation", "id", "executor", "host"}
    selection: dict[str, Any] | None = None  # what the condition reported selecting on (FitContext.report_selection)
    fallbacks: list[dict[str, Any]] | None = None  # what fitting and scoring fell back to after running out of memory
    finished: str | None = None
    # transfer cells only (absent from other cells' cell.json): the hash of the source cell's artifact that was
    # scored (``RunFolder.artifact_hash``), and how many target test examples the leakage filter removed, by rule
    source_artifact: str | None = None
    removed: dict[str, int] | None = None
    # every file the cell needs, by path in its folder: {"bytes", "sha256"} (``file_list``), set by
    # ``CellWriter.finish``; None in cells written before cells listed their files (judged by what they have)
    files: dict[str, dict[str, Any]] | None = None
    # what the cell's numbers depend on besides its key, settings and split (``provenance.scoring_fingerprint``);
    # None in cells written before it was recorded, which are never reused in another run
    fingerprint: dict[str, Any] | None = None
    # a cell copied from another run (``promptgap bench``): {"run": its run id, "commit": the commit that made it}
    reused_from: dict[str, Any] | None = None
    # a ceiling candidate's fitted artifact scored by the harness on all of dev ({"n", "accuracy", "gold_nll"}, as
    # ``summarize``): what picks a task's ceiling among several ([ratio] ceiling = [...], ``findings.choose_ceiling``)
    dev: dict[str, Any] | None = None
    # a condition that asks another LM (a DSPy proposer): {"model", "where", "calls", "prompt_tokens",
    # "completion_tokens"}, as its log's ``proposer_usage``; none of it is in fit_tokens (the task model's)
    proposer: dict[str, Any] | None = None
    metric_calls: int | None = None  # a DSPy search's examples evaluated under a candidate (its log's metric_calls)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("key")
        for k in (*TRANSFER_FIELDS, "files", "fingerprint", "reused_from", "dev", "proposer", "metric_calls"):
            if d[k] is None:
                del d[k]
        return {**self.key.to_json(), **d}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CellRecord:
        known = {f.name for f in fields(cls)} - {"key"} - set(KEY_FIELDS)
        rest = {k: v for k, v in data.items() if k in known}
        return cls(key=CellKey.from_json(data), **rest)


@dataclass
class Evidence:
    """What the harness itself saw at the boundary of a cell (not what the condition says about itself).

    ``fit_reads``: every example the renderer turned into tokens while the condition fitted (scored, or rendered
    for training), id -> {"content": content key, "times": n}. ``fit_bare_calls``: scorer calls with bare token
    requests, which name no example. ``test_reads``: the same for the harness's scoring of the test split.
    ``selection``: the ids and metric the condition said it chose on (its word, which the audit checks against
    the split and ``fit_reads``). ``requests``: per test request, its example, choice, how many BOS tokens lead
    its context (after any soft-prompt slots) and whether its text starts with the BOS text (lm-eval's rule then
    adds none). ``example``: the first test request as text (example id, context, continuation), what the model
    read, template and any soft-prompt slot (``render.SLOT``) included. ``control_tokens``: only when the text the
    data and the condition put into the requests holds control-token text (``<|im_end|>``): occurrences per token
    text while fitting and while scoring test (once per example rendered), and ``as``: ``control`` (it became
    control ids, lm-eval's way) or ``text`` (``split_special_tokens``).
    """

    fit_reads: dict[str, dict[str, Any]] = field(default_factory=dict)
    fit_bare_calls: int = 0
    selection: dict[str, Any] | None = None  # as the condition reported it: {"ids": [...], "metric": ...}
    test_reads: dict[str, dict[str, Any]] = field(default_factory=dict)
    requests: list[dict[str, Any]] = field(default_factory=list)
    # transfer cells only: {"removed": {target test id: "same" | "mirror"}, "fitted_on": content keys compared}
    leakage: dict[str, Any] | None = None
    example: dict[str, str] | None = None
    control_tokens: dict[str, Any] | None = None  # {"fit": {text: n}, "test": {text: n}, "as": "control" | "text"}

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items()
                if v is not None or k not in ("leakage", "example", "control_tokens")}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Evidence:
        return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})


@dataclass
class JobRecord:
    """One job of an invocation: which cells it runs and where its logs are. ``id`` is the executor's job id
    (a Slurm job id, ``<array>_<index>`` in an array; a process id for local processes)."""

    invocation: int
    id: str
    executor: str
    cells: list[CellKey]
    submitted: str
    host: str  # where it was submitted from (a local process's pid means something only there)
    stdout: str | None = None
    stderr: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "cells": [k.to_json() for k in self.cells]}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> JobRecord:
        return cls(**{**data, "cells": [CellKey.from_json(k) for k in data["cells"]]})


@dataclass
class WorkerRecord:
    """What a job's process recorded about itself: where it ran, with how many threads, and the provenance record
    of each model it loaded (``provenance.model_record``), which the submitter gathers into manifest.json."""

    invocation: int
    job: str
    executor: str
    host: str
    pid: int
    threads: int
    started: str
    models: dict[str, Any] = field(default_factory=dict)
    finished: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> WorkerRecord:
        return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})


def score_lines(scores: Sequence[Any], common: dict[str, Any]) -> list[dict[str, Any]]:
    """The ``eval`` schema: each ``ExampleScore`` with the fields every line of one output shares."""
    return [{**s.to_json(), **common} for s in scores]


def summarize(lines: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """n, accuracy and mean gold NLL of score lines: the numbers cell.json and summary.csv state."""
    n = len(lines)
    return {"n": n, "accuracy": sum(bool(x["correct"]) for x in lines) / n if n else None,
            "gold_nll": sum(float(x["gold_nll"]) for x in lines) / n if n else None}


@dataclass
class LockRecord:
    """lock.json: who holds the run folder. ``token`` tells its holder's record from a later one; ``jobs``: the
    process that took it has returned (``--no-wait``, or interrupted) and the run's live jobs hold it now."""

    host: str
    pid: int
    started: str
    command: str
    token: str
    jobs: bool = False

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LockRecord:
        return cls(str(data["host"]), int(data["pid"]), str(data["started"]), str(data["command"]),
                   str(data["token"]), bool(data.get("jobs", False)))

    @property
    def label(self) -> str:
        return f"`{self.command}` (pid {self.pid} on {self.host}, since {self.started}, {self.age} ago)"

    @property
    def age(self) -> str:
        try:
            seconds = (datetime.now(UTC) - datetime.fromisoformat(self.started)).total_seconds()
        except (ValueError, TypeError):
            return "an unknown time"
        return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.0f} min"


# --- writing -------------------------------------------------------------------------------------------------------
class CellWriter:
    """A cell under construction in its temp folder; whatever is written appears only if the block ends normally."""

    def __init__(self, tmp: Path) -> None:
        self.dir = tmp
        self.workdir = tmp / FILES
        self.workdir.mkdir()

    def scores(self, lines: Sequence[dict[str, Any]]) -> None:
        write_atomic(self.dir / SCORES, "".join(json.dumps(x, ensure_ascii=False) + "\n" for x in lines))

    def artifact(self, artifact: PromptArtifact) -> None:
        artifact.save(self.dir / ARTIFACT)

    def artifact_copy(self, folder: RunFolder, source: CellKey) -> None:
        """A transfer cell's copy of its source's artifact, byte for byte (so its hash is the source's)."""
        src = folder.cell_dir(source) / ARTIFACT
        (self.dir / ARTIFACT).mkdir()
        for f in sorted(p for p in src.iterdir() if p.is_file()):
            write_atomic(self.dir / ARTIFACT / f.name, f.read_bytes())

    def log(self, record: dict[str, Any] | None) -> None:
        if record is not None:
            write_json(self.dir / LOG, record)

    def evidence(self, evidence: Evidence) -> None:
        write_atomic(self.dir / EVIDENCE, json.dumps(evidence.to_json(), ensure_ascii=False) + "\n")

    def finish(self, record: CellRecord) -> None:
        """cell.json, last: it lists every other file of the cell with its size and hash, so that a file lost or
        cut short later makes the cell damaged (``RunFolder.cell_state``), not done."""
        if not any(self.workdir.iterdir()):
            self.workdir.rmdir()
        record.files = file_list(self.dir)
        write_json(self.dir / CELL, record.to_json())


class RunFolder:
    """``results/<run-id>/``: its paths, and every write into it."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    @property
    def run_id(self) -> str:
        # the folder's own name even when given as "." or "results/x/.." (the report is named by it); abspath, not
        # resolve: a symlinked run folder keeps the name it was given
        return Path(os.path.abspath(self.root)).name

    def exists(self) -> bool:
        return (self.root / CONFIG).exists()

    def path(self, *parts: str) -> Path:
        """A path below the run folder: the one way this class builds one, checked to stay inside it."""
        return check_inside(self.root, self.root.joinpath(*parts))

    def cell_dir(self, key: CellKey) -> Path:
        return self.path("cells", *key.parts())

    def split_path(self, task: str, seed: int) -> Path:
        return self.path("splits", slug(task), f"seed-{seed}.json")

    # --- run-level files -------------------------------------------------------------------------------------
    def read_json(self, name: str) -> Any:
        return _read_json(self.root / name)

    def write_config(self, config: dict[str, Any]) -> None:
        write_json(self.root / CONFIG, config)

    def read_manifest(self) -> dict[str, Any] | None:
        """manifest.json, None when there is none; one that cannot be read is an error naming the way forward."""
        path = self.root / MANIFEST
        if not path.exists():
            return None
        try:
            data = json.loads(path.read_text())
            if not isinstance(data, dict) or not isinstance(data.get("invocations"), list):
                raise ValueError("not a manifest: no list of invocations")
        except (OSError, ValueError) as e:  # json.JSONDecodeError is a ValueError
            raise UserError(f"{path}: cannot be read ({e}); restore it from a copy, or delete it and run "
                            f"`promptgap run CONFIG --run-id {self.run_id} --resume` again, which writes a new one "
                            f"(the provenance of the earlier invocations is then lost)") from None
        return data

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        write_json(self.root / MANIFEST, manifest)

    def clear_unfinished(self) -> int:
        """Drop the temp folders of cells (and files) a killed run left; returns how many."""
        return clear_temporaries(self.root) if self.root.exists() else 0

    def record_split(self, record: SplitRecord) -> None:
        """Write the split file, or check that the one written when the run started names the same examples."""
        path = self.split_path(record.task, record.seed)
        if path.exists():
            try:
                old = SplitRecord.from_json(json.loads(path.read_text()))
            except (OSError, AttributeError, KeyError, TypeError, ValueError) as e:
                # safe to rebuild: the split is re-derived from the seed and the data, and `promptgap check`
                # compares it with the split hash every cell recorded
                raise UserError(f"{path}: not a split file ({type(e).__name__}: {e}); delete it and resume: it is "
                                f"rebuilt from the seed and the data (`promptgap check` then compares it with the "
                                f"cells' split hashes)") from None
            if old.hash != record.hash or any(getattr(old, k) is not None and getattr(old, k) != getattr(record, k)
                                              for k in ("content", "mirrors", "train_sizes")):
                raise UserError(f"task {record.task} seed {record.seed}: the split changed since the run started "
                                f"({old.hash} -> {record.hash}); the data files differ; start a new run")
            return
        write_json(path, record.to_json())

    def check_split(self, record: SplitRecord) -> None:
        """A job's check that the split it rebuilt is the one recorded before it was submitted (never writes)."""
        if not self.split_path(record.task, record.seed).exists():
            raise UserError(f"task {record.task} seed {record.seed}: no split file in {self.root}; the run was not "
                            f"prepared (start it with `promptgap run`)")
        self.record_split(record)

    # --- the lock --------------------------------------------------------------------------------------------
    def take_lock(self, command: str, force: bool = False) -> LockRecord:
        """Make this process the run folder's one writer (lock.json), before anything is written into it.

        A lock another process holds is a one-line error naming it: a process alive on this host, or the run's live
        jobs (``jobs.live_jobs``: they hold it once the process that submitted them returned). Not held, it is
        replaced: one whose jobs have ended; one from this host whose process is dead (stale: a warning says so);
        one from another host, whose process cannot be seen from here, only with ``force`` (``--force-unlock``).
        The lock file appears whole or not at all: the record is written to a temp file and hard-linked to
        lock.json, which, like O_CREAT|O_EXCL, fails when lock.json exists (on NFS too).
        """
        from harness.jobs import live_jobs, process_alive

        mine = LockRecord(host=socket.gethostname(), pid=os.getpid(), started=now(), command=command,
                          token=uuid.uuid4().hex)
        for _ in range(10):  # each pass either takes the lock, refuses, or clears a lock that is not held
            if self._link_lock(mine):
                return mine
            found = self._read_lock()
            if found is None:  # released meanwhile
                continue
            old, inode = found
            if old is None:
                if not force:
                    raise UserError(f"{self.root / LOCK} cannot be read; if no promptgap run writes into "
                                    f"{self.root}, pass --force-unlock")
                log.warning("%s: unreadable lock replaced (--force-unlock)", self.root / LOCK)
            elif not old.jobs and old.host == mine.host and process_alive(old.pid):
                raise UserError(f"run folder {self.root} is in use by {old.label}; wait for it to end, or give "
                                f"another --run-id")
            elif running := live_jobs(self):
                raise UserError(f"run folder {self.root} is in use by {len(running)} live job(s) of "
                                f"{old.label} ({', '.join(j.id for j in running[:5])}); wait for them (`promptgap "
                                f"status {self.root}`) or cancel them")
            elif old.jobs:
                log.info("%s: the jobs that held the lock have ended; taking it", self.root)
            elif old.host != mine.host:
                if not force:
                    raise UserError(f"run folder {self.root} is locked by {old.label}; its process cannot be seen "
                                    f"from {mine.host}: if it no longer runs, pass --force-unlock")
                log.warning("%s: replacing the lock of %s (--force-unlock)", self.root, old.label)
            else:
                log.warning("%s: stale lock of %s, whose process has ended; replaced", self.root, old.label)
            self._clear_lock(inode)
        raise UserError(f"run folder {self.root}: other processes keep taking its lock; try again")

    def release_lock(self, lock: LockRecord) -> None:
        """Give the lock up at the end of `promptgap run`; while jobs it started still run (``--no-wait``, or an
        interrupted wait for Slurm jobs) it stays, marked as theirs, so no other run writes beside them."""
        from harness.jobs import live_jobs

        found = self._read_lock()
        if found is None or found[0] is None or found[0].token != lock.token:
            log.warning("%s: the lock of this run was taken over meanwhile (--force-unlock?); left as it is",
                        self.root)
            return
        # the local executor's job is this process itself, which is ending
        if [j for j in live_jobs(self) if not (j.host == lock.host and j.id == str(lock.pid))]:
            write_json(self.root / LOCK, replace(lock, jobs=True).to_json())
        else:
            (self.root / LOCK).unlink(missing_ok=True)

    def lock_holder(self) -> LockRecord | None:
        """The record in lock.json, if any (whether it is still held is ``take_lock``'s question)."""
        found = self._read_lock()
        return None if found is None else found[0]

    def _link_lock(self, record: LockRecord) -> bool:
        self.root.mkdir(parents=True, exist_ok=True)
        return create_new(self.root / LOCK, json_text(record.to_json()))

    def _read_lock(self) -> tuple[LockRecord | None, int] | None:
        """(record, inode) of lock.json; record None when it cannot be read; None when there is no lock.json."""
        try:
            with open(self.root / LOCK) as f:
                inode = os.fstat(f.fileno()).st_ino
                text = f.read()
        except FileNotFoundError:
            return None
        try:
            return LockRecord.from_json(json.loads(text)), inode
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            return None, inode

    def _clear_lock(self, inode: int) -> None:
        """Remove lock.json if it is still the file judged not held (``inode``)."""
        remove_if_same(self.root / LOCK, inode)

    # --- jobs --------------------------------------------------------------------------------------------------
    def jobs_dir(self, invocation: int) -> Path:
        """Where invocation ``invocation``'s job records and submitit's files (pickles, logs) go."""
        return self.path(JOBS, str(invocation))

    def write_job(self, job: JobRecord) -> None:
        write_json(self.jobs_dir(job.invocation) / f"job-{job.id}.json", job.to_json())

    def write_worker(self, worker: WorkerRecord) -> None:
        write_json(self.jobs_dir(worker.invocation) / f"worker-{worker.job}.json", worker.to_json())

    def jobs(self) -> list[JobRecord]:
        """Every job record, oldest invocation first."""
        return [JobRecord.from_json(_read_json(p)) for p in self._job_files("job-")]

    def workers(self) -> list[WorkerRecord]:
        return [WorkerRecord.from_json(_read_json(p)) for p in self._job_files("worker-")]

    def _job_files(self, prefix: str) -> list[Path]:
        files = [p for p in self.root.glob(f"{JOBS}/*/{prefix}*.json") if _visible(p, self.root)]
        return sorted(files, key=lambda p: (int(p.parent.name) if p.parent.name.isdigit() else -1, p.name))

    # --- cells -----------------------------------------------------------------------------------------------
    def cell_state(self, key: CellKey) -> Completeness | None:
        """The one completeness test (``check``, ``status``, the report and ``--resume`` all use it): None when the
        cell is not there; else done, failed, damaged (what is wrong, and with which file) or stale (a transfer cell
        whose source's artifact changed since it was scored). ``--resume`` keeps exactly the done cells."""
        judged = judge_cell(self.cell_dir(key), key)
        if judged is None or judged.state != DONE or not key.is_transfer:
            return judged
        if judged.record is None or judged.record.source_artifact != self.artifact_hash(key.source):
            return replace(judged, state=STALE, problem="its source cell's artifact changed since it was scored")
        return judged

    def finished(self, key: CellKey) -> bool:
        """Whether the cell is done: complete, whole and ok (failed, damaged and stale cells are redone on resume)."""
        state = self.cell_state(key)
        return state is not None and state.state == DONE

    def artifact(self, key: CellKey) -> PromptArtifact | None:
        """The artifact a done cell saved (a transfer cell's source), or None."""
        return PromptArtifact.load(self.cell_dir(key) / ARTIFACT) if self.finished(key) else None

    def artifact_hash(self, key: CellKey) -> str | None:
        """sha256 (first 16 hex digits) of the files of a cell's artifact folder, names included; None without one."""
        return artifact_hash(self.cell_dir(key) / ARTIFACT)

    @contextmanager
    def new_cell(self, key: CellKey) -> Iterator[CellWriter]:
        """Build a cell in a temp folder; it replaces any previous cell of the key when the block ends normally."""
        with atomic_dir(self.cell_dir(key), root=self.root) as tmp:
            yield CellWriter(tmp)

    def drop(self, key: CellKey) -> None:
        """Remove a cell that no longer belongs to the run's config (``promptgap bench``: other settings or scoring
        code): renamed to a temp name first, so a crash leaves nothing a later run would read as a cell."""
        remove_dir(self.cell_dir(key))

    def adopt(self, key: CellKey, donor: RunFolder) -> None:
        """Copy ``donor``'s done cell of ``key`` into this run, byte for byte but cell.json, which also names where
        it came from (``reused_from``); it appears whole or not at all, as a computed cell does."""
        state = donor.cell_state(key)
        if state is None or state.state != DONE or state.record is None:
            raise ValueError(f"{donor.root}: cell {key.label} is not done")
        src = donor.cell_dir(key)
        with atomic_dir(self.cell_dir(key), root=self.root) as tmp:
            for f in sorted(src.rglob("*")):
                rel = f.relative_to(src)
                if f.is_file() and rel.parts[0] not in (CELL, FILES) and _visible(f, src):
                    (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
                    write_atomic(tmp / rel, f.read_bytes())
            record = state.record
            record.reused_from = {"run": donor.run_id, "commit": (record.code or {}).get("commit")}
            write_json(tmp / CELL, record.to_json())

    def cell_paths(self) -> list[Path]:
        """Every complete cell folder on disk (hidden temp folders excluded). Keys have 4 to 7 segments; a cell
        folder never holds another cell, so a cell.json below one (inside a condition's files/) is not a cell."""
        found = [p.parent for p in sorted((self.root / "cells").glob("**/" + CELL)) if _visible(p, self.root)
                 and len(p.relative_to(self.root / "cells").parts) - 1 >= len(("model", "task", "seed", "cond"))]
        cells = set(found)
        return [p for p in found if not any(parent in cells for parent in p.parents)]

    def split_paths(self) -> list[Path]:
        return [p for p in sorted(self.root.glob("splits/*/seed-*.json")) if _visible(p, self.root)]

    def proposers(self) -> dict[str, list[dict[str, str]]]:
        """Condition -> the proposers its cells asked ({"model", "where"}, as ``CellRecord.proposer`` says), for the
        manifest."""
        out: dict[str, list[dict[str, str]]] = {}
        for path in self.cell_paths():
            with contextlib.suppress(UserError, KeyError, TypeError, ValueError):
                rec = CellRecord.from_json(_read_json(path / CELL))
                if isinstance(rec.proposer, dict):
                    used = {"model": str(rec.proposer.get("model")), "where": str(rec.proposer.get("where"))}
                    if used not in out.setdefault(rec.key.condition, []):
                        out[rec.key.condition].append(used)
        return dict(sorted(out.items()))

    def write_summary(self) -> None:
        """summary.csv from the cell records on disk: one row per cell; a column per axis of the key (train size,
        transfer target) only when some cell has it, so the summary of a run without them is as before."""
        rows = []
        for path in self.cell_paths():
            try:
                rec = CellRecord.from_json(_read_json(path / CELL))
            except (UserError, KeyError, TypeError, ValueError) as e:
                log.warning("%s: unreadable cell.json (%s); left out of summary.csv", path, e)
                continue
            d = rec.to_json()
            rows.append({k: d.get(k) for k in (*SUMMARY_FIELDS, *AXES)})
        axes = [a for a in AXES if any(r[a] is not None for r in rows)]
        for r in rows:
            for a in set(AXES) - set(axes):
                del r[a]
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=[*SUMMARY_FIELDS[:4], *axes, *SUMMARY_FIELDS[4:]], lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
        write_atomic(self.root / SUMMARY, buf.getvalue())


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"{path}: cannot be read as JSON ({e}); the run folder is damaged") from None


def artifact_hash(folder: Path) -> str | None:
    """sha256 (first 16 hex digits) over an artifact folder's file names and bytes, in name order."""
    if not folder.is_dir():
        return None
    h = hashlib.sha256()
    # a full fine-tune's weights file is kept out of git; artifact.json records its sha256, which stands for it
    for f in sorted(p for p in folder.iterdir() if p.is_file() and p.name != WEIGHTS_FILE):
        h.update(f.name.encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def _visible(path: Path, root: Path) -> bool:
    # hidden names are temp folders of unfinished writes
    return not any(p.startswith(".") for p in path.relative_to(root).parts)


# --- completeness --------------------------------------------------------------------------------------------------
DONE, FAILED, DAMAGED, STALE = "done", "failed", "damaged", "stale"


@dataclass(frozen=True)
class Completeness:
    """A cell folder judged by the one completeness test (``RunFolder.cell_state``).

    ``state``: done (whole, ok), failed (whole, the condition raised: ``problem`` is its error), damaged (cell.json
    unreadable, or a file the cell needs missing, cut short or changed: ``problem`` names the file and what is wrong)
    or stale (a transfer cell whose source's artifact changed since). ``legacy``: written before cell.json listed the
    cell's files, so it was judged by the files it has (scores.jsonl whole and as long as cell.json's n, the artifact
    there, its tensor file when cell.json counts trained parameters), not by their hashes.
    """

    state: str
    problem: str | None = None
    legacy: bool = False
    record: CellRecord | None = None

    @property
    def label(self) -> str:
        return f"{self.state} ({self.problem})" if self.problem else self.state


def file_list(cell_dir: Path) -> dict[str, dict[str, Any]]:
    """What cell.json records of the files a cell needs: every file in its folder (artifact/ included) but cell.json
    itself, files/ (the condition's working folder, which nothing reads back) and a full fine-tune's weights (kept
    out of git; artifact.json records their sha256), by relative path, with its size and sha256."""
    out = {}
    for p in sorted(cell_dir.rglob("*")):
        rel = p.relative_to(cell_dir)
        if p.is_file() and rel.parts[0] not in (CELL, FILES) and _visible(p, cell_dir) and p.name != WEIGHTS_FILE:
            out[rel.as_posix()] = {"bytes": p.stat().st_size, "sha256": _sha256(p)}
    return out


def judge_cell(path: Path, key: CellKey | None = None) -> Completeness | None:
    """The completeness test of one cell folder (``key``: the cell it must hold); None when there is no folder.
    ``RunFolder.cell_state`` adds a transfer cell's staleness."""
    if not (path / CELL).is_file():
        # cells are renamed into place whole, so a cell folder without cell.json lost it afterwards
        return Completeness(DAMAGED, f"{CELL} is missing") if path.is_dir() else None
    try:
        record = CellRecord.from_json(json.loads((path / CELL).read_text()))
    except json.JSONDecodeError as e:
        return Completeness(DAMAGED, f"{CELL} unreadable: {e.msg} at line {e.lineno}")
    except (OSError, AttributeError, KeyError, TypeError, ValueError) as e:
        return Completeness(DAMAGED, f"{CELL} unreadable: {type(e).__name__}: {e}")
    if key is not None and record.key != key:
        return Completeness(DAMAGED, f"{CELL} names another cell ({record.key.label})")
    legacy = record.files is None
    problem = _legacy_problem(path, record) if legacy else _files_problem(path, record.files)
    if problem is not None:
        return Completeness(DAMAGED, problem, legacy, record)
    if not record.ok:
        return Completeness(FAILED, record.error or f"status {record.status!r}", legacy, record)
    return Completeness(DONE, None, legacy, record)


def _files_problem(path: Path, files: Any) -> str | None:
    """What is wrong with the files cell.json lists (the first problem), or None."""
    if not isinstance(files, dict) or not all(isinstance(v, dict) and "sha256" in v and "bytes" in v
                                              for v in files.values()):
        return f"{CELL}: its file list is malformed"
    for rel, want in files.items():
        p = path / rel
        if not p.is_file():
            return f"{rel} is missing"
        size = p.stat().st_size
        if size != want["bytes"]:
            return f"{rel} is {size} bytes, cell.json recorded {want['bytes']} (cut short or changed)"
        if _sha256(p) != want["sha256"]:
            return f"{rel} changed since the cell was written (its sha256 is not the one cell.json recorded)"
    return None


def _legacy_problem(path: Path, record: CellRecord) -> str | None:
    """A cell written before cell.json listed its files, judged by what it has: an ok cell needs whole score lines,
    as many as cell.json's n, its artifact, and the tensor file when it counts trained parameters."""
    if not record.ok:
        return None
    try:
        text = (path / SCORES).read_text()
    except OSError:
        return f"{SCORES} is missing"
    lines = [x for x in text.splitlines() if x.strip()]
    for i, x in enumerate(lines, 1):
        try:
            json.loads(x)
        except json.JSONDecodeError:
            return f"{SCORES} line {i} is not whole JSON (cut short?)"
    if len(lines) != record.n:
        return f"{SCORES} has {len(lines)} line(s), cell.json n = {record.n} (cut short?)"
    if not (path / ARTIFACT / ARTIFACT_FILE).is_file():
        return f"{ARTIFACT}/{ARTIFACT_FILE} is missing"
    if record.trainable_params and not (path / ARTIFACT / TENSOR_FILE).is_file():
        return f"{ARTIFACT}/{TENSOR_FILE} is missing (cell.json counts {record.trainable_params} trained parameters)"
    return None


_HASHES: dict[tuple[str, int, int], str] = {}  # (path, size, mtime): sha256; `status` polls every cell repeatedly


def _sha256(path: Path) -> str:
    st = path.stat()
    memo = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if memo not in _HASHES:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        _HASHES[memo] = h.hexdigest()
    return _HASHES[memo]


# --- reading -------------------------------------------------------------------------------------------------------
@dataclass
class Cell:
    """One cell of the matrix as found on disk. ``status`` is the record's (ok, error), or ``damaged`` (the
    completeness test found a file missing, cut short or changed, or cell.json unreadable: ``error`` says which and
    what; whatever could be read is still read, for the audit) or ``missing`` (no cell folder). ``legacy``: written
    before cell.json listed its files (``Completeness.legacy``)."""

    key: CellKey
    path: Path | None = None
    record: CellRecord | None = None
    status: str = "missing"
    error: str | None = None
    lines: list[dict[str, Any]] = field(default_factory=list)  # scores.jsonl
    artifact: PromptArtifact | None = None
    log: dict[str, Any] | None = None
    evidence: Evidence | None = None
    problems: list[str] = field(default_factory=list)  # files that could not be read
    legacy: bool = False

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def damaged(self) -> bool:
        return self.status == DAMAGED

    @property
    def label(self) -> str:
        return self.key.label

    @property
    def seed(self) -> int:
        return self.key.seed

    @property
    def condition(self) -> str:
        return self.key.condition


def load_cell(path: Path, judged: Completeness | None = None) -> Cell | None:
    """Read one cell folder; None when its cell.json cannot name a cell at all. ``judged``: the folder's completeness
    (``RunFolder.cell_state``; default ``judge_cell``), which makes the cell damaged or legacy."""
    judged = judged or judge_cell(path)
    if judged is None or judged.record is None:
        return None
    record = judged.record
    cell = Cell(record.key, path, record, status=record.status, error=record.error, legacy=judged.legacy)
    if judged.state == DAMAGED:
        cell.status, cell.error = DAMAGED, judged.problem
    if (path / LOG).exists():
        try:
            cell.log = _read_json(path / LOG)
        except UserError as e:
            cell.problems.append(str(e))
    if (path / ARTIFACT).exists():
        try:
            cell.artifact = PromptArtifact.load(path / ARTIFACT)
        except UserError as e:
            cell.problems.append(str(e))
    if (path / EVIDENCE).exists():
        try:
            cell.evidence = Evidence.from_json(_read_json(path / EVIDENCE))
        except (UserError, TypeError) as e:
            cell.problems.append(f"{path / EVIDENCE}: {e}")
    if record.ok:
        # read even when damaged: the audit re-derives what it can from every line that is there
        try:
            cell.lines = [json.loads(x) for x in (path / SCORES).read_text().splitlines() if x.strip()]
        except (OSError, json.JSONDecodeError) as e:
            cell.problems.append(f"{path / SCORES}: {e}")
    return cell


@dataclass
class Run:
    """A run folder as read: config, manifest, splits, and every cell of the config's matrix (missing ones too)."""

    folder: RunFolder
    config: dict[str, Any]
    manifest: dict[str, Any]
    models: list[str]
    tasks: list[str]
    seeds: list[int]
    conditions: list[str]
    base: str | None
    texts: list[str]
    ceilings: list[str]  # [ratio] ceiling: one condition, or candidates of which each task takes the best on dev
    splits: dict[tuple[str, int], SplitRecord]
    cells: dict[CellKey, Cell]  # every expected cell, in matrix order
    extra_cells: list[Cell]  # cells on disk outside the config's matrix
    summary: list[dict[str, str]] | None  # summary.csv rows; None when the file is missing
    plan: Plan  # the run's design, as read back: the expected cells, the train sizes, the transfers
    problems: list[str] = field(default_factory=list)  # files that could not be read at all

    @property
    def dir(self) -> Path:
        return self.folder.root

    @property
    def run_id(self) -> str:
        return self.folder.run_id

    @property
    def transfer(self) -> TransferPlan | None:
        return self.plan.transfer

    def sizes(self, task: str) -> list[int | None]:
        return self.plan.sizes(task)

    def groups(self) -> list[tuple[str, str, int | None]]:
        """(model, task, train size) in run order: the cells of one group are the conditions of one matrix."""
        return self.plan.groups()

    def cell(self, model: str, task: str, seed: int, condition: str, train_size: int | None = None) -> Cell:
        return self.cells[CellKey(model, task, seed, condition, train_size)]

    def transfer_cells(self) -> list[Cell]:
        return [c for c in self.cells.values() if c.key.is_transfer]

    def split_of(self, key: CellKey) -> SplitRecord | None:
        """The split whose test part the cell scored (``plan.scored_split``)."""
        sf = self.splits.get((key.scored_task, key.seed))
        return None if sf is None else scored_split(sf, key)

    def fitted_split(self, key: CellKey) -> SplitRecord | None:
        """The split the cell's artifact was fitted on, a transfer cell's source's (``plan.fitted_split``)."""
        sf = self.splits.get((key.task, key.seed))
        return None if sf is None else fitted_split(sf, key)

    @property
    def ceiling(self) -> str | None:
        """The run's one ceiling; None without one or with several candidates (each task then has its own,
        ``findings.choose_ceiling``; the config refuses several where transfers or curves need one)."""
        return self.ceilings[0] if len(self.ceilings) == 1 else None

    def role(self, condition: str) -> str | None:
        if condition == self.base:
            return "base"
        if condition in self.ceilings:
            return "ceiling"
        if condition in self.texts:
            return "text"
        return None

    def ok_cells(self) -> list[Cell]:
        return [c for c in self.cells.values() if c.ok]


def _ordered(names: Sequence[str], preferred: Sequence[str]) -> list[str]:
    """Unique names, those in ``preferred`` first in its order, the rest in first-seen order."""
    seen = list(dict.fromkeys(names))
    return [n for n in preferred if n in seen] + [n for n in seen if n not in preferred]


def load_run(run_dir: str | Path) -> Run:
    """Read a run folder: config, manifest, splits, every cell of the config's matrix (missing ones marked)."""
    folder = RunFolder(run_dir)
    if not folder.exists():
        raise UserError(f"{folder.root} is not a run folder (no {CONFIG}); give results/<run-id>")
    config = folder.read_json(CONFIG)
    problems: list[str] = []
    try:
        manifest = folder.read_manifest() or {}
    except UserError as e:  # the audit says so (provenance is not recorded); the cells can still be read
        manifest = {}
        problems.append(str(e))
    ratio = config.get("ratio") or {}
    conditions = list(config.get("conditions") or {})

    splits: dict[tuple[str, int], SplitRecord] = {}
    for path in folder.split_paths():
        try:
            rec = SplitRecord.from_json(_read_json(path))
        except (UserError, KeyError, TypeError, ValueError) as e:
            problems.append(f"{path.relative_to(folder.root)}: unreadable split file ({e})")
            continue
        splits[(rec.task, rec.seed)] = rec
    found: dict[CellKey, Path] = {}
    unreadable: list[Path] = []  # cell.json that names no cell: damaged when the folder is an expected cell's
    for path in folder.cell_paths():
        judged = judge_cell(path)
        if judged is None or judged.record is None:
            unreadable.append(path)
        elif path != folder.cell_dir(judged.record.key):
            problems.append(f"{path.relative_to(folder.root)}: its cell.json names {judged.record.key.label}, whose "
                            f"folder is {folder.cell_dir(judged.record.key).relative_to(folder.root)}")
        else:
            found[judged.record.key] = path

    # the plan as the run recorded it: a task given as a spec path in the config is named by the spec inside the run,
    # so tasks come from the run; its train sizes from its split files (written before any cell), else from the
    # cells found
    config_tasks = [str(t.get("alias") or t.get("name")) for t in config.get("tasks", [])]
    tasks = _ordered([t for t, _ in splits] + [k.task for k in found], config_tasks)
    train_sizes: dict[str, list[int | None]] = {}
    for t in tasks:
        recorded = next((sf.train_sizes for (task, _), sf in splits.items() if task == t and sf.train_sizes), None)
        on_disk = sorted({k.train_size for k in found if k.task == t and k.train_size is not None})
        train_sizes[t] = list(recorded or on_disk or [None])
    models = [str(m) for m in config.get("models", [])]
    seeds = [int(s) for s in (config.get("run") or {}).get("seeds", [])]
    transfer = TransferPlan.from_json(config.get("transfer"))
    plan = Plan(models, [PlannedTask(t, tuple(train_sizes[t])) for t in tasks], seeds, conditions, transfer)
    cells: dict[CellKey, Cell] = {}
    for key in plan.cells():
        found.pop(key, None)
        judged = folder.cell_state(key)
        if judged is None:
            cells[key] = Cell(key, error="no cell.json: not run, or the run stopped before this cell")
        elif judged.record is None:  # a cell folder without a readable cell.json: damaged, named as such
            cells[key] = Cell(key, folder.cell_dir(key), status=DAMAGED, error=judged.problem)
            unreadable = [p for p in unreadable if p != folder.cell_dir(key)]
        else:
            cells[key] = load_cell(folder.cell_dir(key), judged) or Cell(key)
    problems += [f"{p.relative_to(folder.root)}/{CELL}: unreadable, or it names no cell" for p in unreadable]
    extra = [c for c in map(load_cell, found.values()) if c is not None]
    summary = None
    if (folder.root / SUMMARY).exists():
        with open(folder.root / SUMMARY, newline="") as f:
            summary = list(csv.DictReader(f))
    return Run(folder=folder, config=config, manifest=manifest, models=models, tasks=tasks, seeds=seeds,
               conditions=conditions, base=ratio.get("base"), texts=list(ratio.get("texts") or []),
               ceilings=ceiling_names(ratio), splits=splits, cells=cells, extra_cells=extra,
               summary=summary, problems=problems, plan=plan)


def is_number(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)
