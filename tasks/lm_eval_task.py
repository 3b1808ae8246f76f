"""Any lm-evaluation-harness task as a promptgap task (``lm-eval:NAME``), built by lm-eval's own code.

The task's YAML (bundled with lm-eval, or in a folder given as ``--lm-eval-include``) is loaded by lm-eval's
``TaskManager``; each document becomes an ``Example`` through the task object's own ``doc_to_text``,
``doc_to_choice``, ``doc_to_target``, ``target_delimiter``, ``process_docs`` and ``description``, and every
Example is checked against the request lm-eval itself builds for that document at zero shots
(``fewshot_context`` + ``construct_requests``), so a task whose requests promptgap cannot reproduce is refused
rather than scored differently. The YAML's ``num_fewshot`` is not applied: demos are what conditions supply.

A ``generate_until`` task is scored by its gold answer's log-likelihood, as a continuation task: the continuation is
``doc_to_target`` whole (for gsm8k the worked solution ending in ``#### <answer>``) after ``target_delimiter``, as
lm-eval's own ``loglikelihood`` of that target reads it; its context must be the one lm-eval builds. Its generation
arguments are recorded (``generation_kwargs``); greedy generation with its filters and metrics is not computed yet.

lm-eval's ``TaskManager`` reads every bundled YAML (about 15 s here), so it is built lazily, once per process and
set of include folders; a name found in the include folders alone is loaded from an index of those folders only.
"""

from __future__ import annotations

import difflib
import glob
import hashlib
import json
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.data import Example, Split
from harness.errors import UserError
from harness.names import LM_EVAL_PREFIX, bare_name
from harness.task import SplitSizes, Task, split_from_pool

log = logging.getLogger(__name__)

PREFIX = LM_EVAL_PREFIX
SERVED = ("multiple_choice", "loglikelihood", "generate_until")
# dataset_path values that are datasets' packaged builders over local files, not hub datasets
LOCAL_BUILDERS = ("json", "csv", "parquet", "text", "arrow", "pandas")
PIP_HINT = "pip install 'lm-eval[hf]>=0.4.13,<0.5'"
README_HINT = "see docs/lm-eval.md, 'A bundled task YAML pointed at local files'"


def require_lm_eval() -> str:
    """lm-eval's version; a UserError naming the install command when it is missing."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("lm_eval")
    except PackageNotFoundError:
        raise UserError(f"lm-eval tasks need the lm-eval package; {PIP_HINT}") from None


def resolve_includes(include: str | Path | Sequence[str | Path] | None) -> tuple[Path, ...]:
    """Include folders as absolute paths; one that does not exist is a UserError."""
    if include is None:
        return ()
    items = [include] if isinstance(include, str | Path) else list(include)
    out = []
    for item in items:
        p = Path(item).expanduser().resolve()
        if not p.is_dir():
            raise UserError(f"lm-eval include path {item} does not exist or is not a folder; "
                            f"give a folder holding lm-eval task YAML files")
        out.append(p)
    return tuple(out)


# --- one TaskManager per process and include set --------------------------------------------------------------
@dataclass
class _Process:
    managers: dict[tuple[tuple[Path, ...], bool], Any] = field(default_factory=dict)
    loaded: dict[tuple[str, tuple[Path, ...]], dict[str, Any]] = field(default_factory=dict)  # lm-eval's objects
    built: dict[tuple[str, tuple[Path, ...]], list[LmEvalTask]] = field(default_factory=dict)
    # include folders a run config declared for a name, for callers that only pass the name
    declared: dict[str, tuple[Path, ...]] = field(default_factory=dict)


_PROCESS = _Process()


def task_manager(includes: tuple[Path, ...], defaults: bool = True):
    """lm-eval's TaskManager over ``includes`` (and the bundled tasks when ``defaults``), built once per process."""
    key = (includes, defaults)
    if key not in _PROCESS.managers:
        require_lm_eval()
        from lm_eval.tasks import TaskManager

        if defaults:
            log.info("building lm-eval's task index (bundled tasks%s; ~15 s, once per process)",
                     f" + {', '.join(map(str, includes))}" if includes else "")
        _PROCESS.managers[key] = TaskManager(include_path=[str(p) for p in includes] or None,
                                             include_defaults=defaults)
    return _PROCESS.managers[key]


