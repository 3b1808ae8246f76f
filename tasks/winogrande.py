"""WinoGrande with lm-eval's partial scoring: one context per option, one shared continuation."""

from __future__ import annotations

from typing import ClassVar

from harness.data import Example, Split
from harness.errors import UserError
from harness.task import Row, SplitSizes, Task, require


class WinoGrande(Task):
    name = "winogrande"
    summary = "WinoGrande pronoun resolution, partial scoring as in lm-eval (2 choices)"
    instruction = (
        "Fill in the blank: the sentence is completed by whichever of the two names or things "
        "makes it make sense."
    )
    # train from the train file; dev and test carved from validation (its test labels are not public)
    default_sizes = SplitSizes(train=None, dev=300, test=None)
    train_files: ClassVar[tuple[str, ...]] = ("train_xl.jsonl", "train_l.jsonl", "train_m.jsonl", "train_s.jsonl",
                                              "train_xs.jsonl", "train.jsonl")
    dev_files: ClassVar[tuple[str, ...]] = ("dev.jsonl", "validation.jsonl")

    def to_example(self, row: Row, where: str) -> Example:
        sentence = str(require(row, "sentence", where))
        options = (str(require(row, "option1", where)), str(require(row, "option2", where)))
        answer = str(require(row, "answer", where))
        if sentence.count("_") != 1:
            raise UserError(f"{where}: the sentence must hold exactly one '_' blank, found {sentence.count('_')}; "
                            f"fix or remove this row")
        if answer not in ("1", "2"):
            raise UserError(f"{where}: answer {answer!r} is out of range; it must be \"1\" or \"2\"")
        idx = sentence.index("_")
        # lm-eval: contexts are the sentence up to the blank with each option, the target is the rest, stripped
        return Example(
            id=str(row.get("qID") or where),
            contexts=tuple(sentence[:idx] + o for o in options),
            continuations=(sentence[idx + 1 :].strip(),),
            gold=int(answer) - 1,
            fields=row,
        )

    def _rows(self, part: str):
        if self.data_dir is not None:
            return self.read_rows(self.local_file(*(self.train_files if part == "train" else self.dev_files)))
        return self.hub_rows("allenai/winogrande", "winogrande_xl", part)

    def all_examples(self) -> list[Example]:
        return self.examples_from(self._rows("validation"))

    def make_split(self, seed: int, sizes: SplitSizes) -> Split:
        train = self.examples_from(self._rows("train"))
        if sizes.train is not None:
            (train_part,) = self.carve(train, seed, [sizes.train])
        else:
            train_part = tuple(train)
        dev, test = self.carve(self.all_examples(), seed, [sizes.dev, sizes.test])
        return Split(train=train_part, dev=dev, test=test)
