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
    # content keys of other examples that are this one in another guise (an antonym pair reversed): the task's own
    # rule for "the same item", which content keys alone cannot see; used by the leakage filter of transfers
    mirror_keys: tuple[str, ...] = field(default=(), compare=False, hash=False)

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
        return content_key(*self.choice(self.gold))

    def choice_text(self, i: int) -> str:
        """Choice ``i`` as lm-eval's ``doc_to_choice`` gives it: the continuation, or with partial scoring the
        context. lm-eval's acc_norm divides a choice's log-likelihood by this text's length."""
        return self.contexts[i] if len(self.contexts) > 1 else self.continuations[i]

    def solved_text(self) -> str:
        """The example with its gold answer filled in: how it reads as a few-shot demo."""
        ctx, cont = self.choice(self.gold)
        return ctx + self.delimiter + cont


def content_key(context: str, continuation: str) -> str:
    """``Example.content_key`` of a gold context and answer (white space folded)."""
    return ids_hash([" ".join(context.split()), " ".join(continuation.split())])


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

    def prefix(self, n_train: int) -> Split:
        """The same split with only the first ``n_train`` train examples: a point of a sample-efficiency curve (dev
        and test unchanged, so every train size is scored on the same examples)."""
        if n_train > len(self.train):
            raise UserError(f"train size {n_train} is larger than the {len(self.train)} train examples of the split")
        return Split(train=self.train[:n_train], dev=self.dev, test=self.test)

    def check_disjoint(self) -> None:
        seen: dict[str, str] = {}
        for name in ("train", "dev", "test"):
            for e in self.part(name):
                if e.id in seen:
                    raise UserError(f"example id {e.id!r} is in both {seen[e.id]} and {name}; ids must be unique")
                seen[e.id] = name


def leaks(test: Sequence[tuple[str, str, Sequence[str]]], seen: set[str]) -> dict[str, str]:
    """Which ``test`` items (id, content key, mirror keys) are already in ``seen`` (content keys of examples a prompt
    was fitted on): id -> "same" (the same context and answer) or "mirror" (the task's own rule, e.g. a reversed
    antonym pair). Mirroring is symmetric, so a test item's mirror keys against the fitted content keys suffice."""
    out: dict[str, str] = {}
    for i, content, mirrors in test:
        if content in seen:
            out[i] = "same"
        elif any(m in seen for m in mirrors):
            out[i] = "mirror"
    return out


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
