"""Check a device before a real run: parity, bf16 against float32, speed against lm-eval, training, peak memory.

    python benchmarks/gpu_check.py                          # the first GPU (or the CPU when there is none)
    python benchmarks/gpu_check.py --device cpu --limit 50  # a few minutes on this 2-core machine
    python benchmarks/gpu_check.py --device cuda:1

Only the embedded model and ../shared/data are read (no hub), so it runs on a cluster node without internet. On one
GPU it takes a few minutes for the whole WinoGrande dev set (1267 examples). It prints, in order:
1. the device: its name, torch, CUDA and cuDNN versions, whether bf16 is supported;
2. float32 parity against lm-eval's hf model on WinoGrande dev, raw and chat, on that device: the largest
   per-request log-likelihood difference, both accuracies, and both scoring times side by side with their ratio;
3. bf16 against float32, ours and lm-eval's: per-request deviation (median, 99th percentile, largest, largest per
   continuation token) against ``harness.models.BF16_TOLERANCE``, greedy flags and multiple-choice predictions that
   change, with the largest float32 margin among those that change, and the bf16 scoring times;
4. a short soft-prompt training run on the antonym task in the device's default dtype (bf16 on a GPU): seconds per
   step, and the mean train loss over its first and its second half;
5. peak memory: on a GPU the allocator's peak per section, on the CPU the process's peak resident set.
"""

from __future__ import annotations

import argparse
import logging
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TQDM_DISABLE", "1")  # lm-eval's progress bars; ours follow PROMPTGAP_PROGRESS
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import torch  # noqa: E402
from scoring import SHARED, side_by_side  # noqa: E402

from harness.artifact import PromptArtifact  # noqa: E402
from harness.models import BF16_TOLERANCE, LoadedModel, load_model, pick_device, release  # noqa: E402
from harness.parity import greedy_margin, lm_eval_reference  # noqa: E402
from harness.scorer import Scorer  # noqa: E402
from tasks.winogrande import WinoGrande  # noqa: E402

DEV = SHARED / "winogrande" / "dev.jsonl"


def peak(device: torch.device) -> str:
    """The peak memory so far (then reset, on a GPU): the allocator's on a GPU, the process's resident set on a CPU."""
    if device.type == "cuda":
        gb = torch.cuda.max_memory_allocated(device) / 2**30
        torch.cuda.reset_peak_memory_stats(device)
        return f"GPU peak allocated {gb:.2f} GB"
    return f"process peak resident {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GB"


def describe(device: torch.device) -> None:
    print(f"device     {device}" + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""))
    print(f"torch      {torch.__version__}" + (f", CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}"
                                                if device.type == "cuda" else ""))
    bf16 = torch.cuda.is_bf16_supported() if device.type == "cuda" else True
    print(f"bf16       {'supported' if bf16 else 'NOT supported: the bf16 section measures float16 emulation'}")


def bf16_against_float32(f32: Scorer, ours32: list, b16: Scorer, examples: list, fmt: str, batch_size: int) -> None:
    """bf16 against the float32 scores of the parity section (``ours32``, ExampleScores of the same examples)."""
    t0 = time.perf_counter()
    ours16 = b16.score(PromptArtifact(format=fmt), examples, "multiple_choice", desc=f"bf16 {fmt}")
    seconds = time.perf_counter() - t0
    requests = [r for reqs in f32.renderer.requests(PromptArtifact(format=fmt), examples) for r in reqs]
    a = [(ll, n, g) for s in ours32
         for ll, n, g in zip(s.choice_loglik, s.choice_ntokens, s.choice_greedy, strict=True)]
    b = [(ll, g) for s in ours16 for ll, g in zip(s.choice_loglik, s.choice_greedy, strict=True)]
    d = sorted(abs(x[0] - y[0]) for x, y in zip(a, b, strict=True))
    per_token = max(abs(x[0] - y[0]) / x[1] for x, y in zip(a, b, strict=True))
    changed = [r for r, x, y in zip(requests, a, b, strict=True) if x[2] != y[1]]
    margins = [greedy_margin(f32.lm, r.context, r.continuation) for r in changed]
    # multiple choice: where the argmax over an example's choices moved, the float32 margin it moved across
    flips = [s.choice_loglik[s.pred] - s.choice_loglik[t.pred] for s, t in zip(ours32, ours16, strict=True)
             if s.pred != t.pred]
    ref = lm_eval_reference(b16.lm, "winogrande", DEV, limit=len(examples), chat=fmt == "chat", batch_size=batch_size)
    theirs = [abs(x[0] - r) for x, r in zip(a, (r for lls in ref.lls for r in lls), strict=True)]
    print(f"  {fmt:4}: ours |dLL| median {statistics.median(d):.3f}, p99 {d[int(0.99 * (len(d) - 1))]:.3f}, "
          f"max {d[-1]:.3f} nats ({per_token:.3f} per token; tolerance {BF16_TOLERANCE}: "
          f"{'within' if d[-1] < BF16_TOLERANCE else 'EXCEEDED'}); lm-eval hf bf16 max {max(theirs):.3f}")
    print(f"        greedy flags changed {len(changed)}/{len(requests)}"
          + (f" (largest float32 margin among them {max(margins):.3f})" if margins else "")
          + f"; predictions changed {len(flips)}/{len(examples)}"
          + (f" (largest float32 choice margin among them {max(flips):.3f})" if flips else ""))
    print(f"        bf16 scoring: ours {seconds:.1f} s, lm-eval hf {ref.seconds:.1f} s ({ref.seconds / seconds:.2f}x)")