def declare(name: str, include: str | Path | Sequence[str | Path] | None) -> None:
    """Remember the include folders a run config gives ``name``, so ``load_tasks(name)`` without them finds it."""
    _PROCESS.declared[bare_name(name)] = resolve_includes(include)


def _self_contained(index: dict[str, Any], name: str, seen: frozenset[str] = frozenset()) -> bool:
    """Whether ``name`` resolves within ``index`` alone: a task, or a group or tag whose members all do."""
    from lm_eval.tasks._index import Kind

    entry = index.get(name)
    if entry is None or name in seen:
        return False
    if entry.kind == Kind.TAG:
        return all(_self_contained(index, t, seen | {name}) for t in entry.tags)
    return entry.kind != Kind.GROUP or _members_contained(index, (entry.cfg or {}).get("task"), seen | {name})


def _members_contained(index: dict[str, Any], members: Any, seen: frozenset[str]) -> bool:
    for m in members if isinstance(members, list) else [members]:
        if isinstance(m, str):
            ok = _self_contained(index, m, seen)
        elif isinstance(m, dict) and "group" in m:  # a reference to a group, or a group defined inline
            ok = _self_contained(index, m["group"], seen) if m["group"] in index else \
                _members_contained(index, m.get("task"), seen)
        else:  # a registered task with overrides, or a task defined inline (its own config)
            ok = not isinstance(m, dict) or m.get("task") not in index or _self_contained(index, m["task"], seen)
        if not ok:
            return False
    return True


def _build(manager, bare: str) -> dict[str, Any]:
    try:
        return manager.load([bare])
    except UserError:
        raise
    except Exception as e:  # lm-eval and datasets raise many types for a task that cannot be built
        first = str(e).strip().splitlines()[0][:240] if str(e).strip() else ""
        raise UserError(f"lm-eval task {bare}: could not be built ({type(e).__name__}: {first}); check its YAML and "
                        f"data files (offline, a hub dataset must be pointed at local files: {README_HINT})") from None


def load_lm_eval(name: str, include: str | Path | Sequence[str | Path] | None = None) -> dict[str, Any]:
    """lm-eval's own objects for task, group or tag ``name`` (``TaskManager.load``: ``tasks``, ``groups``), built once
    per process; an unknown name is a UserError with close matches."""
    bare = bare_name(name)
    includes = resolve_includes(include) or _PROCESS.declared.get(bare, ())
    key = (bare, includes)
    if key not in _PROCESS.loaded:
        loaded = None
        if includes:
            own = task_manager(includes, defaults=False)
            if _self_contained(own.task_index, bare):
                loaded = _build(own, bare)
        if loaded is None:
            manager = task_manager(includes)
            if bare not in manager.all_tasks:
                close = difflib.get_close_matches(bare, manager.all_tasks, n=3)
                where = f" or of {', '.join(map(str, includes))}" if includes else \
                    "; add --lm-eval-include DIR for yours"
                raise UserError(f"unknown lm-eval task {bare!r} (not a task, group or tag of lm-eval "
                                f"{require_lm_eval()}{where})" + (f"; close: {', '.join(close)}" if close else ""))
            loaded = _build(manager, bare)
        _PROCESS.loaded[key] = loaded
    return _PROCESS.loaded[key]


def load_tasks(name: str, include: str | Path | Sequence[str | Path] | None = None) -> list[LmEvalTask]:
    """The promptgap tasks of lm-eval task, group or tag ``name``: one per task; a group expands into its subtasks."""
    bare = bare_name(name)
    includes = resolve_includes(include) or _PROCESS.declared.get(bare, ())
    key = (bare, includes)
    if key in _PROCESS.built:
        return _PROCESS.built[key]
    loaded = load_lm_eval(bare, includes)
    group = bare if loaded.get("groups") or list(loaded["tasks"]) != [bare] else None
    tasks = [LmEvalTask(obj, includes=includes, group=group) for obj in loaded["tasks"].values()]
    refused = [t for t in tasks if t.refusal]
    if refused:
        t = refused[0]
        more = f" ({len(refused)} of its {len(tasks)} subtasks are; name the others one by one)" if group else ""
        raise UserError(f"lm-eval task {t.task_name}{f' (in {group})' if group else ''} is not supported: "
                        f"{t.refusal}{more}")
    _PROCESS.built[key] = tasks
    for t in tasks:  # a subtask asked for later by its own name is the one built here, with the group's settings
        _PROCESS.built.setdefault((t.task_name, includes), [t])
    return tasks


