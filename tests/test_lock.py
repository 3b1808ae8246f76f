"""One writer per run folder: lock.json is taken atomically before anything is written, a held lock is a one-line
refusal naming its holder, a stale one is replaced, another host's needs --force-unlock, and jobs that outlive
`promptgap run` hold it."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.cli import main
from harness.errors import UserError
from harness.plan import CellKey
from harness.run_folder import LOCK, JobRecord, LockRecord, RunFolder

REPO = Path(__file__).resolve().parents[1]
CONFIG = """
[run]
name = "small"
n_boot = 100

[[tasks]]
name = "antonyms"
sizes = { train = 2, dev = 2, test = 2 }

[conditions.base-raw]
"""


def holder(pid: int, host: str | None = None, jobs: bool = False, started: str = "2026-01-01T00:00:00+00:00") \
        -> LockRecord:
    return LockRecord(host=host or socket.gethostname(), pid=pid, started=started, command="promptgap run other.toml",
                      token="t" * 32, jobs=jobs)


def put_lock(folder: RunFolder, record: LockRecord) -> None:
    folder.root.mkdir(parents=True, exist_ok=True)
    (folder.root / LOCK).write_text(json.dumps(record.to_json()))


def dead_pid() -> int:
    """The pid of a process that has ended (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.fixture
def sleeper():
    """A live process of this host that is not this test's."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    yield proc
    proc.kill()
    proc.wait()


def test_a_run_on_a_folder_held_by_a_live_process_is_refused_naming_it(tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # whatever a default path would write lands here, where the test sees it
    (tmp_path / "c.toml").write_text(CONFIG)
    folder = RunFolder(tmp_path / "results" / "r")
    put_lock(folder, holder(os.getpid()))  # another process of this host, alive: this test's own pid
    before = sorted(p.name for p in folder.root.iterdir())
    for extra in ([], ["--resume"], ["--force-unlock"]):  # a live process on this host is never forced out
        code = main(["run", str(tmp_path / "c.toml"), "--run-id", "r", "--results", str(tmp_path / "results"),
                     "--reports", str(tmp_path / "reports"), *extra])
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1, err
        assert f"is in use by `promptgap run other.toml` (pid {os.getpid()} on {socket.gethostname()}" in err
    assert sorted(p.name for p in folder.root.iterdir()) == before == [LOCK]  # nothing written beside the lock
    assert LockRecord.from_json(json.loads((folder.root / LOCK).read_text())) == holder(os.getpid())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.toml", "results"]


def test_a_stale_lock_of_this_host_is_reported_and_replaced(tmp_path, caplog) -> None:
    folder = RunFolder(tmp_path / "r")
    put_lock(folder, holder(dead_pid()))
    with caplog.at_level(logging.WARNING):
        mine = folder.take_lock("promptgap run c.toml")
    assert "stale lock of `promptgap run other.toml`" in caplog.text
    assert folder.lock_holder() == mine and mine.pid == os.getpid() and mine.host == socket.gethostname()
    with pytest.raises(UserError, match=f"is in use by `promptgap run c.toml` \\(pid {os.getpid()}"):
        folder.take_lock("promptgap run c.toml --resume")  # held now: a second taker is refused
    folder.release_lock(mine)
    assert not (folder.root / LOCK).exists()
    assert [p.name for p in folder.root.iterdir()] == []  # no temp file left behind


def test_another_hosts_lock_needs_force_unlock(tmp_path, caplog) -> None:
    folder = RunFolder(tmp_path / "r")
    put_lock(folder, holder(os.getpid(), host="elsewhere.example", started="2026-01-01T00:00:00+00:00"))
    with pytest.raises(UserError) as e:
        folder.take_lock("promptgap run c.toml")
    message = str(e.value)
    assert "\n" not in message and "on elsewhere.example" in message and "h ago" in message
    assert "--force-unlock" in message
    with caplog.at_level(logging.WARNING):
        mine = folder.take_lock("promptgap run c.toml", force=True)
    assert "replacing the lock of `promptgap run other.toml`" in caplog.text
    assert folder.lock_holder() == mine


def test_live_jobs_hold_the_lock_after_the_submitter_returned(tmp_path, sleeper) -> None:
    folder = RunFolder(tmp_path / "r")
    mine = folder.take_lock("promptgap run c.toml --no-wait")
    key = CellKey("m", "antonyms", 0, "base-raw")
    # a job of this run that outlives the process that started it (a worker process, or a Slurm job)
    folder.write_job(JobRecord(invocation=0, id=str(sleeper.pid), executor="processes", cells=[key],
                               submitted="2026-01-01T00:00:00+00:00", host=socket.gethostname()))
    folder.release_lock(mine)
    assert folder.lock_holder() == LockRecord(**{**mine.to_json(), "jobs": True})  # handed to the jobs
    with pytest.raises(UserError, match=f"in use by 1 live job\\(s\\) of .*\\({sleeper.pid}\\)"):
        folder.take_lock("promptgap run c.toml --resume", force=True)
    sleeper.kill()
    sleeper.wait()
    again = folder.take_lock("promptgap run c.toml --resume")  # the jobs ended: the lock is free
    assert folder.lock_holder() == again


def test_a_lock_from_a_dead_process_with_live_jobs_is_held(tmp_path, sleeper) -> None:
    folder = RunFolder(tmp_path / "r")
    put_lock(folder, holder(dead_pid()))  # killed before it could hand the lock to its jobs
    folder.write_job(JobRecord(invocation=0, id=str(sleeper.pid), executor="processes", cells=[],
                               submitted="2026-01-01T00:00:00+00:00", host=socket.gethostname()))
    with pytest.raises(UserError, match="live job"):
        folder.take_lock("promptgap run c.toml --resume")


TAKE = """
import sys, time
from pathlib import Path
from harness.errors import UserError
from harness.run_folder import RunFolder
root, ready, go = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
ready.touch()
while not go.exists():
    time.sleep(0.002)
try:
    RunFolder(root).take_lock("racer")
    print("took")
    time.sleep(2)  # held while the others try
except UserError as e:
    print("refused", e)
"""


def test_processes_started_together_get_one_lock(tmp_path) -> None:
    go, n = tmp_path / "go", 4
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [subprocess.Popen([sys.executable, "-c", TAKE, str(tmp_path / "r"), str(tmp_path / f"ready-{i}"),
                               str(go)], env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for i in range(n)]
    deadline = time.time() + 120
    while time.time() < deadline and len(list(tmp_path.glob("ready-*"))) < n:  # every racer has imported harness
        time.sleep(0.05)
    go.touch()
    outs = [p.communicate(timeout=120) for p in procs]
    took = [o for o, _ in outs if o.startswith("took")]
    refused = [o for o, _ in outs if o.startswith("refused")]
    assert len(took) == 1 and len(refused) == n - 1, outs
    assert all("is in use by `racer`" in o for o in refused)


def test_a_finished_run_gives_the_lock_up(tmp_path, caplog) -> None:
    from harness.runner import Runner

    (tmp_path / "c.toml").write_text(CONFIG)
    run_dir = Runner(tmp_path / "c.toml", run_id="r", results_root=tmp_path / "results").run()
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert [{"jobs", "finished"} <= set(i) for i in manifest["invocations"]] == [True]
    assert (run_dir / "summary.csv").exists() and not (run_dir / LOCK).exists()
    with caplog.at_level(logging.INFO):
        RunFolder(run_dir).take_lock("promptgap run c.toml --resume")
    assert "lock" not in caplog.text  # free, not stale


def test_a_refused_resume_leaves_no_folder(tmp_path) -> None:
    from harness.runner import Runner

    (tmp_path / "c.toml").write_text(CONFIG)
    with pytest.raises(UserError, match="no run folder"):
        Runner(tmp_path / "c.toml", run_id="r", resume=True, results_root=tmp_path / "results").run()
    assert not (tmp_path / "results" / "r").exists()
