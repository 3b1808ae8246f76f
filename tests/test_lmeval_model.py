"""promptgap's prompts inside lm-eval (``PromptgapLM``, ``promptgap lm-eval``) and the lm-eval command lines.

References, all lm-eval's own: its HFLM on the same weights for an empty artifact, its HFLM with ``peft=`` for an
exported start-placement soft prompt and an exported LoRA adapter, and promptgap's own ``eval`` scores of a
trained artifact.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from harness.artifact import PromptArtifact
from harness.cli import main
from harness.errors import UserError
from harness.lm_eval_lm import PromptgapLM
from harness.parity import ReferenceResult, hf_model, run_lm_eval
from harness.peft_export import export_peft
from harness.registry import get_task
from tasks.lm_eval_task import task_manager

FIXTURES = Path(__file__).parent / "fixtures" / "lm_eval"
TOL = 1e-4


@pytest.fixture(autouse=True)
def in_fixture_folder(monkeypatch) -> None:
    monkeypatch.chdir(FIXTURES)  # the fixture YAMLs' data paths are relative, as lm-eval resolves them


@pytest.fixture(scope="module")
def hflm(lm):
    return hf_model(lm)


def tm():
    return task_manager((FIXTURES,), defaults=False)


def same_requests(a: ReferenceResult, b: ReferenceResult) -> float:
    """The largest per-request difference; documents, greedy flags, acc and acc_norm must agree exactly."""
    assert a.doc_ids == b.doc_ids and len(a.lls) > 0
    assert a.greedy == b.greedy and a.acc == b.acc and a.acc_norm == b.acc_norm
    return max(abs(x - y) for u, v in zip(a.lls, b.lls, strict=True) for x, y in zip(u, v, strict=True))


def exported_in_lm_eval(lm, art: PromptArtifact, tmp_path: Path) -> tuple[ReferenceResult, ReferenceResult]:
    """``art`` on pgfx_capitals (chat template when it is a chat artifact) through PromptgapLM, and through lm-eval's
    own hf model with ``peft=`` its export-peft folder and ``pretrained=`` the cached weights: (ours, theirs)."""
    from lm_eval.models.huggingface import HFLM

    from harness.models import embedded_folder

    adapter = export_peft(art, lm.name, tmp_path / "adapter")
    peft_lm = HFLM(pretrained=str(embedded_folder()), peft=str(adapter), dtype="float32", batch_size=32, device="cpu")
    chat = art.format == "chat"
    theirs = run_lm_eval(peft_lm, ["pgfx_capitals"], tm(), chat=chat).reference("pgfx_capitals")
    ours = run_lm_eval(PromptgapLM(art, lm=lm), ["pgfx_capitals"], tm(), chat=chat).reference("pgfx_capitals")
    return ours, theirs


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize(("name", "chat"), [("pgfx_capitals_described", False), ("pgfx_capitals_described", True),
                                            ("pgfx_blanks", False), ("pgfx_blanks", True), ("pgfx_antonyms", False)])
def test_an_empty_artifact_equals_lm_evals_hf_model(lm, hflm, name, chat) -> None:
    ours = run_lm_eval(PromptgapLM(lm=lm), [name], tm(), chat=chat).reference(name)
    theirs = run_lm_eval(hflm, [name], tm(), chat=chat).reference(name)
    assert same_requests(ours, theirs) < TOL


def test_registered_as_lm_eval_model_promptgap(lm, tmp_path) -> None:
    from lm_eval.api.registry import get_model

    assert get_model("promptgap") is PromptgapLM
    PromptArtifact(instruction="Answer.", condition="handwritten").save(tmp_path / "art")
    model = get_model("promptgap").create_from_arg_obj({"artifact": str(tmp_path / "art"), "lm": lm},
                                                       {"batch_size": 8, "device": None})
    assert model.artifact.instruction == "Answer." and model.scorer.batch_size == 8


def test_lm_eval_command_with_an_empty_artifact_writes_lm_evals_results(capsys, hflm, tmp_path) -> None:
    PromptArtifact().save(tmp_path / "empty")
    out = tmp_path / "results.json"
    code, printed, _ = run_cli(capsys, "lm-eval", str(tmp_path / "empty"), "--tasks", "pgfx_suite", "--include",
                               str(FIXTURES), "--num-fewshot", "0", "--output", str(out), "--log-samples")
    assert code == 0 and "|pgfx_suite" in printed and "acc_norm" in printed
    results = json.loads(out.read_text())
    theirs = run_lm_eval(hflm, ["pgfx_suite"], tm())
    for name in ("pgfx_capitals", "pgfx_blanks", "pgfx_antonyms"):
        assert results["results"][name]["acc,none"] == theirs.results["results"][name]["acc,none"]
        ours = sorted(results["samples"][name], key=lambda s: s["doc_id"])
        ref = theirs.reference(name)
        assert [s["doc_id"] for s in ours] == ref.doc_ids
        lls = [[r[0][0] for r in s["resps"]] for s in ours]
        assert max(abs(x - y) for u, v in zip(lls, ref.lls, strict=True) for x, y in zip(u, v, strict=True)) < TOL


@pytest.mark.parametrize("fmt", ["raw", "chat"])
def test_exported_soft_prompt_in_lm_evals_hf_model_with_peft(lm, scorer, tmp_path, fmt) -> None:
    """export-peft, then lm-eval's own hf model with peft= and pretrained= the cached weights: the same numbers as
    PromptgapLM with the artifact, and as promptgap's own scorer on the lm-eval:NAME task."""
    soft = torch.randn(4, 576, generator=torch.Generator().manual_seed(5)) * 0.1
    art = PromptArtifact(format=fmt, placement="start", soft_prompt=soft, condition="soft-prompt")
    ours, theirs = exported_in_lm_eval(lm, art, tmp_path)
    assert same_requests(ours, theirs) < TOL
    task = get_task("lm-eval:pgfx_capitals", lm_eval_include=FIXTURES)
    direct = scorer.score(art, task.all_examples(), task.kind)
    assert max(abs(a - b) for s, r in zip(direct, ours.lls, strict=True)
               for a, b in zip(s.choice_loglik, r, strict=True)) < TOL
    assert [float(s.correct_norm) for s in direct] == ours.acc_norm