def training(lm: LoadedModel, steps: int) -> None:
    from harness.optimizer import FitContext, TaskInfo
    from optimizers.prompt_training import PromptTrainer
    from optimizers.soft_prompt import SoftPrompt
    from tasks.antonyms import Antonyms

    task = Antonyms(data_dir=SHARED / "antonyms")
    split = task.split(0)
    with tempfile.TemporaryDirectory() as tmp:
        ctx = FitContext(lm=lm, task=TaskInfo.of(task), train=split.train[:64], dev=split.dev[:16],
                         scorer=Scorer(lm), seed=0, workdir=Path(tmp))
        half = max(1, steps // 2)
        settings = SoftPrompt(lr=0.01, steps=2 * half, batch_size=16, eval_every=half, patience=2).settings
        t0 = time.perf_counter()
        _, record = PromptTrainer(ctx, settings, "soft", "soft-prompt").fit()
        seconds = time.perf_counter() - t0
    steps = [p for p in record["curves"] if "dev_loss" not in p]  # a point per step; evaluations hold dev_loss
    first = statistics.fmean(p["train_loss"] for p in steps if p["step"] <= half)
    second = statistics.fmean(p["train_loss"] for p in steps if p["step"] > half)
    print(f"  soft prompt, {str(lm.dtype).removeprefix('torch.')}: {2 * half} steps of batch 16 in {seconds:.1f} s "
          f"({seconds / (2 * half):.2f} s per step, three dev evaluations of 16 included); mean train loss "
          f"{first:.3f} over the first {half} steps, {second:.3f} over the next {half}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto", help="auto (the first GPU, else the CPU), cpu, cuda, cuda:1")
    ap.add_argument("--limit", type=int, default=None, help="first N WinoGrande dev examples (default: all 1267)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--steps", type=int, default=20, help="soft-prompt training steps (default 20)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("lm_eval").setLevel(logging.ERROR)  # its notes on being handed a loaded model
    started = time.perf_counter()
    device = pick_device(args.device)
    describe(device)
    examples = WinoGrande(DEV.parent).all_examples()[: args.limit]
    print(f"data       WinoGrande dev, {len(examples)} examples; antonyms for training")

    print("\nfloat32 parity with lm-eval's hf model (scoring calls timed, same loaded model)")
    f32 = Scorer(load_model(device=str(device), dtype="float32"), batch_size=args.batch_size)
    ours32 = {}
    for fmt in ("raw", "chat"):
        row = side_by_side(f32, "winogrande", DEV, examples, fmt, args.batch_size)
        ours32[fmt] = row.ours
        print(f"  {fmt:4}: max |dLL| {row.max_dll:.1e}, acc {row.acc_ours:.4f} (lm-eval {row.acc_ref:.4f}), "
              f"same correct {row.same_correct}/{len(examples)}, greedy flags differ {row.greedy_differs}; "
              f"promptgap {row.seconds_ours:.1f} s, lm-eval {row.seconds_ref:.1f} s "
              f"({row.seconds_ref / row.seconds_ours:.2f}x)")
    print(f"  {peak(device)}")

    print("\nbf16 against float32 (the float32 numbers are the reference)")
    b16 = Scorer(load_model(device=str(device), dtype="bfloat16"), batch_size=args.batch_size)
    for fmt in ("raw", "chat"):
        bf16_against_float32(f32, ours32[fmt], b16, examples, fmt, args.batch_size)
    print(f"  {peak(device)}")
    del f32, b16
    release(device)

    print("\ntraining")
    training(load_model(device=str(device)), args.steps)  # the device's default dtype: bf16 on a GPU that has it
    print(f"  {peak(device)}")
    print(f"\ntotal {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
