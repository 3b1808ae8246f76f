"""The comparison matrix: models x tasks x seeds x conditions, each cell fitted and scored once, resumably.

Layout of ``results/<run-id>/`` (read by the report):

    config.json                 the resolved config
    manifest.json               command, versions, machine, times
    splits/<task>/seed-<s>.json the split's ordered ids and hash
    cells/<model>/<task>/seed-<s>/<condition>/
        cell.json               the cell's numbers and checks (written last)
        scores.jsonl            one line per test example (the `eval` schema)
        artifact/artifact.json  the prompt artifact
        log.json                training/search logs, if the condition wrote any
    summary.csv                 one row per cell

A cell is built in a hidden temp folder and renamed into place when complete, so a run
killed at any moment leaves only whole cells; ``--resume`` keeps them and redoes the rest.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.markup import escape

from harness.config import RunConfig, load_config
from harness.data import Split, ids_hash
from harness.errors import UserError
from harness.progress import console

log = logging.getLogger(__name__)

SUMMARY_FIELDS = ["model", "task", "condition", "seed", "split_hash", "n", "accuracy", "gold_nll", "format", "status"]


def slug(name: str) -> str:
    return name.replace("/", "--")


def write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, data: Any) -> None:
    write_atomic(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in ("promptgap", "torch", "transformers", "lm_eval", "dspy", "peft", "numpy", "scipy"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


def _git_commit() -> str | None:
    try:
        root = Path(__file__).resolve().parents[1]
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.TimeoutExpired):
        return None


class Runner:
    """Runs one config into one run folder; ``run()`` returns the folder."""

    def __init__(self, config_path: str | Path, run_id: str | None = None, resume: bool = False,
                 only: list[str] | None = None, results_root: Path = Path("results"),
                 command: str | None = None) -> None:
        self.config_path = Path(config_path)
        self.cfg: RunConfig = load_config(self.config_path)  # every check happens here, before any model
        if resume and not run_id:
            raise UserError("--resume needs the --run-id of the run to continue")
        self.run_id = run_id or f"{self.cfg.name}-{datetime.now(UTC).strftime('%Y%m%d-%H%M%S')}"
        self.run_dir = results_root / self.run_id
        self.resume = resume
        self.only = only
        for name in only or []:
            if name not in self.cfg.conditions:
                raise UserError(f"--only {name}: not a condition of this config; conditions: "
                                f"{', '.join(self.cfg.conditions)}")
        self.command = command or shlex.join(["promptgap", *sys.argv[1:]])

    # --- the folder ------------------------------------------------------------
    def _prepare(self) -> None:
        config_json = self.cfg.to_json()
        if self.run_dir.exists():
            if not self.resume:
                raise UserError(f"{self.run_dir} exists; pass --resume to continue it or choose another --run-id")
            old = json.loads((self.run_dir / "config.json").read_text())
            if old != config_json:
                raise UserError(f"{self.config_path} changed since run {self.run_id} started; "
                                f"resume with the same config or start a new --run-id")
        elif self.resume:
            raise UserError(f"--resume: no run folder {self.run_dir}; drop --resume to start it")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        write_json(self.run_dir / "config.json", config_json)
        manifest_path = self.run_dir / "manifest.json"
        manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {
            "run_id": self.run_id, "command": self.command, "config": str(self.config_path),
            "started": datetime.now(UTC).isoformat(timespec="seconds"), "git_commit": _git_commit(),
            "versions": _versions(),
            "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count()},
        }
        manifest.setdefault("resumed", [])
        if self.resume:
            manifest["resumed"].append(datetime.now(UTC).isoformat(timespec="seconds"))
        self.manifest = manifest
        write_json(manifest_path, manifest)
        # a cell killed half-way leaves only its hidden temp folder: clear those
        for stale in (self.run_dir / "cells").glob("**/.*.tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)

    def _split(self, task, task_cfg, seed: int) -> Split:
        split = task.split(seed, task_cfg.split_sizes(task.default_sizes))
        path = self.run_dir / "splits" / slug(task.name) / f"seed-{seed}.json"
        record = {"task": task.name, "seed": seed, "hash": split.hash,
                  **{p: [e.id for e in split.part(p)] for p in ("train", "dev", "test")}}
        if path.exists():
            old = json.loads(path.read_text())
            if old["hash"] != split.hash:
                raise UserError(f"task {task.name} seed {seed}: the split changed since the run started "
                                f"({old['hash']} -> {split.hash}); the data files differ; start a new run")
        else:
            write_json(path, record)
        return split

    def cell_dir(self, model: str, task: str, seed: int, condition: str) -> Path:
        return self.run_dir / "cells" / slug(model) / slug(task) / f"seed-{seed}" / condition

    # --- running -----------------------------------------------------------------
    def run(self) -> Path:
        from harness.models import load_model
        from harness.registry import get_task
        from harness.scorer import Scorer

        self._prepare()
        tasks = [(get_task(t.name, data_dir=t.data_dir), t) for t in self.cfg.tasks]
        splits = {(task.name, seed): self._split(task, t, seed) for task, t in tasks for seed in self.cfg.seeds}
        conditions = [c for c in self.cfg.conditions if not self.only or c in self.only]
        t_run = time.perf_counter()
        for model_name in self.cfg.models:
            todo = [(task, seed, c) for task, _ in tasks for seed in self.cfg.seeds for c in conditions
                    if not self._done(model_name, task.name, seed, c)]
            if not todo:
                continue
            lm = load_model(model_name, device=self.cfg.run["device"], dtype=self.cfg.run["dtype"])
            self.manifest["machine"].update(device=str(lm.device), dtype=str(lm.dtype).removeprefix("torch."))
            scorer = Scorer(lm, batch_size=self.cfg.run["batch_size"])
            for task, seed, c in todo:
                self._run_cell(lm, scorer, task, splits[(task.name, seed)], seed, c)
                self._write_summary()
        self._write_summary()
        self.manifest["finished"] = datetime.now(UTC).isoformat(timespec="seconds")
        self.manifest["seconds_this_invocation"] = round(time.perf_counter() - t_run, 1)
        write_json(self.run_dir / "manifest.json", self.manifest)
        return self.run_dir

    def _done(self, model: str, task: str, seed: int, condition: str) -> bool:
        cell = self.cell_dir(model, task, seed, condition) / "cell.json"
        return cell.exists() and json.loads(cell.read_text()).get("status") == "ok"

    def _run_cell(self, lm, scorer, task, split: Split, seed: int, condition: str) -> None:
        from harness.registry import get_optimizer, origin
        from optimizers.base import fit_condition

        spec = self.cfg.conditions[condition]
        owner = f"condition {condition} ({spec.optimizer}, from {origin(spec.optimizer)})"
        final = self.cell_dir(lm.name, task.name, seed, condition)
        final.parent.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{condition}.tmp-"))
        cell: dict[str, Any] = {
            "model": lm.name, "task": task.name, "condition": condition, "optimizer": spec.optimizer, "seed": seed,
            "split_hash": split.hash, "settings": spec.settings, "n_train": len(split.train), "n_dev": len(split.dev),
            "fit_train_ids_hash": ids_hash([e.id for e in split.train]),
            "fit_dev_ids_hash": ids_hash([e.id for e in split.dev]), "test_scored": 0,
        }
        label = f"{lm.name} / {task.name} / seed {seed} / {condition}"
        try:
            optimizer = get_optimizer(spec.optimizer)(**spec.settings)
            t0 = time.perf_counter()
            artifact = fit_condition(optimizer, lm, task, split.train, split.dev, scorer, seed, workdir=work,
                                     owner=owner)
            cell["fit_seconds"] = round(time.perf_counter() - t0, 2)
            t0 = time.perf_counter()
            scores = scorer.score(artifact, split.test, task.kind, desc=label)
            cell["score_seconds"] = round(time.perf_counter() - t0, 2)
            cell["test_scored"] += 1
            # soft-prompt slots (negative ids) may stand before the BOS ("start" placement): not tokens
            first = [t for t in scorer.renderer.requests(artifact, split.test[:1])[0][0].context if t >= 0]
            bos = getattr(lm.tokenizer, "bos_token_id", None)
            # a doubled BOS shows as a run of them at the start (chat templates may reuse the id later)
            lead = 0
            while bos is not None and lead < len(first) and first[lead] == bos:
                lead += 1
            cell["bos_count"] = lead
            common = {"model": lm.name, "task": task.name, "condition": condition, "split": "test",
                      "split_hash": split.hash, "format": artifact.format}
            write_atomic(work / "scores.jsonl", "".join(json.dumps({**s.to_json(), **common}) + "\n" for s in scores))
            artifact.save(work / "artifact")
            n = len(scores)
            cell.update(status="ok", error=None, n=n, accuracy=sum(s.correct for s in scores) / n,
                        gold_nll=sum(s.gold_nll for s in scores) / n, format=artifact.format,
                        instruction_role=artifact.instruction_role)
            console.print(f"[green]done[/] {label}: accuracy {cell['accuracy']:.4f}, gold NLL {cell['gold_nll']:.4f}")
        except (KeyboardInterrupt, SystemExit):
            shutil.rmtree(work, ignore_errors=True)
            raise
        except Exception as e:  # a failing condition is reported in its cell; the matrix goes on
            log.debug("cell %s failed", label, exc_info=True)
            message = str(e) if str(e).startswith(owner) else f"{owner}: {type(e).__name__}: {e}"
            cell.update(status="error", error=message, n=0, accuracy=None, gold_nll=None,
                        format=None, traceback=traceback.format_exc(limit=8))
            console.print(f"[red]failed[/] {label}: {escape(cell['error'])}")
        write_json(work / "cell.json", cell)  # last: a folder with cell.json is complete
        if final.exists():
            shutil.rmtree(final)
        os.replace(work, final)

    def _write_summary(self) -> None:
        rows = []
        for cell_json in sorted((self.run_dir / "cells").glob("*/*/seed-*/*/cell.json")):
            c = json.loads(cell_json.read_text())
            rows.append({k: c.get(k) for k in SUMMARY_FIELDS})
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=SUMMARY_FIELDS)
        w.writeheader()
        w.writerows(rows)
        write_atomic(self.run_dir / "summary.csv", buf.getvalue())
