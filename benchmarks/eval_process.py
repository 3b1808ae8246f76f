"""What a user waits: `promptgap eval` on all of WinoGrande dev against `lm_eval` on the same task and weights, each
a fresh process, alternating runs, the median wall time of each side and their ratio.

    python benchmarks/eval_process.py                 # raw format, 3 runs each
    python benchmarks/eval_process.py --runs 5 --chat

Both read the same 1267 examples (../shared/data/winogrande/dev.jsonl; lm-eval through its own winogrande YAML,
pointed at that file by an include folder made here) and the same float32 weights (the embedded model's cached
folder). Start-up counts: imports, model load, task building and scoring. Run it alone on the machine.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.lm_eval_tasks import BIN, SHARED, wall, winogrande_include  # noqa: E402
from harness.models import embedded_folder  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3, help="runs per side, alternating (default 3)")
    ap.add_argument("--chat", action="store_true", help="chat format on both sides (default raw)")
    ap.add_argument("--batch-size", type=int, default=32, help="both sides' batch size (default 32)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        include = winogrande_include(tmp)
        ours = [str(BIN / "promptgap"), "eval", "--task", "winogrande", "--data-dir", str(SHARED / "winogrande"),
                "--condition", "base-chat" if args.chat else "base-raw", "--split", "all", "--batch-size",
                str(args.batch_size), "--out", str(tmp / "ours.jsonl")]
        theirs = [str(BIN / "lm_eval"), "--model", "hf", "--model_args",
                  f"pretrained={embedded_folder()},dtype=float32", "--tasks", "winogrande", "--include_path",
                  str(include), "--batch_size", str(args.batch_size), "--output_path", str(tmp / "lm_eval")]
        if args.chat:
            theirs.append("--apply_chat_template")
        times: dict[str, list[float]] = {"promptgap eval": [], "lm_eval": []}
        for i in range(args.runs):
            for name, cmd in (("promptgap eval", ours), ("lm_eval", theirs)):
                times[name].append(wall(cmd, tmp))
                print(f"run {i + 1}: {name} {times[name][-1]:.1f} s", flush=True)
    ours_med, theirs_med = statistics.median(times["promptgap eval"]), statistics.median(times["lm_eval"])
    print(f"WinoGrande dev ({'chat' if args.chat else 'raw'}), whole process, median of {args.runs}: promptgap eval "
          f"{ours_med:.1f} s, lm_eval {theirs_med:.1f} s: {theirs_med / ours_med:.2f}x")


if __name__ == "__main__":
    main()
