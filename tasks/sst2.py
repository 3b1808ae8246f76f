"""SST-2 sentiment in lm-eval's glue format: a sentence, "Is this sentence positive or negative?"

Sentences are used verbatim: GLUE's SST-2 sentences end with a space before the newline
("... journey . \\nQuestion: ..."), in the hub copy lm-eval reads and in the local TSVs alike.
Train comes from the train file; dev and test are carved from the GLUE dev (validation) file,
since GLUE's test labels are not public.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, ClassVar

from harness.data import Example, Split
from harness.errors import UserError
from harness.task import Row, SplitSizes, Task, require

HUB_DATASET = "nyu-mll/glue"
HUB_CONFIG = "sst2"


def parse_label(value: Any, where: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and value in (0, 1):
        return value
    if isinstance(value, str) and value.strip() in ("0", "1"):
        return int(value.strip())
    raise UserError(f"{where}: label {value!r} is out of range; it must be 0 (negative) or 1 (positive)")


class SST2(Task):
    name = "sst2"
    summary = "SST-2 movie-review sentiment, lm-eval's glue format (2 choices)"
    instruction = "Decide whether the sentiment of the sentence is positive or negative."
    default_sizes = SplitSizes(train=500, dev=200, test=None)
    # the project's names first, then GLUE's own SST-2 folder layout (same columns)
    train_files: ClassVar[tuple[str, ...]] = ("glue_sst2_train.tsv", "train.tsv")
    dev_files: ClassVar[tuple[str, ...]] = ("glue_sst2_dev.tsv", "dev.tsv")
    choices: ClassVar[tuple[str, str]] = ("negative", "positive")

    def to_example(self, row: Row, where: str) -> Example:
        sentence = str(require(row, "sentence", where))
        label = parse_label(require(row, "label", where), where)
        part, idx = row.get("part"), row.get("idx")
        return Example(
            id=f"{part}-{idx}" if part is not None and idx is not None else where,
            contexts=(f"{sentence}\nQuestion: Is this sentence positive or negative?\nAnswer:",),
            continuations=self.choices,
            gold=label,
            delimiter=" ",
            fields=row,
        )

    def _rows(self, part: str) -> Iterator[tuple[Row, str]]:
        """Rows tagged with their part and 0-based row number, which make the example id."""
        if self.data_dir is None:
            split = "train" if part == "train" else "validation"
            # the hub rows carry GLUE's idx; it matches the local row number for the dev file
            yield from self.hub_rows(HUB_DATASET, HUB_CONFIG, split, convert=lambda r: {**r, "part": part})
            return
        path = self.local_file(*(self.train_files if part == "train" else self.dev_files))
        for n, (row, where) in enumerate(self.read_rows(path)):
            yield {**row, "part": part, "idx": row.get("idx", n)}, where

    def all_examples(self) -> list[Example]:
        return self.examples_from(self._rows("dev"))

    def make_split(self, seed: int, sizes: SplitSizes) -> Split:
        train = self.examples_from(self._rows("train"))
        train_part = tuple(train) if sizes.train is None else self.carve(train, seed, [sizes.train])[0]
        dev, test = self.carve(self.all_examples(), seed, [sizes.dev, sizes.test])
        return Split(train=train_part, dev=dev, test=test)