# --- cheap checks, for config files -------------------------------------------------------------------------------
def name_kind(name: str, include: str | Path | Sequence[str | Path] | None = None) -> str:
    """``task``, ``group`` or ``tag``: found without lm-eval's full index when possible (the include folders' own
    index, then a text scan of the bundled YAML files, ~1 s); only a name found by neither builds the full index,
    which decides (an unknown name is a UserError). A task whose YAML alone shows it cannot be served (generate_until,
    loglikelihood_rolling, acc_mutual_info) is refused here too."""
    require_lm_eval()
    from lm_eval.tasks._index import Kind, TaskIndex
    from lm_eval.tasks._yaml_loader import load_yaml

    bare = bare_name(name)
    includes = resolve_includes(include)
    kinds = {Kind.TASK: "task", Kind.PY_TASK: "task", Kind.GROUP: "group", Kind.TAG: "tag"}
    entry = TaskIndex.build(list(includes)).get(bare) if includes else None
    if entry is not None:
        kind, cfg = kinds.get(entry.kind, "task"), entry.cfg or {}
    elif (found := _scan_bundled(bare)) is not None:
        kind, path = found
        cfg = load_yaml(path, resolve_func=False)
    else:
        manager = task_manager(includes)
        if bare not in manager.all_tasks:
            load_tasks(name, includes)  # raises the unknown-task error, with close matches
        entry = manager.task_index[bare]
        kind, cfg = kinds.get(entry.kind, "task"), entry.cfg or {}
    if kind == "task":
        metrics = [m.get("metric") for m in cfg.get("metric_list") or [] if isinstance(m, dict)]
        why = refusal_reason(cfg.get("output_type", "generate_until"), metrics)
        if why:
            raise UserError(f"lm-eval task {bare} is not supported: {why}")
    return kind


def _scan_bundled(bare: str) -> tuple[str, Path] | None:
    """(``task`` or ``group``, its YAML) of a bundled name declared at the top level of a YAML file."""
    import lm_eval

    pattern = re.compile(rf"^(task|group)\s*:\s*['\"]?{re.escape(bare)}['\"]?\s*(#.*)?$", re.M)
    for path in sorted((Path(lm_eval.__file__).parent / "tasks").glob("**/*.yaml")):
        m = pattern.search(path.read_text(encoding="utf-8", errors="replace"))
        if m:
            return m.group(1), path
    return None


# --- the task -----------------------------------------------------------------------------------------------------
def refusal_reason(output_type: str, metrics: Sequence[str], multiple_target: bool = False,
                   multimodal: bool = False) -> str | None:
    """Why promptgap cannot serve a task (one clause), or None."""
    if output_type == "loglikelihood_rolling":
        return ("it scores whole documents (output_type loglikelihood_rolling, perplexity), with no context and "
                "continuation for a prompt to sit between")
    if output_type not in SERVED:
        return f"output_type {output_type!r} is not one of {', '.join(SERVED)}"
    if "acc_mutual_info" in metrics:
        return ("its metric acc_mutual_info also scores every choice without its context, where a prompt has no "
                "place; use the task without that metric")
    if multiple_target:
        return "it has several gold answers per document (doc_to_target returns a list); promptgap needs one"
    if multimodal:
        return "it is multimodal (doc_to_image/doc_to_audio); promptgap scores text"
    return None


