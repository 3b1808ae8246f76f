"""Plugins: installed from their own folders, found through entry points, held to the rules by the harness."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "plugins" / "promptgap-paraphrase"
GRADIENT_EXAMPLE = ROOT / "examples" / "plugins" / "promptgap-signgrad"
BAD = Path(__file__).parent / "fixtures" / "plugins" / "badplugins"

CONFIG = """
[run]
name = "plugins"
n_boot = 200

[[tasks]]
name = "antonyms"
sizes = { train = 4, dev = 6, test = 10 }

[conditions.base-chat]
[conditions.handwritten]
format = "chat"
[conditions.paraphrase-search]
candidates = 2
[conditions.peeks-at-test]
[conditions.scores-test]
[conditions.malformed]
[conditions.raises]

[ratio]
base = "base-chat"
texts = ["handwritten", "paraphrase-search"]
"""


@pytest.fixture(scope="module")
def plugin_env(tmp_path_factory) -> dict[str, str]:
    """The example plugins and the rule-breaking fixture, pip-installed into a folder put on the path."""
    target = tmp_path_factory.mktemp("site")
    for folder in (EXAMPLE, GRADIENT_EXAMPLE, BAD):
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                        "--target", str(target), str(folder)], check=True, capture_output=True)
    path = os.pathsep.join([str(target), os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "PYTHONPATH": path, "PROMPTGAP_PROGRESS": "0", "HF_HUB_OFFLINE": "1"}


def promptgap(env: dict[str, str], *argv: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness.cli", *argv], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=900)


def test_installed_plugin_is_listed(plugin_env, tmp_path) -> None:
    out = promptgap(plugin_env, "list", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "paraphrase-search" in out.stdout and "peeks-at-test" in out.stdout and "signgrad" in out.stdout


def test_plugin_runs_in_the_matrix_and_rule_breakers_fail_alone(plugin_env, tmp_path) -> None:
    (tmp_path / "c.toml").write_text(CONFIG)
    out = promptgap(plugin_env, "run", "c.toml", "--run-id", "p", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    rows = {r["condition"]: r for r in csv.DictReader((tmp_path / "results" / "p" / "summary.csv").open())}
    assert {c for c, r in rows.items() if r["status"] == "ok"} == {"base-chat", "handwritten", "paraphrase-search",
                                                                   "scores-test"}
    # the plugin's test numbers come from the same split as the built-ins'
    assert len({rows[c]["split_hash"] for c in rows}) == 1 and rows["paraphrase-search"]["n"] == "10"

    def error(condition: str) -> str:
        cell = tmp_path / "results" / "p" / "cells" / "smollm2-135m-instruct" / "antonyms" / "seed-0" / condition
        return json.loads((cell / "cell.json").read_text())["error"]

    for condition in ("peeks-at-test", "malformed", "raises"):  # each error names the plugin and its package
        assert error(condition).startswith(f"condition {condition} ({condition}, from promptgap-badplugins 0.0.1)")
    assert "task.split is not available to a condition" in error("peeks-at-test")
    assert "soft_prompt of shape [3, 7]; model smollm2-135m-instruct needs [n, 576]" in error("malformed")
    assert "RuntimeError: the search diverged" in error("raises")

    # `promptgap status` names each failed cell with the error its cell.json records
    status = promptgap(plugin_env, "status", "results/p", cwd=tmp_path)
    assert status.returncode == 0 and "7 cells: 4 done, 0 running, 3 failed, 0 pending" in status.stdout
    failed = {line.split(" / ")[-1].split(":")[0]: line for line in status.stdout.splitlines() if "failed " in line}
    assert set(failed) == {"peeks-at-test", "malformed", "raises"}
    assert "RuntimeError: the search diverged" in failed["raises"]

    # a plugin that scores the test split while fitting runs to the end, but the audit catches it, by name
    assert rows["scores-test"]["status"] == "ok"
    check = promptgap(plugin_env, "check", "results/p", cwd=tmp_path)
    assert check.returncode == 1, check.stdout
    assert "FAIL No test example was read while fitting" in check.stdout
    assert "seed 0 / scores-test: read 10 test example(s) while fitting" in check.stdout
    assert sum("while fitting, e.g." in line for line in check.stdout.splitlines()) == 1  # that cell alone

    report = (tmp_path / "reports" / "p.md").read_text()
    assert "**The validity audit fails** (No test example was read while fitting)" in report
    assert "| paraphrase-search (text) |" in report
    tried = json.loads((tmp_path / "results" / "p" / "cells" / "smollm2-135m-instruct" / "antonyms" / "seed-0" /
                        "paraphrase-search" / "artifact" / "artifact.json").read_text())["meta"]["tried"]
    assert len(tried) == 2 and min(tried, key=lambda t: t["dev_gold_nll"])["instruction"] in report


GRADIENT_CONFIG = """
[run]
name = "gradient-plugin"
n_boot = 200

