"""Task examples and the train/dev/test split every condition of a cell shares."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from harness.errors import UserError

TaskKind = Literal["multiple_choice", "continuation"]


@dataclass(frozen=True)
class Example:
    """One task example, already cut into lm-eval's (context, continuation) pieces.

    Two shapes cover every task:
    - one context, one continuation per choice (BoolQ, SST-2): ``contexts=(ctx,)``;
    - one context per choice, one shared continuation (WinoGrande's partial scoring):
      ``continuations=(rest,)``.
    A continuation task (antonyms) has one context, one continuation and ``gold=0``.

    ``delimiter`` joins context and continuation in raw format (lm-eval's
    ``target_delimiter``); in chat format lm-eval drops it, and so do we.

    ``description`` is text lm-eval puts before the example's context (a task's ``description``): in raw
    format it is glued to the front of the context, in chat format it is the system turn, as lm-eval does
    at zero shots. It is never part of a demo (``solved_text``).
    """

    id: str
    contexts: tuple[str, ...]
    continuations: tuple[str, ...]
    gold: int
    delimiter: str = " "
    fields: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)
    description: str = ""

    def __post_init__(self) -> None:
        if len(self.contexts) > 1 and len(self.continuations) > 1:
            raise ValueError(f"example {self.id}: several contexts and several continuations")
        if not 0 <= self.gold < self.n_choices:
            raise ValueError(f"example {self.id}: gold {self.gold} not in 0..{self.n_choices - 1}")

    @property
    def n_choices(self) -> int:
        return max(len(self.contexts), len(self.continuations))

    def choice(self, i: int) -> tuple[str, str]:
        """(context, continuation) of choice ``i``, before any prompt or format is applied."""
        ctx = self.contexts[i if len(self.contexts) > 1 else 0]
        cont = self.continuations[i if len(self.continuations) > 1 else 0]
        return ctx, cont

    @property
    def content_key(self) -> str:
        """The gold context and answer, white space folded, hashed: the same question with the same answer under
        two ids is one example (a leak when the two ids sit in different parts of a split)."""
        ctx, cont = self.choice(self.gold)
        return ids_hash([" ".join(ctx.split()), " ".join(cont.split())])

    def choice_text(self, i: int) -> str:
        """Choice ``i`` as lm-eval's ``doc_to_choice`` gives it: the continuation, or with partial scoring the
        context. lm-eval's acc_norm divides a choice's log-likelihood by this text's length."""
        return self.contexts[i] if len(self.contexts) > 1 else self.continuations[i]

    def solved_text(self) -> str:
        """The example with its gold answer filled in: how it reads as a few-shot demo."""
        ctx, cont = self.choice(self.gold)
        return ctx + self.delimiter + cont


def ids_hash(ids: Sequence[str]) -> str:
    """Hash of an ordered id list: equal hashes mean the same examples in the same order."""
    h = hashlib.sha256()
    for i in ids:
        h.update(i.encode("utf-8"))
        h.update(b"\0")
    return h.hexdigest()[:16]


@dataclass(frozen=True)
class Split:
    """Train, dev and test examples of one task for one seed, with hashes of their ordered ids."""

    train: tuple[Example, ...]
    dev: tuple[Example, ...]
    test: tuple[Example, ...]

    def part(self, name: str) -> tuple[Example, ...]:
        if name not in ("train", "dev", "test"):
            raise UserError(f"unknown split {name!r}; use train, dev or test")
        return getattr(self, name)

    @property
    def hashes(self) -> dict[str, str]:
        return {name: ids_hash([e.id for e in self.part(name)]) for name in ("train", "dev", "test")}

    @property
    def hash(self) -> str:
        """One hash for the whole split: what 'identical splits' is checked against."""
        return ids_hash([f"{k}={v}" for k, v in self.hashes.items()])

    def check_disjoint(self) -> None:
        seen: dict[str, str] = {}
        for name in ("train", "dev", "test"):
            for e in self.part(name):
                if e.id in seen:
                    raise UserError(f"example id {e.id!r} is in both {seen[e.id]} and {name}; ids must be unique")
                seen[e.id] = name


def shuffled(examples: Sequence[Example], seed: int) -> list[Example]:
    """A seeded permutation that does not depend on Python's hash randomisation."""
    out = list(examples)
    random.Random(seed).shuffle(out)
    return out


def carve(examples: Sequence[Example], seed: int, sizes: Sequence[int | None]) -> list[tuple[Example, ...]]:
    """Cut a seeded shuffle of ``examples`` into consecutive parts; ``None`` takes the rest."""
    pool = shuffled(examples, seed)
    parts, start = [], 0
    for k, n in enumerate(sizes):
        if n is None:
            if k != len(sizes) - 1:
                raise ValueError("only the last size may be None")
            n = len(pool) - start
        if n < 0 or start + n > len(pool):
            raise UserError(f"asked for {sum(s or 0 for s in sizes)} examples but only {len(pool)} exist; "
                            f"lower the split sizes")
        parts.append(tuple(pool[start : start + n]))
        start += n
    return parts
