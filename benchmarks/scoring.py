"""Benchmark: promptgap's scorer against lm-eval's HFLM on the same rows, same model, same run.

    python benchmarks/scoring.py                        # full WinoGrande dev, raw and chat
    python benchmarks/scoring.py --limit 200 --formats raw
    python benchmarks/scoring.py --task boolq --limit 500

Prints, per format: both times (scoring calls only), the speed ratio, the largest
per-request log-likelihood difference and both accuracies. Each side is timed ``--repeat``
times, alternating, and the best time counts (as timeit does: noise only ever adds time);
every single time is printed too. The first large run in a process is slower than later
ones, so an untimed warm-up runs first on both sides. Run it alone: two heavy processes on
two cores halve each other's speed.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness.artifact import PromptArtifact  # noqa: E402
from harness.models import load_model  # noqa: E402
from harness.parity import lm_eval_reference  # noqa: E402
from harness.registry import get_task  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
FILES = {"winogrande": "dev.jsonl", "boolq": "dev.jsonl"}


@dataclass
class SideBySide:
    """One format scored by promptgap's scorer and by lm-eval's HFLM over the same loaded model."""

    requests: int
    seconds_ours: float
    seconds_ref: float
    max_dll: float  # the largest per-request |log-likelihood difference|
    acc_ours: float
    acc_ref: float
    same_correct: int  # examples both call correct, or both wrong
    greedy_differs: int  # requests whose greedy flags differ
    ours: list = field(repr=False, default_factory=list)  # promptgap's ExampleScores


def side_by_side(scorer, task: str, data_file: Path, examples: list, fmt: str, batch_size: int) -> SideBySide:
    """Score ``examples`` (the first rows of ``data_file``) in ``fmt`` with both, each timed on its scoring calls."""
    kind = get_task(task, data_dir=data_file.parent).kind
    t0 = time.perf_counter()
    ours = scorer.score(PromptArtifact(format=fmt), examples, kind, desc=f"promptgap {fmt}")
    seconds = time.perf_counter() - t0
    ref = lm_eval_reference(scorer.lm, task, data_file, limit=len(examples), chat=fmt == "chat",
                            batch_size=batch_size)
    diffs = [abs(a - b) for o, r in zip(ours, ref.lls, strict=True) for a, b in zip(o.choice_loglik, r, strict=True)]
    return SideBySide(
        requests=len(diffs), seconds_ours=seconds, seconds_ref=ref.seconds, max_dll=max(diffs),
        acc_ours=sum(o.correct for o in ours) / len(ours), acc_ref=sum(ref.acc) / len(ref.acc),
        same_correct=sum(o.correct == bool(a) for o, a in zip(ours, ref.acc, strict=True)),
        greedy_differs=sum(a != b for o, r in zip(ours, ref.greedy, strict=True)
                           for a, b in zip(o.choice_greedy, r, strict=True)),
        ours=ours)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", choices=sorted(FILES), default="winogrande")
    ap.add_argument("--data-dir", type=Path, default=None, help="default: ../shared/data/<task>")
    ap.add_argument("--limit", type=int, default=None, help="first N examples of the file (default: all)")
    ap.add_argument("--formats", nargs="+", default=["raw", "chat"], choices=["raw", "chat"])
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--repeat", type=int, default=2, help="timed runs per side; the best counts (default 2)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)

    data_dir = args.data_dir or SHARED / args.task
    lm = load_model()
    task = get_task(args.task, data_dir=data_dir)
    examples = task.all_examples()[: args.limit]
    from harness.scorer import Scorer

    scorer = Scorer(lm, batch_size=args.batch_size)
    warm = min(len(examples), 64)
    for fmt in args.formats:  # untimed warm-up of both sides
        scorer.score(PromptArtifact(format=fmt), examples[:warm], task.kind, desc=f"warm-up {fmt}")
        lm_eval_reference(lm, args.task, data_dir / FILES[args.task], limit=warm, chat=fmt == "chat",
                          batch_size=args.batch_size)
    rows = []
    for fmt in args.formats:
        t_ours_all, t_ref_all = [], []
        for _ in range(args.repeat):
            row = side_by_side(scorer, args.task, data_dir / FILES[args.task], examples, fmt, args.batch_size)
            t_ours_all.append(row.seconds_ours)
            t_ref_all.append(row.seconds_ref)
        print(f"{fmt}: promptgap runs {', '.join(f'{t:.1f}' for t in t_ours_all)} s; "
              f"lm-eval runs {', '.join(f'{t:.1f}' for t in t_ref_all)} s", flush=True)
        rows.append((fmt, row.requests, min(t_ours_all), min(t_ref_all), row.max_dll, row.acc_ours, row.acc_ref,
                     row.same_correct, row.greedy_differs))
    print(f"\n{args.task}, {len(examples)} examples, batch {args.batch_size}, "
          f"model {lm.name} ({lm.dtype}, {lm.device}), best of {args.repeat} runs per side")
    print(f"{'format':6} {'requests':>8} {'promptgap s':>11} {'lm-eval s':>9} {'speed-up':>8} "
          f"{'max |dLL|':>10} {'acc ours':>9} {'acc lm-eval':>11} {'same correct':>12} {'greedy differs':>14}")
    for fmt, n, t_o, t_r, d, a_o, a_r, same, gd in rows:
        print(f"{fmt:6} {n:8d} {t_o:11.1f} {t_r:9.1f} {t_r / t_o:7.2f}x {d:10.2e} {a_o:9.4f} {a_r:11.4f} "
              f"{same:6d}/{len(examples)} {gd:14d}")


if __name__ == "__main__":
    main()