def refusal(lm_task: Any) -> str | None:
    """``refusal_reason`` of a built lm-eval task."""
    cfg = lm_task.config
    multimodal = bool(getattr(cfg, "doc_to_image", None) or getattr(cfg, "doc_to_audio", None))
    return refusal_reason(lm_task.OUTPUT_TYPE, list(lm_task.aggregation()),
                          bool(getattr(lm_task, "multiple_target", 0)), multimodal)


def _config_sha256(lm_task: Any) -> str:
    """sha256 of the task's resolved config (functions as their source text), without the machine's YAML path."""
    cfg = lm_task.dump_config()
    meta = dict(cfg.get("metadata") or {})
    meta.pop("config_source", None)
    cfg["metadata"] = meta
    return hashlib.sha256(json.dumps(cfg, sort_keys=True, default=str).encode("utf-8")).hexdigest()


class LmEvalTask(Task):
    """One lm-eval task (``multiple_choice``, ``loglikelihood``, or ``generate_until`` scored by its gold answer's
    log-likelihood): documents -> Examples, lm-eval's splits -> Split.

    Splits: train from lm-eval's training docs; dev and test carved with the seed from its validation docs; its test
    docs become the test split when every target is a valid choice (hidden test labels, -1, are not). A task with
    fewer splits carves what it lacks from what it has. Example ids are ``<split name>:<document index>``, lm-eval's
    ``doc_id`` within that split after ``process_docs``.
    """

    name = "lm-eval"
    summary = "any lm-evaluation-harness task with output_type multiple_choice, loglikelihood or generate_until"
    instruction = ""

    def __init__(self, lm_task: Any, includes: tuple[Path, ...] = (), group: str | None = None) -> None:
        self.lm_task = lm_task
        self.task_name = str(lm_task.task_name)
        self.name = PREFIX + self.task_name
        self.group = group
        self.includes = includes
        self.output_type = lm_task.OUTPUT_TYPE
        self.refusal = refusal(lm_task)
        self.kind = "multiple_choice" if self.output_type == "multiple_choice" else "continuation"
        self.metrics = tuple(lm_task.aggregation())  # the task's metric list, as lm-eval names them
        # a generate_until task's generation arguments (until, max_gen_toks, ...): recorded, not applied yet
        self.generation_kwargs = dict(lm_task.config.generation_kwargs or {}) \
            if self.output_type == "generate_until" else None
        self.instruction = "Choose the correct answer." if self.kind == "multiple_choice" else "Continue the text."
        self.summary = f"lm-eval {self.task_name} ({self.output_type})"
        super().__init__(None)
        self._parts: dict[str, list[Example | None] | None] = {}
        self._record_sources()
        shots = lm_task.config.num_fewshot
        if shots:
            log.info("lm-eval task %s: its YAML asks for %s shots; promptgap does not apply them (demos are what "
                     "conditions supply)", self.task_name, shots)

    # --- documents -> examples -------------------------------------------------------------------------------
    def to_example(self, row: dict[str, Any], where: str) -> Example:
        """``where`` is ``<split name>:<document index>``, the Example's id."""
        split_name, _, index = where.rpartition(":")
        ex = self._example(row, split_name, int(index))
        if ex is None:
            raise UserError(f"lm-eval task {self.task_name} {where}: its target is not one of its choices")
        return ex

    def _example(self, doc: dict[str, Any], split_name: str, i: int) -> Example | None:
        """The Example of one document, or None when its target names no valid choice (hidden labels)."""
        t = self.lm_task
        where = f"lm-eval task {self.task_name} {split_name} doc {i}"
        try:
            description = t.resolve_field(doc, t.config.description) or ""
            text, target = t.doc_to_text(doc), t.doc_to_target(doc)
            if self.output_type == "generate_until":  # the gold answer after the delimiter, as multiple choice reads
                if isinstance(target, list | tuple):
                    raise UserError(f"{where}: its target is a list of {len(target)} answers; promptgap scores one "
                                    f"gold answer (use a task whose doc_to_target gives one)")
                ex = Example(id=f"{split_name}:{i}", contexts=(str(text),), continuations=(str(target),), gold=0,
                             delimiter=t.config.target_delimiter, fields=dict(doc), description=description)
            elif self.kind == "continuation":
                ex = Example(id=f"{split_name}:{i}", contexts=(str(text),), continuations=(str(target),), gold=0,
                             delimiter="", fields=dict(doc), description=description)
            else:
                choices = [str(c) for c in t.doc_to_choice(doc)]
                if t.multiple_input:  # WinoGrande-style: the choices are the contexts, doc_to_text the gold index
                    gold, contexts, continuations = text, tuple(choices), (str(target),)
                else:
                    gold = target if isinstance(target, int) else choices.index(target) if target in choices else -1
                    contexts, continuations = (str(text),), tuple(choices)
                if not isinstance(gold, int) or not 0 <= gold < len(choices):
                    return None
                ex = Example(id=f"{split_name}:{i}", contexts=contexts, continuations=continuations, gold=gold,
                             delimiter=t.config.target_delimiter, fields=dict(doc), description=description)
            requests = t.construct_requests(doc=doc, ctx=t.fewshot_context(doc=doc, num_fewshot=0,
                                                                           gen_prefix=t.doc_to_prefix(doc)),
                                            metadata=(self.task_name, i, 1))
        except UserError:
            raise
        except Exception as e:  # the task's own templates and functions fail in many ways on a bad document
            raise UserError(f"{where}: lm-eval could not build it ({type(e).__name__}: {e}); fix the document or "
                            f"the task's YAML") from None
        # what promptgap's renderer writes in raw format must be exactly the request lm-eval builds
        theirs = [tuple(r.arguments) for r in (requests if isinstance(requests, list) else [requests])]
        ours = [(ex.description + c, ex.delimiter + cont) for c, cont in map(ex.choice, range(ex.n_choices))]
        if self.output_type == "generate_until":  # lm-eval's request is (context, generation arguments)
            theirs, ours = [r[:1] for r in theirs], [r[:1] for r in ours]
        if theirs != ours:
            raise UserError(f"{where}: lm-eval builds the request {theirs[0]!r}, promptgap would build {ours[0]!r} "
                            f"(a gen_prefix or a custom construct_requests?); this task is not supported")
        return ex

    def _split_name(self, part: str) -> str | None:
        cfg = self.lm_task.config
        return {"train": cfg.training_split, "validation": cfg.validation_split, "test": cfg.test_split}[part]

    def _examples(self, part: str) -> list[Example | None] | None:
        """Every document of lm-eval's ``part`` (train, validation, test) as an Example (None: no valid target);
        None when the task has no such split."""
        if part not in self._parts:
            t = self.lm_task
            docs = {"train": t.training_docs, "validation": t.validation_docs, "test": t.test_docs}[part]()
            split_name = self._split_name(part)
            self._parts[part] = None if docs is None else [self._example(d, split_name, i) for i, d in enumerate(docs)]
        return self._parts[part]

    def _labelled(self, part: str) -> tuple[Example, ...] | None:
        """``part``'s examples when every one has a valid target; test docs with hidden labels give None."""
        exs = self._examples(part)
        if not exs:
            return None
        bad = [i for i, e in enumerate(exs) if e is None]
        if not bad:
            return tuple(e for e in exs if e is not None)
        if part == "test":
            log.info("lm-eval task %s: %d test docs have no valid target (hidden labels); test is carved from "
                     "validation", self.task_name, len(bad))
            return None
        raise UserError(f"lm-eval task {self.task_name}: {self._split_name(part)} doc {bad[0]} has a target that is "
                        f"not one of its choices ({len(bad)} such docs); fix the data or the task's doc_to_target")

    def _pools(self) -> tuple[tuple[Example, ...], tuple[Example, ...], tuple[Example, ...] | None]:
        train, validation, test = self._labelled("train") or (), self._labelled("validation") or (), \
            self._labelled("test")
        if not (train or validation or test):
            raise UserError(f"lm-eval task {self.task_name}: no split with labels (training_split, validation_split "
                            f"or test_split with valid targets); promptgap needs labelled documents to score")
        return train, validation, test

    @property
    def default_sizes(self) -> SplitSizes:  # type: ignore[override]
        """dev: 100, or a fifth of the pool it is carved from when that is smaller; a single pool also gives train a
        fifth (at most 500) and test the rest."""
        train, validation, test = self._pools()
        pool = len(validation or train or test or ())
        dev = min(100, max(1, pool // 5))
        single = not test and not (train and validation) or test and not (train or validation)
        return SplitSizes(train=min(500, max(1, pool // 5)) if single else None, dev=dev, test=None)

    def all_examples(self) -> list[Example]:
        """lm-eval's evaluation documents (its test split if it has one, else validation), in its order."""
        part = "test" if self.lm_task.has_test_docs() else "validation"
        exs = self._labelled(part)
        if exs is None:
            raise UserError(f"lm-eval task {self.task_name}: its evaluation split ({self._split_name(part)}) has no "
                            f"labels; score --split test (carved from its other splits) instead")
        return list(exs)

    def make_split(self, seed: int, sizes: SplitSizes) -> Split:
        train, validation, test = self._pools()

        def sized(pool: tuple[Example, ...], n: int | None) -> tuple[Example, ...]:
            return pool if n is None else self.carve(list(pool), seed, [n])[0]

        if test:
            if not (train or validation):
                return split_from_pool(self, list(test), seed, sizes)
            test_part = sized(test, sizes.test)
            if train and validation:
                return Split(train=sized(train, sizes.train), dev=self.carve(list(validation), seed, [sizes.dev])[0],
                             test=test_part)
            dev, train_part = self.carve(list(validation or train), seed, [sizes.dev, sizes.train])
            return Split(train=train_part, dev=dev, test=test_part)
        if train and validation:
            dev, test_part = self.carve(list(validation), seed, [sizes.dev, sizes.test])
            return Split(train=sized(train, sizes.train), dev=dev, test=test_part)
        return split_from_pool(self, list(validation or train), seed, sizes)

    # --- provenance ------------------------------------------------------------------------------------------
    def _record_sources(self) -> None:
        """The task's YAML, its local data files (``dataset_kwargs.data_files``/``data_dir``, resolved from the working
        folder as the datasets library resolves them) or its hub dataset's fingerprints."""
        cfg = self.lm_task.config
        source = (cfg.metadata or {}).get("config_source") if isinstance(cfg.metadata, dict) else None
        if source and Path(source).is_file():
            self._sources[str(Path(source).resolve())] = {"kind": "file"}
        kwargs = cfg.dataset_kwargs or {}
        files = kwargs.get("data_files")
        patterns = [files] if isinstance(files, str) else list(files) if isinstance(files, list) else \
            [p for v in (files or {}).values() for p in ([v] if isinstance(v, str) else v)]
        if kwargs.get("data_dir"):
            patterns.append(str(Path(kwargs["data_dir"]) / "**" / "*"))
        for pattern in patterns:
            for p in sorted(glob.glob(str(pattern), recursive=True)):
                if Path(p).is_file():
                    self._sources[str(Path(p).resolve())] = {"kind": "file"}
        if cfg.dataset_path not in LOCAL_BUILDERS:
            for split, ds in (getattr(self.lm_task, "dataset", None) or {}).items():
                self._sources[f"{cfg.dataset_path}{'/' + cfg.dataset_name if cfg.dataset_name else ''}[{split}]"] = {
                    "kind": "hub", "fingerprint": getattr(ds, "_fingerprint", None), "rows": len(ds),
                    "files": [f.get("filename") for f in (ds.cache_files or [])]}

    def provenance(self) -> dict[str, Any]:
        """The Task record plus lm-eval's version, the task's name, version, YAML and a sha256 of its config."""
        out = super().provenance()
        cfg = self.lm_task.config
        out["lm_eval"] = {
            "version": require_lm_eval(), "task": self.task_name, "task_version": self.lm_task.VERSION,
            "output_type": self.output_type, "group": self.group, "include": [str(p) for p in self.includes],
            "yaml": (cfg.metadata or {}).get("config_source") if isinstance(cfg.metadata, dict) else None,
            "config_sha256": _config_sha256(self.lm_task), "num_fewshot_not_applied": cfg.num_fewshot or 0,
            "generation_kwargs": self.generation_kwargs,
        }
        return out
