"""Benchmark: one epoch of promptgap's soft-prompt training against PEFT's PromptTuning, same data/model/batch/length.

    python benchmarks/training.py                       # 200 antonym pairs (the packaged list), chat, length 16
    python benchmarks/training.py --limit 32 --length 8 # a quick look

Both sides train the same tensor with Adam on the same loss (the gold continuation's mean token NLL) over the same
batches. Rows timed, one epoch each:
- ``peft``: PEFT's PromptTuning (vectors before every token), its forward over the padded batch;
- ``ours start``: our forward with the same placement (the vectors before the chat header, so the header
  depends on them: it runs once per step at batch size 1 and its keys/values are shared by the rows);
- ``ours before_input``: the vectors inside the user turn, after the chat header: the header runs once for
  the whole epoch, without gradients (the shared-prefix trick).
Run it alone: two heavy processes on two cores halve each other's speed.

    python benchmarks/training.py --trace --dtype float64   # per-step losses of both sides, in float64

``--trace`` prints every step's loss of PEFT and of ours (start placement) side by side. The two sides sum
the same numbers in a different order (PEFT pads every row to the batch's longest; ours shares the frozen
prefix), so in float32 they agree to rounding at first, and Adam, whose first steps move every coordinate by
about lr whatever the gradient's size, can amplify rounding-level differences. ``--dtype float64`` runs both
sides in double precision (the model's RMSNorm, which computes in float32 whatever its input, is switched to
the input's precision for this check): if the two implementations compute the same function, the per-step
losses agree much more closely and for longer there.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from harness.artifact import PromptArtifact  # noqa: E402
from harness.models import load_model  # noqa: E402
from harness.render import Renderer  # noqa: E402
from harness.search import PromptForward  # noqa: E402
from tasks.antonyms import Antonyms  # noqa: E402


def batches(n: int, size: int) -> list[list[int]]:
    return [list(range(i, min(n, i + size))) for i in range(0, n, size)]


def init_vectors(length: int, width: int, dtype: torch.dtype) -> torch.Tensor:
    """The same starting soft prompt for both sides."""
    return (torch.randn(length, width, generator=torch.Generator().manual_seed(0)) * 0.1).to(dtype)


def padded_loss(model, reqs, skip: int = 0) -> torch.Tensor:
    """The mean over ``reqs`` of the gold continuation's mean token NLL as a PEFT user computes it: every row padded
    to the batch's longest, the model's logits at every position (``skip``: the virtual tokens PEFT's prompt tuning
    puts before them)."""
    seqs = [list(r.context + r.continuation)[:-1] for r in reqs]
    width = max(map(len, seqs))
    ids = torch.zeros(len(seqs), width, dtype=torch.long)
    mask = torch.zeros(len(seqs), width, dtype=torch.long)
    for r, s in enumerate(seqs):
        ids[r, : len(s)] = torch.tensor(s)
        mask[r, : len(s)] = 1
    logits = model(input_ids=ids, attention_mask=mask).logits[:, skip:]
    losses = []
    for r, c in enumerate(reqs):
        rows = logits[r, len(c.context) - 1 : len(c.context) - 1 + len(c.continuation)]
        logp = torch.log_softmax(rows.to(torch.promote_types(rows.dtype, torch.float32)), dim=-1)
        losses.append(-logp.gather(1, torch.tensor(c.continuation)[:, None]).mean())
    return torch.stack(losses).mean()


def ours(lm, renderer, examples, placement: str, length: int, batch: int, lr: float) -> tuple[float, list[float]]:
    soft = torch.zeros(length, lm.model.config.hidden_size, dtype=lm.dtype)
    art = PromptArtifact(format="chat", placement=placement, soft_prompt=soft)
    reqs = [r[0] for r in renderer.requests(art, examples)]
    param = init_vectors(length, soft.shape[1], lm.dtype).requires_grad_()
    opt = torch.optim.Adam([param], lr=lr)
    t0 = time.perf_counter()
    fwd = PromptForward(lm, reqs)  # the frozen header, if any, is part of the epoch's time
    losses = []
    for b in batches(len(reqs), batch):
        ll = fwd.loglik(b, soft=param)
        loss = (-ll / torch.tensor([len(reqs[i].continuation) for i in b], dtype=ll.dtype)).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return time.perf_counter() - t0, losses


def peft_epoch(lm, renderer, examples, length: int, batch: int, lr: float) -> tuple[float, list[float]]:
    from peft import PromptTuningConfig, TaskType, get_peft_model

    model = get_peft_model(load_model().model.to(lm.dtype), PromptTuningConfig(task_type=TaskType.CAUSAL_LM,
                                                                               num_virtual_tokens=length))
    emb = model.prompt_encoder["default"].embedding.to(lm.dtype)
    with torch.no_grad():
        emb.weight.copy_(init_vectors(length, emb.weight.shape[1], lm.dtype))
    opt = torch.optim.Adam([emb.weight], lr=lr)
    reqs = [r[0] for r in renderer.requests(PromptArtifact(format="chat"), examples)]
    t0 = time.perf_counter()
    step_losses = []
    for b in batches(len(reqs), batch):
        loss = padded_loss(model, [reqs[i] for i in b], skip=length)
        opt.zero_grad()
        loss.backward()
        opt.step()
        step_losses.append(loss.item())
    return time.perf_counter() - t0, step_losses


def double_precision(lm):
    """The model in float64 throughout: LlamaRMSNorm casts to float32 inside, which would leave float32
    rounding in a float64 run (measured: step-1 gradients of the two sides then differ by 1.5e-7 relative;
    with this, by 1.2e-14)."""
    from transformers.models.llama import modeling_llama

    def rms_norm(self, hidden):
        return self.weight * (hidden * torch.rsqrt(hidden.pow(2).mean(-1, keepdim=True) + self.variance_epsilon))

    modeling_llama.LlamaRMSNorm.forward = rms_norm
    return dataclasses.replace(lm, model=lm.model.double(), dtype=torch.float64)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--limit", type=int, default=200, help="training pairs (default 200)")
    ap.add_argument("--length", type=int, default=16, help="virtual tokens")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--dtype", choices=["float32", "float64"], default="float32",
                    help="both sides' dtype; float64 shows whether a loss difference is rounding")
    ap.add_argument("--trace", action="store_true", help="print every step's loss of both sides")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    lm = load_model()
    if args.dtype == "float64":
        lm = double_precision(lm)
    examples = Antonyms().split(0).train[: args.limit]
    renderer = Renderer(lm.tokenizer)
    ours(lm, renderer, examples[:2], "start", args.length, 2, args.lr)  # warm-up
    t_peft, l_peft = peft_epoch(lm, renderer, examples, args.length, args.batch_size, args.lr)
    t_start, l_start = ours(lm, renderer, examples, "start", args.length, args.batch_size, args.lr)
    t_inside, l_inside = ours(lm, renderer, examples, "before_input", args.length, args.batch_size, args.lr)
    if args.trace:
        print("| step | PEFT loss | ours (start) loss | difference |")
        print("|---|---|---|---|")
        for i, (a, b) in enumerate(zip(l_peft, l_start, strict=True), 1):
            print(f"| {i} | {a:.8f} | {b:.8f} | {abs(a - b):.2e} |")
    print(f"one epoch: {len(examples)} pairs, batch {args.batch_size}, {args.length} virtual tokens, chat format, "
          f"{lm.name} on {lm.device} ({lm.dtype}, {torch.get_num_threads()} threads)")
    print("| implementation | seconds | last batch loss | PEFT time / ours |")
    print("|---|---|---|---|")
    print(f"| PEFT PromptTuning | {t_peft:.1f} | {l_peft[-1]:.4f} | 1.00 |")
    print(f"| ours, start (PEFT's placement) | {t_start:.1f} | {l_start[-1]:.4f} | {t_peft / t_start:.2f} |")
    print(f"| ours, before_input (frozen chat header) | {t_inside:.1f} | {l_inside[-1]:.4f} | "
          f"{t_peft / t_inside:.2f} |")


if __name__ == "__main__":
    main()
