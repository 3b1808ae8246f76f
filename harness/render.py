"""The one renderer: (artifact, example) -> token sequences; the only place chat templates, BOS and delimiters live."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import jinja2

from harness.artifact import PromptArtifact
from harness.data import Example

BLOCK_SEP = "\n\n"  # between instruction, demos and input: lm-eval's few-shot delimiter


@dataclass(frozen=True)
class TokenRequest:
    """A (context, continuation) pair in token ids: what the scorer scores."""

    context: tuple[int, ...]
    continuation: tuple[int, ...]


@dataclass(frozen=True)
class TextRequest:
    context: str
    continuation: str


class Renderer:
    """Renders prompts for one tokenizer, exactly as lm-eval's HFLM would tokenize them."""

    def __init__(self, tokenizer) -> None:
        self.tok = tokenizer

    # --- text ------------------------------------------------------------------
    def body(self, artifact: PromptArtifact, context: str) -> str:
        """The user-visible text: instruction, demos and the example's context."""
        blocks = [artifact.instruction] if artifact.instruction and artifact.instruction_role == "user" else []
        blocks += artifact.demos
        blocks.append(context)
        return BLOCK_SEP.join(blocks)

    def chat(self, artifact: PromptArtifact, user: str) -> str:
        messages = [{"role": "user", "content": user}]
        if artifact.instruction and artifact.instruction_role == "system":
            messages.insert(0, {"role": "system", "content": artifact.instruction})
        if not getattr(self.tok, "chat_template", None):
            raise ValueError("chat format asked for, but the tokenizer has no chat template; use the raw format")
        try:
            return self.tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        except jinja2.exceptions.TemplateError:
            # templates without a system role (Gemma): the instruction goes inside the user turn
            folded = [{"role": "user", "content": BLOCK_SEP.join([artifact.instruction, user])}]
            return self.tok.apply_chat_template(folded, tokenize=False, add_generation_prompt=True)

    def text_requests(self, artifact: PromptArtifact, example: Example) -> list[TextRequest]:
        """One (context, continuation) text pair per choice, in the task's choice order."""
        out = []
        for i in range(example.n_choices):
            ctx, cont = example.choice(i)
            if artifact.format == "chat":
                # lm-eval drops the target delimiter under --apply_chat_template
                out.append(TextRequest(self.chat(artifact, self.body(artifact, ctx)), cont))
            else:
                out.append(TextRequest(self.body(artifact, ctx), example.delimiter + cont))
        return out

    # --- tokens ----------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        """lm-eval's tok_encode: the tokenizer's own special-token default, but never a second BOS."""
        bos = getattr(self.tok, "bos_token", None)
        if bos and text.startswith(bos):
            return self.tok.encode(text, add_special_tokens=False)
        return self.tok.encode(text)

    def encode_pair(self, context: str, continuation: str) -> TokenRequest:
        """lm-eval's _encode_pair: trailing whitespace moves to the continuation; encode the whole, then split."""
        if not context:
            raise ValueError("empty context")
        n_spaces = len(context) - len(context.rstrip())
        if n_spaces:
            continuation = context[-n_spaces:] + continuation
            context = context[:-n_spaces]
        whole = self.encode(context + continuation)
        ctx = self.encode(context)
        cont = whole[len(ctx) :]
        if not cont:
            raise ValueError(f"continuation {continuation!r} tokenizes to nothing")
        return TokenRequest(tuple(ctx), tuple(cont))

    def requests(self, artifact: PromptArtifact, examples: Sequence[Example]) -> list[list[TokenRequest]]:
        return [[self.encode_pair(r.context, r.continuation) for r in self.text_requests(artifact, e)]
                for e in examples]
