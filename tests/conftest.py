"""Shared fixtures: the real embedded model (loaded once per session) and the real task data in ../shared/data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("PROMPTGAP_PROGRESS", "0")
# every model a test loads, in this process or a job it starts, runs on the CPU in float32 (the tolerances assume
# float32) unless PROMPTGAP_TEST_DEVICE names another device, e.g. cuda; "auto" devices and dtypes follow these
TEST_DEVICE = os.environ.get("PROMPTGAP_TEST_DEVICE") or "cpu"
os.environ["PROMPTGAP_DEVICE"] = TEST_DEVICE
os.environ["PROMPTGAP_DTYPE"] = "float32"

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

# `make test` runs its tests in two pytest-xdist workers: each gets its share of the cores as torch threads, in its
# own process and in every job it starts, so that the two share the machine instead of oversubscribing it (set
# before anything imports torch, which reads it once). Scores do not depend on it: the scorer gives the same bits
# on one thread as on several (tests/test_scorer.py).
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    _cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, _cores // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.exists():
        pytest.skip(f"real task data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def lm():
    from harness.models import load_model

    return load_model(device=TEST_DEVICE, dtype="float32")


@pytest.fixture(scope="session")
def scorer(lm):
    from harness.scorer import Scorer

    return Scorer(lm, batch_size=32)


@pytest.fixture
def full_disk(tmp_path: Path):
    """A small tmpfs mounted in ``tmp_path``; call the yielded ``fill()`` to leave no byte free on it. Needs root
    (mount); skipped otherwise."""
    import subprocess

    mount = tmp_path / "tmpfs"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], capture_output=True,
                          text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (root needed): {done.stderr.strip()}")

    def fill() -> None:
        chunk = b"\0" * 65536
        with open(mount / "filler", "wb", buffering=0) as f:
            try:
                while True:
                    f.write(chunk)
            except OSError:  # ENOSPC: now smaller writes, to take the last partial chunk too
                pass
            try:
                while True:
                    f.write(b"\0" * 512)
            except OSError:
                pass

    try:
        yield mount, fill
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)
