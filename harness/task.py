"""The Task contract, and the row readers every task uses so a broken file names its row."""

from __future__ import annotations

import csv
import io
import json
import logging
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from harness.data import Example, Split, TaskKind, carve
from harness.errors import UserError

log = logging.getLogger(__name__)

Row = dict[str, Any]


@dataclass(frozen=True)
class SplitSizes:
    """How many examples each part of the split gets; ``None`` means all that are left."""

    train: int | None
    dev: int
    test: int | None


class Task(ABC):
    """A task is data plus a few small functions (lm-eval's idea).

    Subclasses set the class attributes and implement ``to_example`` (one row -> one
    Example) and ``make_split`` (which source files feed train, dev and test).
    """

    name: ClassVar[str]
    kind: ClassVar[TaskKind] = "multiple_choice"
    instruction: ClassVar[str]  # the default hand-written instruction
    summary: ClassVar[str]
    default_sizes: ClassVar[SplitSizes]
    # named data files a run may choose between (``data = "NAME"`` in a config's task entry), e.g. the two antonym
    # lists; a task with one data source offers none
    data_choices: ClassVar[dict[str, str]] = {}

    def __init__(self, data_dir: str | Path | None = None) -> None:
        self.data_dir = Path(data_dir) if data_dir is not None else None
        self.data_file: str | None = None  # the chosen file of ``data_choices`` (None: the task's default)
        self._sources: dict[str, dict[str, Any]] = {}  # what examples were read from (the run's manifest)
        if self.data_dir is not None and not self.data_dir.exists():
            raise UserError(f"task {self.name}: data directory {self.data_dir} does not exist; "
                            f"pass an existing --data-dir")

    def choose_data(self, choice: str) -> None:
        """Read ``data_choices[choice]`` (or that file by name) instead of the task's default file."""
        files = self.data_choices
        if not files:
            raise UserError(f"task {self.name}: data = {choice!r}, but this task reads one data source and offers "
                            f"no choice; drop data")
        if choice not in files and choice not in files.values():
            raise UserError(f"task {self.name}: data = {choice!r} is not one of its data choices: "
                            + ", ".join(f"{k} ({v})" for k, v in files.items()))
        if self.data_dir is None:
            raise UserError(f"task {self.name}: data = {choice!r} names a file in a data folder; set data_dir too")
        self.data_file = files.get(choice, choice)

    # --- what a task defines -------------------------------------------------
    @abstractmethod
    def to_example(self, row: Row, where: str) -> Example:
        """Turn one data row into an Example; raise UserError naming ``where`` on a bad row."""

    @abstractmethod
    def make_split(self, seed: int, sizes: SplitSizes) -> Split:
        """Deterministic train/dev/test for ``seed``."""

    @abstractmethod
    def all_examples(self) -> list[Example]:
        """The task's evaluation file in file order (``eval --split all``)."""

    # --- shared machinery ----------------------------------------------------
    def split(self, seed: int, sizes: SplitSizes | None = None) -> Split:
        split = self.make_split(seed, sizes or self.default_sizes)
        for name in ("train", "dev", "test"):
            if name != "train" and not split.part(name):
                raise UserError(f"task {self.name}: the {name} split is empty; raise its size or add data")
        split.check_disjoint()
        return split

    def examples_from(self, rows: Iterator[tuple[Row, str]]) -> list[Example]:
        out = [self.to_example(row, where) for row, where in rows]
        if not out:
            raise UserError(f"task {self.name}: no examples were read; check the data files")
        return out

    def carve(self, examples: list[Example], seed: int, sizes: list[int | None]) -> list[tuple[Example, ...]]:
        try:
            return carve(examples, seed, sizes)
        except UserError as e:
            raise UserError(f"task {self.name}: {e}") from None

    # --- reading, with provenance ------------------------------------------------------------------------------
    def read_rows(self, path: Path, fieldnames: list[str] | None = None) -> Iterator[tuple[Row, str]]:
        """``read_rows`` of ``path``, remembering the file for ``provenance``."""
        if path.exists():
            self._sources[str(path.resolve())] = {"kind": "file"}
        return read_rows(path, fieldnames)

    def hub_rows(self, dataset: str, config: str | None, split: str,
                 convert: Callable[[Row], Row] = lambda r: r) -> Iterator[tuple[Row, str]]:
        """``hub_rows``, remembering the dataset, its revision and fingerprint for ``provenance``."""
        return hub_rows(self.name, dataset, config, split, convert, record=self._sources)

    def provenance(self) -> dict[str, Any]:
        """What this task's examples were read from: each data file with its size and sha256, or each hub dataset
        with its fingerprint. Complete once a split (or ``all_examples``) has been built."""
        from harness.provenance import file_record

        out: dict[str, Any] = {"task": self.name, "class": f"{type(self).__module__}.{type(self).__qualname__}",
                               "data_dir": str(self.data_dir.resolve()) if self.data_dir else None, "sources": []}
        for where, info in sorted(self._sources.items()):
            out["sources"].append(file_record(where) if info["kind"] == "file" else {"hub": where, **info})
        return out

    def local_file(self, *candidates: str) -> Path:
        """The first of ``candidates`` that exists in ``data_dir``."""
        assert self.data_dir is not None
        for c in candidates:
            p = self.data_dir / c
            if p.exists():
                return p
        raise UserError(
            f"task {self.name}: none of {', '.join(candidates)} found in {self.data_dir}; "
            f"point --data-dir at a folder holding one of them"
        )


