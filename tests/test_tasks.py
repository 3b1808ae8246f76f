"""Tests of the built-in tasks and spec tasks: examples, deterministic splits, and one-line input errors."""

from __future__ import annotations

import importlib.util
import json
import logging
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from harness.data import Example
from harness.errors import UserError
from harness.task import SplitSizes, Task, read_rows
from tasks.antonyms import Antonyms
from tasks.boolq import BoolQ, hub_to_local
from tasks.generic import SpecTask
from tasks.sst2 import SST2
from tasks.winogrande import WinoGrande

FIXTURES = Path(__file__).parent / "fixtures"
SPECS = FIXTURES / "spec"


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


def raises_naming(*parts: str) -> Any:
    """A UserError whose one-line message holds every one of ``parts`` (file, row, ...)."""
    return pytest.raises(UserError, match="(?s)" + "".join(f"(?=.*{re.escape(p)})" for p in parts))


# --- to_example on the fixtures, against hand-checked strings -------------------------------------------------


def test_winogrande_example() -> None:
    ex = WinoGrande(FIXTURES / "winogrande").all_examples()[0]
    assert ex.id == "fx-dev-1"
    assert ex.contexts == ("Anna lent her umbrella to Beth because Anna", "Anna lent her umbrella to Beth because Beth")
    assert ex.continuations == ("was going out into the rain.",)
    assert ex.gold == 1
    assert ex.choice(1) == ("Anna lent her umbrella to Beth because Beth", "was going out into the rain.")
    assert ex.solved_text() == "Anna lent her umbrella to Beth because Beth was going out into the rain."


def test_boolq_example_rejoins_title() -> None:
    examples = BoolQ(FIXTURES / "boolq").all_examples()
    ex = examples[0]
    assert ex.id == "0"
    assert ex.contexts == (
        "Moon -- The Moon is the only natural satellite of the Earth. Its diameter is about a quarter of the Earth's."
        "\nQuestion: is the moon bigger than the earth?\nAnswer:",
    )
    assert ex.continuations == ("no", "yes")
    assert ex.gold == 0 and ex.delimiter == " "
    assert ex.solved_text().endswith("?\nAnswer: no")
    assert examples[1].gold == 1
    # an empty title (the hub's form) leaves the passage as it is
    assert examples[9].contexts[0].startswith("Whale -- Whales breathe air")
    assert "--" not in examples[9].contexts[0].replace("Whale -- ", "", 1)


def test_boolq_hub_rows_match_local_rows() -> None:
    task = BoolQ(FIXTURES / "boolq")
    local = task.all_examples()[1]
    passage = "Tomato -- Botanically, a tomato is a fruit, a berry grown from the ovary of a flowering plant."
    hub_row = {"question": "is a tomato a fruit", "idx": 1, "label": 1, "passage": passage}
    hub = task.to_example(hub_to_local(hub_row, "validation"), "aps/super_glue[validation]#1")
    assert (hub.id, hub.contexts, hub.continuations, hub.gold) == (
        local.id, local.contexts, local.continuations, local.gold)
    # train ids must not collide with validation ids
    assert task.to_example(hub_to_local(hub_row, "train"), "w").id == "train-1"
    assert hub_to_local({**hub_row, "label": 0}, "validation")["answer"] is False


@pytest.mark.parametrize("answer,gold", [("true", 1), ("False", 0), (True, 1)])
def test_boolq_answer_spellings(answer: object, gold: int) -> None:
    row = {"question": "q", "title": "T", "passage": "p", "answer": answer, "idx": 5}
    assert BoolQ(FIXTURES / "boolq").to_example(row, "f:1").gold == gold