def test_trained_soft_prompt_in_lm_eval_reproduces_promptgaps_test_scores(capsys, tmp_path) -> None:
    art_dir, scores = tmp_path / "artifact", tmp_path / "test.jsonl"
    code, printed, _ = run_cli(capsys, "eval", "--task", "lm-eval:pgfx_capitals", "--lm-eval-include", str(FIXTURES),
                               "--condition", "soft-prompt", "--set", "steps=4", "--set", "batch_size=4",
                               "--set", "eval_every=2", "--set", "lr=0.01", "--artifact-out", str(art_dir),
                               "--out", str(scores))
    assert code == 0 and "acc_norm:" in printed
    artifact = PromptArtifact.load(art_dir)
    assert artifact.n_soft > 0 and artifact.format == "chat" and artifact.placement == "before_input"
    results = tmp_path / "lm_eval.json"
    code, _, _ = run_cli(capsys, "lm-eval", str(art_dir), "--tasks", "pgfx_capitals", "--include", str(FIXTURES),
                         "--apply-chat-template", "--num-fewshot", "0", "--output", str(results), "--log-samples")
    assert code == 0
    samples = {f"validation:{s['doc_id']}": s for s in json.loads(results.read_text())["samples"]["pgfx_capitals"]}
    rows = [json.loads(line) for line in scores.read_text().splitlines()]
    assert len(rows) == 13  # the test split: validation less the 3 dev documents
    for row in rows:
        s = samples[row["example_id"]]
        assert max(abs(a - r[0][0]) for a, r in zip(row["choice_loglik"], s["resps"], strict=True)) < TOL
        assert row["correct"] == bool(s["acc"]) and row["correct_norm"] == bool(s["acc_norm"])


@pytest.mark.parametrize(("argv", "needle"), [
    (["--tasks", "nosuch_task"], "unknown lm-eval task 'nosuch_task'"),
    (["--tasks", "pgfx_arith"], "output_type generate_until"),
    (["--tasks", "pgfx_capitals", "--include", "/nonexistent/tasks"], "does not exist"),
    (["--tasks", "pgfx_capitals", "--limit", "0"], "--limit 0"),
])
def test_lm_eval_command_bad_input(capsys, tmp_path, argv, needle) -> None:
    PromptArtifact().save(tmp_path / "empty")
    argv = argv if "--include" in argv else [*argv, "--include", str(FIXTURES)]
    out = tmp_path / "out" / "r.json"
    code, _, err = run_cli(capsys, "lm-eval", str(tmp_path / "empty"), *argv, "--output", str(out))
    assert code == 2 and err.count("\n") == 1 and err.startswith("promptgap: error: ") and needle in err
    assert not out.parent.exists()


def test_a_chat_artifact_needs_the_chat_template(capsys, lm, tmp_path) -> None:
    PromptArtifact(format="chat", instruction="Answer.").save(tmp_path / "chat")
    code, _, err = run_cli(capsys, "lm-eval", str(tmp_path / "chat"), "--tasks", "pgfx_capitals", "--include",
                           str(FIXTURES))
    assert code == 2 and "add --apply-chat-template" in err and err.count("\n") == 1
    model = PromptgapLM(PromptArtifact(format="chat", instruction="Answer."), lm=lm)  # lm-eval's Python API
    with pytest.raises(UserError, match="run lm-eval with apply_chat_template"):
        run_lm_eval(model, ["pgfx_capitals"], tm(), chat=False, limit=2)