def split_from_pool(task: Task, examples: list[Example], seed: int, sizes: SplitSizes) -> Split:
    """Train, dev and test carved from one pool of examples (tasks with a single data file).

    Dev is cut first and test second, so changing only the train size leaves dev and test unchanged.
    """
    if sizes.test is None:
        if sizes.train is None:
            raise UserError(
                f"task {task.name}: with a single data file only one of the train and test sizes may be 'all'; "
                f"give the other a number"
            )
        dev, train, test = task.carve(examples, seed, [sizes.dev, sizes.train, None])
    else:
        dev, test, train = task.carve(examples, seed, [sizes.dev, sizes.test, sizes.train])
    return Split(train=train, dev=dev, test=test)


def require(row: Row, key: str, where: str) -> Any:
    if key not in row or row[key] is None or row[key] == "":
        raise UserError(f"{where}: missing field {key!r}; fix or remove this row")
    return row[key]


def read_text(path: Path, what: str) -> str:
    """A text file as UTF-8, a leading byte-order mark dropped (spreadsheet programs write one, and it would
    otherwise become part of the first column's name); bytes that are not UTF-8 are named by file and line."""
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise UserError(f"{path}:{line}: {what} is not valid UTF-8 (byte {raw[e.start]:#04x} at offset {e.start}); "
                        f"save the file as UTF-8") from None


def read_rows(path: Path, fieldnames: list[str] | None = None) -> Iterator[tuple[Row, str]]:
    """Rows of a .jsonl, .csv or .tsv file, each with a 'file:line' location for errors."""
    if not path.exists():
        raise UserError(f"data file {path} does not exist; check --data-dir or the task spec")
    suffix = path.suffix.lower()
    with io.StringIO(read_text(path, "data file"), newline="") as f:
        if suffix == ".jsonl":
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise UserError(f"{path}:{n}: not valid JSON ({e.msg}); fix or remove this row") from None
                if not isinstance(row, dict):
                    raise UserError(f"{path}:{n}: expected a JSON object; fix or remove this row")
                yield row, f"{path}:{n}"
        elif suffix in (".csv", ".tsv"):
            reader = csv.DictReader(f, fieldnames=fieldnames, delimiter="\t" if suffix == ".tsv" else ",",
                                    quoting=csv.QUOTE_NONE if suffix == ".tsv" else csv.QUOTE_MINIMAL)
            for row in reader:
                if None in row or any(v is None for v in row.values()):
                    raise UserError(f"{path}:{reader.line_num}: wrong number of columns; fix or remove this row")
                yield row, f"{path}:{reader.line_num}"
        else:
            raise UserError(f"data file {path}: unsupported type {suffix!r}; use .jsonl, .csv or .tsv")


def hub_rows(task: str, dataset: str, config: str | None, split: str,
             convert: Callable[[Row], Row] = lambda r: r,
             record: dict[str, dict[str, Any]] | None = None) -> Iterator[tuple[Row, str]]:
    """Rows of a Hugging Face hub dataset, with a clear error when the hub cannot be reached.

    ``record`` (a task's sources) gets the dataset's name, split, and the fingerprint the datasets library
    computes from its files, so a run's manifest pins what was read."""
    if os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("HF_DATASETS_OFFLINE") == "1":
        log.info("hub is offline; trying the local datasets cache for %s", dataset)
    try:
        import datasets

        ds = datasets.load_dataset(dataset, config, split=split)
    except Exception as e:  # the datasets library raises many types for "unreachable"
        raise UserError(
            f"task {task}: could not load {dataset}"
            f"{'/' + config if config else ''} [{split}] from the hub ({type(e).__name__}); "
            f"pass --data-dir with local files instead"
        ) from None
    if record is not None:
        record[f"{dataset}{'/' + config if config else ''}[{split}]"] = {
            "kind": "hub", "fingerprint": getattr(ds, "_fingerprint", None), "rows": len(ds),
            "files": [f.get("filename") for f in (ds.cache_files or [])]}
    for i, row in enumerate(ds):
        yield convert(dict(row)), f"{dataset}[{split}]#{i}"
