"""Benchmark: an lm-eval task scored through promptgap against lm-eval's own hf model, side by side.

    python benchmarks/lm_eval_tasks.py                          # lm-eval's winogrande YAML over ../shared/data
    python benchmarks/lm_eval_tasks.py --limit 300 --formats raw
    cd tests/fixtures/lm_eval && python ../../../benchmarks/lm_eval_tasks.py --task pgfx_capitals --include .

Two timings per format, each printed with the ratio lm-eval / promptgap:
- in-process: the scoring calls only, on one loaded model: promptgap's scorer on the ``lm-eval:NAME`` task's
  examples, lm-eval's HFLM inside ``simple_evaluate``, and promptgap's lm-eval model (``PromptgapLM``, empty
  artifact) inside the same ``simple_evaluate``; with the largest per-request difference and both accuracies;
- whole-process: wall time of the commands a user runs, each in a fresh process: ``promptgap eval --task
  lm-eval:NAME``, ``lm_eval --model hf`` and ``promptgap lm-eval`` (model loading, task building and scoring).
Run it alone: two heavy processes on two cores halve each other's speed.
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from harness.artifact import PromptArtifact  # noqa: E402
from harness.lm_eval_lm import PromptgapLM  # noqa: E402
from harness.models import embedded_folder, load_model  # noqa: E402
from harness.parity import hf_model, run_lm_eval  # noqa: E402
from harness.registry import get_task  # noqa: E402
from harness.scorer import Scorer  # noqa: E402
from tasks.lm_eval_task import resolve_includes, task_manager  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"
BIN = Path(sys.executable).parent


def winogrande_include(folder: Path) -> Path:
    """An include folder that points lm-eval's own winogrande YAML at ../shared/data (train_s, dev)."""
    import lm_eval

    bundled = Path(lm_eval.__file__).parent / "tasks" / "winogrande" / "default.yaml"
    (folder / "winogrande.yaml").write_text(
        f"include: {bundled}\ntask: winogrande\ndataset_path: json\ndataset_name: null\n"
        f"dataset_kwargs:\n  data_files:\n    train: {SHARED / 'winogrande' / 'train_s.jsonl'}\n"
        f"    validation: {SHARED / 'winogrande' / 'dev.jsonl'}\n")
    return folder


