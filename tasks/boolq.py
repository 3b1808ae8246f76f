"""BoolQ in lm-eval's super_glue format: a passage, a yes/no question, choices "no"/"yes".

Passage and title: lm-eval 0.4.13 (``super_glue/boolq/default.yaml``) reads the hub dataset
``aps/super_glue``, config ``boolq``, whose ``passage`` is in SuperGLUE form "TITLE -- PASSAGE": the
Wikipedia article title, " -- ", then the paragraph (lm-eval's logged BoolQ samples begin
"Ethanol fuel -- All biomass goes through ..."). The original BoolQ release, and the local ``dev.jsonl``
this task reads, keep the title in a separate ``title`` field instead. So a row with a non-empty ``title``
is rejoined as f"{title} -- {passage}", which gives lm-eval's exact context; hub rows already hold the
joined passage and are given an empty title.

Splits: locally there is only the evaluation file (SuperGLUE validation, 3270 rows), so train, dev and
test are all carved from it with the seed. From the hub, train comes from the train split and dev/test
are carved from validation (the test split has no labels).
"""

from __future__ import annotations

from typing import Any, ClassVar

from harness.data import Example, Split
from harness.errors import UserError
from harness.task import Row, SplitSizes, Task, require, split_from_pool

HUB_DATASET = "aps/super_glue"
HUB_CONFIG = "boolq"


def parse_answer(value: Any, where: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise UserError(f"{where}: answer {value!r} is not a boolean; it must be true or false")


def hub_to_local(row: Row, split: str) -> Row:
    """An aps/super_glue boolq row in the local schema (question, title, passage, answer, idx)."""
    label = row.get("label")
    return {
        "question": row.get("question"),
        "title": "",  # the hub passage already starts with "TITLE -- "
        "passage": row.get("passage"),
        # leave anything but 0/1 (the unlabelled test split has -1) for to_example to reject
        "answer": bool(label) if label in (0, 1) and not isinstance(label, bool) else label,
        # validation keeps its bare idx so hub and local ids agree; train idx would collide with it
        "idx": row.get("idx") if split == "validation" else f"{split}-{row.get('idx')}",
    }


class BoolQ(Task):
    name = "boolq"
    summary = "BoolQ yes/no questions about a Wikipedia passage, lm-eval's super_glue format (2 choices)"
    instruction = "Read the passage, then answer the question about it with yes or no."
    default_sizes = SplitSizes(train=500, dev=200, test=500)
    eval_files: ClassVar[tuple[str, ...]] = ("dev.jsonl", "validation.jsonl", "val.jsonl")
    choices: ClassVar[tuple[str, str]] = ("no", "yes")

    def to_example(self, row: Row, where: str) -> Example:
        question = str(require(row, "question", where))
        passage = str(require(row, "passage", where))
        answer = parse_answer(require(row, "answer", where), where)
        title = str(row.get("title") or "")
        if title:
            passage = f"{title} -- {passage}"
        idx = row.get("idx")
        return Example(
            id=str(idx) if idx is not None and idx != "" else where,
            contexts=(f"{passage}\nQuestion: {question}?\nAnswer:",),
            continuations=self.choices,
            gold=int(answer),
            delimiter=" ",
            fields=row,
        )

    def _hub(self, split: str) -> list[Example]:
        return self.examples_from(self.hub_rows(HUB_DATASET, HUB_CONFIG, split,
                                           convert=lambda r: hub_to_local(r, split)))

    def all_examples(self) -> list[Example]:
        if self.data_dir is not None:
            return self.examples_from(self.read_rows(self.local_file(*self.eval_files)))
        return self._hub("validation")

    def make_split(self, seed: int, sizes: SplitSizes) -> Split:
        if self.data_dir is not None:
            return split_from_pool(self, self.all_examples(), seed, sizes)
        train = self._hub("train")
        train_part = tuple(train) if sizes.train is None else self.carve(train, seed, [sizes.train])[0]
        dev, test = self.carve(self.all_examples(), seed, [sizes.dev, sizes.test])
        return Split(train=train_part, dev=dev, test=test)
