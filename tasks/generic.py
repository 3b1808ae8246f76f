"""A multiple-choice task defined by a data file plus a small TOML spec, so a new task needs no Python.

Example spec (paths are relative to the spec file, or to ``data_dir`` when one is given)::

    name = "capitals"
    data = "capitals.jsonl"          # .jsonl, .csv or .tsv
    dev_data = "capitals_dev.jsonl"  # optional: dev/test come from here, train from `data`
    template = "Q: What is the capital of {country}?\\nA:"   # str.format over the row's fields
    choices = ["Paris", "Rome", "Madrid"]   # or: choices_field = "options" (a list field of each row)
    label_field = "answer"           # holds a choice index (0-based) or the choice string itself
    id_field = "id"                  # optional; default "<file name>:<line>"
    delimiter = " "                  # optional; joins context and choice (lm-eval's target_delimiter)
    instruction = "Name the capital city."   # optional
    summary = "Capital cities, 3 choices"    # optional

    [sizes]                          # optional; "all" (or leaving train out) takes what is left
    train = 20
    dev = 10
    test = "all"
"""

from __future__ import annotations

import string
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.data import Example, Split
from harness.errors import UserError
from harness.task import Row, SplitSizes, Task, read_text, require, split_from_pool

REQUIRED_KEYS = ("name", "data", "template", "label_field")
OPTIONAL_KEYS = ("dev_data", "choices", "choices_field", "id_field", "delimiter", "instruction", "summary", "sizes")
SIZE_KEYS = ("train", "dev", "test")
DEFAULT_SIZES = SplitSizes(train=None, dev=100, test=200)


def template_fields(template: str, where: str) -> tuple[str, ...]:
    """Names of the row fields a str.format template reads; a broken template is a UserError."""
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as e:
        raise UserError(f"{where}: template is not a valid format string ({e}); double any literal braces") from None
    names = []
    for _, field_name, _, _ in parsed:
        if field_name is None:
            continue
        # "{a.b}" and "{a[0]}" read field "a"
        base = field_name.split(".", 1)[0].split("[", 1)[0]
        if not base or base.isdigit():
            raise UserError(
                f"{where}: template field {{{field_name}}} has no name; name the row field, e.g. {{question}}"
            )
        names.append(base)
    return tuple(dict.fromkeys(names))


def _size(value: Any, key: str, where: str, allow_all: bool) -> int | None:
    if allow_all and value == "all":
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < (0 if allow_all else 1):
        hint = "a whole number >= 0 or \"all\"" if allow_all else "a whole number >= 1"
        raise UserError(f"{where}: sizes.{key} = {value!r} is not valid; use {hint}")
    return value


@dataclass(frozen=True)
class Spec:
    """A parsed, validated task spec."""

    path: Path
    name: str
    data: str
    template: str
    label_field: str
    fields: tuple[str, ...]
    dev_data: str | None = None
    choices: tuple[str, ...] | None = None
    choices_field: str | None = None
    id_field: str | None = None
    delimiter: str = " "
    instruction: str | None = None
    summary: str | None = None
    sizes: SplitSizes = DEFAULT_SIZES

    @classmethod
    def load(cls, path: str | Path) -> Spec:
        path = Path(path)
        if not path.is_file():
            raise UserError(f"task spec {path} does not exist; check the path")
        try:
            raw = tomllib.loads(read_text(path, "task spec"))
        except tomllib.TOMLDecodeError as e:
            raise UserError(f"task spec {path}: not valid TOML ({e}); fix the spec") from None
        where = f"task spec {path}"

        unknown = sorted(set(raw) - set(REQUIRED_KEYS) - set(OPTIONAL_KEYS))
        if unknown:
            raise UserError(
                f"{where}: unknown key(s) {', '.join(unknown)}; allowed keys are "
                f"{', '.join(REQUIRED_KEYS + OPTIONAL_KEYS)}"
            )
        missing = [k for k in REQUIRED_KEYS if k not in raw]
        if missing:
            raise UserError(f"{where}: missing key(s) {', '.join(missing)}; add them (see tasks/generic.py)")
        for k in REQUIRED_KEYS + OPTIONAL_KEYS:
            if k in raw and k not in ("choices", "sizes") and not isinstance(raw[k], str):
                raise UserError(f"{where}: {k} must be a string, got {raw[k]!r}; quote it")
        for k in ("name", "data", "template", "label_field"):
            if not raw[k].strip():
                raise UserError(f"{where}: {k} is empty; give it a value")
        # the delimiter may legitimately be "" (no separator) or "\n"

        if ("choices" in raw) == ("choices_field" in raw):
            raise UserError(
                f"{where}: give exactly one of choices (a list) or choices_field (a row field holding a list)"
            )
        choices = None
        if "choices" in raw:
            choices = raw["choices"]
            if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) for c in choices):
                raise UserError(f"{where}: choices must be a list of at least two strings, e.g. [\"no\", \"yes\"]")
            if len(set(choices)) != len(choices):
                raise UserError(f"{where}: choices {choices} repeat a choice; make them distinct")
            choices = tuple(choices)

        sizes = DEFAULT_SIZES
        if "sizes" in raw:
            table = raw["sizes"]
            if not isinstance(table, dict):
                raise UserError(f"{where}: sizes must be a table ([sizes] with train, dev, test)")
            bad = sorted(set(table) - set(SIZE_KEYS))
            if bad:
                raise UserError(f"{where}: unknown key(s) sizes.{', sizes.'.join(bad)}; allowed are train, dev, test")
            sizes = SplitSizes(
                train=_size(table["train"], "train", where, True) if "train" in table else None,
                dev=_size(table["dev"], "dev", where, False) if "dev" in table else DEFAULT_SIZES.dev,
                test=_size(table["test"], "test", where, True) if "test" in table else DEFAULT_SIZES.test,
            )

        return cls(
            path=path,
            name=raw["name"],
            data=raw["data"],
            template=raw["template"],
            label_field=raw["label_field"],
            fields=template_fields(raw["template"], where),
            dev_data=raw.get("dev_data"),
            choices=choices,
            choices_field=raw.get("choices_field"),
            id_field=raw.get("id_field"),
            delimiter=raw.get("delimiter", " "),
            instruction=raw.get("instruction"),
            summary=raw.get("summary"),
            sizes=sizes,
        )


