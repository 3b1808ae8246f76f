"""Executors: local processes and a real Slurm cluster give the bytes of a run in one process; a killed Slurm job
fails its cell alone and --resume redoes exactly that cell; bad executor input stops before anything is submitted.

The Slurm tests need a cluster (`.ci/slurm-up` starts a single-node one on this machine). In CI
(PROMPTGAP_REQUIRE_SLURM=1, set by .ci/run) a missing cluster fails them; elsewhere they skip, saying why.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest
from test_runner import TINY

from harness.cli import main
from harness.run_folder import RunFolder

ROOT = Path(__file__).resolve().parents[1]
WAIT_PLUGIN = Path(__file__).parent / "fixtures" / "plugins" / "waitplugin"

# test_runner's tiny matrix with threads pinned, and a fifth condition that waits for its sentinel. The sentinel path
# is relative: each run starts in its own folder, and its jobs run there (sbatch keeps the submitting folder), so
# every test runs the same config text
CONFIG = TINY.replace("n_boot = 200", "n_boot = 200\nthreads = 1").replace("[ratio]", """\
[conditions.waits-for-sentinel]
sentinel = "go"
format = "chat"

[ratio]""") + "\n[executor]\nworkers = 2\n"
CONDITIONS = ["base-raw", "base-chat", "handwritten", "terse", "waits-for-sentinel"]


@pytest.fixture(scope="module")
def plugin_env(tmp_path_factory) -> dict[str, str]:
    """The waiting condition pip-installed into a folder on PYTHONPATH; jobs get the same environment."""
    target = tmp_path_factory.mktemp("site")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target",
                    str(target), str(WAIT_PLUGIN)], check=True, capture_output=True)
    path = os.pathsep.join([str(target), os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "PYTHONPATH": path, "PROMPTGAP_PROGRESS": "0", "HF_HUB_OFFLINE": "1",
            "OMP_NUM_THREADS": "1"}


def promptgap(env: dict[str, str], cwd: Path, *argv: str, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness.cli", *argv], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=timeout)


def start(tmp_path: Path, sentinel: bool = True) -> Path:
    (tmp_path / "c.toml").write_text(CONFIG)
    if sentinel:
        (tmp_path / "go").touch()
    return tmp_path


def outputs(run_dir: Path) -> dict[str, bytes]:
    """summary.csv and every scores.jsonl of a run, by path in the run folder."""
    files = [run_dir / "summary.csv", *sorted(run_dir.glob("cells/*/*/*/*/scores.jsonl"))]
    return {str(p.relative_to(run_dir)): p.read_bytes() for p in files}


@pytest.fixture(scope="module")
def reference(plugin_env, tmp_path_factory) -> dict[str, bytes]:
    """The same config run in one process (the local executor): the bytes every other executor must give."""
    cwd = start(tmp_path_factory.mktemp("local"))
    out = promptgap(plugin_env, cwd, "run", "c.toml", "--run-id", "r")
    assert out.returncode == 0, out.stderr
    files = outputs(cwd / "results" / "r")
    assert len(files) == 1 + len(CONDITIONS)
    assert len(files["summary.csv"].decode().splitlines()) == 1 + len(CONDITIONS)
    return files


@pytest.fixture(scope="module")
def slurm() -> None:
    """A Slurm cluster that answers; in CI its absence is a failure."""
    up = shutil.which("sbatch") is not None and subprocess.run(
        [str(ROOT / ".ci" / "slurm-up"), "--check"], capture_output=True).returncode == 0
    if not up:
        why = "no Slurm cluster answers here (sbatch/sinfo); start one with `.ci/slurm-up` (as root)"
        if os.environ.get("PROMPTGAP_REQUIRE_SLURM") == "1":
            pytest.fail(f"PROMPTGAP_REQUIRE_SLURM=1 but {why}")
        pytest.skip(why)


def test_processes_give_the_bytes_of_one_process(plugin_env, reference, tmp_path) -> None:
    cwd = start(tmp_path)
    out = promptgap(plugin_env, cwd, "run", "c.toml", "--run-id", "p", "--executor", "processes")
    assert out.returncode == 0, out.stderr
    run_dir = cwd / "results" / "p"
    assert outputs(run_dir) == reference
    folder = RunFolder(run_dir)
    jobs, workers = folder.jobs(), folder.workers()
    assert sorted(c.condition for j in jobs for c in j.cells) == sorted(CONDITIONS)
    assert len({w.pid for w in workers}) == len(CONDITIONS) and {w.threads for w in workers} == {1}
    # at most `workers = 2` worker processes at once: no instant lies inside three of their lifetimes
    spans = [(datetime.fromisoformat(w.started), datetime.fromisoformat(w.finished)) for w in workers]
    assert max(sum(a < t < b or a == t for a, b in spans) for t, _ in spans) <= 2
    assert "5 cells: 5 done, 0 running, 0 failed, 0 pending" in out.stdout


def test_slurm_job_array_gives_the_bytes_of_one_process(plugin_env, reference, slurm, tmp_path) -> None:
    cwd = start(tmp_path)
    out = promptgap(plugin_env, cwd, "run", "c.toml", "--run-id", "s", "--executor", "slurm")
    assert out.returncode == 0, out.stderr
    run_dir = cwd / "results" / "s"
    assert outputs(run_dir) == reference
    jobs = RunFolder(run_dir).jobs()
    ids = [re.fullmatch(r"(\d+)_(\d+)", j.id) for j in jobs]
    assert all(ids) and len({m.group(1) for m in ids}) == 1, [j.id for j in jobs]  # one array, a task per cell
    assert sorted(int(m.group(2)) for m in ids) == list(range(len(CONDITIONS)))
    for cell in run_dir.glob("cells/*/*/*/*/cell.json"):
        record = json.loads(cell.read_text())
        assert record["job"]["executor"] == "slurm" and record["threads"] == 1
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["models"]["smollm2-135m-instruct"]["cache"]["files"]  # gathered from the jobs' records
    check = promptgap(plugin_env, cwd, "check", str(run_dir))
    assert "FAIL" not in check.stdout, check.stdout


def test_a_cancelled_slurm_job_fails_its_cell_and_resume_redoes_only_it(plugin_env, reference, slurm,
                                                                        tmp_path) -> None:
    cwd = start(tmp_path, sentinel=False)
    run_dir = cwd / "results" / "k"
    folder = RunFolder(run_dir)
    out = promptgap(plugin_env, cwd, "run", "c.toml", "--run-id", "k", "--executor", "slurm", "--no-wait")
    assert out.returncode == 0, out.stderr
    assert "submitted" in out.stdout and not (run_dir / "summary.csv").exists()
    try:
        deadline = time.time() + 600
        while time.time() < deadline and not (cwd / "go.waiting").exists():  # its job is surely running
            time.sleep(0.5)
        assert (cwd / "go.waiting").exists()
        waiting = next(j for j in folder.jobs() if j.cells[0].condition == "waits-for-sentinel")
        early = promptgap(plugin_env, cwd, "run", "c.toml", "--run-id", "k", "--executor", "slurm", "--resume")
        # refused by the run folder's lock, which its live jobs hold: their cells would be computed twice
        assert early.returncode == 2 and "live job(s)" in early.stderr and waiting.id in early.stderr, early.stderr
        subprocess.run(["scancel", waiting.id], check=True)
        while time.time() < deadline:
            status = promptgap(plugin_env, cwd, "status", str(run_dir))
            if "0 running" in status.stdout and "0 pending" in status.stdout:
                break
            time.sleep(1)
        assert status.returncode == 0 and "5 cells: 4 done, 0 running, 1 failed, 0 pending" in status.stdout, \
            status.stdout
        failed = [line for line in status.stdout.splitlines() if "failed " in line]
        assert len(failed) == 1 and "waits-for-sentinel" in failed[0] and f"job {waiting.id} ended" in failed[0]
        assert f"job {waiting.id} log: {waiting.stderr}" in status.stdout and Path(waiting.stderr).is_file()
        seed_dir = folder.cell_dir(waiting.cells[0]).parent
        assert not (seed_dir / "waits-for-sentinel").exists() and len(list(seed_dir.iterdir())) >= 4
    finally:
        for job in folder.jobs():
            subprocess.run(["scancel", job.id], capture_output=True)

    # after --no-wait, `promptgap report` gathers summary.csv from the cells there are
    report = promptgap(plugin_env, cwd, "report", str(run_dir), "--reports", str(cwd / "reports"))
    assert report.returncode == 0, report.stderr
    assert len((run_dir / "summary.csv").read_text().splitlines()) == 1 + 4

    done = {p: p.stat().st_mtime_ns for p in run_dir.glob("cells/*/*/*/*/cell.json")}
    (cwd / "go").touch()
    resumed = promptgap(plugin_env, cwd, "run", "c.toml", "--run-id", "k", "--executor", "slurm", "--resume")
    assert resumed.returncode == 0, resumed.stderr
    again = [j for j in folder.jobs() if j.invocation == 1]
    assert [[c.condition for c in j.cells] for j in again] == [["waits-for-sentinel"]]  # that cell alone
    assert {p: p.stat().st_mtime_ns for p in done} == done  # the finished cells were not recomputed
    assert outputs(run_dir) == reference  # the final summary and scores equal the unkilled run's


@pytest.mark.parametrize(("edit", "argv", "needle"), [
    (None, ["--executor", "nosuch"], "executor 'nosuch' is unknown; use local, processes, slurm"),
    ('kind = "slurm"', [], "executor slurm: no sbatch, squeue, srun, scancel on the PATH"),
    ('kind = "slurm"\ncpus = "two"', [], "[executor]: cpus = 'two'; give a whole number >= 1"),
    ("mem = 16", ["--executor", "processes"], "[executor]: mem = 16; give Slurm's --mem as text with a unit"),
    ("time = 1.5", [], "[executor]: time = 1.5; give a whole number >= 1"),
    ("[executor.conditions.nosuch]\ngpus = 1", [], "conditions.nosuch is not a condition of this run"),
    ("[executor.conditions.base-raw]\ngpus = true", [], "conditions.base-raw: gpus = True; give a whole number"),
    (None, ["--no-wait"], "--no-wait: the local executor runs cells only while promptgap waits"),
])
def test_bad_executor_input_is_one_line_before_anything_is_submitted(tmp_path, monkeypatch, capsys, edit, argv,
                                                                     needle) -> None:
    text = CONFIG.split("[conditions.waits-for-sentinel]")[0] + "\n[executor]\n" + (edit or "") + "\n"
    (tmp_path / "c.toml").write_text(text)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # no sbatch here (and nothing else)
    assert main(["run", str(tmp_path / "c.toml"), "--run-id", "x", "--results", str(tmp_path / "results"),
                 *argv]) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1, err
    assert not (tmp_path / "results").exists()  # nothing prepared, nothing submitted


def test_a_job_sbatch_refuses_is_one_line(plugin_env, slurm, tmp_path) -> None:
    cwd = start(tmp_path)
    (cwd / "c.toml").write_text(CONFIG.replace("[executor]\n", '[executor]\npartition = "nosuch"\n'))
    out = promptgap(plugin_env, cwd, "run", "c.toml", "--run-id", "n", "--executor", "slurm")
    assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr
    assert "sbatch refused the jobs" in out.stderr and "invalid partition" in out.stderr.lower()
    assert RunFolder(cwd / "results" / "n").jobs() == []
