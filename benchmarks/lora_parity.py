"""Parity check: a trained LoRA adapter scored by promptgap and by lm-eval's own hf model with ``peft=``, per request.

    python benchmarks/lora_parity.py                 # WinoGrande dev (lm-eval's YAML over ../shared/data), raw and chat
    python benchmarks/lora_parity.py --limit 200 --formats raw

Trains a ``lora`` adapter with ``promptgap eval --task lm-eval:winogrande`` (its train split: the first documents of
the task, as ``eval`` splits it; a small budget: this is a parity check, not a result), exports it with
``promptgap export-peft``, then scores every document of the task twice inside ``simple_evaluate``: lm-eval's
``HFLM(pretrained=<the cached float32 weights>, peft=<the export>)`` and promptgap's lm-eval model with the
artifact. Prints the largest per-request log-likelihood difference and both accuracies, per format.
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from lm_eval_tasks import BIN, winogrande_include  # noqa: E402

from harness.artifact import PromptArtifact  # noqa: E402
from harness.lm_eval_lm import PromptgapLM  # noqa: E402
from harness.models import embedded_folder, load_model  # noqa: E402
from harness.parity import run_lm_eval  # noqa: E402
from tasks.lm_eval_task import resolve_includes, task_manager  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--limit", type=int, default=None, help="first N documents (default: all 1267)")
    ap.add_argument("--formats", nargs="+", default=["raw", "chat"], choices=["raw", "chat"])
    ap.add_argument("--steps", type=int, default=20, help="LoRA training steps")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("lm_eval").setLevel(logging.ERROR)
    from lm_eval.models.huggingface import HFLM

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        include = winogrande_include(tmp)
        lm = load_model()
        tm = task_manager(resolve_includes(include), defaults=False)
        for fmt in args.formats:
            art_dir, adapter = tmp / f"lora-{fmt}", tmp / f"adapter-{fmt}"
            subprocess.run([str(BIN / "promptgap"), "eval", "--task", "lm-eval:winogrande", "--lm-eval-include",
                            str(include), "--condition", "lora", "--set", f"steps={args.steps}", "--set",
                            "eval_every=10", "--set", "lr=0.003", "--set", f"format={fmt}", "--artifact-out",
                            str(art_dir), "--out", str(tmp / f"eval-{fmt}.jsonl")], check=True, capture_output=True)
            subprocess.run([str(BIN / "promptgap"), "export-peft", str(art_dir), "--out", str(adapter)], check=True,
                           capture_output=True)
            art = PromptArtifact.load(art_dir)
            chat = fmt == "chat"
            theirs = run_lm_eval(HFLM(pretrained=str(embedded_folder()), peft=str(adapter), dtype="float32",
                                      batch_size=32, device="cpu"), ["winogrande"], tm, chat=chat,
                                 limit=args.limit).reference("winogrande")
            ours = run_lm_eval(PromptgapLM(art, lm=lm), ["winogrande"], tm, chat=chat,
                               limit=args.limit).reference("winogrande")
            diff = max(abs(a - b) for x, y in zip(ours.lls, theirs.lls, strict=True) for a, b in zip(x, y, strict=True))
            n = len(ours.acc)
            print(f"{fmt}: {n} documents, {sum(len(x) for x in ours.lls)} requests, LoRA r={art.adapter_config['r']} "
                  f"({art.trainable_params} params, {args.steps} steps): max |dLL| {diff:.1e} nats; acc promptgap "
                  f"{sum(ours.acc) / n:.4f}, lm-eval hf+peft {sum(theirs.acc) / n:.4f}; same acc per document: "
                  f"{ours.acc == theirs.acc}", flush=True)


if __name__ == "__main__":
    main()