def wall(cmd: list[str], cwd: Path) -> float:
    t0 = time.perf_counter()
    out = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({out.returncode}):\n{out.stderr[-2000:]}")
    return seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", default="winogrande", help="an lm-eval task name (default: winogrande over ../shared)")
    ap.add_argument("--include", type=Path, default=None, help="its include folder (default for winogrande: made here)")
    ap.add_argument("--cwd", type=Path, default=Path.cwd(), help="working folder (relative data_files resolve here)")
    ap.add_argument("--limit", type=int, default=None, help="first N documents (default: all)")
    ap.add_argument("--formats", nargs="+", default=["raw", "chat"], choices=["raw", "chat"])
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--no-whole-process", action="store_true", help="skip the fresh-process timings")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("lm_eval").setLevel(logging.ERROR)
    os.chdir(args.cwd)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        include = args.include.resolve() if args.include else winogrande_include(tmp)
        lm = load_model()
        task = get_task(f"lm-eval:{args.task}", lm_eval_include=include)
        examples = task.all_examples()[: args.limit]
        n = len(examples)
        scorer, hflm, pglm = Scorer(lm, batch_size=args.batch_size), hf_model(lm, args.batch_size), PromptgapLM(lm=lm)
        tm = task_manager(resolve_includes(include), defaults=False)
        rows = []
        for fmt in args.formats:
            chat = fmt == "chat"
            warm = min(n, 32)  # the first large run in a process is slower: warm up every side, untimed
            scorer.score(PromptArtifact(format=fmt), examples[:warm], task.kind)
            run_lm_eval(hflm, [args.task], tm, chat=chat, limit=warm)
            t0 = time.perf_counter()
            ours = scorer.score(PromptArtifact(format=fmt), examples, task.kind, desc=f"promptgap {fmt}")
            t_ours = time.perf_counter() - t0
            ref = run_lm_eval(hflm, [args.task], tm, chat=chat, limit=n)
            pg = run_lm_eval(pglm, [args.task], tm, chat=chat, limit=n)
            r, p = ref.reference(args.task), pg.reference(args.task)
            diff = max(abs(a - b) for o, lls in zip(ours, r.lls, strict=True)
                       for a, b in zip(o.choice_loglik, lls, strict=True))
            diff_lm = max(abs(a - b) for x, y in zip(p.lls, r.lls, strict=True) for a, b in zip(x, y, strict=True))
            acc_ours, acc_ref = sum(o.correct for o in ours) / n, sum(r.acc) / n
            print(f"{fmt}: in-process scoring: promptgap {t_ours:.1f} s, lm-eval hf {ref.seconds:.1f} s "
                  f"({ref.seconds / t_ours:.2f}x), promptgap's lm-eval model {pg.seconds:.1f} s "
                  f"({ref.seconds / pg.seconds:.2f}x); max |dLL| {diff:.1e} (lm-eval model {diff_lm:.1e}); "
                  f"acc {acc_ours:.4f} / {acc_ref:.4f}", flush=True)
            whole = (None, None, None)
            if not args.no_whole_process:
                empty = PromptArtifact().save(tmp / "empty")
                limit = ["--limit", str(n)]  # zero shots everywhere, as promptgap scores an lm-eval task
                whole = (
                    wall([str(BIN / "promptgap"), "eval", "--task", f"lm-eval:{args.task}", "--lm-eval-include",
                          str(include), "--condition", f"base-{fmt}", "--split", "all", *limit, "--batch-size",
                          str(args.batch_size), "--out", str(tmp / "eval.jsonl")], args.cwd),
                    wall([str(BIN / "lm_eval"), "--model", "hf", "--model_args",
                          f"pretrained={embedded_folder()},dtype=float32", "--tasks", args.task, "--include_path",
                          str(include), "--batch_size", str(args.batch_size), "--device", "cpu", *limit,
                          "--num_fewshot", "0",
                          *(["--apply_chat_template"] if chat else [])], args.cwd),
                    wall([str(BIN / "promptgap"), "lm-eval", str(empty), "--tasks", args.task, "--include",
                          str(include), "--batch-size", str(args.batch_size), *limit, "--num-fewshot", "0",
                          *(["--apply-chat-template"] if chat else [])], args.cwd),
                )
                print(f"{fmt}: whole process: promptgap eval {whole[0]:.1f} s, lm_eval --model hf {whole[1]:.1f} s "
                      f"({whole[1] / whole[0]:.2f}x), promptgap lm-eval {whole[2]:.1f} s "
                      f"({whole[1] / whole[2]:.2f}x)", flush=True)
            rows.append((fmt, sum(len(x) for x in r.lls), t_ours, ref.seconds, pg.seconds, diff, acc_ours, acc_ref,
                         *whole))
    print(f"\nlm-eval task {args.task}, {n} documents, batch {args.batch_size}, model {lm.name} ({lm.dtype}, "
          f"{lm.device}), one timed run per side, threads {os.environ.get('OMP_NUM_THREADS', 'default')}")
    print(f"{'format':6} {'requests':>8} | in-process s: {'promptgap':>9} {'lm-eval hf':>10} {'ratio':>6} "
          f"{'pg lm-eval':>10} | {'max |dLL|':>9} {'acc':>6} {'acc hf':>6} | whole process s: {'eval':>6} "
          f"{'lm_eval':>7} {'ratio':>6} {'pg lm-eval':>10}")
    for fmt, req, t_o, t_r, t_p, d, a_o, a_r, w_e, w_h, w_p in rows:
        whole = (f"{w_e:6.1f} {w_h:7.1f} {w_h / w_e:5.2f}x {w_p:10.1f}" if w_e else "skipped")
        print(f"{fmt:6} {req:8d} | {'':14}{t_o:9.1f} {t_r:10.1f} {t_r / t_o:5.2f}x {t_p:10.1f} | {d:9.1e} "
              f"{a_o:6.4f} {a_r:6.4f} | {'':17}{whole}")


if __name__ == "__main__":
    main()