[[tasks]]
name = "antonyms"
sizes = { train = 16, dev = 8, test = 40 }

[conditions.base-chat]
[conditions.soft-prompt]
lr = 0.03
steps = 6
batch_size = 8
eval_every = 3
[conditions.signgrad]
length = 4
init = "text"
steps = 6
batch_size = 8
eval_every = 3

[ratio]
base = "base-chat"
texts = ["signgrad"]
ceiling = "soft-prompt"
"""


def test_the_gradient_example_is_small_uses_the_facade_and_has_its_r_in_the_report(plugin_env, tmp_path) -> None:
    """The search kit's example: at most 60 lines on harness.api alone (test_layers checks the imports), installed,
    run in a matrix against a soft-prompt ceiling, its R in the report's headline."""
    assert len((GRADIENT_EXAMPLE / "promptgap_signgrad.py").read_text().splitlines()) <= 60
    (tmp_path / "c.toml").write_text(GRADIENT_CONFIG)
    out = promptgap(plugin_env, "run", "c.toml", "--run-id", "g", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    rows = {r["condition"]: r for r in csv.DictReader((tmp_path / "results" / "g" / "summary.csv").open())}
    assert {c for c, r in rows.items() if r["status"] == "ok"} == {"base-chat", "soft-prompt", "signgrad"}
    cell = tmp_path / "results" / "g" / "cells" / "smollm2-135m-instruct" / "antonyms" / "seed-0" / "signgrad"
    art = json.loads((cell / "artifact" / "artifact.json").read_text())
    log = json.loads((cell / "log.json").read_text())
    assert art["meta"]["round_trip"] and art["meta"]["stopped"] == "steps"
    # the kit's log: every step's train loss, every evaluation's per-example dev losses (steps 0, 3, 6)
    assert [p["step"] for p in log["curves"] if "dev_losses" in p] == [0, 3, 6]
    assert all(len(p["dev_losses"]) == 8 for p in log["curves"] if "dev_losses" in p)
    assert sorted({p["step"] for p in log["curves"] if p["train_loss"] is not None}) == list(range(1, 7))
    report = (tmp_path / "reports" / "g.md").read_text()
    row = next(line for line in report.splitlines() if line.startswith("| signgrad |"))
    assert re.match(r"\| signgrad \| -?\d+\.\d{3} \[-?\d+\.\d{3}, -?\d+\.\d{3}\]", row), row


@pytest.fixture(scope="module")
def broken_plugin_env(tmp_path_factory) -> dict[str, str]:
    """A package whose entry point raises at import (a missing dependency, say), registered the way pip registers
    one: a dist-info folder with entry_points.txt on the path."""
    site = tmp_path_factory.mktemp("broken-site")
    (site / "explodes_plugin.py").write_text('raise RuntimeError("needs the frobnicate library")\n')
    info = site / "promptgap_explodes-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: promptgap-explodes\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[promptgap.optimizers]\nexplodes = explodes_plugin:Explodes\n")
    path = os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "PYTHONPATH": path, "PROMPTGAP_PROGRESS": "0", "HF_HUB_OFFLINE": "1"}


def one_line_naming_the_plugin(stderr: str) -> None:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    for part in ("explodes", "explodes_plugin:Explodes", "promptgap-explodes 0.1", "RuntimeError",
                 "needs the frobnicate library"):
        assert part in lines[0], lines[0]


def test_plugin_raising_at_import_is_named_and_list_goes_on(broken_plugin_env, tmp_path) -> None:
    out = promptgap(broken_plugin_env, "list", cwd=tmp_path)
    assert out.returncode == 2, out.stderr  # the rest is listed, and the broken plugin is an error
    one_line_naming_the_plugin(out.stderr)
    listed = {line.split("│")[1].strip() for line in out.stdout.splitlines() if line.count("│") >= 3}
    assert {"explodes", "base-raw", "handwritten", "antonyms"} <= listed
    assert "BROKEN" in next(line for line in out.stdout.splitlines() if "explodes" in line)

    out = promptgap(broken_plugin_env, "eval", "--task", "antonyms", "--condition", "explodes", "--out", "o.jsonl",
                    cwd=tmp_path)
    assert out.returncode == 2
    one_line_naming_the_plugin(out.stderr)
    assert not (tmp_path / "o.jsonl").exists()

    (tmp_path / "c.toml").write_text('[[tasks]]\nname = "antonyms"\n[conditions.explodes]\n')
    out = promptgap(broken_plugin_env, "run", "c.toml", "--run-id", "b", cwd=tmp_path)
    assert out.returncode == 2
    one_line_naming_the_plugin(out.stderr)
    assert not (tmp_path / "results" / "b").exists()


