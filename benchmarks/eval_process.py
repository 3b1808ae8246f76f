"""What a user waits, and the memory it takes: `promptgap eval` on WinoGrande dev against `lm_eval --model hf` on the
same data and weights, each a fresh process, alternating, with each process's wall time and peak resident memory.

    python benchmarks/eval_process.py                            # raw and chat, 3 rounds, both lm-eval references
    python benchmarks/eval_process.py --formats raw --runs 5
    python benchmarks/eval_process.py --references minimal --limit 200 --runs 1

lm-eval reads the same 1267 examples (../shared/data/winogrande/dev.jsonl) in two ways, both written here:
- ``minimal``: the strictest fair reference, a task YAML with nothing but what scoring needs: the validation file
  alone, WinoGrande's partial scoring (``doc_to_text`` the option index, ``doc_to_choice`` the two contexts,
  ``doc_to_target`` the shared continuation, as lm-eval's own functions) and ``acc``;
- ``bundled``: lm-eval's own winogrande YAML (``include:``), pointed at the same files.
Both use the embedded model's cached float32 folder, batch 32, zero shots, CPU. Start-up counts: imports, lm-eval's
task index, model load, task building and scoring. Each round runs every side once (promptgap first); the ratios
are lm-eval's time over promptgap's within a round, and the median of the rounds. Peak memory is the kernel's
accounting of each child (``wait4``'s ``ru_maxrss``): the whole process, model and libraries included. The
accuracy of every run is read back from its output and must agree across the sides. Run it alone on the machine:
two heavy processes on two cores halve each other's speed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.lm_eval_tasks import BIN, SHARED, winogrande_include  # noqa: E402
from harness.models import embedded_folder  # noqa: E402

MINIMAL_YAML = """task: winogrande_minimal
dataset_path: json
dataset_kwargs:
  data_files:
    validation: {dev}
output_type: multiple_choice
validation_split: validation
doc_to_text: !function winogrande_minimal.doc_to_text
doc_to_target: !function winogrande_minimal.doc_to_target
doc_to_choice: !function winogrande_minimal.doc_to_choice
metric_list:
  - metric: acc
"""
MINIMAL_PY = '''def doc_to_text(doc):
    return {"1": 0, "2": 1}[doc["answer"]]


def doc_to_target(doc):
    return doc["sentence"][doc["sentence"].index("_") + 1 :].strip()


def doc_to_choice(doc):
    idx = doc["sentence"].index("_")
    return [doc["sentence"][:idx] + opt for opt in (doc["option1"], doc["option2"])]
'''


def minimal_include(folder: Path) -> Path:
    """A folder holding the minimal WinoGrande task (``winogrande_minimal``) over ../shared/data's dev file."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "winogrande_minimal.yaml").write_text(MINIMAL_YAML.format(dev=SHARED / "winogrande" / "dev.jsonl"))
    (folder / "winogrande_minimal.py").write_text(MINIMAL_PY)
    return folder


@dataclass
class Measured:
    seconds: float
    peak_gb: float
    accuracy: float


def measure(cmd: list[str], cwd: Path) -> tuple[float, float]:
    """(wall seconds, peak resident memory in GB) of one fresh process running ``cmd``."""
    t0 = time.perf_counter()
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - t0
        if (code := os.waitstatus_to_exitcode(status)) != 0:
            err.seek(0)
            raise SystemExit(f"{' '.join(cmd)} failed ({code}):\n{err.read().decode()[-2000:]}")
    return seconds, usage.ru_maxrss / 1024**2  # ru_maxrss is in KiB on Linux


def ours_accuracy(out: Path) -> float:
    rows = [json.loads(line) for line in out.read_text().splitlines() if line.strip()]
    return sum(r["correct"] for r in rows) / len(rows)


