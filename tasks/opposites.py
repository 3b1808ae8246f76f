"""The opposite of a word against another pair's word, two choices: a multiple-choice task shipped with promptgap (a
TOML spec over ``tasks/data/opposites.jsonl``, 120 rows made from the packaged antonym list), so that the smoke
suite has a multiple-choice task that needs no data beside the package."""

from __future__ import annotations

from pathlib import Path

from tasks.generic import Spec, SpecTask

SPEC = Path(__file__).parent / "data" / "opposites.toml"


class Opposites(SpecTask):
    kind = "multiple_choice"
    summary = str(Spec.load(SPEC).summary)  # `promptgap list` reads the class, before any instance

    def __init__(self, data_dir: str | Path | None = None) -> None:
        super().__init__(Spec.load(SPEC), data_dir)
