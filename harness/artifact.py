"""PromptArtifact: what a condition puts in front of the task input (text and trained tensors); saving and loading."""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import torch

from harness.atomic import atomic_dir, write_json
from harness.errors import UserError
from harness.provenance import file_sha256

Format = Literal["raw", "chat"]
FORMATS: tuple[str, ...] = ("raw", "chat")
# where a soft prompt's vectors go (the renderer's job): before everything (BOS, chat header; PEFT's prompt
# tuning), as a block right before the task input (inside the chat user turn), in place of a marker word, or
# where a hand-written instruction goes (the first block of the user turn: the slot gradient searches fill)
PLACEMENTS: tuple[str, ...] = ("start", "before_input", "marker", "instruction")
ARTIFACT_FILE = "artifact.json"
TENSOR_FILE = "tensors.safetensors"
TENSOR_FIELDS = ("soft_prompt", "prefix_kv")
ADAPTER_PREFIX = "adapter."  # TENSOR_FILE: a LoRA adapter's weights, each under this prefix and its PEFT name
TENSORS_KEY = "tensors"  # artifact.json: the tensors TENSOR_FILE holds, name -> shape
# a full fine-tune's weights (a whole model's worth): a file of their own, kept out of git (.gitignore), and in
# artifact.json under WEIGHTS_KEY by name, bytes, sha256 and count; read only when the artifact is scored
WEIGHTS_FILE = "weights.safetensors"
WEIGHTS_KEY = "weights_file"
# what an artifact can hold, in the words a condition declares (``Optimizer.produces``): an instruction, demos, a
# soft prompt's vectors, a key/value prefix, trained weights (a LoRA adapter, a full fine-tune)
PRODUCTS: tuple[str, ...] = ("text", "demos", "soft", "prefix", "weights")
TENSOR_PRODUCTS = frozenset({"soft", "prefix", "weights"})  # trained for one model's layers: they stay on it


