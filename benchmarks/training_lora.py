"""Benchmark: one epoch of promptgap's LoRA training against the plain Adam loop over PEFT's LoRA model, same data,
model, batches, rank and starting adapter.

    python benchmarks/training_lora.py                        # 200 antonym pairs (the packaged list), chat, r 8
    python benchmarks/training_lora.py --limit 32 --trace     # a quick look, every step's loss side by side

Both sides train a LoRA adapter of the same config (PEFT's default targets for the architecture: q_proj and v_proj
for SmolLM2) from the same start (``A`` drawn from seed 0, ``B`` zero) with Adam on the same loss (the gold
continuation's mean token NLL) over the same batches:
- ``peft``: ``peft.get_peft_model(model, LoraConfig(...))``, its forward over the padded batch, the LM head at every
  position, then the loss at the continuation's positions (what a user writes with PEFT);
- ``ours``: the ``lora`` condition's step: the adapter injected by ``harness.adapters.applied``, the forward of
  ``PromptForward(weights=True)`` (the chat header all rows share runs once per step at batch size 1, its
  keys/values shared by the rows; the LM head only where a continuation token is predicted).
The two sides add the same numbers in another order, so their losses agree to float32 rounding at first and Adam
can amplify that (``--trace`` shows it). Peak memory is not compared here: both run in one process. Run it alone:
two heavy processes on two cores halve each other's speed.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from benchmarks.training import batches, padded_loss  # noqa: E402
from harness.adapters import applied, snapshot  # noqa: E402
from harness.artifact import PromptArtifact  # noqa: E402
from harness.models import load_model  # noqa: E402
from harness.render import Renderer  # noqa: E402
from harness.search import PromptForward  # noqa: E402
from tasks.antonyms import Antonyms  # noqa: E402


def start(lm, config: dict) -> dict[str, torch.Tensor]:
    """The same starting adapter for both sides: PEFT's initialisation drawn from seed 0."""
    torch.manual_seed(0)
    with applied(lm, config) as live:
        return snapshot(live)


def ours(lm, reqs, config: dict, first: dict[str, torch.Tensor], batch: int, lr: float) -> tuple[float, list[float]]:
    with applied(lm, config, first) as live:
        params = list(live.values())
        opt = torch.optim.Adam(params, lr=lr)
        t0 = time.perf_counter()
        fwd = PromptForward(lm, reqs, weights=True)
        losses = []
        for b in batches(len(reqs), batch):
            ll = fwd.loglik(b)
            loss = (-ll / torch.tensor([len(reqs[i].continuation) for i in b], dtype=ll.dtype)).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        return time.perf_counter() - t0, losses


def peft_epoch(lm, reqs, config: dict, first: dict[str, torch.Tensor], batch: int, lr: float
               ) -> tuple[float, list[float]]:
    from peft import LoraConfig, TaskType, get_peft_model

    model = get_peft_model(load_model().model, LoraConfig(task_type=TaskType.CAUSAL_LM, **config))
    params = {n.replace(".default.", ".").removeprefix("base_model.model."): p
              for n, p in model.named_parameters() if p.requires_grad}
    assert params.keys() == first.keys(), "the two sides adapt different layers"
    with torch.no_grad():
        for k, p in params.items():
            p.copy_(first[k])
    opt = torch.optim.Adam(list(params.values()), lr=lr)
    t0 = time.perf_counter()
    step_losses = []
    for b in batches(len(reqs), batch):
        loss = padded_loss(model, [reqs[i] for i in b])
        opt.zero_grad()
        loss.backward()
        opt.step()
        step_losses.append(loss.item())
    return time.perf_counter() - t0, step_losses


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--limit", type=int, default=200, help="training pairs (default 200)")
    ap.add_argument("--r", type=int, default=8, help="LoRA rank")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=0.003)
    ap.add_argument("--trace", action="store_true", help="print every step's loss of both sides")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    lm = load_model()
    config = {"r": args.r, "lora_alpha": 2 * args.r, "lora_dropout": 0.0, "target_modules": None}
    examples = Antonyms().split(0).train[: args.limit]
    reqs = [r[0] for r in Renderer(lm.tokenizer).requests(PromptArtifact(format="chat"), examples)]
    first = start(lm, config)
    ours(lm, reqs[:2], config, first, 2, args.lr)  # warm-up
    t_peft, l_peft = peft_epoch(lm, reqs, config, first, args.batch_size, args.lr)
    t_ours, l_ours = ours(lm, reqs, config, first, args.batch_size, args.lr)
    if args.trace:
        print("| step | PEFT loss | ours loss | difference |")
        print("|---|---|---|---|")
        for i, (a, b) in enumerate(zip(l_peft, l_ours, strict=True), 1):
            print(f"| {i} | {a:.8f} | {b:.8f} | {abs(a - b):.2e} |")
    print(f"one epoch: {len(examples)} pairs, batch {args.batch_size}, LoRA r {args.r} (alpha {2 * args.r}, PEFT's "
          f"default targets), chat format, {lm.name} on {lm.device} ({lm.dtype}, {torch.get_num_threads()} threads)")
    print("| implementation | seconds | first batch loss | last batch loss | PEFT time / ours |")
    print("|---|---|---|---|---|")
    print(f"| PEFT get_peft_model + Adam | {t_peft:.1f} | {l_peft[0]:.4f} | {l_peft[-1]:.4f} | 1.00 |")
    print(f"| ours (lora condition's step) | {t_ours:.1f} | {l_ours[0]:.4f} | {l_ours[-1]:.4f} | "
          f"{t_peft / t_ours:.2f} |")


if __name__ == "__main__":
    main()