@pytest.mark.parametrize(("task", "needle"), [
    ("lm-eval:nosuch_task", "unknown lm-eval task"),
    ("lm-eval:pgfx_unlabelled", "no split with labels"),
])
def test_eval_bad_lm_eval_tasks(capsys, tmp_path, task, needle) -> None:
    out = tmp_path / "o.jsonl"
    code, _, err = run_cli(capsys, "eval", "--task", task, "--lm-eval-include", str(FIXTURES), "--condition",
                           "base-raw", "--out", str(out))
    assert code == 2 and err.count("\n") == 1 and needle in err
    assert not list(tmp_path.iterdir())


def test_eval_missing_include_folder(capsys, tmp_path) -> None:
    code, _, err = run_cli(capsys, "eval", "--task", "lm-eval:pgfx_capitals", "--lm-eval-include",
                           str(tmp_path / "nowhere"), "--condition", "base-raw", "--out", str(tmp_path / "o.jsonl"))
    assert code == 2 and "does not exist" in err and not list(tmp_path.iterdir())


def test_eval_of_a_group_scores_every_subtask(capsys, tmp_path) -> None:
    out = tmp_path / "g.jsonl"
    code, printed, _ = run_cli(capsys, "eval", "--task", "lm-eval:pgfx_suite", "--lm-eval-include", str(FIXTURES),
                               "--condition", "base-raw", "--split", "all", "--out", str(out))
    assert code == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [sum(r["task"] == f"lm-eval:{n}" for r in rows) for n in ("pgfx_capitals", "pgfx_blanks", "pgfx_antonyms")] \
        == [16, 12, 12]
    assert printed.count("accuracy:") == 2 and printed.count("acc_norm:") == 1 and "greedy exact match:" in printed


@pytest.mark.parametrize("fmt", ["raw", "chat"])
def test_exported_lora_adapter_in_lm_evals_hf_model_with_peft(lm, tmp_path, fmt) -> None:
    """A LoRA artifact through export-peft into lm-eval's own hf model with peft=: the same numbers as PromptgapLM
    scoring the artifact, whose adapter the scorer puts into the model for the call."""
    from harness.adapters import applied, snapshot

    config = {"r": 4, "lora_alpha": 8, "lora_dropout": 0.0, "target_modules": ["q_proj", "v_proj", "down_proj"]}
    with applied(lm, config) as live:
        weights = snapshot(live)
    gen = torch.Generator().manual_seed(7)
    weights = {k: t + 0.02 * torch.randn(t.shape, generator=gen) if "lora_B" in k else t for k, t in weights.items()}
    art = PromptArtifact(format=fmt, adapter=weights, adapter_config=config, condition="lora")
    ours, theirs = exported_in_lm_eval(lm, art, tmp_path)
    assert same_requests(ours, theirs) < TOL
    base = run_lm_eval(PromptgapLM(PromptArtifact(format=fmt), lm=lm), ["pgfx_capitals"], tm(), chat=fmt == "chat")
    moved = [abs(x - y) for u, v in zip(base.reference("pgfx_capitals").lls, theirs.lls, strict=True)
             for x, y in zip(u, v, strict=True)]
    # every request moved by more than the tolerance: the agreement above could not come from the base model's numbers
    assert min(moved) > TOL and max(moved) > 100 * TOL


@pytest.mark.parametrize("chat", [False, True])
def test_a_generate_until_task_is_scored_by_its_gold_answers_log_likelihood_as_lm_eval_reads_it(lm, scorer, hflm,
                                                                                              chat) -> None:
    # lm-eval's own loglikelihood of the whole gold answer (the worked solution and its "#### n") after the task's
    # context: raw, the target delimiter between them; chat, the context as the user turn and the answer right after
    # the assistant header (lm-eval's rule for a continuation); the same numbers within TOL, the same greedy flags
    from lm_eval.api.instance import Instance

    task = get_task("lm-eval:pgfx_arith", lm_eval_include=FIXTURES)
    assert task.kind == "continuation" and task.generation_kwargs["until"] == ["Question:", "\n\n"]
    examples = task.all_examples()
    assert len(examples) == 24 and examples[0].continuations[0].endswith("#### 9") and examples[0].delimiter == " "
    ours = scorer.score(PromptArtifact(format="chat" if chat else "raw"), examples, task.kind)
    contexts = [e.contexts[0] for e in examples]
    if chat:
        contexts = [hflm.apply_chat_template([{"role": "user", "content": c}]) for c in contexts]
    requests = [Instance("loglikelihood", {}, (c, ("" if chat else " ") + e.continuations[0]), i)
                for i, (c, e) in enumerate(zip(contexts, examples, strict=True))]
    theirs = hflm.loglikelihood(requests)
    assert max(abs(o.choice_loglik[0] - ll) for o, (ll, _) in zip(ours, theirs, strict=True)) < TOL
    assert [o.choice_greedy[0] for o in ours] == [g for _, g in theirs]
