"""Where a whole process's time goes: `promptgap eval` and `lm_eval --model hf` on WinoGrande dev, each profiled in a
fresh process of its own, every thread included, the time grouped into the steps a user waits through.

    python benchmarks/profile_eval.py                  # raw, all 1267 dev examples, both sides
    python benchmarks/profile_eval.py --chat --limit 300
    python benchmarks/profile_eval.py --side promptgap --top 25   # and the 25 functions with most time of their own

Each side runs the same command as ``benchmarks/eval_process.py`` (lm-eval on its minimal YAML) inside a child
process that imports everything first (timed: "imports"), then runs the command's own entry point under cProfile,
with one profiler per scoring worker thread (promptgap scores on single-threaded workers; their profiles are merged,
so a step's seconds there are CPU seconds summed over the workers, and the process's wall time is printed beside
them). cProfile's own overhead inflates Python-heavy steps; read the shares, not the absolute seconds. Run it alone.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# each step: seconds from the cumulative times (``c``) of named functions, in the main thread's profile or the
# scoring workers' (CPU seconds summed over them); whatever the main thread spent elsewhere is "other"
Cum = Callable[[str, str], float]
PROMPTGAP_STEPS: list[tuple[str, str, Callable[[Cum], float]]] = [
    ("model load", "main", lambda c: c("harness/models.py", "load_model")),
    ("task build and split", "main", lambda c: c("harness/registry.py", "get_tasks") + c("harness/cli.py",
                                                                                        "_eval_examples")),
    ("length check before the model loads (renders every row)", "main",
     lambda c: c("harness/render.py", "check_row_lengths")),
    ("render and tokenize the requests", "main", lambda c: c("harness/scorer.py", "score")
     - c("harness/scorer.py", "_loglikelihood")),
    ("prefix tree and pass plan", "main", lambda c: c("harness/scorer.py", "build_tree")
     + c("harness/scorer.py", "_batches")),
    ("scoring, wall (the workers' part below)", "main", lambda c: c("harness/scorer.py", "_loglikelihood")
     - c("harness/scorer.py", "build_tree") - c("harness/scorer.py", "_batches")),
    ("writing results", "main", lambda c: c("harness/atomic.py", "write_jsonl")),
    ("workers: the model's layers", "workers", lambda c: c("torch/nn/modules/module.py", "_call_impl")),
    ("workers: pasts into the buffer, masks, inputs", "workers", lambda c: c("harness/forward.py", "run_tree_rows")
     - c("torch/nn/modules/module.py", "_call_impl")),
    ("workers: LM-head reads", "workers", lambda c: c("harness/scorer.py", "_read")),
    ("workers: keys/values kept for children", "workers", lambda c: c("harness/scorer.py", "_pass")
     - c("harness/forward.py", "run_tree_rows") - c("harness/scorer.py", "_read")),
]
LM_EVAL_STEPS: list[tuple[str, str, Callable[[Cum], float]]] = [
    ("task index", "main", lambda c: c("lm_eval/tasks/manager.py", "__init__")),
    ("model load", "main", lambda c: c("lm_eval/models/huggingface.py", "__init__")),
    ("task build (dataset, documents, requests)", "main",
     lambda c: c("lm_eval/tasks/__init__.py", "get_task_dict") + c("lm_eval/api/task.py", "build_all_requests")),
    ("tokenize", "main", lambda c: c("lm_eval/api/model.py", "loglikelihood")
     - c("lm_eval/models/huggingface.py", "_loglikelihood_tokens")),
    ("forward: the model's layers and LM head", "main", lambda c: c("lm_eval/models/huggingface.py", "_model_call")),
    ("log-softmax, gather, greedy, batching", "main",
     lambda c: c("lm_eval/models/huggingface.py", "_loglikelihood_tokens")
     - c("lm_eval/models/huggingface.py", "_model_call")),
]

CHILD = r"""
import cProfile, json, os, pstats, sys, threading, time
t0 = time.perf_counter()
side, out, argv = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
work = {"passes": 0, "padded": 0, "head_rows": 0}
if side == "promptgap":
    import harness.cli, harness.cell, harness.scorer, harness.models, harness.registry, harness.render
    import transformers, transformers.models.llama.modeling_llama, tasks.winogrande
    profiles = []
    init = harness.scorer._scoring_thread
    def profiled_thread():
        init()
        p = cProfile.Profile()
        profiles.append(p)
        p.enable()
    harness.scorer._scoring_thread = profiled_thread
    lock, plain_pass = threading.Lock(), harness.scorer.Scorer._pass
    def counted_pass(self, batch, kv):  # the work each pass does: padded positions, LM-head rows
        out = plain_pass(self, batch, kv)
        with lock:
            work["passes"] += 1
            work["padded"] += len(batch) * max(len(n.tokens) for n in batch)
            work["head_rows"] += sum(len(n.reads) for n in batch)
        return out
    harness.scorer.Scorer._pass = counted_pass
    entry = lambda: harness.cli.main(argv)
else:
    import lm_eval.__main__, lm_eval.models.huggingface, lm_eval.evaluator, transformers
    import transformers.models.llama.modeling_llama
    profiles = []
    plain_call = lm_eval.models.huggingface.HFLM._model_call
    def counted_call(self, inps, *a, **k):  # every position of a batch goes through the layers and the LM head
        work["passes"] += 1
        work["padded"] += inps.shape[0] * inps.shape[1]
        work["head_rows"] += inps.shape[0] * inps.shape[1]
        return plain_call(self, inps, *a, **k)
    lm_eval.models.huggingface.HFLM._model_call = counted_call
    sys.argv = ["lm_eval", *argv]
    entry = lm_eval.__main__.cli_evaluate
