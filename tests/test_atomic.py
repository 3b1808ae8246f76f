"""The one atomic writer: whole or nothing, normal file modes, the previous version kept on failure."""

from __future__ import annotations

import os
import stat

import pytest

from harness.atomic import atomic_dir, clear_temporaries, write_atomic, write_json


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def mode(p) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def test_files_get_the_usual_modes(tmp_path, umask_022) -> None:
    # tempfile creates 0600: results must stay readable by the group and others, as any file the user writes
    assert mode(write_json(tmp_path / "a" / "x.json", {"k": 1})) == 0o644
    with atomic_dir(tmp_path / "d") as d:
        (d / "private").write_text("x")
        os.chmod(d / "private", 0o600)  # as safetensors leaves its files
        (d / "sub").mkdir(mode=0o700)
    assert mode(tmp_path / "d") == 0o755 and mode(tmp_path / "d" / "private") == 0o644
    assert mode(tmp_path / "d" / "sub") == 0o755


def test_a_failed_write_leaves_the_previous_version(tmp_path) -> None:
    write_atomic(tmp_path / "f.txt", "old")
    with atomic_dir(tmp_path / "d") as d:
        (d / "v").write_text("old")
    with pytest.raises(RuntimeError), atomic_dir(tmp_path / "d") as d:
        (d / "v").write_text("new")
        raise RuntimeError("killed half-way")
    assert (tmp_path / "d" / "v").read_text() == "old"
    with atomic_dir(tmp_path / "d") as d:
        (d / "v").write_text("new")
    assert (tmp_path / "d" / "v").read_text() == "new" and (tmp_path / "f.txt").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d", "f.txt"]  # no temp or old copies left


def test_keep_existing_and_clearing_leftovers(tmp_path) -> None:
    with atomic_dir(tmp_path / "cache") as d:
        (d / "v").write_text("first")
    with atomic_dir(tmp_path / "cache", keep_existing=True) as d:
        (d / "v").write_text("second")
    assert (tmp_path / "cache" / "v").read_text() == "first"
    (tmp_path / "x" / ".cell.tmp-abc").mkdir(parents=True)  # what a killed writer leaves
    (tmp_path / ".f.txt.tmp-1").write_text("half")
    assert clear_temporaries(tmp_path) == 2
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["cache", "v", "x"]


def test_full_disk_names_the_file_and_leaves_nothing_behind(full_disk) -> None:
    from harness.errors import DiskFull

    root, fill = full_disk
    write_json(root / "kept.json", {"k": 1})
    fill()
    with pytest.raises(DiskFull, match="no space left on the device to write .*new.json"):
        write_json(root / "new.json", {"k": list(range(2000))})
    with pytest.raises(DiskFull, match="no space left on the device to write .*folder"):
        with atomic_dir(root / "folder") as d:
            (d / "big").write_bytes(b"x" * 100_000)  # a library's own write, not through write_atomic
    assert sorted(p.name for p in root.iterdir()) == ["filler", "kept.json"]
    assert (root / "kept.json").read_text() == '{\n  "k": 1\n}\n'
