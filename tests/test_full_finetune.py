"""The full fine-tuning ceiling: every weight trained on train and selected on dev, scored by the one scorer with the
weights in the model for that scoring only; the weights kept out of git and recorded by hash; refused before
training when it would not fit in memory."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from tiny import tiny_lm

from harness.adapters import applied, snapshot
from harness.artifact import WEIGHTS_FILE, PromptArtifact
from harness.audit import audit
from harness.errors import UserError
from harness.plan import split
from harness.registry import get_task
from harness.run_folder import judge_cell
from harness.runner import Runner
from harness.scorer import Scorer
from harness.search import PromptForward
from optimizers.weight_training import FullFinetuneSettings, check_training_memory

CONFIG = """
[run]
name = "full"
n_boot = 200

[[tasks]]
name = "antonyms"
sizes = { train = 16, dev = 8, test = 12 }

[conditions.base-chat]
[conditions.full-finetune]
lr = 0.0001
steps = 4
batch_size = 8
eval_every = 2
"""
CELLS = Path("cells/smollm2-135m-instruct/antonyms/seed-0")
FULL = {"method": "full"}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("full")
    (root / "c.toml").write_text(CONFIG)
    return Runner(root / "c.toml", run_id="r", results_root=root / "results").run()


def _rows(cell: Path) -> list[dict]:
    return [json.loads(x) for x in (cell / "scores.jsonl").read_text().splitlines()]


def _test() -> tuple:
    task = get_task("antonyms")
    return task, split(task, {"train": 16, "dev": 8, "test": 12}, 0).test


def test_a_full_finetune_cell_scores_its_weights_and_the_base_model_is_the_same_storage_and_bits_after(
        run_dir, lm, scorer) -> None:
    cell = run_dir / CELLS / "full-finetune"
    art = PromptArtifact.load(cell / "artifact")
    count = sum(p.numel() for p in lm.model.parameters())  # parameters() gives a tied weight once
    assert art.parts == {"weights"} and art.full and art.trainable_params == count
    assert art.adapter is None  # left in its file until scored
    # the weights file: recorded in artifact.json by bytes and sha256 (hashed here independently), and not in
    # cell.json's file list, so a clone without it (the file is kept out of git) still holds a whole cell
    path = cell / "artifact" / WEIGHTS_FILE
    record = json.loads((cell / "artifact" / "artifact.json").read_text())["weights_file"]
    assert record["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert record["bytes"] == path.stat().st_size and record["params"] == count
    assert not any(WEIGHTS_FILE in f for f in json.loads((cell / "cell.json").read_text())["files"])
    weights = art.trained_weights()
    base_params = dict(lm.model.named_parameters())
    assert weights.keys() == base_params.keys()
    assert sum(not torch.equal(weights[n], p.detach()) for n, p in base_params.items()) > len(base_params) // 2

    task, test = _test()
    base = PromptArtifact(format="chat", condition="base-chat")
    storage = {n: p.data_ptr() for n, p in base_params.items()}
    before, state = [s.gold_nll for s in scorer.score(base, test, task.kind)], \
        {n: p.detach().clone() for n, p in base_params.items()}
    tuned = [s.gold_nll for s in scorer.score(art, test, task.kind)]
    after = [s.gold_nll for s in scorer.score(base, test, task.kind)]
    assert after == before and tuned != before
    assert lm.adapter is None and not any(p.requires_grad for p in lm.model.parameters())
    # the base weights were never written to: the same storage, the same bits
    assert {n: p.data_ptr() for n, p in lm.model.named_parameters()} == storage
    assert all(torch.equal(p, state[n]) for n, p in lm.model.named_parameters())
    rows = {r["example_id"]: r["gold_nll"] for r in _rows(cell)}
    assert [rows[e.id] for e in test] == tuned  # the cell's numbers are this scorer's on the same examples


def test_a_fresh_copy_of_every_weight_scores_the_base_models_exact_bits(lm, scorer) -> None:
    # untrained, the full fine-tune's weights are a copy of the base weights: the same numbers, so the same bits
    task, test = _test()
    with applied(lm, FULL) as live:
        fresh = snapshot(live)
    assert [s.gold_nll for s in scorer.score(PromptArtifact(format="chat", adapter=fresh, adapter_config=FULL),
                                             test[:6], task.kind)] == \
        [s.gold_nll for s in scorer.score(PromptArtifact(format="chat"), test[:6], task.kind)]


def test_the_weights_are_kept_out_of_git() -> None:
    root = Path(__file__).resolve().parents[1]
    if not (root / ".git").exists():
        pytest.skip("not a git checkout")
    probe = f"results/antonyms-full/{CELLS}/full-finetune/artifact/{WEIGHTS_FILE}"
    assert subprocess.run(["git", "check-ignore", "-q", probe], cwd=root).returncode == 0


def test_without_its_weights_file_the_run_still_audits_and_scoring_it_says_why_in_one_line(run_dir, tmp_path,
                                                                                           scorer) -> None:
    clone = tmp_path / "r"
    shutil.copytree(run_dir, clone)
    cell = clone / CELLS / "full-finetune"
    (cell / "artifact" / WEIGHTS_FILE).unlink()  # what a git clone of a committed run holds
    assert judge_cell(cell).state == "done"
    result = audit(clone, report=clone / "no-report.md")
    assert not result.failed, [(i.title, i.problems) for i in result.failed]
    art = PromptArtifact.load(cell / "artifact")
    task, test = _test()
    with pytest.raises(UserError, match="kept out of git") as e:
        scorer.score(art, test[:2], task.kind)
    assert "\n" not in str(e.value)


def test_the_run_with_a_full_finetune_cell_passes_the_audit(run_dir) -> None:
    result = audit(run_dir, report=run_dir / "no-report.md")
    assert not result.failed, [(i.title, i.problems) for i in result.failed]


def test_a_model_that_would_not_fit_is_refused_before_training_in_one_line(lm) -> None:
    # SmolLM2-135M: 134,515,008 float32 parameters; a trained copy, its gradient and Adam's two moments are
    # 4 x 4 bytes each: 2,152,240,128 bytes = 2.00 GiB
    count = sum(p.numel() for p in lm.model.parameters())
    assert count == 134_515_008
    with pytest.raises(UserError, match=re.escape("needs 2.00 GiB for weights + gradients + Adam state, over "
                                                  "max_train_memory 1.5 GiB")) as e:
        check_training_memory(lm, FullFinetuneSettings(max_train_memory=1.5), "full-finetune")
    assert "\n" not in str(e.value) and "use lora" in str(e.value)
    assert check_training_memory(lm, FullFinetuneSettings(max_train_memory=2.1), "x")["need_bytes"] == 2_152_240_128


def test_a_run_refuses_it_before_any_training(tmp_path) -> None:
    (tmp_path / "c.toml").write_text(CONFIG.replace("eval_every = 2", "eval_every = 2\nmax_train_memory = 0.25"))
    run = Runner(tmp_path / "c.toml", run_id="r", results_root=tmp_path / "results").run()
    cell = json.loads((run / CELLS / "full-finetune" / "cell.json").read_text())
    assert cell["status"] != "ok" and "over max_train_memory 0.25 GiB; use lora" in cell["error"]
    # refused before training: the fit read no example (a trial reads train and dev through the scorer's ledger)
    assert json.loads((run / CELLS / "full-finetune" / "evidence.json").read_text())["fit_reads"] == {}
    assert not list(run.rglob(WEIGHTS_FILE)) and not (run / CELLS / "full-finetune" / "artifact").exists()
    assert json.loads((run / CELLS / "base-chat" / "cell.json").read_text())["status"] == "ok"  # the others go on


@pytest.mark.parametrize(("settings", "message"), [
    ({"max_train_memory": 0}, "max_train_memory = 0"), ({"max_train_memory": "8GB"}, "max_train_memory = '8GB'"),
    ({"init": "vocab"}, "trained weights have none of them"), ({"length": 4}, "trained weights have none of them"),
])
def test_bad_settings_are_refused_in_one_line(settings, message) -> None:
    with pytest.raises(UserError, match=re.escape(message)) as e:
        FullFinetuneSettings(**settings)
    assert "\n" not in str(e.value)


def test_a_bf16_model_trains_its_own_head_and_scores_it_fresh(lm) -> None:
    # a bf16 model's LM head is scored in float32 from a cached copy; a trained head must get gradients and be read
    # anew: the artifact's scores equal those of a second model that simply holds the trained weights
    tiny = tiny_lm("llama", lm.tokenizer, tie_word_embeddings=False)
    tiny.model.to(torch.bfloat16)
    tiny.dtype = torch.bfloat16
    task, test = _test()
    scorer = Scorer(tiny)
    base = PromptArtifact(format="raw")
    requests = [r for reqs in scorer.renderer.requests(base, test[:4]) for r in reqs]
    before = [s.gold_nll for s in scorer.score(base, test[:4], task.kind)]  # fills the cached float32 head
    with applied(tiny, FULL) as live:
        fwd = PromptForward(tiny, requests, weights=True)
        fwd.loglik(list(range(len(requests)))).sum().backward()
        head = tiny.model.get_output_embeddings().weight
        assert head.grad is not None and head.grad.abs().sum() > 0
        opt = torch.optim.Adam(list(live.values()), lr=1e-2)
        opt.step()
        trained = snapshot(live)
    tuned = [s.gold_nll for s in scorer.score(PromptArtifact(format="raw", adapter=trained, adapter_config=FULL),
                                              test[:4], task.kind)]
    assert tuned != before
    other = tiny_lm("llama", lm.tokenizer, tie_word_embeddings=False)
    other.model.to(torch.bfloat16)
    other.dtype = torch.bfloat16
    with torch.no_grad():
        for n, p in other.model.named_parameters():
            p.copy_(trained[n])
    assert [s.gold_nll for s in Scorer(other).score(base, test[:4], task.kind)] == tuned


def test_a_loaded_full_finetune_saves_again_whole_or_with_its_record_alone(run_dir, tmp_path) -> None:
    # a transfer cell copies its source's artifact: the weights file comes along, checked against its record; where
    # the file is not there (a clone), the copy keeps the record, so it says the same thing as its source
    source = run_dir / CELLS / "full-finetune" / "artifact"
    art = PromptArtifact.load(source)
    copy = art.save(tmp_path / "copy")
    assert (copy / WEIGHTS_FILE).read_bytes() == (source / WEIGHTS_FILE).read_bytes()
    assert json.loads((copy / "artifact.json").read_text()) == json.loads((source / "artifact.json").read_text())
    (copy / WEIGHTS_FILE).unlink()
    again = PromptArtifact.load(copy).save(tmp_path / "again")
    assert not (again / WEIGHTS_FILE).exists()
    assert json.loads((again / "artifact.json").read_text()) == json.loads((source / "artifact.json").read_text())
