"""PromptArtifact: everything a condition may put in front of the task input, and how it is saved."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from harness.errors import UserError

Format = Literal["raw", "chat"]
FORMATS: tuple[str, ...] = ("raw", "chat")
ARTIFACT_FILE = "artifact.json"


@dataclass
class PromptArtifact:
    """What a condition produces; the renderer turns it plus an example into token sequences.

    ``format`` is the format family: ``raw`` is plain text as lm-eval builds it; ``chat``
    wraps the same text in the model's chat template as lm-eval's ``--apply_chat_template``
    does. ``instruction`` and ``demos`` (solved examples, as text) come before the input,
    each separated by a blank line. ``instruction_role`` puts the instruction in the user
    turn (default; it works for templates without a system role such as Gemma's) or in a
    system turn.
    """

    format: Format = "raw"
    instruction: str = ""
    demos: list[str] = field(default_factory=list)
    instruction_role: Literal["user", "system"] = "user"
    condition: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise UserError(f"prompt format {self.format!r} is unknown; use raw or chat")
        if self.instruction_role not in ("user", "system"):
            raise UserError(f"instruction_role {self.instruction_role!r} is unknown; use user or system")
        if not isinstance(self.instruction, str) or not all(isinstance(d, str) for d in self.demos):
            raise UserError(f"artifact of {self.condition or 'a condition'}: instruction and demos must be text")

    def save(self, folder: str | Path) -> Path:
        """Write the artifact into ``folder`` atomically (a temp folder renamed into place)."""
        folder = Path(folder)
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}-"))
        (tmp / ARTIFACT_FILE).write_text(json.dumps(asdict(self), indent=2, ensure_ascii=False) + "\n")
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> PromptArtifact:
        path = Path(folder) / ARTIFACT_FILE
        if not path.exists():
            raise UserError(f"{folder} holds no {ARTIFACT_FILE}; give a folder written by a promptgap run")
        try:
            data = json.loads(path.read_text())
            return cls(**data)
        except (json.JSONDecodeError, TypeError) as e:
            raise UserError(f"{path} is not a valid artifact ({e}); re-run the condition that wrote it") from None
