"""The command line, end to end on the real model: list, eval output schema, and one-line errors on bad input."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from harness.cli import main

FIXTURES = Path(__file__).parent / "fixtures"


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_list_shows_every_kind_of_name(capsys) -> None:
    code, out, _ = run(capsys, "list")
    assert code == 0
    for name in ("winogrande", "boolq", "antonyms", "sst2", "base-raw", "base-chat", "handwritten",
                 "smollm2-135m-instruct"):
        assert name in out


def test_console_script_help() -> None:
    out = subprocess.run([sys.executable, "-m", "harness.cli", "eval", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "--condition" in out.stdout and "--split" in out.stdout


def test_eval_antonyms_writes_the_documented_schema(capsys, tmp_path) -> None:
    out_file = tmp_path / "a.jsonl"
    code, out, _ = run(capsys, "eval", "--task", "antonyms", "--condition", "handwritten", "--limit", "6",
                       "--out", str(out_file))
    assert code == 0
    rows = [json.loads(line) for line in out_file.read_text().splitlines()]
    assert len(rows) == 6
    for r in rows:
        assert {"example_id", "choice_loglik", "gold", "pred", "correct", "gold_nll", "greedy_match",
                "split_hash"} <= set(r)
        assert r["correct"] == r["greedy_match"]
        # single continuation: gold_nll is the mean per-token NLL of the gold continuation
        assert r["gold_nll"] == pytest.approx(-r["choice_loglik"][0] / r["choice_ntokens"][0])
    assert "greedy exact match" in out


def test_eval_winogrande_all_in_file_order(capsys, tmp_path) -> None:
    out_file = tmp_path / "w.jsonl"
    code, out, _ = run(capsys, "eval", "--task", "winogrande", "--data-dir", str(FIXTURES / "winogrande"),
                       "--condition", "base-raw", "--split", "all", "--out", str(out_file))
    assert code == 0
    rows = [json.loads(line) for line in out_file.read_text().splitlines()]
    ids = [json.loads(line)["qID"] for line in (FIXTURES / "winogrande" / "dev.jsonl").read_text().splitlines()
           if line.strip()]
    assert [r["example_id"] for r in rows] == ids
    for r in rows:
        lls = r["choice_loglik"]
        assert len(lls) == 2 and r["pred"] == (0 if lls[0] >= lls[1] else 1)
        assert r["correct"] == (r["pred"] == r["gold"])
        log_z = max(lls) + math.log(sum(math.exp(x - max(lls)) for x in lls))
        assert r["gold_nll"] == pytest.approx(log_z - lls[r["gold"]])
    acc = sum(r["correct"] for r in rows) / len(rows)
    assert f"accuracy: {acc:.4f}" in out


@pytest.mark.parametrize(("argv", "needle"), [
    (["--task", "nosuch", "--condition", "base-raw"], "unknown task 'nosuch'; valid: antonyms, boolq"),
    (["--task", "antonyms", "--condition", "nosuch"], "unknown condition 'nosuch'; valid: base-chat, base-raw"),
    (["--task", "antonyms", "--condition", "handwritten", "--set", "colour=red"], "unknown setting(s) colour"),
    (["--task", "antonyms", "--condition", "base-raw", "--model", "/nonexistent/model.gguf"], "does not exist"),
    (["--task", "antonyms", "--condition", "base-raw", "--model", "no-such-org/no-such-model"],
     "known: smollm2-135m-instruct"),
    (["--task", "winogrande", "--data-dir", "/nonexistent", "--condition", "base-raw"], "does not exist"),
])
def test_bad_names_are_one_line_errors_with_exit_2(capsys, tmp_path, argv, needle) -> None:
    out_file = tmp_path / "o.jsonl"
    code, _, err = run(capsys, "eval", *argv, "--out", str(out_file))
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("promptgap: error: ")
    assert needle in err
    assert not out_file.exists() and not list(tmp_path.iterdir())


@pytest.mark.parametrize(("row", "needle"), [
    ({"qID": "a", "sentence": "No blank here.", "option1": "x", "option2": "y", "answer": "1"}, "dev.jsonl:2"),
    ({"qID": "a", "sentence": "A _ b.", "option1": "x", "option2": "y", "answer": "3"}, "out of range"),
])
def test_bad_rows_name_file_and_row_and_leave_no_output(capsys, tmp_path, row, needle) -> None:
    data = tmp_path / "data"
    data.mkdir()
    good = {"qID": "ok", "sentence": "A _ b.", "option1": "x", "option2": "y", "answer": "2"}
    (data / "dev.jsonl").write_text(json.dumps(good) + "\n" + json.dumps(row) + "\n")
    out_file = tmp_path / "out" / "o.jsonl"
    code, _, err = run(capsys, "eval", "--task", "winogrande", "--data-dir", str(data), "--condition", "base-raw",
                       "--split", "all", "--out", str(out_file))
    assert code == 2 and needle in err and str(data / "dev.jsonl") in err
    assert not out_file.parent.exists() or not list(out_file.parent.iterdir())


def weightless_model(folder: Path, positions: int) -> Path:
    """The embedded model's config and tokenizer without its weights, reading ``positions`` positions: loading it
    fails, so a refusal that comes with it came before any model loaded."""
    import shutil

    from harness.models import embedded_folder

    folder.mkdir()
    for f in embedded_folder().iterdir():
        if f.suffix != ".safetensors":
            shutil.copy(f, folder / f.name)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "max_position_embeddings": positions}))
    return folder


def test_over_long_row_is_refused_before_any_model_loads(capsys, tmp_path) -> None:
    from transformers import AutoTokenizer

    model = weightless_model(tmp_path / "model", positions=64)
    long_question = "Which of these words " + "is a word " * 20 + "?"
    rows = [{"id": f"q{i}", "question": f"Is {i} even?", "label": i % 2} for i in range(6)]
    rows[3] = {"id": "q3", "question": long_question, "label": 0}
    (tmp_path / "q.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    spec = tmp_path / "q.toml"
    spec.write_text('name = "q"\ndata = "q.jsonl"\ntemplate = "Q: {question}\\nA:"\nchoices = ["yes", "no"]\n'
                    'label_field = "label"\nid_field = "id"\n[sizes]\ntrain = 2\ndev = 1\ntest = "all"\n')
    # the length, counted here with the tokenizer alone: lm-eval's positions, (context + continuation)[:-1]
    tok = AutoTokenizer.from_pretrained(model)
    length = max(len(tok.encode(f"Q: {long_question}\nA: {c}")) - 1 for c in ("yes", "no"))
    assert length > 64

    code, _, err = run(capsys, "eval", "--model", str(model), "--task", str(spec), "--condition", "base-raw",
                       "--split", "test", "--out", str(tmp_path / "o.jsonl"))
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    for part in ("task q", "'q3'", f"{length} tokens", "64 positions", "before the model loads"):
        assert part in err, err
    assert not (tmp_path / "o.jsonl").exists()

    config = tmp_path / "c.toml"
    config.write_text(f'[run]\nmodels = ["{model}"]\n[[tasks]]\nname = "{spec}"\n'
                      '[conditions.base-raw]\n[conditions.handwritten]\n')
    code, _, err = run(capsys, "run", str(config), "--run-id", "long", "--results", str(tmp_path / "res"))
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    for part in ("'q3'", f"{length} tokens", "64 positions"):
        assert part in err, err
    assert not (tmp_path / "res" / "long").exists()  # refused before the run folder is made

    # without the long row the same weightless model gets as far as loading, and fails there: the check above is
    # what stopped the run, not the missing weights
    rows[3] = {"id": "q3", "question": "Is 3 even?", "label": 0}
    (tmp_path / "q.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    code, _, err = run(capsys, "eval", "--model", str(model), "--task", str(spec), "--condition", "base-raw",
                       "--out", str(tmp_path / "o.jsonl"))
    assert code == 2 and "could not load model" in err, err