def test_sst2_example_keeps_sentence_verbatim() -> None:
    examples = SST2(FIXTURES / "sst2").all_examples()
    ex = examples[0]
    assert ex.id == "dev-0"
    assert ex.contexts == ("a bright and lively comedy . \nQuestion: Is this sentence positive or negative?\nAnswer:",)
    assert ex.continuations == ("negative", "positive")
    assert ex.gold == 1
    assert ex.solved_text().endswith("Answer: positive")
    # TSV quoting is off, so quote characters stay in the sentence
    assert examples[2].contexts[0].startswith('the " twist " is obvious')
    assert [e.id for e in examples][-1] == "dev-9"


def test_antonyms_example_and_marker() -> None:
    ex = Antonyms().to_example({"word1": "hot", "word2": "cold"}, "f:1")
    assert ex == Example(id="hot-cold", contexts=("Here are two antonyms hot and",), continuations=("cold",), gold=0)
    assert ex.solved_text() == "Here are two antonyms hot and cold"
    assert Antonyms.kind == "continuation"
    # the soft prompt replaces this word, so it must occur exactly once in the context
    assert ex.contexts[0].split().count(Antonyms.marker) == 1


def test_antonyms_function_vectors_file_drops_duplicates(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        examples = Antonyms(FIXTURES / "antonyms_fv").all_examples()
    assert [e.id for e in examples] == ["up-down", "early-late", "calm-stormy", "sharp-blunt", "wet-dry"]
    assert "duplicate pair up-down" in caplog.text and "function_vectors_antonym.tsv:4" in caplog.text


def test_antonyms_antsynnet_file_has_a_header() -> None:
    examples = Antonyms(FIXTURES / "antonyms_antsynnet").all_examples()
    assert [e.id for e in examples] == ["quick-slow", "lend-borrow", "victory-defeat", "ascend-descend"]


def test_spec_task_with_fixed_choices() -> None:
    task = SpecTask.from_toml(SPECS / "fruit.toml")
    assert task.name == "fruit-colour"
    assert task.instruction == "Name the usual colour of the fruit."
    assert task.default_sizes == SplitSizes(train=2, dev=2, test=None)
    ex = task.all_examples()[1]
    assert ex.id == "fruit.csv:3"
    assert ex.contexts == ("Fruit: banana\nColour:",)
    assert ex.continuations == ("red", "yellow", "green")
    assert ex.gold == 1
    assert ex.solved_text() == "Fruit: banana\nColour: yellow"


def test_spec_task_with_row_choices_and_dev_file() -> None:
    task = SpecTask.from_toml(SPECS / "quiz.toml")
    ex = task.all_examples()[0]
    assert ex.id == "d1"
    assert ex.contexts == ("Question: How many days are in a week?\nAnswer:",)
    assert ex.continuations == ("five", "seven", "ten")
    assert ex.gold == 1
    split = task.split(0)
    assert len(split.train) == 3 and len(split.dev) == 2 and len(split.test) == 3
    assert {e.id for e in split.train} <= {"t1", "t2", "t3", "t4"}


def test_spec_data_dir_overrides_the_spec_folder(tmp_path: Path) -> None:
    spec = write(tmp_path / "elsewhere.toml", (SPECS / "fruit.toml").read_text(encoding="utf-8"))
    assert len(SpecTask.from_toml(spec, data_dir=SPECS).all_examples()) == 7
    with raises_naming(str(tmp_path / "fruit.csv"), "does not exist"):
        SpecTask.from_toml(spec).all_examples()


# --- splits -----------------------------------------------------------------------------------------------------

TASKS: dict[str, tuple[Callable[[], Task], SplitSizes]] = {
    "winogrande": (lambda: WinoGrande(FIXTURES / "winogrande"), SplitSizes(train=3, dev=2, test=3)),
    "boolq": (lambda: BoolQ(FIXTURES / "boolq"), SplitSizes(train=4, dev=2, test=3)),
    "sst2": (lambda: SST2(FIXTURES / "sst2"), SplitSizes(train=5, dev=3, test=None)),
    "antonyms-packaged": (lambda: Antonyms(), SplitSizes(train=200, dev=50, test=None)),
    "antonyms-fv": (lambda: Antonyms(FIXTURES / "antonyms_fv"), SplitSizes(train=2, dev=1, test=2)),
    "spec-fruit": (lambda: SpecTask.from_toml(SPECS / "fruit.toml"), SplitSizes(train=3, dev=2, test=None)),
    "spec-quiz": (lambda: SpecTask.from_toml(SPECS / "quiz.toml"), SplitSizes(train=None, dev=2, test=2)),
}


@pytest.mark.parametrize("key", TASKS)
def test_split_is_deterministic_and_disjoint(key: str) -> None:
    make, sizes = TASKS[key]
    a, b = make().split(0, sizes), make().split(0, sizes)
    assert a.hash == b.hash and a.hashes == b.hashes
    for part in ("train", "dev", "test"):
        assert [e.id for e in a.part(part)] == [e.id for e in b.part(part)]
    ids = [e.id for part in ("train", "dev", "test") for e in a.part(part)]
    assert len(ids) == len(set(ids))
    # some seed among a few reorders the parts (tiny fixtures can coincide by chance for a single seed)
    assert any(make().split(seed, sizes).hash != a.hash for seed in (1, 2, 3))


def test_split_sizes() -> None:
    split = Antonyms().split(0)
    n = len(Antonyms().all_examples())
    assert (len(split.train), len(split.dev), len(split.test)) == (200, 50, n - 250)
    split = BoolQ(FIXTURES / "boolq").split(0, SplitSizes(train=None, dev=2, test=3))
    assert (len(split.train), len(split.dev), len(split.test)) == (5, 2, 3)


def test_pool_split_keeps_dev_and_test_when_train_size_changes() -> None:
    small = Antonyms().split(7, SplitSizes(train=20, dev=30, test=40))
    large = Antonyms().split(7, SplitSizes(train=100, dev=30, test=40))
    assert small.hashes["dev"] == large.hashes["dev"] and small.hashes["test"] == large.hashes["test"]
    assert {e.id for e in small.train} <= {e.id for e in large.train}


# --- bad input: one-line UserErrors that name the file and row ---------------------------------------------------

WINO_ROW = {"qID": "x1", "sentence": "Sam thanked Kim because _ had helped.",
            "option1": "Sam", "option2": "Kim", "answer": "2"}


def test_winogrande_row_without_blank(tmp_path: Path) -> None:
    path = write(tmp_path / "dev.jsonl", jsonl([WINO_ROW, {**WINO_ROW, "sentence": "Sam thanked Kim."}]))
    with raises_naming(f"{path}:2", "'_'"):
        WinoGrande(tmp_path).all_examples()


def test_winogrande_answer_out_of_range(tmp_path: Path) -> None:
    path = write(tmp_path / "dev.jsonl", jsonl([{**WINO_ROW, "answer": "3"}]))
    with raises_naming(f"{path}:1", "out of range"):
        WinoGrande(tmp_path).all_examples()


def test_boolq_answer_not_boolean(tmp_path: Path) -> None:
    row = {"question": "q", "title": "T", "passage": "p", "idx": 0}
    path = write(tmp_path / "dev.jsonl", jsonl([{**row, "answer": True}, {**row, "idx": 1, "answer": "maybe"}]))
    with raises_naming(f"{path}:2", "'maybe'", "true or false"):
        BoolQ(tmp_path).all_examples()


def test_boolq_missing_field(tmp_path: Path) -> None:
    path = write(tmp_path / "dev.jsonl", jsonl([{"question": "q", "title": "T", "answer": True, "idx": 0}]))
    with raises_naming(f"{path}:1", "'passage'"):
        BoolQ(tmp_path).all_examples()


def test_sst2_label_out_of_range(tmp_path: Path) -> None:
    path = write(tmp_path / "glue_sst2_dev.tsv", "sentence\tlabel\nfine . \t1\nodd . \t2\n")
    with raises_naming(f"{path}:3", "'2'", "out of range"):
        SST2(tmp_path).all_examples()


def test_tsv_row_with_wrong_column_count(tmp_path: Path) -> None:
    path = write(tmp_path / "glue_sst2_dev.tsv", "sentence\tlabel\nfine . \t1\nno label here\n")
    with raises_naming(f"{path}:3", "columns"):
        SST2(tmp_path).all_examples()


def test_antonyms_blank_word(tmp_path: Path) -> None:
    path = write(tmp_path / "function_vectors_antonym.tsv", "up\tdown\nleft\t\n")
    with raises_naming(f"{path}:2", "word2"):
        Antonyms(tmp_path).all_examples()


def test_malformed_json_line(tmp_path: Path) -> None:
    path = write(tmp_path / "dev.jsonl", jsonl([WINO_ROW]) + '{"qID": "x2", "sentence": \n')
    with raises_naming(f"{path}:2", "not valid JSON"):
        WinoGrande(tmp_path).all_examples()


def test_missing_file(tmp_path: Path) -> None:
    with raises_naming(str(tmp_path), "glue_sst2_dev.tsv", "--data-dir"):
        SST2(tmp_path).all_examples()
    with raises_naming(str(tmp_path / "nope.jsonl"), "does not exist"):
        list(read_rows(tmp_path / "nope.jsonl"))
    with raises_naming(str(tmp_path / "absent"), "does not exist"):
        BoolQ(tmp_path / "absent")


def test_empty_file(tmp_path: Path) -> None:
    write(tmp_path / "dev.jsonl", "\n")
    with raises_naming("boolq", "no examples"):
        BoolQ(tmp_path).all_examples()


def test_empty_split() -> None:
    with raises_naming("boolq", "dev split is empty"):
        BoolQ(FIXTURES / "boolq").split(0, SplitSizes(train=2, dev=0, test=2))


def test_split_larger_than_data() -> None:
    with raises_naming("boolq", "only 10 exist"):
        BoolQ(FIXTURES / "boolq").split(0, SplitSizes(train=8, dev=2, test=3))


def test_pool_split_needs_one_numeric_size() -> None:
    with raises_naming("boolq", "train and test"):
        BoolQ(FIXTURES / "boolq").split(0, SplitSizes(train=None, dev=2, test=None))


SPEC = 'name = "t"\ndata = "d.jsonl"\ntemplate = "{q}\\nA:"\nchoices = ["no", "yes"]\nlabel_field = "y"\n'
ROWS = [{"q": "one", "y": 1}, {"q": "two", "y": "yes"}]


def spec_task(tmp_path: Path, spec: str = SPEC, rows: list[dict] = ROWS) -> SpecTask:
    write(tmp_path / "d.jsonl", jsonl(rows))
    return SpecTask.from_toml(write(tmp_path / "t.toml", spec))


def test_spec_label_as_index_or_choice(tmp_path: Path) -> None:
    assert [e.gold for e in spec_task(tmp_path).all_examples()] == [1, 1]


def test_spec_unknown_key(tmp_path: Path) -> None:
    with raises_naming(str(tmp_path / "t.toml"), "unknown key", "labels", "allowed keys"):
        spec_task(tmp_path, SPEC + 'labels = "y"\n')
    with raises_naming(str(tmp_path / "t.toml"), "sizes.val"):
        spec_task(tmp_path, SPEC + "[sizes]\nval = 3\n")


def test_spec_missing_key(tmp_path: Path) -> None:
    with raises_naming(str(tmp_path / "t.toml"), "missing key", "label_field"):
        spec_task(tmp_path, SPEC.replace('label_field = "y"\n', ""))
    with raises_naming(str(tmp_path / "t.toml"), "choices_field"):
        spec_task(tmp_path, SPEC.replace('choices = ["no", "yes"]\n', ""))


def test_spec_bad_toml_and_bad_template(tmp_path: Path) -> None:
    with raises_naming(str(tmp_path / "t.toml"), "not valid TOML"):
        spec_task(tmp_path, SPEC + "oops\n")
    with raises_naming(str(tmp_path / "t.toml"), "format string"):
        spec_task(tmp_path, SPEC.replace("{q}", "{q"))
    with raises_naming(str(tmp_path / "nope.toml"), "does not exist"):
        SpecTask.from_toml(tmp_path / "nope.toml")


def test_spec_template_field_absent_from_row(tmp_path: Path) -> None:
    task = spec_task(tmp_path, rows=[ROWS[0], {"question": "two", "y": 0}])
    with raises_naming(f"{tmp_path / 'd.jsonl'}:2", "template field", "q", str(tmp_path / "t.toml")):
        task.all_examples()


def test_spec_label_out_of_range(tmp_path: Path) -> None:
    task = spec_task(tmp_path, rows=[ROWS[0], {"q": "two", "y": 2}])
    with raises_naming(f"{tmp_path / 'd.jsonl'}:2", "out of range", "0..1"):
        task.all_examples()
    task = spec_task(tmp_path, rows=[{"q": "one", "y": "maybe"}])
    with raises_naming(f"{tmp_path / 'd.jsonl'}:1", "'maybe'", "neither"):
        task.all_examples()


def test_spec_duplicate_ids(tmp_path: Path) -> None:
    task = spec_task(tmp_path, SPEC + 'id_field = "q"\n', rows=[ROWS[0], ROWS[0]])
    with raises_naming("'one'", "twice", str(tmp_path / "d.jsonl")):
        task.all_examples()


# --- the packaged antonym list ----------------------------------------------------------------------------------


def test_packaged_antonym_list() -> None:
    examples = Antonyms().all_examples()
    pairs = [(e.fields["word1"], e.fields["word2"]) for e in examples]
    assert 300 <= len(pairs) <= 400
    ids = [e.id for e in examples]
    assert len(ids) == len(set(ids))
    assert len({w1 for w1, _ in pairs}) == len(pairs)
    both_ways = {(a, b) for a, b in pairs if (b, a) in set(pairs)}
    assert not both_ways
    assert all(w.isalpha() and w.islower() for pair in pairs for w in pair)


# --- the real data in ../shared/data (skipped when absent) ------------------------------------------------------


@pytest.fixture(scope="module")
def shared_data() -> Path:
    path = Path(__file__).parents[1].parent / "shared" / "data"
    if not path.is_dir():
        pytest.skip(f"real task data not found at {path}")
    return path


def test_real_winogrande(shared_data: Path) -> None:
    task = WinoGrande(shared_data / "winogrande")
    assert len(task.all_examples()) == 1267
    split = task.split(0)
    assert (len(split.train), len(split.dev), len(split.test)) == (640, 300, 967)


def test_real_boolq(shared_data: Path) -> None:
    examples = BoolQ(shared_data / "boolq").all_examples()
    assert len(examples) == 3270
    assert sum(e.gold for e in examples) == 2033
    assert examples[0].id == "0"
    assert examples[0].contexts[0].startswith("Ethanol fuel -- All biomass goes through")
    assert all(e.contexts[0].startswith(e.fields["title"] + " -- ") for e in examples)
    split = BoolQ(shared_data / "boolq").split(0)
    assert (len(split.train), len(split.dev), len(split.test)) == (500, 200, 500)


def test_real_sst2(shared_data: Path) -> None:
    task = SST2(shared_data / "sst2")
    examples = task.all_examples()
    assert len(examples) == 872 and sum(e.gold for e in examples) == 444
    assert examples[0].contexts[0].startswith("it 's a charming and often affecting journey . \nQuestion:")
    split = task.split(0, SplitSizes(train=None, dev=200, test=None))
    assert (len(split.train), len(split.dev), len(split.test)) == (67349, 200, 672)


def test_real_antonyms(shared_data: Path, tmp_path: Path) -> None:
    examples = Antonyms(shared_data / "antonyms").all_examples()
    assert len(examples) == 2398 == len({e.id for e in examples})
    # the AntSynNET file is read only when the function-vectors file is absent: link it into an empty folder
    (tmp_path / "antsynnet_antonyms.tsv").symlink_to(shared_data / "antonyms" / "antsynnet_antonyms.tsv")
    assert len(Antonyms(tmp_path).all_examples()) == 7448


# --- parity of our contexts with lm-eval's own templates --------------------------------------------------------


def lm_eval_doc_to_text(task_dir: str) -> Callable[[dict], str]:
    if importlib.util.find_spec("lm_eval") is None:
        pytest.skip("lm-eval is not installed")
    import yaml
    from lm_eval.utils import apply_template

    spec = importlib.util.find_spec("lm_eval")
    assert spec is not None and spec.submodule_search_locations
    config = Path(spec.submodule_search_locations[0]) / "tasks" / task_dir / "default.yaml"
    template = yaml.safe_load(config.read_text(encoding="utf-8"))["doc_to_text"]
    return lambda doc: apply_template(template, doc)


def test_boolq_matches_lm_eval_template() -> None:
    render = lm_eval_doc_to_text("super_glue/boolq")
    for ex in BoolQ(FIXTURES / "boolq").all_examples():
        row = ex.fields
        passage = f"{row['title']} -- {row['passage']}" if row["title"] else row["passage"]
        assert ex.contexts[0] == render({"question": row["question"], "passage": passage})


def test_sst2_matches_lm_eval_template() -> None:
    render = lm_eval_doc_to_text("glue/sst2")
    for ex in SST2(FIXTURES / "sst2").all_examples():
        assert ex.contexts[0] == render({"sentence": ex.fields["sentence"]})


def test_invalid_utf8_in_spec_data_names_file_and_line(tmp_path: Path) -> None:
    data = tmp_path / "quiz.jsonl"
    rows = [{"id": f"q{i}", "question": f"Q{i}?", "label": "yes"} for i in range(3)]
    good = jsonl(rows).encode("utf-8")
    # Latin-1 "café" on the third line: the bytes a non-UTF-8 editor writes
    data.write_bytes(good + b'{"id": "q3", "question": "caf\xe9?", "label": "no"}\n')
    write(tmp_path / "quiz.toml", 'name = "q"\ndata = "quiz.jsonl"\ntemplate = "{question}"\n'
          'choices = ["no", "yes"]\nlabel_field = "label"\nid_field = "id"\n')
    with raises_naming(f"{data}:4", "UTF-8"):
        SpecTask.from_toml(tmp_path / "quiz.toml").all_examples()


@pytest.mark.parametrize("suffix", ["tsv", "csv", "jsonl"])
def test_byte_order_mark_is_read(tmp_path: Path, suffix: str) -> None:
    """A spreadsheet's UTF-8 byte-order mark is no part of the first column's name (it was "missing field 'id'")."""
    if suffix == "jsonl":
        text = jsonl([{"id": "a", "word": "up", "label": "0"}, {"id": "b", "word": "hot", "label": "1"}])
    else:
        sep = "\t" if suffix == "tsv" else ","
        text = "".join(sep.join(r) + "\n" for r in [("id", "word", "label"), ("a", "up", "0"), ("b", "hot", "1")])
    (tmp_path / f"d.{suffix}").write_bytes(b"\xef\xbb\xbf" + text.encode("utf-8"))
    write(tmp_path / "s.toml", f'\ufeffname = "bom"\ndata = "d.{suffix}"\ntemplate = "{{word}}"\n'
          'choices = ["down", "cold"]\nlabel_field = "label"\nid_field = "id"\n')
    examples = SpecTask.from_toml(tmp_path / "s.toml").all_examples()
    assert [(e.id, e.contexts[0], e.gold) for e in examples] == [("a", "up", 0), ("b", "hot", 1)]