@dataclass
class PromptArtifact:
    """What a condition produces; the renderer turns it plus an example into token sequences.

    ``format`` is the format family: ``raw`` is plain text as lm-eval builds it; ``chat``
    wraps the same text in the model's chat template as lm-eval's ``--apply_chat_template``
    does. ``instruction`` and ``demos`` (solved examples, as text) come before the input,
    each separated by a blank line. ``instruction_role`` puts the instruction in the user
    turn (default; it works for templates without a system role such as Gemma's) or in a
    system turn.

    Trained prompts add tensors (kept on CPU in float32; the scorer moves them to the model):
    ``soft_prompt`` [n_virtual, hidden] holds input-embedding vectors placed by ``placement``
    (for ``marker``, they replace the text ``marker`` in the task's context); ``prefix_kv``
    [layers, 2 (key, value), kv_heads, n_prefix, head_dim] holds per-layer keys/values that
    come before every token (real tokens then start at position n_prefix, as in PEFT). ``adapter`` holds a LoRA
    adapter's weights by their PEFT names (``model.layers.0.self_attn.q_proj.lora_A.weight``) and
    ``adapter_config`` its ``LoraConfig`` fields (``harness.adapters``): the scorer applies it to the model for
    that artifact's scoring only. A full fine-tune's ``adapter`` holds every parameter of the model by its name
    and its ``adapter_config`` is ``{"method": "full"}``; saved, those weights go to ``WEIGHTS_FILE``, and a loaded
    artifact leaves them there (``adapter`` None, ``weights_file`` their record) until ``trained_weights()``.
    """

    format: Format = "raw"
    instruction: str = ""
    demos: list[str] = field(default_factory=list)
    instruction_role: Literal["user", "system"] = "user"
    condition: str = ""
    meta: dict[str, Any] = field(default_factory=dict)
    placement: str = "start"
    marker: str = ""
    soft_prompt: torch.Tensor | None = field(default=None, repr=False, compare=False)
    prefix_kv: torch.Tensor | None = field(default=None, repr=False, compare=False)
    adapter: dict[str, torch.Tensor] | None = field(default=None, repr=False, compare=False)
    adapter_config: dict[str, Any] | None = None
    weights_file: dict[str, Any] | None = field(default=None, compare=False)  # a loaded full fine-tune's WEIGHTS_KEY
    folder: Path | None = field(default=None, repr=False, compare=False)  # where it was loaded from

    @property
    def n_soft(self) -> int:
        return 0 if self.soft_prompt is None else int(self.soft_prompt.shape[0])

    @property
    def n_prefix(self) -> int:
        return 0 if self.prefix_kv is None else int(self.prefix_kv.shape[3])

    @property
    def parts(self) -> frozenset[str]:
        """What this artifact holds, in the words of ``PRODUCTS`` (``format``, ``placement`` and ``meta`` aside)."""
        held = {"text": bool(self.instruction), "demos": bool(self.demos), "soft": self.soft_prompt is not None,
                "prefix": self.prefix_kv is not None, "weights": self.adapter_config is not None}
        return frozenset(k for k, v in held.items() if v)

    @property
    def trainable_params(self) -> int:
        """Numbers in the trained tensors (what training fitted and the artifact keeps)."""
        left = int(self.weights_file["params"]) if self.adapter is None and self.weights_file else 0
        return left + sum(int(t.numel()) for t in self.tensors().values()) + \
            sum(int(t.numel()) for t in (self.adapter or {}).values() if self.full)

    @property
    def full(self) -> bool:
        """Whether its weights are a full fine-tune's (``harness.adapters.is_full``) rather than a LoRA adapter's."""
        return self.adapter_config is not None and self.adapter_config.get("method") == "full"

    def trained_weights(self) -> dict[str, torch.Tensor] | None:
        """The weights the scorer applies: ``adapter``, or a loaded full fine-tune's, read now from ``WEIGHTS_FILE``
        and checked against the sha256 artifact.json records (a one-line error when the file is not there: it is
        kept out of git)."""
        if self.adapter is not None or self.adapter_config is None:
            return self.adapter
        from safetensors.torch import load_file

        return load_file(str(self._weights_path()))

    def _weights_path(self) -> Path:
        """A loaded full fine-tune's ``WEIGHTS_FILE``, checked against its record (bytes, sha256); else a one-line
        error."""
        rec, path = self.weights_file or {}, (self.folder or Path("?")) / WEIGHTS_FILE
        if not path.is_file():
            raise UserError(f"{path} is not here: the fine-tuned weights of {self.condition or 'this artifact'} "
                            f"(sha256 {str(rec.get('sha256'))[:16]}) are kept out of git; compute the cell again "
                            f"(`promptgap run CONFIG --run-id ID --resume` after removing the cell) to score it")
        if path.stat().st_size != rec.get("bytes") or file_sha256(path) != rec.get("sha256"):
            raise UserError(f"{path} is not the file its artifact.json records (bytes or sha256 differ); compute the "
                            f"cell again")
        return path

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise UserError(f"prompt format {self.format!r} is unknown; use raw or chat")
        if self.instruction_role not in ("user", "system"):
            raise UserError(f"instruction_role {self.instruction_role!r} is unknown; use user or system")
        if not isinstance(self.instruction, str) or not all(isinstance(d, str) for d in self.demos):
            raise UserError(f"artifact of {self.condition or 'a condition'}: instruction and demos must be text")
        if self.placement not in PLACEMENTS:
            raise UserError(f"placement {self.placement!r} is unknown; use one of {', '.join(PLACEMENTS)}")
        if self.placement == "instruction" and self.soft_prompt is not None and self.instruction:
            raise UserError("placement instruction puts the soft prompt where the instruction goes; leave instruction "
                            "empty")
        if self.placement == "marker" and self.soft_prompt is not None and not self.marker.strip():
            raise UserError("placement marker needs the marker text the soft prompt replaces; set marker")
        if self.soft_prompt is not None and (self.soft_prompt.ndim != 2 or self.soft_prompt.shape[0] < 1):
            raise UserError(f"soft_prompt must be [n_virtual >= 1, hidden], got {tuple(self.soft_prompt.shape)}")
        if self.prefix_kv is not None and (self.prefix_kv.ndim != 5 or self.prefix_kv.shape[1] != 2
                                           or self.prefix_kv.shape[3] < 1):
            raise UserError(f"prefix_kv must be [layers, 2, kv_heads, n_prefix >= 1, head_dim], "
                            f"got {tuple(self.prefix_kv.shape)}")
        if ((self.adapter is None and self.weights_file is None) != (self.adapter_config is None)
                or self.adapter == {}):
            raise UserError("trained weights need both their values (adapter) and their settings (adapter_config)")
        for name in TENSOR_FIELDS:  # one home for the tensors: CPU float32, detached
            t = getattr(self, name)
            if t is not None:
                setattr(self, name, t.detach().to("cpu", torch.float32).contiguous())
        if self.adapter is not None:
            self.adapter = {k: t.detach().to("cpu", torch.float32).contiguous()
                            for k, t in sorted(self.adapter.items())}

    def tensors(self) -> dict[str, torch.Tensor]:
        """The trained tensors TENSOR_FILE holds, by field name (an adapter's weights: ``ADAPTER_PREFIX`` + PEFT
        name; a full fine-tune's are not among them: ``WEIGHTS_FILE``)."""
        out = {name: getattr(self, name) for name in TENSOR_FIELDS if getattr(self, name) is not None}
        return out if self.full else out | {ADAPTER_PREFIX + k: t for k, t in (self.adapter or {}).items()}

    def to_json(self) -> dict[str, Any]:
        """The JSON part: everything but the tensors, which go to ``TENSOR_FILE``. When there are tensors, their
        names and shapes are listed under ``tensors``, so that an artifact whose tensor file is gone is refused on
        load instead of being scored as the text prompt without them (a text artifact's JSON is as before)."""
        out = asdict(replace(self, soft_prompt=None, prefix_kv=None, adapter=None, adapter_config=None,
                             weights_file=None, folder=None),
                     dict_factory=lambda kv: {k: v for k, v in kv if k not in (*TENSOR_FIELDS, "adapter",
                                                                                 "adapter_config", "weights_file",
                                                                                 "folder")})
        if self.adapter_config is not None:  # absent from a prompt's JSON, which stays as it was
            out["adapter_config"] = dict(self.adapter_config)
        if self.weights_file is not None:
            out[WEIGHTS_KEY] = dict(self.weights_file)
        if self.tensors():
            out[TENSORS_KEY] = _shapes(self.tensors())
        return out

    def save(self, folder: str | Path) -> Path:
        """Write the artifact into ``folder`` atomically (a temp folder renamed into place)."""
        folder = Path(folder)
        from safetensors.torch import save_file

        with atomic_dir(folder) as tmp:
            record = self.weights_file
            if self.full and self.adapter is not None:
                save_file(self.adapter, str(tmp / WEIGHTS_FILE), metadata={"condition": self.condition})
                record = {"name": WEIGHTS_FILE, "bytes": (tmp / WEIGHTS_FILE).stat().st_size,
                          "sha256": file_sha256(tmp / WEIGHTS_FILE), "params": self.trainable_params}
            elif self.full and self.folder is not None and (self.folder / WEIGHTS_FILE).is_file():
                shutil.copyfile(self._weights_path(), tmp / WEIGHTS_FILE)  # checked against its record first
            write_json(tmp / ARTIFACT_FILE, self.to_json() | ({WEIGHTS_KEY: record} if record else {}))
            tensors = self.tensors()
            if tensors:
                save_file(tensors, str(tmp / TENSOR_FILE), metadata={"condition": self.condition})
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> PromptArtifact:
        """Read a saved artifact; a tensor file that artifact.json names but that is absent (or holds other tensors)
        is an error. An artifact.json written before tensors were listed is taken with whatever tensor file is
        there."""
        path, tensor_path = Path(folder) / ARTIFACT_FILE, Path(folder) / TENSOR_FILE
        if not path.exists():
            raise UserError(f"{folder} holds no {ARTIFACT_FILE}; give a folder written by a promptgap run")
        fix = ("restore it, or compute the artifact again (a run's cell: `promptgap run CONFIG --run-id ID --resume` "
               "recomputes a damaged cell)")
        try:
            data = json.loads(path.read_text())
            named = data.pop(TENSORS_KEY, None) if isinstance(data, dict) else None
            if isinstance(data, dict) and WEIGHTS_KEY in data:  # read when scored (``trained_weights``)
                data["folder"] = Path(folder)
            if named and not tensor_path.exists():
                raise UserError(f"{tensor_path} is missing, but {path} names tensors {', '.join(named)}; {fix}")
            if tensor_path.exists():
                from safetensors.torch import load_file

                tensors = load_file(str(tensor_path))
                if named is not None and _shapes(tensors) != named:
                    raise UserError(f"{tensor_path} holds {_shapes(tensors)}, but {path} names {named}; {fix}")
                adapter = {k[len(ADAPTER_PREFIX):]: t for k, t in tensors.items() if k.startswith(ADAPTER_PREFIX)}
                data.update({k: t for k, t in tensors.items() if not k.startswith(ADAPTER_PREFIX)})
                if adapter:
                    data["adapter"] = adapter
            return cls(**data)
        except (json.JSONDecodeError, TypeError, OSError, ValueError) as e:
            raise UserError(f"{path} is not a valid artifact ({e}); re-run the condition that wrote it") from None


def _shapes(tensors: dict[str, torch.Tensor]) -> dict[str, list[int]]:
    return {k: list(t.shape) for k, t in tensors.items()}
