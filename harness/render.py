"""The one renderer: (artifact, example) -> token sequences; the only place chat templates, BOS and delimiters live."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import re
import struct
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import jinja2

from harness.artifact import PromptArtifact
from harness.data import Example
from harness.errors import UserError

log = logging.getLogger(__name__)

BLOCK_SEP = "\n\n"  # between instruction, demos and input: lm-eval's few-shot delimiter
# chat-template variables promptgap fixes, so that a rendered prompt depends neither on the day nor on a template's
# default mode: Llama-3.x writes `date_string` into its system turn (today's date, through strftime_now, when it is not
# given; this value is the templates' own fallback), and Qwen3 thinks unless `enable_thinking` is false. Templates
# that do not read a variable ignore it. The parity reference passes the same values to lm-eval's HFLM.
TEMPLATE_PINS: dict[str, object] = {"date_string": "26 Jul 2024", "enable_thinking": False}
# what every chat template reads that is not a setting (the conversation, special tokens, transformers' helpers)
TEMPLATE_PLUMBING = {"messages", "add_generation_prompt", "bos_token", "eos_token", "pad_token", "unk_token",
                     "raise_exception", "tools", "documents", "loop", "range", "namespace", "strftime_now"}
# where a soft prompt sits in the text; split out before encoding, so it never reaches the tokenizer
SLOT = "\x00soft-prompt\x00"
# examples whose texts ``Renderer.requests`` hands the tokenizer in one call: the tokenizer's Rust code encodes a batch
# on every core, and a call per text costs more in Python than the encoding itself
ENCODE_BATCH = 1024
# with split_special_tokens: what a control token's text in the data stands as until it is encoded as text
# (``\x00ctl<i>\x00``, i its index in ``Renderer.control``), so the chat template's own control tokens stay apart
PROTECTED = re.compile("\x00ctl(\\d+)\x00")


def control_strings(tokenizer) -> tuple[str, ...]:
    """The text of the tokenizer's special tokens (``<|im_end|>``, ...): text that the tokenizer turns into one
    control id wherever it occurs, data included, unless asked to split special tokens. Longest first, so that one
    control string inside another is not counted twice."""
    decoder = getattr(tokenizer, "added_tokens_decoder", None) or {}
    found = {t.content for t in decoder.values() if getattr(t, "special", False)}
    found |= set(getattr(tokenizer, "all_special_tokens", []) or [])
    return tuple(sorted((t for t in found if t), key=lambda t: (-len(t), t)))


def soft_id(i: int) -> int:
    """The sentinel token id of soft vector ``i``: negative, so it can never be a real token id.

    The scorer and the training forward put the artifact's vector ``i`` where this id stands; being
    ordinary ints, sentinels share prefix-tree nodes like real tokens do.
    """
    return -1 - i


def soft_ids(n: int) -> tuple[int, ...]:
    return tuple(soft_id(i) for i in range(n))


@dataclass(frozen=True)
class TokenRequest:
    """A (context, continuation) pair in token ids: what the scorer scores."""

    context: tuple[int, ...]
    continuation: tuple[int, ...]


@dataclass(frozen=True)
class TextRequest:
    context: str
    continuation: str


def tokens_hash(seqs: Sequence[Sequence[int]]) -> str:
    """sha256 (first 16 hex digits) of an example's requests as token ids, each context + continuation, in choice
    order: what a score row records of where its log-likelihoods were read, and what the audit re-derives."""
    h = hashlib.sha256()
    for seq in seqs:
        h.update(struct.pack(f"<I{len(seq)}q", len(seq), *seq))
    return h.hexdigest()[:16]


def request_hash(requests: Sequence[TokenRequest]) -> str:
    """``tokens_hash`` of requests as rendered (what a score row's hash must equal)."""
    return tokens_hash([r.context + r.continuation for r in requests])


def positions(request: TokenRequest, n_prefix: int = 0) -> int:
    """Positions a request takes in the model: lm-eval feeds (context + continuation)[:-1], after any key/value
    prefix."""
    return n_prefix + len(request.context) + len(request.continuation) - 1


class RequestTooLong(UserError):
    """A request longer than the model's positions (lm-eval would cut it from the left, silently but for a log
    line; promptgap refuses and names the row)."""


class Ledger:
    """What the renderer turned into tokens while it recorded: the harness's evidence of what a condition read
    during fit, and of how each test request was built (not what the condition says about itself).

    Every path from examples to tokens goes through ``Renderer.requests`` (the scorer's ``score`` and the
    training forward alike), so this sees every example a condition scores or trains on through the harness.
    Scorer calls with bare token requests name no example; ``bare_calls`` counts them.
    """

    def __init__(self, tokenizer, keep_requests: bool = False) -> None:
        self.reads: dict[str, dict] = {}  # example id -> {"content": content key, "times": n}
        self.bare_calls = 0
        self.keep_requests = keep_requests
        self.requests: list[dict] = []
        self.first: dict | None = None  # with keep_requests: the first request's text, as the model reads it
        # control-token text found in what was rendered (each example's text, the prompt's instruction and demos,
        # once per example rendered): token text -> occurrences
        self.control: Counter[str] = Counter()
        self.cut: dict[str, int] = {}  # with truncate_left: example id -> most context tokens cut from a request
        self.bos_id = getattr(tokenizer, "bos_token_id", None)
        prefix = self.bos_id if self.bos_id is not None else getattr(tokenizer, "eos_token_id", None)
        # lm-eval's HFLM adds no BOS to text that already starts with the prefix token's text
        self.prefix_text = tokenizer.decode([prefix]) if prefix is not None else None

    def read(self, example: Example) -> None:
        entry = self.reads.setdefault(example.id, {"content": example.content_key, "times": 0})
        entry["times"] += 1

    def saw(self, example: Example, texts: Sequence[TextRequest], tokens: Sequence[TokenRequest],
            as_written: Callable[[str], str] = str, cut: Sequence[int] = ()) -> None:
        """``as_written``: the renderer's text with any placeholder of the data's control-token text undone.
        ``cut``: per request, the context tokens ``truncate_left`` dropped before the model read it."""
        self.read(example)
        if any(cut):
            self.cut[example.id] = max(cut)
        if not self.keep_requests:
            return
        if self.first is None and texts:
            self.first = {"example_id": example.id, "context": as_written(texts[0].context),
                          "continuation": as_written(texts[0].continuation)}
        for choice, (text, req) in enumerate(zip(texts, tokens, strict=True)):
            real = [t for t in req.context if t >= 0]  # soft-prompt slots may stand before the BOS
            lead = 0
            while self.bos_id is not None and lead < len(real) and real[lead] == self.bos_id:
                lead += 1
            self.requests.append({"example_id": example.id, "choice": choice, "bos": lead,
                                  "text_bos": bool(self.prefix_text) and text.context.startswith(self.prefix_text),
                                  "n_context": len(req.context), "n_continuation": len(req.continuation)})
            if cut and cut[choice]:  # the request as built (BOS and all), then what the model did not read of it
                self.requests[-1]["cut"] = cut[choice]


def moved_space(context: str, continuation: str) -> tuple[str, str]:
    """lm-eval's _encode_pair rule: the context's trailing whitespace moves to the start of the continuation."""
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        return context[:-n_spaces], context[-n_spaces:] + continuation
    return context, continuation


class Renderer:
    """Renders prompts for one tokenizer, exactly as lm-eval's HFLM would tokenize them."""

    def __init__(self, tokenizer, max_positions: int | None = None, split_special_tokens: bool = False,
                 truncate_left: bool = False) -> None:
        self.tok = tokenizer
        self.max_positions = max_positions  # the model's; a longer request is refused, naming its example
        self.truncate_left = truncate_left  # ...or cut from the left, as lm-eval does (opt-in)
        self.ledger: Ledger | None = None  # set while the scorer records (Scorer.recording)
        self._template_checked = False
        self._encoded: dict[str, list[int]] = {}  # texts ``requests`` encoded in one batch, for ``encode`` to take
        self.control = control_strings(tokenizer)
        self._control = re.compile("|".join(map(re.escape, self.control))) if self.control else None
        self._placeholder = {c: f"\x00ctl{i}\x00" for i, c in enumerate(self.control)}
        # off (lm-eval's way, and transformers' apply_chat_template's): control-token text in the data becomes
        # control ids. On: it stays text, tokenized as the characters it is; the chat template's own stay control
        self.split_special_tokens = split_special_tokens
        if split_special_tokens and self._control is not None:
            self._check_split_encoding()

    # --- control tokens in the data -----------------------------------------------
    def control_counts(self, artifact: PromptArtifact, example: Example) -> Counter[str]:
        """Control-token text in what the data and the condition put into ``example``'s requests (its text, the
        instruction, the demos)."""
        found: Counter[str] = Counter()
        if self._control is None:
            return found
        for text in (artifact.instruction, *artifact.demos, example.description, *example.contexts,
                     *example.continuations):
            found.update(self._control.findall(text))
        return found

    def protect(self, text: str) -> str:
        """With split_special_tokens: the data's control-token text replaced by placeholders (``PROTECTED``) that
        ``encode`` turns back into text and tokenizes as text."""
        if not self.split_special_tokens or self._control is None:
            return text
        return self._control.sub(lambda m: self._placeholder[m.group()], text)

    def unprotect(self, text: str) -> str:
        return PROTECTED.sub(lambda m: self.control[int(m.group(1))], text) if "\x00ctl" in text else text

    def _protected(self, artifact: PromptArtifact, example: Example) -> tuple[PromptArtifact, Example]:
        if not self.split_special_tokens or self._control is None:
            return artifact, example
        return (dataclasses.replace(artifact, instruction=self.protect(artifact.instruction),
                                    demos=[self.protect(d) for d in artifact.demos]),
                dataclasses.replace(example, description=self.protect(example.description),
                                    contexts=tuple(map(self.protect, example.contexts)),
                                    continuations=tuple(map(self.protect, example.continuations))))

    def _encode_split(self, text: str, add_special_tokens: bool) -> list[int]:
        """``text`` with split_special_tokens: the control tokens left in it (the chat template's) are control ids,
        the text between them (the data's control-token text included) is tokenized as text, piece by piece, as the
        tokenizer itself tokenizes the text between control tokens."""
        ids: list[int] = []
        at = 0
        for m in self._control.finditer(text):  # type: ignore[union-attr]
            ids += self._encode_text(text[at:m.start()])
            ids.append(self.tok.convert_tokens_to_ids(m.group()))
            at = m.end()
        ids += self._encode_text(text[at:])
        if add_special_tokens:  # what the tokenizer adds around a text of its own accord (a BOS, say)
            with_added = self.tok.encode("a")
            bare = self.tok.encode("a", add_special_tokens=False)
            i = next(i for i in range(len(with_added) - len(bare) + 1) if with_added[i:i + len(bare)] == bare)
            ids = with_added[:i] + ids + with_added[i + len(bare):]
        return ids

    def _encode_text(self, text: str) -> list[int]:
        if not text:
            return []
        return self.tok.encode(self.unprotect(text), add_special_tokens=False, split_special_tokens=True)

    def _check_split_encoding(self) -> None:
        """Encoding the text between control tokens piece by piece is the tokenizer's own rule for byte-level BPE
        (SmolLM2, GPT-2, Llama 3); a tokenizer that treats text after a control token differently when it is
        encoded alone (a SentencePiece word-start piece) is refused rather than rendered wrongly."""
        c = self.control[0]
        probe = f"{c}user\nHi there, one{c}\n{c}two three\n"
        if self._encode_split(probe, False) != self.tok.encode(probe, add_special_tokens=False):
            raise UserError(f"split_special_tokens: this tokenizer ({type(self.tok).__name__}) tokenizes the text "
                            f"after a control token differently when it stands alone, so promptgap cannot keep the "
                            f"data's control-token text as text exactly; leave split_special_tokens off")

    # --- text ------------------------------------------------------------------
    def body(self, artifact: PromptArtifact, context: str) -> str:
        """The user-visible text: instruction, demos, a ``before_input`` soft prompt (as a block of its own)
        and the example's context (where a ``marker`` soft prompt replaces the marker text)."""
        blocks = [artifact.instruction] if artifact.instruction and artifact.instruction_role == "user" else []
        if artifact.n_soft and artifact.placement == "instruction":
            blocks = [SLOT]  # where the instruction's tokens go; the search fills it with real tokens in the end
        blocks += artifact.demos
        if artifact.n_soft and artifact.placement == "before_input":
            blocks.append(SLOT)
        if artifact.n_soft and artifact.placement == "marker":
            context = self.replace_marker(context, artifact.marker)
        blocks.append(context)
        return BLOCK_SEP.join(blocks)

    @staticmethod
    def replace_marker(context: str, marker: str) -> str:
        """``marker`` (with the space before it, so the text on both sides tokenizes as it does in the whole)
        replaced by the soft-prompt slot; it must occur exactly once."""
        if context.count(marker) != 1:
            raise UserError(f"soft-prompt marker {marker!r} occurs {context.count(marker)} times in the context "
                            f"{context[:80]!r}; it must occur exactly once (choose another marker or placement)")
        at = context.index(marker)
        start = at - 1 if at > 0 and context[at - 1] == " " else at
        return context[:start] + SLOT + context[at + len(marker):]

    def prompt_tokens(self, artifact: PromptArtifact) -> int:
        """Tokens the prompt puts before each input: its instruction and demos as the body writes them, plus its
        virtual tokens (soft vectors, key/value prefix). A cost, not an exact count of any one request."""
        text = self.protect(BLOCK_SEP.join([artifact.instruction, *artifact.demos] if artifact.instruction
                                           else artifact.demos))
        return (len(self.encode_plain(text)) if text else 0) + artifact.n_soft + artifact.n_prefix

    def system_text(self, artifact: PromptArtifact, system: str = "") -> str:
        """The system turn: a system-role instruction, then the task's own system text (lm-eval's description),
        in the order lm-eval joins its --system_instruction and a task description."""
        parts = [artifact.instruction] if artifact.instruction and artifact.instruction_role == "system" else []
        return BLOCK_SEP.join(parts + ([system] if system else []))

    def chat(self, artifact: PromptArtifact, user: str, system: str = "") -> str:
        """The chat template over an optional system turn and one user turn ``user`` (the body, already rendered)."""
        messages = [{"role": "user", "content": user}]
        if text := self.system_text(artifact, system):
            messages.insert(0, {"role": "system", "content": text})
        return self.apply_template(messages)

    def chat_messages(self, artifact: PromptArtifact, messages: Sequence[dict[str, str]],
                      add_generation_prompt: bool = True) -> str:
        """A chat history lm-eval built (system, few-shot turns, the request's user turn, maybe an assistant prefix)
        with the artifact applied as ``chat`` applies it: its text before the last user turn's content, a
        system-role instruction at the head of the system turn."""
        msgs = [dict(m) for m in messages]
        users = [i for i, m in enumerate(msgs) if m["role"] == "user"]
        if users:
            msgs[users[-1]]["content"] = self.body(artifact, msgs[users[-1]]["content"])
        system = msgs.pop(0)["content"] if msgs and msgs[0]["role"] == "system" else ""
        if text := self.system_text(artifact, system):
            msgs.insert(0, {"role": "system", "content": text})
        return self.apply_template(msgs, add_generation_prompt)

    def apply_template(self, messages: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        """The tokenizer's chat template as lm-eval's HFLM calls it (an assistant prefix is continued, not closed)."""
        if not getattr(self.tok, "chat_template", None):
            raise ValueError("chat format asked for, but the tokenizer has no chat template; use the raw format")
        if not self._template_checked:
            self._template_checked = True
            facts = template_facts(self.tok) or {}
            if facts.get("today_in_prompt"):
                log.warning("this model's chat template writes today's date into the prompt where no variable "
                            "(%s) can fix it: chat-format numbers may change from day to day",
                            ", ".join(TEMPLATE_PINS))
        kwargs = {"tokenize": False, "add_generation_prompt": add_generation_prompt,
                  "continue_final_message": not add_generation_prompt, **TEMPLATE_PINS}
        try:
            return self.tok.apply_chat_template(messages, **kwargs)
        except jinja2.exceptions.TemplateError:
            if messages[0]["role"] != "system":
                raise
            # templates without a system role (Gemma): the system text goes inside the first user turn
            rest = [dict(m) for m in messages[1:]]
            first = next(i for i, m in enumerate(rest) if m["role"] == "user")
            rest[first]["content"] = BLOCK_SEP.join([messages[0]["content"], rest[first]["content"]])
            return self.tok.apply_chat_template(rest, **kwargs)

    def text_requests(self, artifact: PromptArtifact, example: Example) -> list[TextRequest]:
        """One (context, continuation) text pair per choice, in the task's choice order (with split_special_tokens,
        the data's control-token text held as ``PROTECTED`` placeholders until it is encoded)."""
        artifact, example = self._protected(artifact, example)
        out = []
        for i in range(example.n_choices):
            ctx, cont = example.choice(i)
            if artifact.format == "chat":
                # lm-eval drops the target delimiter under --apply_chat_template
                out.append(TextRequest(self.chat(artifact, self.body(artifact, ctx), example.description), cont))
            else:
                out.append(TextRequest(self.body(artifact, example.description + ctx), example.delimiter + cont))
        return out

    # --- tokens ----------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        """lm-eval's tok_encode: the tokenizer's own special-token default, but never a second BOS."""
        if (ids := self._encoded.get(text)) is not None:
            return list(ids)
        add = self._adds_special(text)
        if self.split_special_tokens and self._control is not None:
            return self._encode_split(text, add)
        return self.tok.encode(text) if add else self.tok.encode(text, add_special_tokens=False)

    def _adds_special(self, text: str) -> bool:
        """lm-eval's rule: the tokenizer adds its special tokens unless the text already starts with the BOS text."""
        bos = getattr(self.tok, "bos_token", None)
        return not (bos and text.startswith(bos))

    @contextlib.contextmanager
    def _batch_encoded(self, texts: list[TextRequest]):
        """Inside the block, ``encode`` takes the texts that ``encode_pair`` will ask for on these text pairs from
        one batched call to the tokenizer (per BOS rule), as ``encode`` itself would give them: the same tokenizer
        on the same strings, without a call per text. Pairs with a soft-prompt slot, and split_special_tokens, go
        text by text as before."""
        if self.split_special_tokens and self._control is not None:
            yield
            return
        wanted = {t for r in texts if r.context and SLOT not in r.context
                  for ctx, cont in [moved_space(r.context, r.continuation)] for t in (ctx + cont, ctx) if t}
        for add in (True, False):
            group = sorted(t for t in wanted if self._adds_special(t) == add)
            if group:
                self._encoded.update(zip(group, self.tok(group, add_special_tokens=add)["input_ids"], strict=True))
        try:
            yield
        finally:
            self._encoded = {}

    def encode_pair(self, context: str, continuation: str, n_soft: int = 0) -> TokenRequest:
        """lm-eval's _encode_pair: trailing whitespace moves to the continuation; encode the whole, then split.

        A context holding ``SLOT`` is cut there: the text before it is encoded as a context start (BOS
        rule included), then come ``n_soft`` sentinel ids, then the text after it, encoded without special
        tokens and split from the continuation by the same whole-then-split rule.
        """
        if not context:
            return self.encode_without_context(continuation)
        context, continuation = moved_space(context, continuation)
        head: list[int] = []
        encode = self.encode
        if SLOT in context:
            before, context = context.split(SLOT)  # body() writes at most one slot
            head = self.encode(before) + list(soft_ids(n_soft))
            encode = self.encode_plain
        whole = encode(context + continuation)
        ctx = encode(context) if context else []
        cont = whole[len(ctx) :]
        if not cont:
            raise ValueError(f"continuation {continuation!r} tokenizes to nothing")
        return TokenRequest(tuple(head + ctx), tuple(cont))

    def encode_plain(self, text: str) -> list[int]:
        """Text in the middle of a sequence: no special tokens added."""
        if self.split_special_tokens and self._control is not None:
            return self._encode_split(text, False)
        return self.tok.encode(text, add_special_tokens=False)

    def encode_without_context(self, continuation: str) -> TokenRequest:
        """lm-eval's rule for an empty context (acc_mutual_info's unconditional requests): the BOS (else EOS) token
        is the context, unless the continuation already starts with it."""
        prefix = self.tok.bos_token_id if self.tok.bos_token_id is not None else self.tok.eos_token_id
        cont = self.encode_plain(continuation)
        if cont and cont[0] == prefix:
            return TokenRequest(tuple(cont[:1]), tuple(cont[1:]))
        return TokenRequest((prefix,), tuple(cont))

    def token_request(self, artifact: PromptArtifact, context: str, continuation: str) -> TokenRequest:
        """A rendered (context, continuation) text pair in tokens, with the artifact's soft-prompt sentinels."""
        r = self.encode_pair(context, continuation, artifact.n_soft)
        if artifact.n_soft and artifact.placement == "start":
            # "start": PEFT's prompt tuning, the vectors before every token (BOS and chat header included)
            return TokenRequest(soft_ids(artifact.n_soft) + r.context, r.continuation)
        return r

    def requests(self, artifact: PromptArtifact, examples: Sequence[Example]) -> list[list[TokenRequest]]:
        out = []
        for at in range(0, len(examples), ENCODE_BATCH):
            chunk = examples[at : at + ENCODE_BATCH]
            texts = [self.text_requests(artifact, e) for e in chunk]
            with self._batch_encoded([r for t in texts for r in t]):
                for e, text in zip(chunk, texts, strict=True):
                    reqs = [self.token_request(artifact, r.context, r.continuation) for r in text]
                    fitted = self.fit_length(artifact, e, reqs)
                    if self.ledger is not None:
                        self.ledger.control.update(self.control_counts(artifact, e))
                        self.ledger.saw(e, text, reqs, self.unprotect, cut=[len(r.context) - len(f.context)
                                                                            for r, f in zip(reqs, fitted, strict=True)])
                    out.append(fitted)
        return out

    def fit_length(self, artifact: PromptArtifact, example: Example,
                   reqs: list[TokenRequest]) -> list[TokenRequest]:
        """``reqs``, none longer than the model's positions: a longer one is refused, naming its example, or with
        ``truncate_left`` loses the first tokens of its context, as lm-eval's HFLM cuts it (its input is
        ``(context + continuation)[-(max_length + 1):][:-1]``). A cut that would reach into the continuation or a
        soft prompt is refused all the same."""
        if self.max_positions is None:
            return reqs
        longest = max(positions(r, artifact.n_prefix) for r in reqs)
        if longest <= self.max_positions:
            return reqs
        out = []
        for r in reqs:
            cut = positions(r, artifact.n_prefix) - self.max_positions
            if cut <= 0:
                out.append(r)
            elif self.truncate_left and cut < len(r.context) and min(r.context[:cut]) >= 0:
                out.append(TokenRequest(r.context[cut:], r.continuation))
            else:
                prompted = ", with the prompt" if artifact.instruction or artifact.demos or artifact.n_soft else ""
                fix = ("cutting its context from the left would leave none of it or cut the soft prompt; shorten or "
                       "remove that row") if self.truncate_left else ("shorten or remove that row (or set "
                                                                      "truncate_left to cut it as lm-eval does)")
                raise RequestTooLong(f"example {example.id!r} is {longest} tokens long as the model reads it "
                                     f"({artifact.format} format{prompted}), more than the model's "
                                     f"{self.max_positions} positions; {fix}")
        return out


def warn_control(where: str, counts: Counter[str], split_special_tokens: bool) -> None:
    """One warning for a cell whose data or prompt holds control-token text (``counts``: text -> occurrences)."""
    if not counts:
        return
    found = ", ".join(f"{t} x{n}" for t, n in counts.most_common())
    if split_special_tokens:
        log.warning("%s: control-token text in the data or the prompt (%s), kept as text (split_special_tokens)",
                    where, found)
    else:
        log.warning("%s: control-token text in the data or the prompt (%s) became control tokens, as lm-eval and "
                    "transformers' apply_chat_template make it; to keep it as text set split_special_tokens "
                    "(a run's [run] table, eval's --split-special-tokens)", where, found)


def warn_cut(where: str, cut: dict[str, int]) -> None:
    """One warning for a cell some of whose requests ``truncate_left`` cut (``cut``: example id -> tokens)."""
    if cut:
        log.warning("%s: %d example(s) longer than the model's positions, cut from the left as lm-eval cuts them "
                    "(truncate_left; up to %d tokens, e.g. %s)", where, len(cut), max(cut.values()), next(iter(cut)))


# a token covers at least one byte of text for byte-level BPE and SentencePiece tokenizers alike, so a request's
# tokens are at most its UTF-8 bytes plus what the tokenizer adds on its own (BOS, a SentencePiece word-start
# piece): a row below that bound cannot be too long and is not tokenized. Where the bound is wrong (a normalizer
# that lengthens text), the scorer's own check still refuses the row, only later.
ADDED_TOKENS_SLACK = 8


def check_row_lengths(model: str, task: str, examples: Sequence[Example], split_special_tokens: bool = False,
                      truncate_left: bool = False) -> None:
    """Refuse, before any model loads, a row whose bare request (the task's own prompt, raw format: the least any
    condition puts before the model) is longer than the model's positions. Reads the model's config, and its
    tokenizer only when some row is long enough to be in doubt; a prompt a condition adds is checked when it is
    scored (the scorer's renderer, same message)."""
    from harness.models import load_tokenizer, max_positions

    limit = max_positions(model)
    if limit is None:
        return
    doubtful = [e for e in examples
                if any(len((e.description + ctx + e.delimiter + cont).encode("utf-8")) + ADDED_TOKENS_SLACK > limit
                       for ctx, cont in map(e.choice, range(e.n_choices)))]
    if not doubtful:
        return
    try:
        renderer = Renderer(load_tokenizer(model), max_positions=limit, split_special_tokens=split_special_tokens,
                            truncate_left=truncate_left)
        renderer.requests(PromptArtifact(format="raw"), doubtful)
    except RequestTooLong as e:
        raise RequestTooLong(f"task {task}, model {model}: {e} (refused before the model loads)") from None


def template_facts(tokenizer) -> dict | None:
    """What of a chat template's output is not fixed by the conversation (for the manifest): the variables it reads
    besides the conversation and special tokens, which of them promptgap pins and to what, and whether today's date
    still reaches the prompt (a template calling ``strftime_now`` where no pinned variable stands in for it).
    None without a template."""
    template = getattr(tokenizer, "chat_template", None)
    if not isinstance(template, str):
        return None
    try:
        from jinja2 import meta
        from transformers.utils.chat_template_utils import _compile_jinja_template

        compiled = _compile_jinja_template(template)  # transformers' own environment: its tags and globals
        variables = meta.find_undeclared_variables(compiled.environment.parse(template))
    except Exception as e:  # a fact for the manifest must never stop a run; say what is missing instead
        return {"error": f"could not read the chat template ({type(e).__name__}: {e})"}
    marker = "\x00today\x00"
    try:  # rendered the way apply_template renders, with a strftime_now that marks where a date would go
        out = compiled.render(messages=[{"role": "user", "content": "x"}], add_generation_prompt=True,
                              strftime_now=lambda fmt: marker, **TEMPLATE_PINS,
                              **{k: getattr(tokenizer, k, None) for k in ("bos_token", "eos_token")})
        dated: bool | None = marker in out
    except Exception:
        dated = None  # the template would not render one user turn (it needs a system turn, say): unknown
    return {"variables": sorted(variables - TEMPLATE_PLUMBING),
            "pinned": {k: v for k, v in TEMPLATE_PINS.items() if k in variables},
            "today_in_prompt": dated}
