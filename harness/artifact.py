"""PromptArtifact: what a condition puts in front of the task input (text and trained tensors); saving and loading."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import torch

from harness.atomic import atomic_dir, write_json
from harness.errors import UserError

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
# what an artifact can hold, in the words a condition declares (``Optimizer.produces``): an instruction, demos, a
# soft prompt's vectors, a key/value prefix, a weight adapter (LoRA)
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
    that artifact's scoring only.
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
                "prefix": self.prefix_kv is not None, "weights": self.adapter is not None}
        return frozenset(k for k, v in held.items() if v)

    @property
    def trainable_params(self) -> int:
        """Numbers in the trained tensors (what training fitted and the artifact keeps)."""
        return sum(int(t.numel()) for t in self.tensors().values())

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
        if (self.adapter is None) != (self.adapter_config is None) or self.adapter == {}:
            raise UserError("a LoRA adapter needs both its weights (adapter) and its settings (adapter_config)")
        for name in TENSOR_FIELDS:  # one home for the tensors: CPU float32, detached
            t = getattr(self, name)
            if t is not None:
                setattr(self, name, t.detach().to("cpu", torch.float32).contiguous())
        if self.adapter is not None:
            self.adapter = {k: t.detach().to("cpu", torch.float32).contiguous()
                            for k, t in sorted(self.adapter.items())}

    def tensors(self) -> dict[str, torch.Tensor]:
        """The trained tensors it holds, by field name (an adapter's weights: ``ADAPTER_PREFIX`` + PEFT name)."""
        out = {name: getattr(self, name) for name in TENSOR_FIELDS if getattr(self, name) is not None}
        return out | {ADAPTER_PREFIX + k: t for k, t in (self.adapter or {}).items()}

    def to_json(self) -> dict[str, Any]:
        """The JSON part: everything but the tensors, which go to ``TENSOR_FILE``. When there are tensors, their
        names and shapes are listed under ``tensors``, so that an artifact whose tensor file is gone is refused on
        load instead of being scored as the text prompt without them (a text artifact's JSON is as before)."""
        out = asdict(replace(self, soft_prompt=None, prefix_kv=None, adapter=None, adapter_config=None),
                     dict_factory=lambda kv: {k: v for k, v in kv if k not in (*TENSOR_FIELDS, "adapter",
                                                                                 "adapter_config")})
        if self.adapter_config is not None:  # absent from a prompt's JSON, which stays as it was
            out["adapter_config"] = dict(self.adapter_config)
        if self.tensors():
            out[TENSORS_KEY] = _shapes(self.tensors())
        return out

    def save(self, folder: str | Path) -> Path:
        """Write the artifact into ``folder`` atomically (a temp folder renamed into place)."""
        folder = Path(folder)
        with atomic_dir(folder) as tmp:
            write_json(tmp / ARTIFACT_FILE, self.to_json())
            tensors = self.tensors()
            if tensors:
                from safetensors.torch import save_file

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
