"""The promptgap command line: ``list``, ``eval`` (one cell), ``run`` (the matrix, on an executor), ``status``,
``report``, ``check`` and ``export-peft``."""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from harness.errors import DiskFull, UserError, is_disk_full
from harness.logs import setup_logging

log = logging.getLogger("promptgap")

SPLITS = ("test", "dev", "train", "all")
DETERMINISTIC_HELP = ("torch's deterministic algorithms and the math attention kernel: reproducible training on a GPU, "
                      "slower")


def _parse_settings(pairs: list[str]) -> dict:
    """``key=value`` pairs; values are read as JSON when they parse (numbers, booleans), else as text."""
    out = {}
    for p in pairs:
        if "=" not in p:
            raise UserError(f"--set {p!r}: expected key=value, e.g. --set instruction='Answer briefly.'")
        k, v = p.split("=", 1)
        try:
            out[k] = json.loads(v)
        except json.JSONDecodeError:
            out[k] = v
    return out


def cmd_list(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from harness.models import KNOWN_MODELS
    from harness.registry import OPTIMIZER_GROUP, TASK_GROUP, load, names, origin

    console = Console()
    t = Table(title="tasks (--task; or a path to a TOML spec)")
    t.add_column("name")
    t.add_column("kind")
    t.add_column("what")
    broken: list[str] = []

    def loaded(group: str, name: str, what: str) -> Any:
        """A plugin that fails to import is listed as broken (and named on stderr); the others are listed."""
        try:
            return load(group, name, what)
        except UserError as e:
            broken.append(str(e))
            return None

    for n in names(TASK_GROUP):
        cls = loaded(TASK_GROUP, n, "task")
        t.add_row(n, *((cls.kind, cls.summary) if cls is not None else ("?", "BROKEN: cannot be imported")))
    t.add_row("lm-eval:NAME", "either", "any lm-evaluation-harness task with output_type multiple_choice, "
              "loglikelihood or generate_until (scored by the gold answer's log-likelihood; a group: its subtasks); "
              "--lm-eval-include DIR for your own YAML files")
    console.print(t)
    c = Table(title="conditions (--condition)")
    c.add_column("name")
    c.add_column("what")
    c.add_column("package")
    for n in names(OPTIMIZER_GROUP):
        cls = loaded(OPTIMIZER_GROUP, n, "condition")
        c.add_row(n, cls.summary if cls is not None else "BROKEN: cannot be imported", origin(n))
    console.print(c)
    m = Table(title="models (--model; or any hub id or local folder)")
    m.add_column("name")
    m.add_column("what")
    for n, what in KNOWN_MODELS.items():
        m.add_row(n, what)
    console.print(m)
    for line in broken:  # the rest is listed; a plugin that cannot be imported is still an error to fix
        print(f"promptgap: error: {line}", file=sys.stderr)
    return 2 if broken else 0


def _eval_examples(task: Any, args: argparse.Namespace) -> tuple[list, tuple, tuple, str]:
    """The examples ``eval`` scores, the fitting data and the split hash (checked before any model loads)."""
    from harness import plan
    from harness.data import ids_hash

    if args.split == "all":
        examples, train, dev = task.all_examples(), (), ()
        split_hash = "all:" + ids_hash([e.id for e in examples])
    else:
        split = plan.split(task, None, args.seed)  # the split a run's cell of this task and seed uses
        examples, train, dev, split_hash = split.part(args.split), split.train, split.dev, split.hash
    examples = list(examples[: args.limit])
    if not examples:
        raise UserError(f"task {task.name}: the {args.split} split is empty; raise its size or add data")
    return examples, train, dev, split_hash


def _summary_line(task: Any, scores: list) -> str:
    """Accuracy (or greedy exact match), lm-eval's acc_norm when the task's metric list names it, mean gold NLL."""
    n = len(scores)
    metric = "greedy exact match" if task.kind == "continuation" else "accuracy"
    parts = [f"{metric}: {sum(s.correct for s in scores) / n:.4f}"]
    if "acc_norm" in getattr(task, "metrics", ()) and task.kind == "multiple_choice":
        parts.append(f"acc_norm: {sum(bool(s.correct_norm) for s in scores) / n:.4f}")
    parts.append(f"mean gold NLL: {sum(s.gold_nll for s in scores) / n:.4f}")
    return "   ".join(parts)


def cmd_eval(args: argparse.Namespace) -> int:
    from harness.atomic import write_json, write_jsonl
    from harness.cell import fit_and_score
    from harness.models import deterministic, load_model, resolve_source
    from harness.optimizer import check_artifact
    from harness.plan import CellKey
    from harness.registry import get_optimizer, get_tasks
    from harness.render import check_row_lengths
    from harness.run_folder import CellRecord, Evidence
    from harness.scorer import Scorer

    if args.limit is not None and args.limit < 1:
        raise UserError(f"--limit {args.limit}: give a positive number of examples")
    # every name is checked before anything slow happens
    tasks = get_tasks(args.task, data_dir=args.data_dir, lm_eval_include=args.lm_eval_include)
    if args.artifact is not None:
        from harness.artifact import PromptArtifact

        if args.set:
            raise UserError("--set has no effect with --artifact (a saved artifact is scored as it is); drop one")
        loaded = PromptArtifact.load(args.artifact)
        args.condition = args.condition or loaded.condition or "artifact"
        condition = None
    elif args.condition is None:
        raise UserError("give --condition NAME (see `promptgap list`), or --artifact DIR to score a saved artifact")
    else:
        condition = get_optimizer(args.condition)(**_parse_settings(args.set))
    if args.model.endswith(".gguf") or Path(args.model).expanduser().exists():
        resolve_source(args.model)
    cells = [(task, *_eval_examples(task, args)) for task in tasks]  # a group: each subtask is fitted and scored
    for task, examples, train, dev, _ in cells:  # a row longer than the model reads, before the model loads
        check_row_lengths(args.model, task.name, [*examples, *train, *dev],
                          split_special_tokens=args.split_special_tokens, truncate_left=args.truncate_left)

    if args.deterministic:
        deterministic(True)
    lm = load_model(args.model, device=args.device, dtype=args.dtype, split_special_tokens=args.split_special_tokens,
                    truncate_left=args.truncate_left)
    scorer = Scorer(lm, batch_size=args.batch_size)
    rows, report, fit_logs, artifacts = [], [], {}, {}
    for task, examples, train, dev, split_hash in cells:
        label = f"{task.name} / {args.condition}"
        # the record and evidence a run's cell keeps; eval writes their score lines (and the log and artifact)
        cell = CellRecord(key=CellKey(model=lm.name, task=task.name, seed=args.seed, condition=args.condition),
                            optimizer=condition.name if condition is not None else "artifact",
                            settings=_parse_settings(args.set), split_hash=split_hash, n_train=len(train),
                            n_dev=len(dev))
        with tempfile.TemporaryDirectory() as workdir:
            done = fit_and_score(
                lm, scorer, task, examples, cell, Evidence(), owner=f"condition {args.condition}", label=label,
                split=args.split, optimizer=condition, train=train, dev=dev, workdir=Path(workdir),
                artifact=check_artifact(loaded, lm, f"artifact {args.artifact}") if condition is None else None,
                desc=f"scoring {args.condition} on {task.name}")
        if done.log is not None:
            fit_logs[task.name] = done.log
        rows += done.lines
        artifacts[task.name] = done.artifact
        report.append(f"{label} / {lm.name} [{done.artifact.format}] {args.split} n={len(done.scores)} "
                      f"split_hash={split_hash}\n{_summary_line(task, done.scores)}   (fit {done.fit_seconds:.1f}s, "
                      f"scoring {done.score_seconds:.1f}s)")
    write_jsonl(args.out, rows)
    several = len(cells) > 1  # a group: one fit log and artifact per subtask, named by it
    for name, record in fit_logs.items():  # training curves and sweep trials, beside the output
        suffix = f".{name.replace('/', '--')}.log.json" if several else ".log.json"
        write_json(args.out.with_suffix(suffix), record)
    if args.artifact_out:
        for name, artifact in artifacts.items():
            artifact.save(args.artifact_out / name.replace("/", "--") if several else args.artifact_out)
    print("\n".join(report))
    print(f"wrote {args.out}")
    return 0


def cmd_lm_eval(args: argparse.Namespace) -> int:
    from harness.artifact import PromptArtifact
    from harness.names import bare_name
    from harness.registry import source

    lm_eval = source("lm-eval")  # the lm-evaluation-harness bridge, through the registry
    lm_eval.require_lm_eval()
    if args.limit is not None and args.limit < 1:
        raise UserError(f"--limit {args.limit}: give a positive number of documents")
    artifact = PromptArtifact.load(args.artifact)
    if artifact.format == "chat" and not args.apply_chat_template:
        raise UserError(f"artifact {args.artifact} is chat-format: it was fitted inside the model's chat template; "
                        f"add --apply-chat-template")
    includes = lm_eval.resolve_includes(args.include)
    names = [bare_name(n) for t in args.tasks for n in t.split(",") if n.strip()]
    specs = []
    for name in names:  # lm-eval's own task objects, checked before the model loads
        loaded = lm_eval.load_lm_eval(name, includes)
        for task in loaded["tasks"].values():
            if task.OUTPUT_TYPE not in ("multiple_choice", "loglikelihood"):
                raise UserError(f"lm-eval task {task.task_name} has output_type {task.OUTPUT_TYPE}; promptgap's "
                                f"lm-eval model scores log-likelihoods only (multiple_choice and loglikelihood tasks)")
        group = loaded.get("groups", {}).get(name)
        specs += [group] if group is not None else list(loaded["tasks"].values())

    from lm_eval.utils import handle_non_serializable, make_table

    from harness.atomic import write_atomic
    from harness.lm_eval_lm import PromptgapLM
    from harness.models import load_model
    from harness.parity import run_lm_eval

    lm = load_model(args.model, device=args.device, dtype=args.dtype)
    model = PromptgapLM(artifact=artifact, lm=lm, batch_size=args.batch_size)
    run = run_lm_eval(model, specs, lm_eval.task_manager(includes, defaults=False), chat=args.apply_chat_template,
                      limit=args.limit, num_fewshot=args.num_fewshot, system_instruction=args.system_instruction)
    results = run.results
    print(f"promptgap lm-eval: artifact {args.artifact} ({artifact.condition or 'no condition'}, {artifact.format}"
          f"{', soft prompt of ' + str(artifact.n_soft) if artifact.n_soft else ''}"
          f"{', prefix of ' + str(artifact.n_prefix) if artifact.n_prefix else ''}) on {lm.name}; "
          f"scoring {run.seconds:.1f}s")
    print(make_table(results))
    if results.get("groups"):
        print(make_table(results, "groups"))
    if args.output:
        if not args.log_samples:
            results = {k: v for k, v in results.items() if k != "samples"}
        write_atomic(args.output, json.dumps(results, indent=2, default=handle_non_serializable,
                                             ensure_ascii=False) + "\n")
        print(f"wrote {args.output}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from harness.models import deterministic
    from harness.runner import Runner

    if args.deterministic:  # before the manifest records the machine; jobs inherit it through the environment
        deterministic(True)

    runner = Runner(args.config, run_id=args.run_id, resume=args.resume, only=args.only,
                    results_root=args.results, executor=args.executor, wait=not args.no_wait,
                    force_unlock=args.force_unlock)
    try:
        run_dir = runner.run()
    except DiskFull as e:
        if not runner.folder.exists():  # it never started: there is nothing to resume
            raise e.with_hint("free space there and run the command again") from None
        raise e.with_hint(f"free space there, then `promptgap run {args.config} --run-id {runner.run_id} --resume` "
                          f"continues the run (finished cells are intact)") from None
    if args.no_wait:
        print(f"submitted: {run_dir}")
        print(f"follow it with `promptgap status {run_dir}`; when it is done, `promptgap report {run_dir}` "
              f"gathers summary.csv and writes the report")
        return 0
    from harness.executors import print_status, status
    from harness.terminal import print_headlines

    if runner.cfg.executor.kind != "local":
        print_status(run_dir, status(run_dir))
    try:
        report = report_run(run_dir, args.reports)
    except DiskFull as e:  # every cell is done: only the report is missing
        raise e.with_hint(f"free space there, then `promptgap report {run_dir}` writes the report (the run is "
                          f"complete)") from None
    print_headlines(run_dir)
    print(f"results: {run_dir}")
    print(f"report:  {report}")
    return 0


def report_run(run_dir: Path, reports_dir: Path = Path("reports"), n_boot: int | None = None,
               compare: Sequence[Path] = ()) -> Path:
    """Audit a run folder and write its report with the audit's result as its checklist: the audit runs here, beside
    the report, and the report only formats what it is handed. ``compare``: other run folders whose trained
    conditions on the same test examples the headline weighs against the ceiling. A suite's run (``promptgap
    bench``) gets its leaderboard written too. Returns the markdown's path."""
    return write_reports(run_dir, reports_dir, n_boot, compare)[0]


def write_reports(run_dir: Path, reports_dir: Path = Path("reports"), n_boot: int | None = None,
                  compare: Sequence[Path] = ()) -> tuple[Path, Any, Any]:
    """``report_run``, returning the report's path, for a suite's run its leaderboard (``findings.Board``, else None),
    and the audit both carry (``audit.Audit``, without the report's own staleness)."""
    from harness.audit import audit
    from harness.report import write_report
    from harness.run_folder import RunFolder, load_run

    others = []
    for other in compare:
        if not RunFolder(Path(other)).exists():
            raise UserError(f"--compare {other}: not a run folder (no config.json); give results/<run-id>")
        others.append(load_run(Path(other)))
    run = load_run(Path(run_dir))
    # the report's own staleness is no item of the report it is part of
    checked = audit(run, with_report=False)
    path = write_report(run, checked, reports_dir, n_boot, others)
    if not (run.config.get("run") or {}).get("suite"):
        return path, None, checked
    # a suite's run: its leaderboard too, from the same audit
    from harness.findings import analyze_groups, board
    from harness.report import write_leaderboard

    boot = int(n_boot or run.config["run"].get("n_boot") or 10_000)
    b = board(run, analyze_groups(run, boot), boot, run.config["run"]["suite"].get("reference"))
    write_leaderboard(b, run.config["run"]["suite"], run, checked, Path(reports_dir), path)
    return path, b, checked


def cmd_bench(args: argparse.Namespace) -> int:
    from harness.report import board_name
    from harness.runner import Runner
    from harness.suite import load_suite

    suite = load_suite(args.suite, args.add, args.add_config, executor=args.executor,
                       budget_tokens=args.budget_tokens, model=args.model, data=args.data)
    for task, why in suite.skipped.items():
        print(f"not run here: task {task}: {why}")
    root = Path(args.results)
    # the command as typed; called in-process (the tests), the arguments that choose what runs
    command = shlex.join(["promptgap", *sys.argv[1:]]) if "bench" in sys.argv[1:] else shlex.join(
        ["promptgap", "bench", "--suite", args.suite, *[a for c in args.add for a in ("--add", c)],
         *(["--add-config", str(args.add_config)] if args.add_config else []),
         *(["--budget-tokens", str(args.budget_tokens)] if args.budget_tokens is not None else []),
         *(["--model", args.model] if args.model else []), *(["--data", str(args.data)] if args.data else [])])
    runner = Runner(suite.path, run_id=suite.run_id, resume=(root / suite.run_id).exists(), results_root=root,
                    cfg=suite.cfg, command=command, reuse=suite.donors(root), recheck=True)
    run_dir = runner.run()
    report, b, _ = write_reports(run_dir, args.reports)  # the run's report and its leaderboard
    from harness.terminal import print_board

    print_board(b)
    print(f"results:     {run_dir}")
    print(f"leaderboard: {Path(args.reports) / board_name(run_dir.name)}.md")
    print(f"report:      {report}")
    return 0


def packaged_config(name: str) -> Path:
    """A config shipped inside the package (harness/configs), as a real file."""
    from importlib import resources

    return Path(str(resources.files("harness") / "configs" / name))


def cmd_demo(args: argparse.Namespace) -> int:
    from harness.config import load_config, shrink
    from harness.runner import Runner
    from harness.terminal import print_headlines

    path = packaged_config("demo.toml")
    cfg = shrink(load_config(path)) if args.smoke else None
    runner = Runner(path, run_id=args.run_id, results_root=args.results, cfg=cfg,
                    command="promptgap demo" + (" --smoke" if args.smoke else ""))
    run_dir = runner.run()
    report = report_run(run_dir, args.reports)
    print_headlines(run_dir)
    print(f"results: {run_dir}")
    print(f"report:  {report}  (the config: {path})")
    return 0


def cmd_init(args: argparse.Namespace) -> int:
    from harness.atomic import write_atomic

    if args.path.exists():
        raise UserError(f"{args.path} exists; give another path (promptgap init other.toml) or remove it")
    write_atomic(args.path, packaged_config("starter.toml").read_text())
    print(f"wrote {args.path}: an annotated config; edit it, then `promptgap run {args.path}`")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from harness.executors import counts, status
    from harness.run_folder import RunFolder
    from harness.runner import gather

    gather(RunFolder(args.run_dir))  # summary.csv and model records from what the jobs wrote
    c = counts(status(args.run_dir))
    if c["running"] or c["pending"]:
        log.warning("%s: %d cell(s) still running and %d pending; the report covers the finished ones",
                    args.run_dir, c["running"], c["pending"])
    if c["damaged"]:
        log.warning("%s: %d damaged cell(s), left out of the statistics and named in the report; "
                    "`promptgap run CONFIG --run-id ID --resume` recomputes them", args.run_dir, c["damaged"])
    print(f"report: {report_run(args.run_dir, args.reports, compare=args.compare or ())}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from harness.executors import print_status, status

    print_status(args.run_dir, status(args.run_dir))
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from harness.audit import audit, print_audit

    result = audit(args.run_dir, report=args.report, rescore=args.rescore)
    print_audit(result)
    return 0 if result.passed else 1


def cmd_export_peft(args: argparse.Namespace) -> int:
    from harness.artifact import PromptArtifact
    from harness.peft_export import export_peft

    artifact = PromptArtifact.load(args.artifact)
    print(f"wrote {export_peft(artifact, args.model, args.out)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="promptgap",
        description="Is prompt work worth it for this model and task? Scores prompt conditions "
        "through one shared log-likelihood scorer on identical splits.",
    )
    ap.add_argument("-v", "--verbose", action="store_true", help="log diagnostics to stderr")
    sub = ap.add_subparsers(dest="command", required=True)

    sub.add_parser("list", help="show tasks, conditions and models").set_defaults(func=cmd_list)

    e = sub.add_parser("eval", help="fit one condition and score it on one split, one JSON line per example",
                       description="Fit a condition on the task's train/dev split and score the chosen split. "
                       "Example: promptgap eval --task winogrande --data-dir ../shared/data/winogrande "
                       "--condition base-raw --split all --out results/wg.jsonl")
    e.add_argument("--model", default="smollm2-135m-instruct", help="model name, hub id or local folder "
                   "(default: the embedded smollm2-135m-instruct)")
    e.add_argument("--task", required=True, help="task name (see `promptgap list`), path to a TOML task spec, or "
                   "lm-eval:NAME (any lm-evaluation-harness log-likelihood task; a group scores each subtask)")
    e.add_argument("--lm-eval-include", action="append", default=None, metavar="DIR",
                   help="a folder of your own lm-eval task YAML files, for --task lm-eval:NAME (repeatable)")
    e.add_argument("--condition", default=None, help="condition name (see `promptgap list`); with --artifact, "
                   "only the label written in the output")
    e.add_argument("--artifact", type=Path, default=None, help="score this saved artifact folder (written by "
                   "--artifact-out or a run's cells/.../artifact) instead of fitting a condition")
    e.add_argument("--split", choices=SPLITS, default="test",
                   help="which part to score; 'all' = the task's evaluation file in file order, no fitting data")
    e.add_argument("--limit", type=int, default=None, help="score only the first N examples of the split")
    e.add_argument("--data-dir", type=Path, default=None, help="local data folder (default: packaged data or hub)")
    e.add_argument("--seed", type=int, default=0, help="split and fitting seed (default 0)")
    e.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a condition setting, e.g. --set instruction='Answer yes or no.' (repeatable)")
    e.add_argument("--batch-size", type=int, default=32)
    e.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps")
    e.add_argument("--dtype", default="auto", help="auto (bf16 on GPU, fp32 on CPU), float32, bfloat16, float16")
    e.add_argument("--deterministic", action="store_true", help=DETERMINISTIC_HELP)
    e.add_argument("--split-special-tokens", action="store_true", help="keep control-token text found in the data "
                   "or the prompt (<|im_end|> in an example) as text; by default it becomes control tokens, as in "
                   "lm-eval and transformers' apply_chat_template")
    e.add_argument("--truncate-left", action="store_true", help="cut a request longer than the model's positions "
                   "from the left, as lm-eval does (default: refuse it, naming the row)")
    e.add_argument("--artifact-out", type=Path, default=None, help="also save the prompt artifact to this folder")
    e.add_argument("--out", type=Path, required=True, help="JSONL file to write (written whole, or not at all)")
    e.set_defaults(func=cmd_eval)

    r = sub.add_parser("run", help="run a config's comparison matrix into results/<run-id>/ and write its report",
                       description="Run models x tasks x seeds x conditions from a TOML config. "
                       "Example: promptgap run configs/quickstart.toml")
    r.add_argument("config", type=Path, help="the TOML run config (see configs/)")
    r.add_argument("--run-id", default=None, help="name of the run folder and its report (default: <config "
                   "name>-<UTC time>): letters, digits, '.', '_', '-', starting with a letter or digit")
    r.add_argument("--resume", action="store_true", help="continue a run: finished cells are kept, not recomputed")
    r.add_argument("--force-unlock", action="store_true", help="take the run folder's lock (lock.json) from a run "
                   "started on another host, whose process cannot be seen from here; only when it no longer runs")
    r.add_argument("--only", nargs="+", default=None, metavar="CONDITION", help="run only these conditions")
    r.add_argument("--results", type=Path, default=Path("results"), help="results root (default results/)")
    r.add_argument("--reports", type=Path, default=Path("reports"), help="reports root (default reports/)")
    r.add_argument("--executor", default=None, metavar="KIND", help="where cells run: local (this process, the "
                   "default), processes (local worker processes) or slurm; replaces the config's [executor] kind")
    r.add_argument("--deterministic", action="store_true", help=DETERMINISTIC_HELP + "; recorded in the manifest "
                   "and in each cell")
    r.add_argument("--no-wait", action="store_true", help="slurm: return once the jobs are submitted; then "
                   "`promptgap status RUN_DIR`, and `promptgap report RUN_DIR` when they are done")
    r.set_defaults(func=cmd_run)

    b = sub.add_parser("bench", help="run a benchmark suite (only the cells it lacks) and write its leaderboard",
                       description="Run a versioned suite of tasks, seeds and conditions into "
                       "results/bench-SUITE-vN, copying every cell an earlier run computed with the same settings, "
                       "split and scoring code, and write reports/leaderboard-SUITE-vN.md. Example: promptgap bench "
                       "--suite smoke --add fewshot")
    b.add_argument("--suite", required=True, help="a packaged suite (smoke) or a path to a suite TOML")
    b.add_argument("--add", action="append", default=[], metavar="CONDITION", help="rank this condition too (a "
                   "built-in or an installed plugin, its default settings; repeatable): only its cells are computed")
    b.add_argument("--add-config", type=Path, default=None, metavar="FILE", help="a TOML of [conditions.NAME] "
                   "tables to rank too, with their settings")
    b.add_argument("--model", default=None, help="run the suite on this model (a hub id, folder or .gguf) instead "
                   "of its own; the run folder's name says which")
    b.add_argument("--data", type=Path, default=None, metavar="DIR", help="the folder holding the local data the "
                   "suite's tasks name (lite: ../shared/data in this project); tasks that need it are not run "
                   "without it")
    b.add_argument("--budget-tokens", type=int, default=None, metavar="N", help="run every ranked search "
                   "condition at this budget of tokens through the model: each stops within it, at its best so far "
                   "on dev")
    b.add_argument("--results", type=Path, default=Path("results"), help="results root (default results/)")
    b.add_argument("--reports", type=Path, default=Path("reports"), help="reports root (default reports/)")
    b.add_argument("--executor", default=None, metavar="KIND", help="where cells run: local, processes or slurm")
    b.set_defaults(func=cmd_bench)

    d = sub.add_parser("demo", help="run the demo matrix offline (a few minutes), write its report, print its headline",
                       description="Run the packaged demo config (antonyms on the embedded model: base, two "
                       "hand-written prompts, a DSPy few-shot search and a trained soft prompt as the ceiling), "
                       "write reports/<run-id>.md and print the headline table. Example: promptgap demo")
    d.add_argument("--run-id", default=None, help="name of the run folder (default: demo-<UTC time>)")
    d.add_argument("--smoke", action="store_true", help="a tiny budget (seconds, not minutes): a check that the "
                   "path works, not a measurement")
    d.add_argument("--results", type=Path, default=Path("results"), help="results root (default results/)")
    d.add_argument("--reports", type=Path, default=Path("reports"), help="reports root (default reports/)")
    d.set_defaults(func=cmd_demo)

    i = sub.add_parser("init", help="write an annotated starter run config to edit",
                       description="Example: promptgap init my-study.toml && promptgap run my-study.toml")
    i.add_argument("path", type=Path, nargs="?", default=Path("promptgap.toml"),
                   help="where to write it (default promptgap.toml); an existing file is never overwritten")
    i.set_defaults(func=cmd_init)

    st = sub.add_parser("status", help="the cells of a run: done, running, failed (with error and job log), pending",
                        description="State from the cell folders and the job records (squeue for Slurm jobs). "
                        "Example: promptgap status results/quickstart")
    st.add_argument("run_dir", type=Path, help="results/<run-id>")
    st.set_defaults(func=cmd_status)

    x = sub.add_parser("export-peft", help="write a start-placement soft prompt or a LoRA adapter as a PEFT adapter",
                       description="Example: promptgap export-peft results/run/cells/.../soft-prompt/artifact "
                       "--out adapters/antonyms")
    x.add_argument("artifact", type=Path, help="a saved soft-prompt or lora artifact folder")
    x.add_argument("--model", default="smollm2-135m-instruct", help="the model it was trained on")
    x.add_argument("--out", type=Path, required=True, help="the adapter folder to write")
    x.set_defaults(func=cmd_export_peft)

    le = sub.add_parser("lm-eval", help="run lm-eval tasks with a saved prompt artifact in front of every request",
                        description="lm-eval's own evaluation (its tasks, requests and results table), each request "
                        "with the artifact's instruction, demos and soft prompt placed by promptgap's renderer and "
                        "scored by its scorer. Example: promptgap lm-eval results/soft/artifact --tasks arc_easy")
    le.add_argument("artifact", type=Path,
                    help="a saved artifact folder (--artifact-out, or a run's cells/.../artifact)")
    le.add_argument("--tasks", nargs="+", required=True, help="lm-eval task, group or tag names (comma or space "
                    "separated)")
    le.add_argument("--include", action="append", default=None, metavar="DIR",
                    help="a folder of your own lm-eval task YAML files (lm-eval's --include_path; repeatable)")
    le.add_argument("--model", default="smollm2-135m-instruct", help="the model the artifact was fitted on")
    le.add_argument("--apply-chat-template", action="store_true", help="lm-eval's --apply_chat_template (needed "
                    "for a chat-format artifact)")
    le.add_argument("--num-fewshot", type=int, default=None, help="lm-eval's --num_fewshot (default: the YAML's)")
    le.add_argument("--system-instruction", default=None, help="lm-eval's --system_instruction")
    le.add_argument("--limit", type=int, default=None, help="only the first N documents of each task")
    le.add_argument("--batch-size", type=int, default=32)
    le.add_argument("--device", default="auto")
    le.add_argument("--dtype", default="auto")
    le.add_argument("--output", type=Path, default=None, help="also write lm-eval's results as JSON here")
    le.add_argument("--log-samples", action="store_true", help="with --output: include every request's response")
    le.set_defaults(func=cmd_lm_eval)

    rp = sub.add_parser("report", help="gather summary.csv from the cells and (re)write the markdown report")
    rp.add_argument("run_dir", type=Path, help="results/<run-id>")
    rp.add_argument("--reports", type=Path, default=Path("reports"), help="reports root (default reports/)")
    rp.add_argument("--compare", type=Path, action="append", metavar="OTHER_RUN",
                    help="another run folder (repeatable): its trained conditions scored on the same test examples "
                    "are weighed against this run's ceiling, and a stronger one is named in the headline")
    rp.set_defaults(func=cmd_report)

    ck = sub.add_parser("check", help="audit a run folder: re-derive every validity claim from its files",
                        description="Re-derive every claim of a run from its files (splits, evidence, scores, "
                        "records, provenance). Exit 0 when every item holds, 1 naming each item that fails. "
                        "Example: promptgap check results/quickstart")
    ck.add_argument("run_dir", type=Path, help="results/<run-id>")
    ck.add_argument("--report", type=Path, default=None, help="the run's markdown report, checked for staleness "
                    "(default: reports/<run-id>.md when it exists)")
    ck.add_argument("--rescore", type=int, nargs="?", const=20, default=None, metavar="N",
                    help="also score N test rows of each cell again with the model (default N: 20) and fail where "
                    "a log-likelihood differs beyond 1e-4 nats in float32 (the bf16 tolerance in bf16)")
    ck.set_defaults(func=cmd_check)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(logging.INFO if args.verbose else logging.WARNING, args.verbose)
    try:
        return args.func(args)
    except UserError as e:
        print(f"promptgap: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        if not is_disk_full(e):
            raise
        # a write outside the atomic writer (a library's own file); what it names is all there is to name
        where = DiskFull(e.filename) if e.filename else ("no space left on a device being written (the writing "
                                                         "library named no file); free space and run the command "
                                                         "again")
        print(f"promptgap: error: {where}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("promptgap: interrupted; what had finished is kept and nothing is half-written (a run goes on where "
              "it stopped when the same command runs again)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