# --- conditions say what they are: a plugin is held to the checks a built-in of its kind gets -------------------------
ROLES_PLUGIN = '''
from dataclasses import dataclass

import torch

from harness.artifact import PromptArtifact
from harness.optimizer import FitContext, Optimizer, Settings, Variant


@dataclass
class VectorSettings(Settings):
    in_marker: bool = False  # the vectors replace the task's marker word (its own name: nothing to guess from)


class TrainsVectors(Optimizer):
    name = "trains-vectors"
    summary = "input-embedding vectors, declared as such"
    settings_class = VectorSettings
    produces = frozenset({"soft"})

    def needs_marker(self) -> bool:
        return self.settings.in_marker

    def fit(self, ctx: FitContext) -> PromptArtifact:
        width = ctx.lm.model.get_input_embeddings().embedding_dim
        return PromptArtifact(soft_prompt=torch.zeros(2, width), condition=self.name)


class Undeclared(TrainsVectors):
    name = "undeclared-vectors"
    summary = "input-embedding vectors, not declared: the default says text and demos"
    produces = frozenset({"text", "demos"})


class SaysSoft(Optimizer):
    name = "says-soft"
    summary = "declares produces as a word, not a set"
    produces = "soft"

    def fit(self, ctx: FitContext) -> PromptArtifact:
        return PromptArtifact()


class Reworded(Optimizer):
    name = "reworded"
    summary = "the task's instruction; two rewordings scored in cells of their own"
    produces = frozenset({"text"})

    def variants(self) -> list[Variant]:
        return [Variant("handwritten", {"instruction": "Opposite:"}),
                Variant("handwritten", {"instruction": "Antonym:"})]

    def fit(self, ctx: FitContext) -> PromptArtifact:
        return PromptArtifact(instruction=ctx.task.instruction, condition=self.name)


class RewordedBadly(Reworded):
    name = "reworded-badly"
    summary = "a variant whose settings its condition would refuse"

    def variants(self) -> list[Variant]:
        return [Variant("handwritten", {"instruction": " "})]
'''
CLASSES = {"trains-vectors": "TrainsVectors", "undeclared-vectors": "Undeclared", "says-soft": "SaysSoft",
           "reworded": "Reworded", "reworded-badly": "RewordedBadly"}
LM_EVAL = ROOT / "tests" / "fixtures" / "lm_eval"


@pytest.fixture(scope="module")
def roles_plugin(tmp_path_factory):
    """The plugins above, registered in this process the way pip registers a package: a module and a dist-info
    folder with entry_points.txt on the path."""
    site = tmp_path_factory.mktemp("roles-site")
    (site / "roles_plugin.py").write_text(ROLES_PLUGIN)
    info = site / "promptgap_roles-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: promptgap-roles\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[promptgap.optimizers]\n" + "".join(
        f"{name} = roles_plugin:{cls}\n" for name, cls in CLASSES.items()))
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(site))
        yield site
    sys.modules.pop("roles_plugin", None)


def roles_config(tmp_path: Path, conditions: str, transfer: str, models: str = '"smollm2-135m-instruct"') -> Path:
    path = tmp_path / "c.toml"
    path.write_text(f'[run]\nmodels = [{models}]\n\n[[tasks]]\nname = "antonyms"\n\n[[tasks]]\nname = "antonyms"\n'
                    f'as = "antonyms-b"\n\n[conditions.handwritten]\n{conditions}\n[transfer]\n{transfer}\n')
    return path


@pytest.mark.parametrize("condition", ["soft-prompt", "trains-vectors"])
def test_a_plugin_that_trains_tensors_stays_on_its_model_as_the_soft_prompt_does(roles_plugin, tmp_path,
                                                                                 condition) -> None:
    from harness.config import load_config

    path = roles_config(tmp_path, f"[conditions.{condition}]\n",
                        f'models = true\nconditions = ["handwritten", "{condition}"]',
                        models='"smollm2-135m-instruct", "another-model"')
    plan = load_config(path).transfer
    assert plan is not None and plan.conditions == ["handwritten", condition]
    assert plan.across_models == ["handwritten"]  # the tensors are trained for one model: only text crosses


