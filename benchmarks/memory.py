"""Benchmark: whole-process peak resident memory (and wall time) of `promptgap eval` against `lm_eval --model hf`.

    python benchmarks/memory.py                        # WinoGrande dev, all 1267, raw and chat, 3 runs per side
    python benchmarks/memory.py --limit 200 --repeat 1 --formats raw

Each side is the command a user runs, in a fresh process (model loading, task building and scoring included):
``promptgap eval --task winogrande --split all`` over ../shared/data/winogrande, and lm-eval's own winogrande YAML
pointed at the same file (``lm_eval --model hf``, float32, CPU, zero shots). Both score with batch 32. The peak
resident set of each process comes from the kernel's accounting of that child (``wait4``'s ``ru_maxrss``), so it is
the whole process's peak, model and libraries included. The runs alternate between the sides; the median counts.
Memory does not depend on the machine's load; the wall times do (the 2 cores here are shared): read them as a
side-by-side comparison within one run only.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from lm_eval_tasks import SHARED, winogrande_include  # noqa: E402

from harness.models import embedded_folder  # noqa: E402

BIN = Path(sys.executable).parent


def measure(cmd: list[str], cwd: Path) -> tuple[float, float]:
    """(peak resident memory in GB, wall seconds) of one fresh process running ``cmd``."""
    t0 = time.perf_counter()
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        seconds = time.perf_counter() - t0
        if proc.returncode != 0:
            err.seek(0)
            raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{err.read().decode()[-2000:]}")
    return usage.ru_maxrss / 1024**2, seconds  # ru_maxrss is in KiB on Linux


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--limit", type=int, default=None, help="first N examples of dev (default: all 1267)")
    ap.add_argument("--formats", nargs="+", default=["raw", "chat"], choices=["raw", "chat"])
    ap.add_argument("--repeat", type=int, default=3, help="runs per side and format; the median counts (default 3)")
    ap.add_argument("--batch-size", type=int, default=32)
    args = ap.parse_args()

    data = SHARED / "winogrande"
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        include = winogrande_include(tmp)
        limit = ["--limit", str(args.limit)] if args.limit else []
        rows = []
        for fmt in args.formats:
            sides = {
                "promptgap eval": [str(BIN / "promptgap"), "eval", "--task", "winogrande", "--data-dir", str(data),
                                   "--condition", f"base-{fmt}", "--split", "all", *limit, "--batch-size",
                                   str(args.batch_size), "--device", "cpu", "--dtype", "float32",
                                   "--out", str(tmp / "eval.jsonl")],
                "lm_eval --model hf": [str(BIN / "lm_eval"), "--model", "hf", "--model_args",
                                       f"pretrained={embedded_folder()},dtype=float32", "--tasks", "winogrande",
                                       "--include_path", str(include), "--batch_size", str(args.batch_size),
                                       "--device", "cpu", *limit, "--num_fewshot", "0",
                                       *(["--apply_chat_template"] if fmt == "chat" else [])],
            }
            runs: dict[str, list[tuple[float, float]]] = {k: [] for k in sides}
            for _ in range(args.repeat):
                for name, cmd in sides.items():
                    runs[name].append(measure(cmd, tmp))
                    gb, s = runs[name][-1]
                    print(f"{fmt}: {name}: peak RSS {gb:.2f} GB, {s:.1f} s", flush=True)
            rows.append((fmt, runs))
    print(f"\nWinoGrande dev{f', first {args.limit}' if args.limit else ''}, batch {args.batch_size}, float32, cpu, "
          f"threads {os.environ.get('OMP_NUM_THREADS', 'default')}, median of {args.repeat} whole-process runs")
    print(f"{'format':6} {'side':20} {'peak RSS GB (runs)':>32} {'wall s (runs)':>30}")
    for fmt, runs in rows:
        for name, r in runs.items():
            gbs, secs = [x[0] for x in r], [x[1] for x in r]
            print(f"{fmt:6} {name:20} {statistics.median(gbs):8.2f} ({', '.join(f'{g:.2f}' for g in gbs)})".ljust(62)
                  + f"{statistics.median(secs):8.1f} ({', '.join(f'{s:.0f}' for s in secs)})")


if __name__ == "__main__":
    main()
