"""The ceiling conditions: a trained soft prompt, trained key/value prefixes, and a soft prompt projected to tokens."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from harness.artifact import PromptArtifact
from harness.errors import UserError
from harness.optimizer import FitContext, Optimizer
from optimizers.prompt_training import PromptTrainer, PromptTrainingSettings, nearest_tokens, project


class _Tensors(Optimizer):
    """A condition trained with ``PromptTrainingSettings``: its placement says whether it replaces a marker."""

    def needs_marker(self) -> bool:
        return self.settings.placement == "marker"  # type: ignore[attr-defined]

    def marker(self, task_marker: str) -> str:
        return self.settings.marker or task_marker  # type: ignore[attr-defined]  # as PromptTrainer chooses it


class _Trained(_Tensors):
    """A condition whose artifact is a trained prompt tensor of ``kind`` ("soft" or "prefix")."""

    kind: ClassVar[str]

    def fit(self, ctx: FitContext) -> PromptArtifact:
        art, _ = PromptTrainer(ctx, self.settings, self.kind, self.name).fit()  # type: ignore[arg-type]
        return art


class SoftPrompt(_Trained):
    name = "soft-prompt"
    summary = "trained input-embedding vectors (model frozen), swept over length x lr x init and selected on dev"
    settings_class = PromptTrainingSettings
    kind = "soft"
    produces = frozenset({"soft"})


@dataclass
class PrefixTuningSettings(PromptTrainingSettings):
    """As the soft prompt's, but the prefix always comes before every token (PEFT's prefix tuning)."""

    placement: str = "start"
    # Li & Liang's reparameterisation: the prefix is the output of an MLP with this many hidden units
    # (None: the prefix's keys/values are trained directly)
    reparam_hidden: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.reparam_hidden is not None and (isinstance(self.reparam_hidden, bool)
                                                or not isinstance(self.reparam_hidden, int)
                                                or self.reparam_hidden < 1):
            raise UserError(f"condition prefix-tuning: reparam_hidden {self.reparam_hidden!r}; give a whole number "
                            f">= 1 (e.g. 512), or leave it out to train the keys/values directly")
        if self.placement != "start":
            raise UserError(f"condition prefix-tuning: placement {self.placement!r}; a key/value prefix comes before "
                            f"every token, so only start is possible")


class PrefixTuning(_Trained):
    name = "prefix-tuning"
    summary = "trained per-layer key/value prefixes (model frozen), swept and selected on dev"
    settings_class = PrefixTuningSettings
    kind = "prefix"
    produces = frozenset({"prefix"})  # its placement is always start: never a marker


@dataclass
class SoftProjectedSettings(PromptTrainingSettings):
    artifact: str | None = None  # a saved soft-prompt artifact folder to project, instead of training one


class SoftProjected(_Tensors):
    """Trains a soft prompt exactly as ``soft-prompt`` does (same settings and seed give the same tensor) and
    replaces each vector by its nearest vocabulary token (cosine). The artifact keeps those tokens' own embedding
    rows, so the scorer reads exactly the token ids listed in ``meta.projected_ids``; no re-tokenization."""

    name = "soft-projected"
    summary = "a soft prompt with each vector replaced by its nearest real token (how much gain survives as text)"
    settings_class = SoftProjectedSettings
    # real tokens, but held as their embedding rows in a soft prompt: rows of this model's table, so it stays on it
    produces = frozenset({"soft"})

    def fit(self, ctx: FitContext) -> PromptArtifact:
        s: SoftProjectedSettings = self.settings  # type: ignore[assignment]
        if s.artifact is not None:
            soft = PromptArtifact.load(s.artifact)
            if soft.soft_prompt is None:
                raise UserError(f"condition {self.name}: {s.artifact} holds no soft prompt; give a soft-prompt "
                                f"artifact folder")
        else:
            soft, _ = PromptTrainer(ctx, s, "soft", self.name).fit()
        assert soft.soft_prompt is not None
        if soft.soft_prompt.shape[1] != ctx.lm.model.get_input_embeddings().embedding_dim:
            raise UserError(f"condition {self.name}: the soft prompt's width {soft.soft_prompt.shape[1]} is not "
                            f"model {ctx.lm.name}'s; project a soft prompt trained on this model")
        ids, rows = project(ctx.lm, soft.soft_prompt)
        meta = {"projected_ids": ids, "projected_tokens": [ctx.lm.tokenizer.decode([i]) for i in ids],
                "projected_text": ctx.lm.tokenizer.decode(ids),
                "soft_nearest_tokens": nearest_tokens(ctx.lm, soft.soft_prompt),
                "source": s.artifact or "trained here with the soft-prompt settings",
                **{k: v for k, v in soft.meta.items() if k != "nearest_tokens"}}
        return PromptArtifact(format=soft.format, placement=soft.placement, marker=soft.marker, soft_prompt=rows,
                              condition=self.name, meta=meta)