@pytest.mark.parametrize(("condition", "marker", "no_marker"), [
    ("soft-prompt", 'placement = "marker"', 'placement = "before_input"'),
    ("trains-vectors", "in_marker = true", "in_marker = false")])
def test_a_plugin_that_replaces_the_marker_transfers_only_where_the_marker_is(roles_plugin, tmp_path, monkeypatch,
                                                                              condition, marker, no_marker) -> None:
    from harness.config import load_config
    from harness.errors import UserError

    monkeypatch.chdir(LM_EVAL)  # the fixture YAML's data path is relative, as lm-eval resolves it
    path = tmp_path / "c.toml"
    path.write_text(f'[run]\nmodels = ["smollm2-135m-instruct"]\n\n[[tasks]]\nname = "antonyms"\n\n[[tasks]]\n'
                    f'name = "lm-eval:pgfx_antonyms"\nas = "antonyms-b"\nlm_eval_include = "{LM_EVAL}"\n\n'
                    f'[conditions.{condition}]\n{marker}\n\n[transfer]\n'
                    f'tasks = {{ antonyms = ["antonyms-b"] }}\n')
    with pytest.raises(UserError) as e:
        load_config(path)
    assert f"{condition} puts its soft prompt in place of the marker 'antonyms' of antonyms, but antonyms-b has no " \
           f"marker" in str(e.value) and "\n" not in str(e.value), str(e.value)
    # the same condition without the marker has none to miss
    path.write_text(path.read_text().replace(marker, no_marker))
    assert load_config(path).transfer.conditions == [condition]


def test_a_plugins_variants_are_conditions_of_their_own(roles_plugin, tmp_path) -> None:
    from harness.config import load_config
    from harness.errors import UserError

    cfg = load_config(roles_config(tmp_path, "[conditions.reworded]\n", 'tasks = { antonyms = ["antonyms-b"] }'))
    assert {c: (s.optimizer, s.settings, s.variant_of) for c, s in cfg.conditions.items() if c != "handwritten"} == {
        "reworded": ("reworded", {}, None), "reworded.0": ("handwritten", {"instruction": "Opposite:"}, "reworded"),
        "reworded.1": ("handwritten", {"instruction": "Antonym:"}, "reworded")}
    assert cfg.transfer.conditions == ["handwritten", "reworded"]  # variants are not transferred by default

    with pytest.raises(UserError) as e:  # each variant's settings are checked as its own condition's would be
        load_config(roles_config(tmp_path, "[conditions.reworded-badly]\n", 'tasks = { antonyms = ["antonyms-b"] }'))
    assert "condition reworded-badly: variant reworded-badly.0: condition handwritten: the instruction is empty" \
        in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_a_declaration_that_is_not_a_set_of_products_fails_in_one_line(roles_plugin, tmp_path) -> None:
    from harness.config import load_config
    from harness.errors import UserError

    with pytest.raises(UserError) as e:
        load_config(roles_config(tmp_path, "[conditions.says-soft]\n", 'tasks = { antonyms = ["antonyms-b"] }'))
    assert "condition says-soft: produces = 'soft'; declare a set of text, demos, soft, prefix" in str(e.value)
    assert "\n" not in str(e.value)


def test_an_artifact_that_does_not_match_its_declaration_fails_in_one_line_naming_it(roles_plugin, lm,
                                                                                   scorer) -> None:
    from harness.errors import UserError
    from harness.optimizer import fit_condition
    from harness.registry import get_optimizer, get_task

    task = get_task("antonyms")
    fit = fit_condition(get_optimizer("trains-vectors")(), lm, task, (), (), scorer, 0)
    assert fit.artifact.parts == {"soft"}
    with pytest.raises(UserError) as e:
        fit_condition(get_optimizer("undeclared-vectors")(), lm, task, (), (), scorer, 0,
                      owner="condition undeclared-vectors (undeclared-vectors, from promptgap-roles 0.1)")
    assert str(e.value) == ("condition undeclared-vectors (undeclared-vectors, from promptgap-roles 0.1) returned a "
                            "soft_prompt but declares produces = text, demos; add 'soft' to its produces (a run then "
                            "checks its config as such) or return what it declares")