imports = time.perf_counter() - t0
main = cProfile.Profile()
t1 = time.perf_counter()
main.enable()
entry()
main.disable()
run = time.perf_counter() - t1
for p in profiles:
    p.disable()
pstats.Stats(main).dump_stats(out + ".main")
busy = [p for p in profiles if p.getstats()]
if busy:
    stats = pstats.Stats(busy[0])
    for p in busy[1:]:
        stats.add(p)
    stats.dump_stats(out + ".workers")
json.dump({"imports": imports, "run": run, "workers": len(profiles), "work": work}, open(out + ".json", "w"))
"""


def cumulative(stats_file: Path) -> Cum:
    """``c(file suffix, function)``: the summed cumulative seconds of the matching functions in a profile (0 when the
    file is missing: no workers ran). cProfile counts a recursive function's time once, at its outermost call."""
    if not stats_file.exists():
        return lambda file, func: 0.0
    import pstats

    raw = pstats.Stats(str(stats_file)).stats  # type: ignore[attr-defined]
    return lambda file, func: sum(v[3] for (f, _, fn), v in raw.items() if f.endswith(file) and fn == func)


def matrix_params(folder: Path) -> tuple[int, int]:
    """(weights in the decoder layers' matrix products, weights of the LM head) of a Llama-shaped model: a position
    through the layers costs 2 x the first in FLOPs, an LM-head row 2 x the second (attention scores aside)."""
    cfg = json.loads((Path(folder) / "config.json").read_text())
    hidden, inter, layers = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"]
    head_dim = cfg.get("head_dim") or hidden // cfg["num_attention_heads"]
    attn = hidden * head_dim * (2 * cfg["num_attention_heads"] + 2 * cfg["num_key_value_heads"])
    return layers * (attn + 3 * hidden * inter), hidden * cfg["vocab_size"]


def profile(side: str, argv: list[str], cwd: Path, out: Path) -> dict:
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, "-c", CHILD, side, str(out), json.dumps(argv)], cwd=cwd,
                         capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    wall = time.perf_counter() - t0
    if res.returncode != 0:
        raise SystemExit(f"{side} failed:\n{res.stderr[-3000:]}")
    info = json.loads(Path(str(out) + ".json").read_text())
    info["wall"] = wall
    return info


def main() -> None:
    from benchmarks.eval_process import minimal_include
    from benchmarks.lm_eval_tasks import SHARED
    from harness.models import embedded_folder

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--chat", action="store_true", help="chat format on both sides (default raw)")
    ap.add_argument("--limit", type=int, default=None, help="first N dev examples (default: all 1267)")
    ap.add_argument("--side", choices=["both", "promptgap", "lm-eval"], default="both")
    ap.add_argument("--top", type=int, default=0, help="also print each side's N most expensive functions")
    args = ap.parse_args()
    fmt = "chat" if args.chat else "raw"
    body, head = matrix_params(embedded_folder())
    limit = ["--limit", str(args.limit)] if args.limit else []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        include = minimal_include(tmp / "minimal")
        sides = {
            "promptgap": (["eval", "--task", "winogrande", "--data-dir", str(SHARED / "winogrande"), "--condition",
                           f"base-{fmt}", "--split", "all", *limit, "--batch-size", "32", "--device", "cpu",
                           "--dtype", "float32", "--out", str(tmp / "ours.jsonl")], PROMPTGAP_STEPS),
            "lm-eval": (["--model", "hf", "--model_args", f"pretrained={embedded_folder()},dtype=float32", "--tasks",
                         "winogrande_minimal", "--include_path", str(include), "--batch_size", "32", "--device",
                         "cpu", "--num_fewshot", "0", *limit, "--output_path", str(tmp / "lm_eval"),
                         *(["--apply_chat_template"] if args.chat else [])], LM_EVAL_STEPS),
        }
        for side, (argv, steps) in sides.items():
            if args.side not in ("both", side):
                continue
            out = tmp / f"{side}.prof"
            info = profile(side, argv, tmp, out)
            c = {"main": cumulative(Path(f"{out}.main"))}
            # one thread: no workers, the passes run in the main thread (their seconds are then inside "scoring")
            c["workers"] = cumulative(Path(f"{out}.workers")) if info["workers"] else c["main"]
            print(f"\n{side}, WinoGrande dev {fmt}{f', first {args.limit}' if args.limit else ''}: wall "
                  f"{info['wall']:.1f} s = imports {info['imports']:.1f} s + the command {info['run']:.1f} s "
                  f"(+ interpreter start); {info['workers']} scoring worker(s)")
            print("| step | seconds (cumulative, CPU summed over workers) |")
            print("|---|---|")
            main_total = 0.0
            for name, where, seconds in steps:
                value = seconds(c[where])
                main_total += value if where == "main" else 0.0
                print(f"| {name} | {value:.1f} |")
            print(f"| other (main thread) | {info['run'] - main_total:.1f} |")
            w = info["work"]
            flops = 2 * (w["padded"] * body + w["head_rows"] * head)
            print(f"work: {w['passes']} forward passes, {w['padded']:,} padded positions through the layers, "
                  f"{w['head_rows']:,} LM-head rows: {flops / 1e12:.2f} TFLOP in matrix products")
            if args.top:
                import pstats

                for part in ("main", "workers"):
                    if Path(f"{out}.{part}").exists():
                        print(f"{side}, {part}:")
                        pstats.Stats(f"{out}.{part}").sort_stats("tottime").print_stats(args.top)


if __name__ == "__main__":
    main()
