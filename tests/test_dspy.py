"""The DSPy conditions: the bridge sees what the scorer gives, one seed gives one artifact, bad input fails early."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.artifact import PromptArtifact
from harness.config import load_config
from harness.errors import UserError
from harness.optimizer import FitContext, TaskInfo
from harness.registry import get_optimizer, get_task
from harness.task import SplitSizes

ROOT = Path(__file__).resolve().parents[1]
# tiny budgets: what is tested is the plumbing, not the quality of the search
MIPRO_TINY = {"num_candidates": 2, "num_trials": 2, "max_bootstrapped_demos": 1, "max_labeled_demos": 1,
              "proposer_max_tokens": 12}


def fit_ctx(lm, scorer, task, sizes: SplitSizes, workdir: Path, seed: int = 0) -> FitContext:
    split = task.split(seed, sizes)
    return FitContext(lm=lm, task=TaskInfo.of(task), train=split.train, dev=split.dev, scorer=scorer, seed=seed,
                      workdir=workdir)


def replay_on_dev(ctx: FitContext, condition: str, workdir: Path) -> list[float]:
    """The saved DSPy program, reloaded and run by DSPy's own Evaluate over dev: its per-example metric."""
    import dspy

    from optimizers import dspy_bridge as bridge

    fmt = PromptArtifact.load(workdir / "artifact").format
    program = bridge.ScoredProgram(bridge.ScoreBook(ctx, fmt, condition, lambda c: None))
    program.load(str(workdir / bridge.PROGRAM_FILE))
    devset = [bridge.to_dspy(e) for e in ctx.dev]
    result = dspy.Evaluate(devset=devset, metric=bridge.metric, num_threads=1, max_errors=1)(program)
    return [score for _, _, score in result.results]


def check_invariant(ctx: FitContext, condition: str, artifact: PromptArtifact, workdir: Path) -> None:
    """What DSPy saw for the saved program equals what Scorer.score gives for the saved artifact."""
    artifact.save(workdir / "artifact")
    reloaded = PromptArtifact.load(workdir / "artifact")
    direct = ctx.scorer.score(reloaded, ctx.dev, ctx.task.kind)
    seen = replay_on_dev(ctx, condition, workdir)
    if ctx.task.kind == "continuation":
        expected = [-s.gold_nll for s in direct]
    else:
        expected = [float(s.correct) for s in direct]
    assert seen == pytest.approx(expected, abs=1e-4)
    assert artifact.meta["dev_score"] == pytest.approx(sum(expected) / len(expected), abs=1e-4)


def test_fewshot_bridge_equals_scorer_on_winogrande(lm, scorer, shared_data, tmp_path) -> None:
    task = get_task("winogrande", data_dir=shared_data / "winogrande")
    ctx = fit_ctx(lm, scorer, task, SplitSizes(train=12, dev=8, test=1), tmp_path)
    opt = get_optimizer("dspy-fewshot")(num_candidates=1, max_bootstrapped_demos=2, max_labeled_demos=2)
    artifact = opt.fit(ctx)
    assert artifact.instruction == ""  # DSPy's stand-in text for "no instruction" never reaches the prompt
    train_text = {e.solved_text(): e.id for e in ctx.train}
    assert all(d in train_text for d in artifact.demos)  # demos are solved train examples, never dev
    assert [train_text[d] for d in artifact.demos] == artifact.meta["demo_ids"]
    log = ctx.reported_log
    assert len(log["candidates"]) >= 2  # at least no demos and labeled demos
    assert ctx.reported_selection["ids"] == [e.id for e in ctx.dev]  # every candidate was compared on all of dev
    assert artifact.meta["dev_score"] == max(c["dev_score"] for c in log["candidates"])
    check_invariant(ctx, "dspy-fewshot", artifact, tmp_path)


def test_mipro_is_deterministic_and_equals_scorer_on_antonyms(lm, scorer, tmp_path) -> None:
    task = get_task("antonyms")
    sizes = SplitSizes(train=6, dev=5, test=1)
    first = get_optimizer("dspy-mipro")(**MIPRO_TINY).fit(fit_ctx(lm, scorer, task, sizes, tmp_path / "a"))
    ctx = fit_ctx(lm, scorer, task, sizes, tmp_path / "b")
    second = get_optimizer("dspy-mipro")(**MIPRO_TINY).fit(ctx)
    assert first == second  # instruction, demos and meta (every proposal and dev score)
    proposals = first.meta["proposals"]
    assert proposals[0]["instruction"] == task.instruction  # MIPROv2 keeps the starting instruction as candidate 0
    assert len(proposals) >= 2
    log = ctx.reported_log
    gens = log["proposer_generations"]
    assert gens and all(g["seed"] is not None for g in gens if g["temperature"])
    # the proposer's cost is what the local engine generated, every call counted once (MIPROv2 asks a copy of the
    # LM, whose usage DSPy's tracker must still see)
    used = log["proposer_usage"]
    assert used["where"] == "local" and used["calls"] == len(gens)
    assert (used["prompt_tokens"], used["completion_tokens"]) == (sum(g["prompt_tokens"] for g in gens),
                                                                  sum(g["completion_tokens"] for g in gens))
    check_invariant(ctx, "dspy-mipro", second, tmp_path / "b")


