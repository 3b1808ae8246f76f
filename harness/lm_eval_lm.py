"""promptgap's prompts inside lm-eval: an lm-eval ``LM`` that puts a saved PromptArtifact in front of every request.

``PromptgapLM`` is registered as lm-eval model ``promptgap`` (importing this module registers it), so both work::

    simple_evaluate(model=PromptgapLM(artifact="results/soft/artifact"), tasks=["arc_easy"])
    simple_evaluate(model="promptgap", model_args="artifact=results/soft/artifact", tasks=["arc_easy"])

lm-eval builds each request as it always does (its YAML, description, few-shot, chat template); the artifact's
instruction, demos and soft prompt are then placed by promptgap's renderer exactly where ``promptgap eval`` places
them, and the shared scorer computes the log-likelihoods. With an empty artifact the numbers are lm-eval's ``hf``
model's (to 1e-4 nats per request); with a trained artifact they are promptgap's own scores of it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from lm_eval.api.model import LM
from lm_eval.api.registry import register_model

from harness.artifact import PromptArtifact
from harness.errors import UserError
from harness.models import EMBEDDED, LoadedModel, load_model
from harness.optimizer import check_artifact
from harness.scorer import Scorer

log = logging.getLogger(__name__)


@register_model("promptgap")
class PromptgapLM(LM):
    """lm-eval's log-likelihood requests, each with ``artifact`` in front, scored by promptgap's Scorer.

    In raw format the artifact's text goes before lm-eval's context (``Renderer.body``); under lm-eval's
    ``apply_chat_template`` the chat history lm-eval builds is rendered by ``Renderer.chat_messages``, the artifact's
    text in the last user turn. A chat-format artifact needs the chat template on, since that is how it was fitted.
    """

    def __init__(self, artifact: str | Path | PromptArtifact | None = None, model: str = EMBEDDED,
                 batch_size: int | str | None = 32, device: str | None = "auto", dtype: str = "auto",
                 lm: LoadedModel | None = None, **_: Any) -> None:
        super().__init__()
        if artifact is None or isinstance(artifact, PromptArtifact):
            self.artifact = artifact or PromptArtifact()
            label = "the given artifact"
        else:
            self.artifact = PromptArtifact.load(artifact)
            label = f"artifact {artifact}"
        if batch_size in (None, "auto"):
            batch_size = 32
        self.lm = lm or load_model(model, device=device or "auto", dtype=dtype)
        check_artifact(self.artifact, self.lm, label)
        self.scorer = Scorer(self.lm, batch_size=int(batch_size))
        self.tokenizer = self.lm.tokenizer  # lm-eval logs the tokenizer's special tokens from here
        self._templated: set[str] = set()  # contexts this model's chat template rendered (the artifact is in them)

    @property
    def empty(self) -> bool:
        a = self.artifact
        return not (a.instruction or a.demos or a.n_soft or a.n_prefix)

    # --- lm-eval's chat template hook -----------------------------------------------------------------------
    @property
    def tokenizer_name(self) -> str:
        return self.lm.name.replace("/", "__")

    def chat_template(self, chat_template: bool | str = False) -> str | None:
        return getattr(self.lm.tokenizer, "chat_template", None) if chat_template else None

    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        """Called by lm-eval only with its chat template on: the history rendered with the artifact applied."""
        if self.artifact.format == "raw" and not self.empty and not self._templated:
            log.warning("a raw-format artifact inside the chat template: promptgap fitted and scored it without one")
        text = self.scorer.renderer.chat_messages(self.artifact, chat_history, add_generation_prompt)
        self._templated.add(text)
        return text

    # --- requests ----------------------------------------------------------------------------------------------
    def loglikelihood(self, requests: list[Any], disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        a, renderer = self.artifact, self.scorer.renderer
        tokens = []
        for context, continuation in (r.args for r in requests):
            templated = context in self._templated  # the artifact is already in it (apply_chat_template)
            if a.format == "chat" and not templated:
                raise UserError("a chat-format artifact is fitted and scored inside the model's chat template; run "
                                "lm-eval with apply_chat_template (promptgap lm-eval --apply-chat-template)")
            if not context and not self.empty:
                raise UserError("a request without context (acc_mutual_info's unconditional ones) has no place for "
                                "a prompt; use a task without that metric")
            text = context if templated or not context else renderer.body(a, context)
            tokens.append(renderer.token_request(a, text, continuation))
        tasks = sorted({r.task_name for r in requests if getattr(r, "task_name", None)})
        results = self.scorer.loglikelihood(tokens, desc=f"promptgap lm-eval {', '.join(tasks)}"[:80], prompt=a)
        return [(r.loglik, r.greedy) for r in results]

    def _refuse(self, requests: list[Any], kind: str) -> list[Any]:
        tasks = sorted({str(r.task_name) for r in requests if getattr(r, "task_name", None)})
        raise UserError(f"task(s) {', '.join(tasks) or '?'} need {kind}, but promptgap's lm-eval model scores "
                        f"log-likelihoods only (multiple_choice and loglikelihood tasks)")

    def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False) -> list[float]:
        return self._refuse(requests, "loglikelihood_rolling (perplexity)")

    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        return self._refuse(requests, "generate_until (text generation)")

    def get_model_info(self) -> dict[str, Any]:
        a = self.artifact
        return {"promptgap_model": self.lm.name, "promptgap_artifact": a.to_json(), "n_soft": a.n_soft,
                "n_prefix": a.n_prefix}
