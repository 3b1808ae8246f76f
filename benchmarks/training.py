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

from harness.artifact import PromptArtifact  # noqa: E402
from harness.models import load_model  # noqa: E402
from harness.render import Renderer  # noqa: E402
from optimizers.prompt_training import PromptForward  # noqa: E402
from tasks.antonyms import Antonyms  # noqa: E402


def batches(n: int, size: int) -> list[list[int]]:
    return [list(range(i, min(n, i + size))) for i in range(0, n, size)]


def ours(lm, renderer, examples, placement: str, length: int, batch: int, lr: float) -> tuple[float, float]:
    soft = torch.zeros(length, lm.model.config.hidden_size)
    art = PromptArtifact(format="chat", placement=placement, soft_prompt=soft)
    reqs = [r[0] for r in renderer.requests(art, examples)]
    param = (torch.randn(length, soft.shape[1], generator=torch.Generator().manual_seed(0)) * 0.1).requires_grad_()
    opt = torch.optim.Adam([param], lr=lr)
    t0 = time.perf_counter()
    fwd = PromptForward(lm, reqs)  # the frozen header, if any, is part of the epoch's time
    last = 0.0
    for b in batches(len(reqs), batch):
        ll = fwd.loglik(b, soft=param)
        loss = (-ll / torch.tensor([len(reqs[i].continuation) for i in b])).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        last = loss.item()
    return time.perf_counter() - t0, last


def peft_epoch(lm, renderer, examples, length: int, batch: int, lr: float) -> tuple[float, float]:
    from peft import PromptTuningConfig, TaskType, get_peft_model

    model = get_peft_model(load_model().model, PromptTuningConfig(task_type=TaskType.CAUSAL_LM,
                                                                  num_virtual_tokens=length))
    emb = model.prompt_encoder["default"].embedding
    with torch.no_grad():
        emb.weight.copy_(torch.randn(length, emb.weight.shape[1], generator=torch.Generator().manual_seed(0)) * 0.1)
    opt = torch.optim.Adam([emb.weight], lr=lr)
    reqs = [r[0] for r in renderer.requests(PromptArtifact(format="chat"), examples)]
    t0 = time.perf_counter()
    last = 0.0
    for b in batches(len(reqs), batch):
        seqs = [list(reqs[i].context + reqs[i].continuation)[:-1] for i in b]
        width = max(map(len, seqs))
        ids = torch.zeros(len(seqs), width, dtype=torch.long)
        mask = torch.zeros(len(seqs), width, dtype=torch.long)
        for r, s in enumerate(seqs):
            ids[r, : len(s)] = torch.tensor(s)
            mask[r, : len(s)] = 1
        logits = model(input_ids=ids, attention_mask=mask).logits[:, length:]
        losses = []
        for r, i in enumerate(b):
            c = reqs[i]
            rows = logits[r, len(c.context) - 1 : len(c.context) - 1 + len(c.continuation)]
            logp = torch.log_softmax(rows.float(), dim=-1)
            losses.append(-logp.gather(1, torch.tensor(c.continuation)[:, None]).mean())
        loss = torch.stack(losses).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        last = loss.item()
    return time.perf_counter() - t0, last


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--limit", type=int, default=200, help="training pairs (default 200)")
    ap.add_argument("--length", type=int, default=16, help="virtual tokens")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=0.01)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    lm = load_model()
    examples = Antonyms().split(0).train[: args.limit]
    renderer = Renderer(lm.tokenizer)
    ours(lm, renderer, examples[:2], "start", args.length, 2, args.lr)  # warm-up
    t_peft, l_peft = peft_epoch(lm, renderer, examples, args.length, args.batch_size, args.lr)
    t_start, l_start = ours(lm, renderer, examples, "start", args.length, args.batch_size, args.lr)
    t_inside, l_inside = ours(lm, renderer, examples, "before_input", args.length, args.batch_size, args.lr)
    print(f"one epoch: {len(examples)} pairs, batch {args.batch_size}, {args.length} virtual tokens, chat format, "
          f"{lm.name} on {lm.device} ({torch.get_num_threads()} threads)")
    print("| implementation | seconds | last batch loss | PEFT time / ours |")
    print("|---|---|---|---|")
    print(f"| PEFT PromptTuning | {t_peft:.1f} | {l_peft:.4f} | 1.00 |")
    print(f"| ours, start (PEFT's placement) | {t_start:.1f} | {l_start:.4f} | {t_peft / t_start:.2f} |")
    print(f"| ours, before_input (frozen chat header) | {t_inside:.1f} | {l_inside:.4f} | {t_peft / t_inside:.2f} |")


if __name__ == "__main__":
    main()
