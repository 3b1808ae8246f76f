"""One GCG step of ours against nanoGCG's (0.3.0), side by side: the same model, prompt length, search width, top-k,
and a single target; and a PEZ step against a soft-prompt step.

    python benchmarks/gcg.py                     # search width 512, top-k 256, a 20-token prompt (nanoGCG's defaults)
    python benchmarks/gcg.py --search-width 128 --steps 2

nanoGCG 0.3.0 pins transformers<=4.47.1, which promptgap's environment cannot hold, so its side runs in a venv of
its own, built on first use in ``.cache/nanogcg-venv`` (torch 2.13.0, transformers 4.47.1, nanogcg 0.3.0). Both
sides load the same float32 folder of the embedded model and optimise a prompt placed before the same user message,
in the chat template, towards the same target continuation; both keep only candidates that survive re-tokenisation
and use printable ASCII tokens. Per-step times are the difference between runs of 1 and 1 + ``--steps`` steps, so
set-up (tokenising, the prefix cache) is not counted. Whole-process times (what a user waits, model load included)
are printed too.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

VENV = ROOT / ".cache" / "nanogcg-venv"
MESSAGE = "Here are two antonyms hot and"
TARGET = "cold"

NANOGCG_SIDE = r"""
import json, sys, time, torch, nanogcg, transformers
from nanogcg import GCGConfig
folder, message, target, length, width, topk, steps = sys.argv[1:8]
torch.set_num_threads(int(sys.argv[8]))
t0 = time.perf_counter()
try:
    tok = transformers.AutoTokenizer.from_pretrained(folder)
except ValueError:  # a folder saved by transformers 5 names a tokenizer class 4.47 lacks: the same tokenizer.json
    import pathlib
    cfg = json.loads((pathlib.Path(folder) / "tokenizer_config.json").read_text())
    tok = transformers.PreTrainedTokenizerFast(tokenizer_file=f"{folder}/tokenizer.json", bos_token=cfg["bos_token"],
                                               eos_token=cfg["eos_token"], pad_token=cfg["pad_token"],
                                               unk_token=cfg["unk_token"])
    tok.chat_template = (pathlib.Path(folder) / "chat_template.jinja").read_text()
model = transformers.AutoModelForCausalLM.from_pretrained(folder, torch_dtype=torch.float32).eval()
load = time.perf_counter() - t0
times = {}
for n in (1, 1 + int(steps)):
    cfg = GCGConfig(num_steps=n, optim_str_init=" ".join(["x"] * int(length)), search_width=int(width),
                    topk=int(topk), n_replace=1, seed=0, verbosity="WARNING", use_prefix_cache=True)
    t = time.perf_counter()
    result = nanogcg.run(model, tok, [{"role": "user", "content": "{optim_str}\n\n" + message}], target, cfg)
    times[n] = time.perf_counter() - t
print(json.dumps({"load": load, "times": {str(k): v for k, v in times.items()}, "best_loss": result.best_loss}))
"""


def ensure_venv() -> Path:
    python = VENV / "bin" / "python"
    if not python.exists():
        print(f"building {VENV} (torch 2.13.0, transformers 4.47.1, nanogcg 0.3.0) ...", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "torch==2.13.0", "transformers==4.47.1",
                        "nanogcg==0.3.0"], check=True)
    return python


def ours(length: int, width: int, topk: int, steps: int) -> dict:
    """Our GCG step on one (context, continuation) pair, and PEZ and soft-prompt steps on the same pair."""
    import torch

    from harness.data import Example
    from harness.models import load_model
    from harness.optimizer import FitContext, TaskInfo
    from harness.scorer import Scorer
    from harness.search import SlotObjective
    from optimizers.discrete import GCG, PEZ

    t0 = time.perf_counter()
    lm = load_model()
    load = time.perf_counter() - t0
    example = Example("one", (MESSAGE,), (TARGET,), 0)
    ctx = FitContext(lm=lm, task=TaskInfo(name="one", kind="continuation", instruction="x"), train=(example,),
                     dev=(example,), scorer=Scorer(lm), seed=0)
    obj = SlotObjective(ctx, length, "chat", condition="bench")
    init = lm.tokenizer.encode(" ".join(["x"] * length), add_special_tokens=False)[:length]
    gen = torch.Generator().manual_seed(0)
    out = {"load": load}
    gcg = GCG(length=length, top_k=topk, search_width=width)
    gcg.start(obj, init)
    gcg.step(obj, [0], gen)  # warm-up: the first pass through each path allocates
    t = time.perf_counter()
    for _ in range(steps):
        gcg.step(obj, [0], gen)
    out["gcg_step"] = (time.perf_counter() - t) / steps
    pez = PEZ(length=length)
    pez.start(obj, init)
    pez.step(obj, [0], gen)
    t = time.perf_counter()
    for _ in range(steps):
        pez.step(obj, [0], gen)
    out["pez_step"] = (time.perf_counter() - t) / steps
    soft = obj.embed(init).clone().requires_grad_(True)  # a soft prompt in the same slot: Adam on its loss
    opt = torch.optim.Adam([soft], lr=0.01)
    times = []
    for _ in range(steps + 1):
        t = time.perf_counter()
        opt.zero_grad()
        obj.loss(soft, [0]).backward()
        opt.step()
        times.append(time.perf_counter() - t)
    out["soft_step"] = statistics.mean(times[1:])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--length", type=int, default=20)
    ap.add_argument("--search-width", type=int, default=512)
    ap.add_argument("--top-k", type=int, default=256)
    ap.add_argument("--steps", type=int, default=3, help="timed steps per side (after one untimed)")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("PROMPTGAP_PROGRESS", "0")
    import torch

    from harness.models import embedded_folder

    threads = torch.get_num_threads()
    python = ensure_venv()
    folder = embedded_folder()
    t = time.perf_counter()
    theirs = subprocess.run([str(python), "-c", NANOGCG_SIDE, str(folder), MESSAGE, TARGET, str(args.length),
                             str(args.search_width), str(args.top_k), str(args.steps), str(threads)],
                            capture_output=True, text=True)
    if theirs.returncode != 0:
        sys.exit(f"nanoGCG side failed:\n{theirs.stderr[-3000:]}")
    their_wall = time.perf_counter() - t
    them = json.loads(theirs.stdout.strip().splitlines()[-1])
    their_step = (them["times"][str(1 + args.steps)] - them["times"]["1"]) / args.steps
    t = time.perf_counter()
    us = ours(args.length, args.search_width, args.top_k, args.steps)
    our_wall = time.perf_counter() - t
    print(f"one target, a {args.length}-token prompt, search width {args.search_width}, top-k {args.top_k}, "
          f"{threads} thread(s), float32 on CPU")
    print(f"GCG step: promptgap {us['gcg_step']:.2f} s, nanoGCG 0.3.0 {their_step:.2f} s: "
          f"ours is {their_step / us['gcg_step']:.2f}x nanoGCG's speed")
    print(f"PEZ step {us['pez_step']:.3f} s, soft-prompt step {us['soft_step']:.3f} s "
          f"(PEZ / soft {us['pez_step'] / us['soft_step']:.2f}x)")
    print(f"whole process (model load, set-up, all steps of both sides' runs): promptgap {our_wall:.1f} s, "
          f"nanoGCG {their_wall:.1f} s; model load {us['load']:.1f} s / {them['load']:.1f} s")


if __name__ == "__main__":
    main()