class SpecTask(Task):
    """A multiple-choice task read from a spec: one context per row, one continuation per choice."""

    # per-instance values replace these; the class-level ones only satisfy the Task contract
    name = "spec"
    instruction = ""
    summary = ""
    default_sizes = DEFAULT_SIZES

    def __init__(self, spec: Spec, data_dir: str | Path | None = None) -> None:
        self.spec = spec
        self.name = spec.name
        self.default_sizes = spec.sizes
        if spec.instruction is not None:
            self.instruction = spec.instruction
        elif spec.choices is not None:
            self.instruction = f"Answer with one of: {', '.join(spec.choices)}."
        else:
            self.instruction = "Choose the correct answer."
        self.summary = spec.summary or f"{spec.name}: multiple choice from {spec.data} (spec {spec.path.name})"
        super().__init__(data_dir)
        self.base = self.data_dir if self.data_dir is not None else spec.path.parent
        self._sources[str(spec.path.resolve())] = {"kind": "file"}  # the spec defines the prompts: pin it too

    @classmethod
    def from_toml(cls, path: str | Path, data_dir: str | Path | None = None) -> SpecTask:
        return cls(Spec.load(path), data_dir)

    def _where(self, where: str) -> str:
        return f"{where} (task spec {self.spec.path})"

    def _choices(self, row: Row, where: str) -> tuple[str, ...]:
        if self.spec.choices is not None:
            return self.spec.choices
        value = require(row, self.spec.choices_field or "", self._where(where))
        if not isinstance(value, list) or len(value) < 2 or not all(isinstance(c, str) for c in value):
            raise UserError(
                f"{self._where(where)}: field {self.spec.choices_field!r} must be a list of at least two strings; "
                f"fix this row (a list field needs a .jsonl data file)"
            )
        return tuple(value)

    def _gold(self, value: Any, choices: tuple[str, ...], where: str) -> int:
        # a label that is also a choice string means that choice, before it is read as an index
        if isinstance(value, str) and value in choices:
            return choices.index(value)
        if isinstance(value, bool):
            index = int(value)
        elif isinstance(value, int):
            index = value
        elif isinstance(value, str) and value.strip().lstrip("-").isdigit():
            index = int(value)
        else:
            raise UserError(
                f"{self._where(where)}: label {value!r} is neither one of the choices {list(choices)} "
                f"nor a choice index; fix this row"
            )
        if not 0 <= index < len(choices):
            raise UserError(
                f"{self._where(where)}: label {value!r} is out of range; it must be 0..{len(choices) - 1} "
                f"or one of {list(choices)}"
            )
        return index

    def to_example(self, row: Row, where: str) -> Example:
        absent = [f for f in self.spec.fields if f not in row]
        if absent:
            raise UserError(
                f"{self._where(where)}: template field(s) {', '.join(absent)} not in this row "
                f"(it has {', '.join(map(str, row))}); fix the row or the template"
            )
        try:
            context = self.spec.template.format_map(row)
        except (KeyError, IndexError, AttributeError, TypeError, ValueError) as e:
            raise UserError(
                f"{self._where(where)}: template cannot be filled from this row ({e!r}); fix the row"
            ) from None
        choices = self._choices(row, where)
        gold = self._gold(require(row, self.spec.label_field, self._where(where)), choices, where)
        if self.spec.id_field is not None:
            ex_id = str(require(row, self.spec.id_field, self._where(where)))
        else:
            # file name and line, not the full path, so ids (and split hashes) agree across machines
            file, _, line = where.rpartition(":")
            ex_id = f"{Path(file).name}:{line}"
        return Example(id=ex_id, contexts=(context,), continuations=choices, gold=gold,
                       delimiter=self.spec.delimiter, fields=row)

    def _examples(self, rel: str) -> list[Example]:
        examples = self.examples_from(self.read_rows(self.base / rel))
        if self.spec.id_field is not None:
            seen: set[str] = set()
            for e in examples:
                if e.id in seen:
                    raise UserError(
                        f"task {self.name}: id {e.id!r} appears twice in {self.base / rel}; "
                        f"make {self.spec.id_field!r} unique (task spec {self.spec.path})"
                    )
                seen.add(e.id)
        return examples

    def all_examples(self) -> list[Example]:
        return self._examples(self.spec.dev_data or self.spec.data)

    def make_split(self, seed: int, sizes: SplitSizes) -> Split:
        if self.spec.dev_data is None:
            return split_from_pool(self, self._examples(self.spec.data), seed, sizes)
        train = self._examples(self.spec.data)
        train_part = tuple(train) if sizes.train is None else self.carve(train, seed, [sizes.train])[0]
        dev, test = self.carve(self._examples(self.spec.dev_data), seed, [sizes.dev, sizes.test])
        return Split(train=train_part, dev=dev, test=test)
