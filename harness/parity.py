"""lm-evaluation-harness as an independent reference: its own task code and HFLM, on the same model and rows.

Used by the parity tests and the benchmarks. lm-eval builds the prompts from its own YAML task
definitions (here pointed at local files, since the hub is offline), so a formatting difference
between promptgap and lm-eval shows up as a score difference.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.models import LoadedModel


@dataclass
class ReferenceResult:
    """Per document (lm-eval's order): the per-request (loglik, greedy) pairs and lm-eval's per-document metrics."""

    lls: list[list[float]]
    greedy: list[list[bool]]
    acc: list[float]
    seconds: float
    acc_norm: list[float] | None = None
    doc_ids: list[int] | None = None


@dataclass
class LmEvalRun:
    """One ``simple_evaluate``: its results (``make_table`` input), the logged samples per task, and the time spent
    inside the model's ``loglikelihood`` calls."""

    results: dict[str, Any]
    seconds: float

    def reference(self, task: str) -> ReferenceResult:
        samples = sorted(self.results["samples"][task], key=lambda s: s["doc_id"])
        return ReferenceResult(
            lls=[[float(r[0][0]) for r in s["resps"]] for s in samples],
            greedy=[[bool(r[0][1]) for r in s["resps"]] for s in samples],
            acc=[float(s["acc"]) for s in samples],
            seconds=self.seconds,
            acc_norm=[float(s["acc_norm"]) for s in samples] if samples and "acc_norm" in samples[0] else None,
            doc_ids=[int(s["doc_id"]) for s in samples],
        )


def hf_model(lm: LoadedModel, batch_size: int = 32):
    """lm-eval's own HFLM over the already-loaded model and tokenizer, its chat template given the variables
    promptgap pins (``render.TEMPLATE_PINS``: lm-eval's ``chat_template_args``), so both render the same chat."""
    from lm_eval.models.huggingface import HFLM

    from harness.render import TEMPLATE_PINS

    return HFLM(pretrained=lm.model, tokenizer=lm.tokenizer, batch_size=batch_size, device=str(lm.device),
                chat_template_args=dict(TEMPLATE_PINS))


def run_lm_eval(model: Any, tasks: Sequence[str | dict[str, Any]], task_manager: Any = None, chat: bool = False,
                limit: int | None = None, num_fewshot: int | None = 0, **kwargs: Any) -> LmEvalRun:
    """``lm_eval.simple_evaluate`` of ``model`` (an lm-eval LM: HFLM, or promptgap's) on ``tasks``, with samples logged
    and no bootstrap; only the model's ``loglikelihood`` calls are timed."""
    from lm_eval import evaluator
    from lm_eval.tasks import TaskManager

    spent = [0.0]
    scoring = model.loglikelihood

    def timed(*args, **kw):
        t0 = time.perf_counter()
        try:
            return scoring(*args, **kw)
        finally:
            spent[0] += time.perf_counter() - t0

    model.loglikelihood = timed
    try:
        results = evaluator.simple_evaluate(model=model, tasks=list(tasks), task_manager=task_manager or TaskManager(),
                                            apply_chat_template=chat, log_samples=True, bootstrap_iters=0,
                                            limit=limit, num_fewshot=num_fewshot, **kwargs)
    finally:
        del model.loglikelihood
    return LmEvalRun(results=results, seconds=spent[0])


def _task_yaml(name: str) -> Path:
    import lm_eval

    root = Path(lm_eval.__file__).parent / "tasks"
    return {"winogrande": root / "winogrande" / "default.yaml",
            "boolq": root / "super_glue" / "boolq" / "default.yaml"}[name]


def _boolq_as_super_glue(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The local BoolQ file split the title out of SuperGLUE's "title -- passage"; put it back."""
    return [{"question": r["question"],
             "passage": f"{r['title']} -- {r['passage']}" if r.get("title") else r["passage"],
             "idx": r["idx"], "label": int(bool(r["answer"]))} for r in rows]


def lm_eval_reference(lm: LoadedModel, task: str, data_file: Path, limit: int | None = None,
                      chat: bool = False, batch_size: int = 32) -> ReferenceResult:
    """Run lm-eval's own ``task`` (winogrande or boolq) with HFLM on the first ``limit`` rows of ``data_file``."""
    from lm_eval.tasks._yaml_loader import load_yaml

    rows = [json.loads(line) for line in Path(data_file).read_text().splitlines() if line.strip()]
    if limit is not None:
        rows = rows[:limit]
    if task == "boolq":
        rows = _boolq_as_super_glue(rows)
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp) / "validation.jsonl"
        local.write_text("".join(json.dumps(r) + "\n" for r in rows))
        cfg = load_yaml(_task_yaml(task))
        cfg.pop("tag", None)
        cfg.update(task=f"promptgap_ref_{task}", dataset_path="json", dataset_name=None,
                   dataset_kwargs={"data_files": {"validation": str(local)}},
                   training_split=None, validation_split="validation")
        run = run_lm_eval(hf_model(lm, batch_size), [cfg], chat=chat, num_fewshot=None)
    return run.reference(cfg["task"])


def greedy_margin(lm: LoadedModel, context: Sequence[int], continuation: Sequence[int]) -> float:
    """How far (nats) a request's greedy flag is from changing, from the model's own forward over the whole sequence
    (the reference the scorer's numbers are checked against): when every continuation token is the argmax, the
    smallest lead of a token over the best other; else the largest shortfall of a token behind the argmax."""
    import torch

    seq = torch.tensor([list(context) + list(continuation)[:-1]], device=lm.device)
    with torch.no_grad():
        logp = torch.log_softmax(lm.model(input_ids=seq).logits[0, len(context) - 1 :].float(), dim=-1)
    target = torch.tensor(list(continuation), device=lm.device)[:, None]
    lead = logp.gather(1, target)[:, 0] - logp.scatter(1, target, -torch.inf).max(1).values
    return float(lead.min()) if bool((lead > 0).all()) else float(-lead.min())
