"""Device and dtype: bf16 stays within the stated tolerance of float32, the opt-in deterministic mode reaches the
manifest and every cell, export-peft reads a model's config only, and a run with two models frees the first before
the second loads."""

from __future__ import annotations

import gc
import json
import os
import shutil
import subprocess
import sys
import weakref

import torch

from harness.artifact import PromptArtifact
from harness.models import BF16_TOLERANCE, embedded_folder, load_model
from harness.parity import greedy_margin
from harness.peft_export import export_peft
from harness.run_folder import load_run
from harness.runner import Runner
from harness.scorer import Scorer
from tasks.winogrande import WinoGrande

RUN = """
[run]
name = "dev"
models = {models}
seeds = [0]
n_boot = 100

[[tasks]]
name = "antonyms"
sizes = {{ train = 8, dev = 4, test = 6 }}

[conditions.base-chat]
[conditions.handwritten]
format = "chat"
{extra}
[ratio]
base = "base-chat"
texts = ["handwritten"]
"""


def test_bf16_stays_within_the_stated_tolerance(lm, shared_data) -> None:
    """A WinoGrande slice, raw and chat, scored by the same weights in bf16 and in float32: every request's
    log-likelihood within BF16_TOLERANCE, and a greedy flag changes only where the float32 margin (the model's own
    forward) is below it."""
    examples = WinoGrande(shared_data / "winogrande").all_examples()[:16]
    bf16 = load_model(device=str(lm.device), dtype="bfloat16")
    assert bf16.dtype == torch.bfloat16
    f32, b16 = Scorer(lm), Scorer(bf16)
    requests = [r for fmt in ("raw", "chat")
                for reqs in f32.renderer.requests(PromptArtifact(format=fmt), examples) for r in reqs]
    a, b = f32.loglikelihood(requests), b16.loglikelihood(requests)
    diffs = [abs(x.loglik - y.loglik) for x, y in zip(a, b, strict=True)]
    assert max(diffs) < BF16_TOLERANCE
    assert max(diffs) > 1e-3  # bf16 did run: this is not float32 against itself
    for r, x, y in zip(requests, a, b, strict=True):
        if x.greedy != y.greedy:
            assert greedy_margin(lm, r.context, r.continuation) < BF16_TOLERANCE


def test_deterministic_mode_is_recorded(tmp_path) -> None:
    """`promptgap run --deterministic` (a process of its own: the mode is global to torch) trains with torch's
    deterministic algorithms on, and says so in the manifest and in every cell."""
    config = tmp_path / "c.toml"
    config.write_text(RUN.format(models='["smollm2-135m-instruct"]', extra="[conditions.soft-prompt]\nsteps = 2\n"
                                 "eval_every = 2\nbatch_size = 4\nlr = 0.01\n"))
    out = subprocess.run([sys.executable, "-m", "harness.cli", "run", str(config), "--run-id", "d", "--results",
                          str(tmp_path / "results"), "--reports", str(tmp_path / "reports"), "--deterministic"],
                         env={**os.environ, "PROMPTGAP_PROGRESS": "0"}, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    run = load_run(tmp_path / "results" / "d")
    assert run.manifest["machine"]["deterministic"] is True
    assert run.manifest["invocations"][0]["machine"]["deterministic"] is True
    assert [c.record.deterministic for c in run.cells.values()] == [True, True, True]
    assert all(c.ok for c in run.cells.values())


def test_a_run_is_not_deterministic_unless_asked(tmp_path) -> None:
    config = tmp_path / "c.toml"
    config.write_text(RUN.format(models='["smollm2-135m-instruct"]', extra=""))
    run = load_run(Runner(config, run_id="n", results_root=tmp_path).run())
    assert run.manifest["machine"]["deterministic"] is False
    assert {c.record.deterministic for c in run.cells.values()} == {False}


def test_export_peft_reads_the_config_only(tmp_path) -> None:
    """A folder holding the model's config and nothing else (no weights, no tokenizer) is enough to export."""
    folder = tmp_path / "config-only"
    folder.mkdir()
    shutil.copy(embedded_folder() / "config.json", folder / "config.json")
    hidden = json.loads((folder / "config.json").read_text())["hidden_size"]
    art = PromptArtifact(format="chat", placement="start", soft_prompt=torch.randn(3, hidden), condition="soft-prompt")
    out = export_peft(art, str(folder), tmp_path / "adapter")
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["num_virtual_tokens"] == 3 and cfg["token_dim"] == hidden


def test_the_previous_model_is_freed_before_the_next_loads(tmp_path, monkeypatch) -> None:
    """Two models in one run (the embedded one, then the same weights as a local folder): when the second loads,
    nothing holds the first any more."""
    import harness.models as models

    real = models.load_model
    loaded: list[weakref.ref] = []
    alive_at_load: list[bool] = []

    def load(*args, **kwargs):
        gc.collect()
        alive_at_load.append(any(r() is not None for r in loaded))
        lm = real(*args, **kwargs)
        loaded.append(weakref.ref(lm.model))
        return lm

    monkeypatch.setattr(models, "load_model", load)
    config = tmp_path / "c.toml"
    config.write_text(RUN.format(models=json.dumps(["smollm2-135m-instruct", str(embedded_folder())]), extra=""))
    run = load_run(Runner(config, run_id="two", results_root=tmp_path).run())
    assert len(run.cells) == 4 and all(c.ok for c in run.cells.values())
    assert alive_at_load == [False, False]
