"""The one atomic writer: a file or a folder appears whole under its final name, or not at all.

Everything promptgap writes for a reader (run folders, reports, artifacts, `eval` output, the model cache) goes
through here, so a process killed at any moment leaves either the previous version or the new one, never half of
one. Files get the usual modes (0666 and 0777 less the umask): ``tempfile`` creates 0600/0700, which would leave
results readable only by their owner.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from harness.errors import DiskFull, is_disk_full
from harness.names import check_inside

TEMP_MARK = ".tmp-"  # in the name of every temporary file and folder made here (hidden: they start with ".")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def naming_a_full_disk(path: Path) -> Iterator[None]:
    """A full disk (or spent quota) inside the block becomes ``DiskFull(path)``: the file being written, not a bare
    errno."""
    try:
        yield
    except OSError as e:
        if is_disk_full(e):
            raise DiskFull(path) from None
        raise


def _temp_beside(path: Path, data: bytes) -> str:
    """A temp file beside ``path`` holding ``data``, with the usual modes; on any error it is removed."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}{TEMP_MARK}")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o666 & ~_umask())
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return tmp


def write_atomic(path: str | Path, data: str | bytes) -> Path:
    """Write ``data`` to ``path``: a temp file in the same folder, renamed into place."""
    path = Path(path)
    with naming_a_full_disk(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = _temp_beside(path, data.encode("utf-8") if isinstance(data, str) else data)
        try:
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    return path


def create_new(path: Path, data: str) -> bool:
    """Write ``path`` whole only if no file has that name yet (a lock): a temp file hard-linked to the final name,
    which fails when the name exists, as O_EXCL would, is atomic on NFS too, and never shows a half-written file.
    False when the name exists, or when the folder or the temp file vanished meanwhile (a cleaner ran): try again."""
    with naming_a_full_disk(path):
        try:
            tmp = _temp_beside(path, data.encode("utf-8"))
        except FileNotFoundError:
            return False
        try:
            os.link(tmp, path)
            return True
        except (FileExistsError, FileNotFoundError):
            return False
        finally:
            Path(tmp).unlink(missing_ok=True)


def remove_if_same(path: Path, inode: int) -> None:
    """Remove ``path`` if it is still the file ``inode`` (the one judged stale): moved aside first, so that of two
    processes removing the same stale file, the second cannot remove the new one the first then created (it is
    linked back)."""
    aside = path.with_name(f".{path.name}{TEMP_MARK}old-{uuid.uuid4().hex[:8]}")
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return
    if aside.stat().st_ino != inode:  # another process's fresh file: put it back
        with suppress(FileExistsError):  # a third process created one meanwhile: that one stands
            os.link(aside, path)
    aside.unlink()


def json_text(data: Any) -> str:
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"


def write_json(path: str | Path, data: Any) -> Path:
    return write_atomic(path, json_text(data))


def write_jsonl(path: str | Path, rows: Iterable[Any]) -> Path:
    return write_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


@contextmanager
def atomic_dir(final: str | Path, keep_existing: bool = False, root: str | Path | None = None) -> Iterator[Path]:
    """Yield an empty temp folder beside ``final``; when the block ends normally it becomes ``final``.

    A previous ``final`` is replaced (moved aside first and put back if the rename fails), unless
    ``keep_existing``: then a ``final`` that appeared meanwhile (another process built the same thing) wins
    and the temp folder is dropped. If the block raises, the temp folder is removed and ``final`` is untouched.
    ``final`` must lie strictly below ``root`` (default: its own parent folder), checked before anything is made:
    a name such as ``..`` or ``.`` would otherwise replace a folder above it, with everything in it.
    """
    final = Path(final)
    check_inside(final.parent if root is None else Path(root), final)
    with naming_a_full_disk(final):
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}{TEMP_MARK}"))
    os.chmod(tmp, 0o777 & ~_umask())
    try:
        with naming_a_full_disk(final):  # what other libraries write into the folder (safetensors, a condition's)
            yield tmp
        _normal_modes(tmp)
        if final.exists():
            if keep_existing:
                shutil.rmtree(tmp, ignore_errors=True)
                return
            old = final.parent / f".{final.name}{TEMP_MARK}old-{uuid.uuid4().hex[:8]}"
            os.replace(final, old)
            try:
                os.replace(tmp, final)
            except BaseException:
                os.replace(old, final)
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _normal_modes(folder: Path) -> None:
    """What other libraries wrote into the folder (safetensors writes 0600) gets the usual modes too."""
    mask = _umask()
    for p in folder.rglob("*"):
        if not p.is_symlink():
            os.chmod(p, (0o777 if p.is_dir() else 0o666) & ~mask)


def remove_dir(path: str | Path) -> None:
    """Remove a folder so that it is gone whole: renamed to a temp name first (``clear_temporaries`` removes it if
    this process dies before the removal ends), so nothing reads a folder half removed."""
    path = Path(path)
    if path.exists():
        gone = path.parent / f".{path.name}{TEMP_MARK}gone-{uuid.uuid4().hex[:8]}"
        os.rename(path, gone)
        shutil.rmtree(gone, ignore_errors=True)


def clear_temporaries(folder: Path) -> int:
    """Remove the temp files and folders a killed writer left below ``folder``; returns how many."""
    n = 0
    for p in sorted(folder.glob(f"**/.*{TEMP_MARK}*"), key=lambda p: len(p.parts)):
        if not p.exists():
            continue
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
        n += 1
    return n