def lm_eval_accuracy(out: Path, task: str) -> float:
    (results,) = sorted(out.rglob("results_*.json"))  # one run per folder
    return json.loads(results.read_text())["results"][task]["acc,none"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3, help="rounds, each side once per round (default 3)")
    ap.add_argument("--formats", nargs="+", default=["raw", "chat"], choices=["raw", "chat"])
    ap.add_argument("--references", nargs="+", default=["minimal", "bundled"], choices=["minimal", "bundled"])
    ap.add_argument("--limit", type=int, default=None, help="first N dev examples (default: all 1267)")
    ap.add_argument("--batch-size", type=int, default=32, help="every side's batch size (default 32)")
    args = ap.parse_args()
    limit = ["--limit", str(args.limit)] if args.limit else []
    table: list[tuple[str, dict[str, list[Measured]]]] = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "bundled").mkdir()
        tasks = {"minimal": ("winogrande_minimal", minimal_include(tmp / "minimal")),
                 "bundled": ("winogrande", winogrande_include(tmp / "bundled"))}
        for fmt in args.formats:
            sides: dict[str, tuple[list[str], Path, str | None]] = {
                "promptgap eval": ([str(BIN / "promptgap"), "eval", "--task", "winogrande", "--data-dir",
                                    str(SHARED / "winogrande"), "--condition", f"base-{fmt}", "--split", "all",
                                    *limit, "--batch-size", str(args.batch_size), "--device", "cpu", "--dtype",
                                    "float32", "--out", str(tmp / "ours.jsonl")], tmp / "ours.jsonl", None)}
            for ref in args.references:
                name, include = tasks[ref]
                out = tmp / f"lm_eval_{ref}"
                sides[f"lm_eval hf, {ref} YAML"] = (
                    [str(BIN / "lm_eval"), "--model", "hf", "--model_args",
                     f"pretrained={embedded_folder()},dtype=float32", "--tasks", name, "--include_path", str(include),
                     "--batch_size", str(args.batch_size), "--device", "cpu", "--num_fewshot", "0", *limit,
                     "--output_path", str(out), *(["--apply_chat_template"] if fmt == "chat" else [])], out, name)
            runs: dict[str, list[Measured]] = {k: [] for k in sides}
            for i in range(args.runs):
                for side, (cmd, out, task) in sides.items():
                    subprocess.run(["rm", "-rf", str(out)], check=True)
                    seconds, peak = measure(cmd, tmp)
                    acc = ours_accuracy(out) if task is None else lm_eval_accuracy(out, task)
                    runs[side].append(Measured(seconds, peak, acc))
                    print(f"{fmt} round {i + 1}: {side}: {seconds:.1f} s, peak RSS {peak:.2f} GB, acc {acc:.4f}",
                          flush=True)
            accs = {round(m.accuracy, 6) for ms in runs.values() for m in ms}
            if len(accs) != 1:
                raise SystemExit(f"{fmt}: the sides disagree on accuracy ({sorted(accs)}): not the same task")
            table.append((fmt, runs))

    print(f"\nWinoGrande dev{f', first {args.limit}' if args.limit else ', all 1267'}, batch {args.batch_size}, "
          f"float32, cpu ({os.cpu_count()} cores), threads {os.environ.get('OMP_NUM_THREADS', 'default')}, "
          f"{args.runs} alternating round(s), whole processes")
    print("| format | side | wall s, median (runs) | lm-eval / promptgap, median (per round) | peak RSS GB, median "
          "(runs) | acc |")
    print("|---|---|---|---|---|---|")
    for fmt, runs in table:
        ours = [m.seconds for m in runs["promptgap eval"]]
        for side, ms in runs.items():
            secs, peaks = [m.seconds for m in ms], [m.peak_gb for m in ms]
            ratio = "" if side == "promptgap eval" else (
                f"**{statistics.median(r := [t / o for t, o in zip(secs, ours, strict=True)]):.2f}x** "
                f"({', '.join(f'{x:.2f}' for x in r)})")
            print(f"| {fmt} | {side} | {statistics.median(secs):.1f} ({', '.join(f'{s:.1f}' for s in secs)}) | "
                  f"{ratio} | {statistics.median(peaks):.2f} ({', '.join(f'{p:.2f}' for p in peaks)}) | "
                  f"{ms[0].accuracy:.4f} |")


if __name__ == "__main__":
    main()
