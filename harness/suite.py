"""Benchmark suites: versioned run configs shipped in ``harness/suites``, and the conditions ``promptgap bench``
adds to one.

A suite is a run config (docs/configuration.md) with a ``[suite]`` table: ``version`` (a whole number, raised
whenever what the suite computes changes), ``about``, and optionally ``reference`` (a ranked condition each row is
compared with, task by task). Its ``[ratio]`` names the base, the ceiling and the text
conditions ranked. ``promptgap bench --suite NAME`` runs it into ``results/bench-NAME-vVERSION``; with ``--add
CONDITION`` (a built-in or an installed plugin, its default settings) or ``--add-config FILE`` (``[conditions.X]``
tables), the added conditions join the ranked texts, the run goes to a folder of its own, and every cell the suite's
folder already holds with the same settings, split and scoring fingerprint is copied instead of computed
(``runner.reusable``). An added condition that trains the model's weights (LoRA, full fine-tuning) joins the ceiling
candidates instead of the ranked texts.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from harness.config import RunConfig, config_from, read_toml
from harness.errors import UserError
from harness.names import check_name
from harness.optimizer import check_budget
from harness.plan import slug
from harness.registry import get_optimizer

SUITE_KEYS = {"version", "about", "reference"}
log = logging.getLogger(__name__)


def packaged_suites() -> dict[str, Path]:
    """The suites shipped with promptgap, by name."""
    folder = Path(str(resources.files("harness") / "suites"))
    return {p.stem: p for p in sorted(folder.glob("*.toml")) if "[suite]" in p.read_text()}


@dataclass
class Suite:
    name: str
    version: int
    about: str
    path: Path
    cfg: RunConfig
    added: list[str]  # conditions added by --add / --add-config, ranked with the suite's texts
    budget_tokens: int | None = None  # --budget-tokens: every ranked search condition's budget
    budgeted: list[str] = field(default_factory=list)  # the ranked conditions that search, and so got it
    model: str | None = None  # --model: the model the suite runs on, in place of its own
    skipped: dict[str, str] = field(default_factory=dict)  # task -> why it could not be loaded here (not run)

    @property
    def base_run_id(self) -> str:
        """The run folder of the suite as shipped (on ``--model``'s model, when given)."""
        return f"bench-{self.name}-v{self.version}" + (f"-{slug(self.model)}" if self.model else "")

    def donors(self, root: Path) -> list[Path]:
        """The run folders whose cells this suite's run may copy (``runner.reusable`` decides cell by cell): its own
        version's folder, then the earlier versions' (newest first); a cell that still matches is the same
        computation whatever version asked for it."""
        suffix = f"-{slug(self.model)}" if self.model else ""
        return [root / f"bench-{self.name}-v{v}{suffix}" for v in range(self.version, 0, -1)]

    @property
    def run_id(self) -> str:
        return (self.base_run_id + (f"-budget-{self.budget_tokens}" if self.budget_tokens is not None else "")
                + ("-with-" + "-".join(self.added) if self.added else ""))


def load_suite(suite: str, add: list[str] | None = None, add_config: Path | None = None,
               executor: str | None = None, budget_tokens: int | None = None, model: str | None = None,
               data: Path | None = None) -> Suite:
    """The suite ``suite`` (a packaged name, or a path to a suite TOML), with conditions added, checked whole.
    ``budget_tokens``: the setting ``budget_tokens`` of every ranked condition whose settings have one (the
    searches; ``optimizer.TokenBudget``), so that they all spend at most the same tokens through the model.
    ``model``: run the suite on this model instead of its own. ``data``: the folder holding the local data a suite's
    task names by a relative ``data_dir`` (``lite``: ``--data ../shared/data``); without it such a task is not run.
    A task that cannot be loaded here (no data folder, its data offline, a hub dataset without a network) is left
    out and named with why (``Suite.skipped``); the others run."""
    shipped = packaged_suites()
    if suite in shipped:
        path = shipped[suite]
    elif suite.endswith(".toml"):
        path = Path(suite)
    else:
        raise UserError(f"--suite {suite}: no such suite; use {', '.join(shipped)} or a path to a suite TOML")
    raw = read_toml(path, "suite")
    head = raw.pop("suite", None)
    if not isinstance(head, dict):
        raise UserError(f"suite {path}: no [suite] table; add [suite] with version = 1 (a plain run config runs "
                        f"with `promptgap run`)")
    extra = sorted(set(head) - SUITE_KEYS)
    if extra:
        raise UserError(f"suite {path} [suite]: unknown key(s) {', '.join(extra)}; valid: {', '.join(SUITE_KEYS)}")
    version = head.get("version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise UserError(f"suite {path} [suite]: version = {version!r}; give a whole number >= 1")
    name = check_name(f"suite {path}: its file name", path.stem, "rename the suite file")
    conditions: dict[str, Any] = raw.setdefault("conditions", {})
    added: dict[str, Any] = {}
    for cond in add or []:
        added[cond] = {}
    if add_config is not None:
        extra_raw = read_toml(add_config, "--add-config")
        if set(extra_raw) != {"conditions"} or not isinstance(extra_raw["conditions"], dict):
            raise UserError(f"--add-config {add_config}: give only [conditions.NAME] tables (the suite fixes "
                            f"tasks, seeds and roles)")
        added.update(extra_raw["conditions"])
    for cond, body in added.items():
        check_name("--add", cond, "give a condition name from `promptgap list`, or name the table in --add-config")
        if cond in conditions:
            raise UserError(f"--add {cond}: the suite {name} already has a condition of that name; it is ranked "
                            f"already (give yours another table name in --add-config, with optimizer = \"{cond}\")")
        conditions[cond] = dict(body)
    ratio = raw.get("ratio") or {}
    if not ratio.get("ceiling") or not ratio.get("texts"):
        raise UserError(f"suite {path} [ratio]: a suite names base, ceiling and texts; add them")
    # an added search meets the suite's own searches at their budget: the one they all share, when they do (lite:
    # 20,000 tokens), unless its table sets another or --budget-tokens sets every one's
    shared = _shared_budget(conditions, list(ratio["texts"]))
    if shared is not None:
        for cond in added:
            body = conditions[cond]
            if "budget_tokens" not in body and _searches(body, cond):
                body["budget_tokens"] = shared
                log.info("--add %s: at the suite's search budget, budget_tokens = %d", cond, shared)
    # an added condition that trains the model's weights is no prompt to rank: it joins the ceiling candidates
    # (each task's ceiling is the candidate best on dev); the others are ranked with the suite's texts
    trains = [c for c in added if "weights" in get_optimizer(str(conditions[c].get("optimizer", c))).produces]
    if trains:
        ceiling = ratio["ceiling"] if isinstance(ratio["ceiling"], list) else [ratio["ceiling"]]
        ratio["ceiling"] = list(ceiling) + trains
    ratio["texts"] = list(ratio["texts"]) + [c for c in added if c not in trains]
    budgeted = []
    if budget_tokens is not None:
        check_budget("--budget-tokens", budget_tokens)
        for cond in ratio["texts"]:
            body = conditions.get(cond)
            if not isinstance(body, dict):
                continue  # not a condition of the suite: config_from names it
            if _searches(body, cond):
                body["budget_tokens"] = budget_tokens
                budgeted.append(cond)
    if model is not None:
        raw.setdefault("run", {})["models"] = [model]
    no_data = _place_data(raw, data)
    cfg = config_from(raw, path, executor)
    skipped = _leave_out_unloadable(cfg, path, no_data)
    if len(cfg.models) != 1:
        raise UserError(f"suite {path} [run]: models = {cfg.models}; a suite ranks conditions on one model")
    reference = head.get("reference")
    if reference is not None and reference not in cfg.ratio["texts"]:
        raise UserError(f"suite {path} [suite]: reference = {reference!r} is not one of the ranked texts "
                        f"({', '.join(cfg.ratio['texts'])}); name the hand-written prompt every row is compared with")
    cfg.run["suite"] = {"name": name, "version": version, "budget_tokens": budget_tokens, "reference": reference,
                        "skipped": skipped}
    return Suite(name, version, str(head.get("about", "")), path, cfg, list(added), budget_tokens, budgeted, model,
                 skipped)


def _searches(body: dict[str, Any], cond: str) -> bool:
    """Whether a condition searches under a token budget: its settings declare ``budget_tokens``."""
    return "budget_tokens" in get_optimizer(str(body.get("optimizer", cond))).settings_class.__dataclass_fields__


def _shared_budget(conditions: dict[str, Any], texts: list[str]) -> int | None:
    """The ``budget_tokens`` every searching ranked condition of a suite sets, when they all set the same one."""
    budgets = {conditions[c].get("budget_tokens") for c in texts
               if isinstance(conditions.get(c), dict) and _searches(conditions[c], c)}
    return budgets.pop() if len(budgets) == 1 and None not in budgets else None


def _place_data(raw: dict[str, Any], data: Path | None) -> dict[str, str]:
    """Point each task's relative ``data_dir`` into ``data`` (a suite's data live outside the package); without
    ``data``, leave those tasks out. Returns the tasks left out (task -> why)."""
    if data is not None and not Path(data).is_dir():
        raise UserError(f"--data {data}: no such folder; give the folder that holds the suite's task data")
    skipped: dict[str, str] = {}
    kept = []
    for t in raw.get("tasks") or []:
        where = t.get("data_dir") if isinstance(t, dict) else None
        if where is None or Path(where).is_absolute():
            kept.append(t)
        elif data is None:
            skipped[str(t.get("as") or t.get("name"))] = (f"its data are local files ({where}/); pass --data DIR, "
                                                         f"the folder that holds {where}/")
        elif not (Path(data) / where).is_dir():
            skipped[str(t.get("as") or t.get("name"))] = f"no folder {Path(data) / where} (--data holds none)"
        else:
            kept.append({**t, "data_dir": str((Path(data) / where).resolve())})
    if skipped and not kept:
        why = "; ".join(f"{k}: {v}" for k, v in skipped.items())
        raise UserError(f"--data: every task of the suite reads local data, and none could be found ({why}); pass "
                        f"--data DIR, the folder that holds their data folders (this project's: ../shared/data)")
    if raw.get("tasks") is not None:
        raw["tasks"] = kept
    return skipped


def _leave_out_unloadable(cfg: RunConfig, path: Path, skipped: dict[str, str]) -> dict[str, str]:
    """Build each task and its first seed's split; leave out those that fail here and return them, with why, after
    the tasks ``skipped`` already."""
    from harness.plan import split

    skipped = dict(skipped)
    kept = []
    for t in cfg.tasks:
        name = t.alias or t.name
        try:
            split(t.build(), t.sizes, cfg.seeds[0])
        except Exception as e:  # noqa: BLE001 - a hub or dataset error names no common type; each is reported
            first = (str(e).strip().splitlines() or [""])[0][:300]
            skipped[name] = f"{type(e).__name__}: {first}" if not isinstance(e, UserError) else first
            log.warning("suite %s: task %s left out: %s", path.stem, name, skipped[name])
            continue
        kept.append(t)
    if not kept:
        why = "; ".join(f"{k}: {v}" for k, v in skipped.items())
        raise UserError(f"suite {path}: no task could be loaded here ({why}); give the data (or a network) and run "
                        f"it again")
    cfg.tasks = kept
    return skipped