def test_copro_runs_and_keeps_its_proposals(lm, scorer, shared_data, tmp_path) -> None:
    task = get_task("winogrande", data_dir=shared_data / "winogrande")
    ctx = fit_ctx(lm, scorer, task, SplitSizes(train=2, dev=6, test=1), tmp_path)
    artifact = get_optimizer("dspy-copro")(breadth=2, depth=1, proposer_max_tokens=12).fit(ctx)
    assert artifact.demos == []
    texts = [p["instruction"] for p in artifact.meta["proposals"]]
    assert artifact.instruction in texts and task.instruction in texts
    check_invariant(ctx, "dspy-copro", artifact, tmp_path)


@pytest.mark.parametrize(("condition", "settings", "needle"), [
    ("dspy-fewshot", {"dspy_optimizer": "gepa"}, "dspy_optimizer 'gepa' is unknown"),
    ("dspy-fewshot", {"num_candidates": 0}, "num_candidates = 0"),
    ("dspy-fewshot", {"max_bootstrapped_demos": 0, "max_labeled_demos": 0}, "both 0"),
    ("dspy-mipro", {"num_trials": 0}, "num_trials = 0"),
    ("dspy-mipro", {"num_candidates": "3"}, "num_candidates = '3'"),
    ("dspy-copro", {"breadth": 1}, "breadth = 1"),
    ("dspy-copro", {"depth": 0}, "depth = 0"),
    ("dspy-copro", {"max_labeled_demos": 2}, "instruction only"),
    ("dspy-mipro", {"proposer": ""}, "proposer is empty"),
    ("dspy-copro", {"proposer_api_base": "http://127.0.0.1:8000/v1"}, "for a served proposer; name it"),
    ("dspy-gepa", {"proposer": "openai/m", "proposer_api_base": "127.0.0.1:8000"}, "give the server's base URL"),
    ("dspy-mipro", {"proposer": "openai/m", "proposer_api_key_env": "sk-abc123"}, "never the key itself"),
    ("dspy-gepa", {"proposer": "openai/m", "proposer_api_base": 8000}, "proposer_api_base = 8000; give a value"),
])
def test_bad_settings_fail_at_parse_time(condition, settings, needle) -> None:
    with pytest.raises(UserError, match=needle.replace("(", r"\(")):
        get_optimizer(condition)(**settings)


def test_bad_budget_in_a_config_fails_before_any_model(tmp_path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('[[tasks]]\nname = "antonyms"\n[conditions.dspy-mipro]\nnum_trials = 0\n')
    with pytest.raises(UserError, match="num_trials = 0"):
        load_config(cfg)


def test_more_demos_than_train_examples(lm, scorer, tmp_path) -> None:
    ctx = fit_ctx(lm, scorer, get_task("antonyms"), SplitSizes(train=2, dev=2, test=1), tmp_path)
    with pytest.raises(UserError, match="3 demos asked for but train has only 2"):
        get_optimizer("dspy-fewshot")(max_labeled_demos=3).fit(ctx)
    assert not any(tmp_path.iterdir())  # nothing half-written


def test_unreachable_proposer_fails_before_the_search(lm, scorer, tmp_path, monkeypatch) -> None:
    # a closed local port: the call fails at once, with no network needed
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")
    monkeypatch.setenv("OPENAI_API_BASE", "http://127.0.0.1:9/v1")
    ctx = fit_ctx(lm, scorer, get_task("antonyms"), SplitSizes(train=4, dev=3, test=1), tmp_path)
    t0 = time.perf_counter()
    with pytest.raises(UserError, match="proposer 'openai/gpt-4o-mini' could not be reached"):
        get_optimizer("dspy-copro")(proposer="openai/gpt-4o-mini", proposer_timeout=10).fit(ctx)
    assert time.perf_counter() - t0 < 60
    assert ctx.reported_log is None


def test_import_is_lazy_and_offline(tmp_path) -> None:
    """`promptgap list` never imports dspy; importing the bridge offline returns quickly and caches nothing under ~."""
    env = {**os.environ, "HOME": str(tmp_path), "HF_HUB_OFFLINE": "1", "HTTPS_PROXY": "http://127.0.0.1:9",
           "HTTP_PROXY": "http://127.0.0.1:9", "NO_PROXY": ""}
    env.pop("DSPY_CACHEDIR", None)
    code = ("import sys; from harness.registry import names, get_optimizer\n"
            "[get_optimizer(n) for n in names('promptgap.optimizers')]\n"
            "assert 'dspy' not in sys.modules, 'listing conditions imported dspy'\n"
            "import os, optimizers.dspy_bridge\n"
            "print(os.environ['DSPY_CACHEDIR'])\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    cache_dir = out.stdout.strip().splitlines()[-1]
    assert not cache_dir.startswith(str(tmp_path)) and not (tmp_path / ".dspy_cache").exists()


def test_lenient_adapter_keeps_raw_text_and_parses_good_output() -> None:
    import dspy

    from optimizers.dspy_bridge import LenientAdapter

    sig = dspy.Signature("basic_instruction -> proposed_instruction, proposed_prefix_for_output_field")
    adapter = LenientAdapter()
    junk = "Sure! Here is a better instruction:\nName the opposite word."
    assert adapter.parse(sig, junk) == {"proposed_instruction": junk, "proposed_prefix_for_output_field": ""}
    half = "[[ ## proposed_prefix_for_output_field ## ]]\nAnswer:\nnot a field header"
    assert adapter.parse(sig, half) == {"proposed_prefix_for_output_field": "Answer:\nnot a field header",
                                        "proposed_instruction": ""}
    good = "[[ ## proposed_instruction ## ]]\nBe brief.\n\n[[ ## proposed_prefix_for_output_field ## ]]\nAnswer:"
    assert adapter.parse(sig, good) == {"proposed_instruction": "Be brief.",
                                        "proposed_prefix_for_output_field": "Answer:"}
