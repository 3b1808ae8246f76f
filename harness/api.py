"""The public plugin API: everything a condition or task plugin imports, and nothing else of promptgap.

Built-in conditions (optimizers/) and tasks (tasks/) import from here too, so a plugin is held to what a built-in
is. docs/plugins.md documents exactly these names; ``tests/test_plugins.py`` checks that the two agree and that the
example plugins import nothing else of promptgap.
"""

from __future__ import annotations

from harness.artifact import PRODUCTS, PromptArtifact
from harness.data import Example, Split, TaskKind
from harness.errors import UserError
from harness.models import LoadedModel
from harness.optimizer import (
    SELECT_ON,
    BudgetSpent,
    DevScore,
    FitContext,
    Optimizer,
    Settings,
    TaskInfo,
    TokenBudget,
    Variant,
    check_budget,
    choose_on_dev,
    dev_score,
)
from harness.scorer import ExampleScore, Scorer
from harness.search import (
    BudgetSettings,
    MicroBatches,
    PromptForward,
    SearchLoop,
    SlotObjective,
    TokenSearch,
    TokenSearchSettings,
    filter_candidates,
    sample_candidates,
    task_loss,
    top_k_tokens,
)
from harness.task import SplitSizes, Task, read_rows, read_text, require, split_from_pool

__all__ = [
    # conditions
    "Optimizer", "Settings", "Variant", "FitContext", "TaskInfo", "PromptArtifact", "PRODUCTS",
    "choose_on_dev", "SELECT_ON", "dev_score", "DevScore", "TokenBudget", "BudgetSpent", "check_budget",
    # the search kit for methods that use the task model's gradients (harness/search.py)
    "TokenSearch", "TokenSearchSettings", "BudgetSettings", "SearchLoop", "SlotObjective", "MicroBatches",
    "PromptForward", "task_loss", "top_k_tokens", "sample_candidates", "filter_candidates",
    # what a condition is handed
    "LoadedModel", "Scorer", "ExampleScore", "Example",
    # tasks
    "Task", "TaskKind", "Split", "SplitSizes", "split_from_pool", "read_rows", "read_text", "require",
    # errors
    "UserError",
]
