"""Antonyms: score the opposite word after "Here are two antonyms WORD and" (a continuation task).

This is the "backprop through a prompt" experiment's task: the soft prompt later replaces the word named
by ``marker`` ("antonyms") in the context, so the context must hold that word exactly once.

Data: without a data_dir, the packaged ``tasks/data/antonyms.tsv`` (common English pairs written by hand
for this project; word1 TAB word2, no header). With a data_dir, ``function_vectors_antonym.tsv``
(Todd et al., word1 TAB word2, no header) if present, else ``antsynnet_antonyms.tsv`` (header word1, word2,
pos, split; its own split column is ignored); ``data = "antsynnet"`` (or ``"function_vectors"``) in a run config
picks one of the two, so both lists can be tasks of one run (each under its own ``as`` name). Train, dev and test
are carved from all pairs with the seed.

A pair and its reverse ("hot"/"cold" and "cold"/"hot") are one item for the leakage filter of transfers: each
example carries the content key of its reversed pair (``Example.mirror_keys``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from importlib import resources
from typing import ClassVar

from harness.data import Example, Split, content_key
from harness.errors import UserError
from harness.task import Row, SplitSizes, Task, require, split_from_pool

log = logging.getLogger(__name__)

HEADERLESS = ["word1", "word2"]


class Antonyms(Task):
    name = "antonyms"
    kind = "continuation"
    summary = "Antonym generation: log-likelihood of the opposite word after 'Here are two antonyms X and'"
    instruction = "Give the antonym (the word with the opposite meaning) of the given word."
    marker: ClassVar[str] = "antonyms"
    template: ClassVar[str] = "Here are two antonyms {word1} and"
    # sized for the packaged list (387 pairs): the test part takes the rest
    default_sizes = SplitSizes(train=200, dev=50, test=None)
    local_files: ClassVar[tuple[str, ...]] = ("function_vectors_antonym.tsv", "antsynnet_antonyms.tsv")
    data_choices: ClassVar[dict[str, str]] = {"function_vectors": local_files[0], "antsynnet": local_files[1]}
    packaged_file: ClassVar[str] = "antonyms.tsv"

    def to_example(self, row: Row, where: str) -> Example:
        word1 = str(require(row, "word1", where)).strip()
        word2 = str(require(row, "word2", where)).strip()
        if not word1 or not word2:
            raise UserError(f"{where}: a word is blank; fix or remove this row")
        return Example(
            id=f"{word1}-{word2}",
            contexts=(self.template.format(word1=word1),),
            continuations=(word2,),
            gold=0,
            delimiter=" ",
            fields=row,
            mirror_keys=(content_key(self.template.format(word1=word2), word1),),
        )

    def _rows(self) -> Iterator[tuple[Row, str]]:
        if self.data_dir is None:
            # as_file gives a real path even when the package is installed zipped
            with resources.as_file(resources.files("tasks") / "data" / self.packaged_file) as path:
                yield from self.read_rows(path, fieldnames=HEADERLESS)
            return
        path = self.local_file(*((self.data_file,) if self.data_file else self.local_files))
        yield from self.read_rows(path, fieldnames=HEADERLESS if path.name == self.local_files[0] else None)

    def all_examples(self) -> list[Example]:
        """Every pair in file order; a repeated pair keeps its first row (with a warning)."""
        out: list[Example] = []
        first_seen: dict[str, str] = {}
        for row, where in self._rows():
            example = self.to_example(row, where)
            if example.id in first_seen:
                log.warning("%s: duplicate pair %s (first at %s); keeping the first", where, example.id,
                            first_seen[example.id])
                continue
            first_seen[example.id] = where
            out.append(example)
        if not out:
            raise UserError(f"task {self.name}: no examples were read; check the data files")
        return out

    def make_split(self, seed: int, sizes: SplitSizes) -> Split:
        return split_from_pool(self, self.all_examples(), seed, sizes)
