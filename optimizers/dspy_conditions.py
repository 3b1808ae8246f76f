"""The DSPy conditions (dspy-fewshot, dspy-copro, dspy-mipro): settings checked at parse time, dspy imported at fit.

Each condition runs one DSPy optimizer over ``optimizers.dspy_bridge.ScoredProgram``, whose predictions
and metric come from the shared Scorer, and returns the best program's instruction and demos as a
PromptArtifact. Budgets default to a small ``light`` setting that keeps the quickstart short on a CPU.
"""

from __future__ import annotations

import importlib.util
import re
from dataclasses import dataclass, fields
from typing import Any, ClassVar

from harness.artifact import FORMATS, PromptArtifact
from harness.errors import UserError
from harness.optimizer import FitContext, Optimizer, Settings, check_budget

ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")  # an environment variable's name (a key would rarely match it)
FEWSHOT_METHODS = ("bootstrap-random-search", "bootstrap", "labeled")
TYPE_CHECKS = {  # settings arrive from TOML or --set as JSON; a wrong type is a user's mistake
    "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "float": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "bool": lambda v: isinstance(v, bool),
    "str": lambda v: isinstance(v, str),
    "str | None": lambda v: v is None or isinstance(v, str),
}


def require(module: str, condition: str, install: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise UserError(f"condition {condition} needs the {module} package; run `{install}`")


@dataclass
class DSPySettings(Settings):
    """Settings every DSPy condition has; subclasses add their budget."""

    owner: ClassVar[str] = "dspy"
    format: str | None = None  # None: chat if the model has a chat template, else raw
    max_bootstrapped_demos: int = 3  # demos taken from the model's own correct predictions on train
    max_labeled_demos: int = 3  # demos taken from train as they are
    budget_tokens: int | None = None  # stop within this many tokens through the model, at the best candidate on dev

    def __post_init__(self) -> None:
        require("dspy", self.owner, "pip install dspy==3.4.1 optuna")
        check_budget(f"condition {self.owner}", self.budget_tokens)
        if self.format is not None and self.format not in FORMATS:
            raise UserError(f"condition {self.owner}: format {self.format!r} is unknown; use raw or chat")
        for f in fields(self):
            value = getattr(self, f.name)
            if f.type in TYPE_CHECKS and not TYPE_CHECKS[f.type](value):
                raise UserError(f"condition {self.owner}: {f.name} = {value!r}; give a value of type {f.type}")
        for name in ("max_bootstrapped_demos", "max_labeled_demos"):
            if getattr(self, name) < 0:
                raise UserError(f"condition {self.owner}: {name} = {getattr(self, name)}; give 0 or more")

    def at_least(self, name: str, low: int) -> None:
        if getattr(self, name) < low:
            raise UserError(f"condition {self.owner}: {name} = {getattr(self, name)} leaves nothing to search; "
                            f"give {low} or more")

    def max_demos(self) -> int:
        return max(self.max_bootstrapped_demos, self.max_labeled_demos)

    def dspy_optimizer_name(self) -> str:
        raise NotImplementedError

    def expected_candidates(self) -> int:
        """Prompts the search should score on dev: the progress bar's length."""
        raise NotImplementedError


@dataclass
class ProposingSettings(DSPySettings):
    """Conditions whose optimizer asks an LM to propose instructions."""

    instruction: str | None = None  # the starting instruction; None: the task's hand-written one
    proposer: str = "local"  # "local": the model being tuned; else a DSPy/LiteLLM model name, e.g. "openai/<model>"
    proposer_api_base: str | None = None  # an OpenAI-compatible server's base URL (vLLM, Ollama, llama.cpp, a gateway)
    proposer_api_key_env: str | None = None  # the NAME of the environment variable holding its key (never the key)
    proposer_max_tokens: int = 96
    proposer_timeout: float = 20.0  # seconds for the reachability check of a served proposer
    temperature: float = 1.0  # the proposer's sampling temperature

    def __post_init__(self) -> None:
        super().__post_init__()
        self.at_least("proposer_max_tokens", 1)
        if not self.proposer or not isinstance(self.proposer, str):
            raise UserError(f"condition {self.owner}: proposer is empty; use \"local\" or a LiteLLM model name")
        if self.temperature < 0 or self.proposer_timeout <= 0:
            raise UserError(f"condition {self.owner}: temperature must be >= 0 and proposer_timeout > 0")
        if self.instruction is not None and not self.instruction.strip():
            raise UserError(f"condition {self.owner}: the instruction is empty; give text or leave it out")
        served = self.proposer_api_base is not None or self.proposer_api_key_env is not None
        if served and self.proposer == "local":
            raise UserError(f"condition {self.owner}: proposer_api_base and proposer_api_key_env are for a served "
                            f"proposer; name it, e.g. proposer = \"openai/<model>\" (or leave them out)")
        if self.proposer_api_base is not None and not re.match(r"https?://[^\s/]+", self.proposer_api_base):
            raise UserError(f"condition {self.owner}: proposer_api_base = {self.proposer_api_base!r}; give the "
                            f"server's base URL, e.g. \"http://127.0.0.1:8000/v1\"")
        if self.proposer_api_key_env is not None and not ENV_NAME.fullmatch(self.proposer_api_key_env):
            raise UserError(f"condition {self.owner}: proposer_api_key_env = {self.proposer_api_key_env!r}; give the "
                            f"name of an environment variable that holds the key (e.g. \"VLLM_API_KEY\"), never the "
                            f"key itself")


@dataclass
class FewShotSettings(DSPySettings):
    owner: ClassVar[str] = "dspy-fewshot"
    dspy_optimizer: str = "bootstrap-random-search"  # or "bootstrap", "labeled"
    num_candidates: int = 4  # random demo sets tried, besides DSPy's three fixed ones (none, labeled, unshuffled)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.dspy_optimizer not in FEWSHOT_METHODS:
            raise UserError(f"condition {self.owner}: dspy_optimizer {self.dspy_optimizer!r} is unknown; use "
                            f"{', '.join(FEWSHOT_METHODS)}")
        self.at_least("num_candidates", 1)
        if self.max_demos() == 0:
            raise UserError(f"condition {self.owner}: max_bootstrapped_demos and max_labeled_demos are both 0, so "
                            f"there is no demo to choose; give either 1 or more")

    def dspy_optimizer_name(self) -> str:
        return self.dspy_optimizer

    def expected_candidates(self) -> int:
        return self.num_candidates + 3 if self.dspy_optimizer == "bootstrap-random-search" else 1


@dataclass
class CoproSettings(ProposingSettings):
    owner: ClassVar[str] = "dspy-copro"
    max_bootstrapped_demos: int = 0  # COPRO searches the instruction only
    max_labeled_demos: int = 0
    breadth: int = 4  # instructions proposed per round (the first round keeps the starting one among them)
    depth: int = 2  # rounds
    temperature: float = 1.4  # COPRO's default init_temperature

    def __post_init__(self) -> None:
        super().__post_init__()
        self.at_least("breadth", 2)  # COPRO refuses breadth 1
        self.at_least("depth", 1)
        if self.max_demos():
            raise UserError(f"condition {self.owner}: COPRO searches the instruction only; leave out "
                            f"max_bootstrapped_demos and max_labeled_demos (or use dspy-mipro)")

    def dspy_optimizer_name(self) -> str:
        return "COPRO"

    def expected_candidates(self) -> int:
        return self.breadth * self.depth


@dataclass
class MiproSettings(ProposingSettings):
    owner: ClassVar[str] = "dspy-mipro"
    num_candidates: int = 4  # instruction candidates and demo sets each (DSPy's first three demo sets are fixed)
    num_trials: int = 6  # Optuna trials, each scored on the whole dev split
    data_aware: bool = False  # let the proposer summarise train first (about len(train)/10 extra generations)

    def __post_init__(self) -> None:
        super().__post_init__()
        require("optuna", self.owner, "pip install optuna")  # MIPROv2 would only fail at its third step
        self.at_least("num_candidates", 1)
        self.at_least("num_trials", 1)

    def dspy_optimizer_name(self) -> str:
        return "MIPROv2"

    def expected_candidates(self) -> int:
        return self.num_trials + 1


class DSPyCondition(Optimizer):
    """Shared fit: check the data against the budget, then hand a Search to the bridge."""

    compile_with: ClassVar[str]  # the bridge function that builds the compile step from the settings (compile_step)
    # an instruction and demos; which of them a search fills is DSPy's (a few-shot search leaves the instruction)
    produces = frozenset({"text", "demos"})

    def fit(self, ctx: FitContext) -> PromptArtifact:
        s: DSPySettings = self.settings  # type: ignore[assignment]
        if not ctx.train or not ctx.dev:
            raise UserError(f"condition {self.name}: DSPy needs a train and a dev split; use --split test "
                            f"(not all), or give the task train and dev sizes")
        if s.max_demos() > len(ctx.train):
            raise UserError(f"condition {self.name}: {s.max_demos()} demos asked for but train has only "
                            f"{len(ctx.train)} examples; lower max_bootstrapped_demos/max_labeled_demos")
        from optimizers import dspy_bridge as bridge  # imports dspy: only here, so other commands stay fast

        seed = bridge.stable_seed(self.name, ctx.seed)
        info: dict[str, Any] = {"dspy_optimizer": s.dspy_optimizer_name(), "settings": dict(s.__dict__)}
        proposing = isinstance(s, ProposingSettings)
        search = bridge.Search(
            condition=self.name, fmt=s.format or ("chat" if ctx.lm.has_chat_template else "raw"),
            instruction=(s.instruction or ctx.task.instruction) if proposing else "", seed=seed,
            expected_candidates=s.expected_candidates(), compile=self.compile_step(s, seed, info),
            info=info, budget_tokens=s.budget_tokens)
        if proposing:
            search.proposer, search.proposer_max_tokens = s.proposer, s.proposer_max_tokens
            search.proposer_timeout = s.proposer_timeout
            search.proposer_api_base, search.proposer_api_key_env = s.proposer_api_base, s.proposer_api_key_env
        return bridge.run_search(ctx, search)

    def compile_step(self, s: DSPySettings, seed: int, info: dict[str, Any]) -> Any:
        """The search's compile step, ``run(student, trainset, devset, lm) -> program``: the bridge's
        ``compile_with`` function; a condition defined elsewhere (a plugin) overrides this instead."""
        from optimizers import dspy_bridge as bridge

        return getattr(bridge, self.compile_with)(s, seed, info)


class DSPyFewShot(DSPyCondition):
    name = "dspy-fewshot"
    summary = "DSPy-chosen demos, no instruction (BootstrapFewShotWithRandomSearch; scored by the shared scorer)"
    settings_class = FewShotSettings
    compile_with = "compile_fewshot"


class DSPyCopro(DSPyCondition):
    name = "dspy-copro"
    summary = "a DSPy COPRO-searched instruction, no demos (proposals by the local model unless proposer is set)"
    settings_class = CoproSettings
    compile_with = "compile_copro"


class DSPyMipro(DSPyCondition):
    name = "dspy-mipro"
    summary = "a DSPy MIPROv2-searched instruction and demos (proposals by the local model unless proposer is set)"
    settings_class = MiproSettings
    compile_with = "compile_mipro"
