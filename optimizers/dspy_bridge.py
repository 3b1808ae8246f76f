"""The DSPy bridge: DSPy searches instructions and demos, the shared Scorer decides every prediction and metric.

DSPy never generates the task's answers here. A ``ScoredProgram`` holds the instruction and demos in
an inner ``dspy.Predict`` (so DSPy's optimizers can rewrite and choose them), but its prediction
for an example is the argmax of ``Scorer.score`` over the task's choices for the prompt artifact
those fields make, the very call that scores the test split later. Its metric comes from the same
scores: accuracy for multiple-choice tasks; for continuation tasks (antonyms) minus the gold
continuation's mean per-token NLL, so DSPy's average is minus the report's mean gold NLL (greedy exact
match, the other choice, is 0 on nearly every example for a 135M model and so cannot rank prompts).

Only the optimizers' instruction proposals are generated, by a proposer LM: the local model
(``LocalEngine``, seeded) or a served one (any DSPy/LiteLLM model name, or ``openai/<model>`` at an
OpenAI-compatible base URL). A 135M proposer rarely follows DSPy's output format, so a lenient adapter
keeps its raw text instead of failing the search. The proposer's calls and tokens are counted apart from
the task model's (``proposer_usage``), and so are the metric calls of the search.

This module imports dspy; import it lazily (inside a DSPy condition's fit) so other commands stay fast.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import tempfile
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# before dspy (and litellm) are imported: no disk cache under ~, no cost-map download at import
# (the cache is switched off below, so this folder is never even created)
os.environ.setdefault("DSPY_CACHEDIR", os.path.join(tempfile.gettempdir(), f"promptgap-dspy-cache-{os.getpid()}"))
os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"

import dspy  # noqa: E402
import torch  # noqa: E402
from dspy.adapters.chat_adapter import field_header_pattern  # noqa: E402
from dspy.lm15 import Message, Response, TextPart, Usage  # noqa: E402

from harness.artifact import PromptArtifact  # noqa: E402
from harness.data import Example, shuffled  # noqa: E402
from harness.errors import UserError  # noqa: E402
from harness.models import LoadedModel  # noqa: E402
from harness.optimizer import BudgetSpent  # noqa: E402
from harness.progress import bar  # noqa: E402
from harness.scorer import ExampleScore  # noqa: E402

log = logging.getLogger(__name__)

# every response is generated afresh and seeded; a cache could only leak answers across runs
dspy.configure_cache(enable_disk_cache=False, enable_memory_cache=False)

SIGNATURE = "question -> answer"
DEFAULT_INSTRUCTION = dspy.Signature(SIGNATURE).instructions  # what DSPy puts in place of an empty one
PROGRAM_FILE = "dspy_program.json"
# text a proposer wrote that is code or markup rather than an instruction
_CODE_OR_MARKUP = re.compile(r"```|\[\[ ##|</?[A-Za-z][\w-]*(\s[^<>]*)?>|^\s*(def|class|import|from|return)\s"
                             r"|^\s*[{}\[\]]\s*$|\{\s*\"|;\s*$|https?://|[A-Za-z_]\w*\(|\b[a-z]+_[a-z_]+\b",
                             re.MULTILINE)


def stable_seed(*parts: object) -> int:
    """A positive 31-bit seed from ``parts`` (crc32: unlike hash(), the same in every process)."""
    return zlib.crc32(":".join(map(str, parts)).encode()) % (2**31 - 1) + 1


def looks_like_code(text: str) -> bool:
    return not text.strip() or bool(_CODE_OR_MARKUP.search(text))


# --- the examples as DSPy sees them ----------------------------------------------------
def choice_text(example: Example, i: int) -> str:
    """Choice ``i`` as readable text: the continuation, or the whole sentence when contexts differ (WinoGrande)."""
    ctx, cont = example.choice(i)
    return ctx + example.delimiter + cont if len(example.contexts) > 1 else cont.strip()


def question_text(example: Example) -> str:
    if len(example.contexts) > 1:
        return "\n".join(f"{i + 1}. {choice_text(example, i)}" for i in range(example.n_choices))
    return example.contexts[0]


def to_dspy(example: Example):
    """The DSPy view of an example (what proposers read); ``example_id`` links it back to the harness."""
    return dspy.Example(question=question_text(example), answer=choice_text(example, example.gold),
                        example_id=example.id).with_inputs("question", "example_id")


# --- scores, cached per prompt -----------------------------------------------------------
def metric_name(kind: str) -> str:
    return "minus mean gold NLL" if kind == "continuation" else "accuracy"


def metric_value(kind: str, s: ExampleScore) -> float:
    """One example's metric; DSPy averages it. Nonzero for every continuation, so bootstrapping keeps all."""
    return -s.gold_nll if kind == "continuation" else float(s.correct)


@dataclass
class Candidate:
    """A prompt (instruction + demo ids) that was scored on the whole dev split."""

    instruction: str
    demo_ids: tuple[str, ...]
    dev_score: float  # mean of metric_value over dev


class ScoreBook:
    """The scorer, the examples DSPy may see (train and dev) and every score computed, keyed by prompt.

    Every copy of a ScoredProgram shares one book (``__deepcopy__`` returns it), so DSPy's many
    deep copies neither copy the model nor lose the cache. A dev example scored under a new prompt
    brings the rest of dev with it in one batched ``Scorer.score`` call (DSPy evaluates dev one
    example at a time, in order; batching lets the scorer share the prompt's prefix); a train
    example (bootstrapping, which stops early) is scored alone.
    """

    def __init__(self, ctx: Any, fmt: str, condition: str, on_candidate: Callable[[Candidate], None],
                 budget_tokens: int | None = None) -> None:
        self.scorer, self.kind, self.fmt, self.condition = ctx.scorer, ctx.task.kind, fmt, condition
        self.train, self.dev = tuple(ctx.train), tuple(ctx.dev)
        self.by_id = {e.id: e for e in (*self.train, *self.dev)}
        self.dev_pos = {e.id: i for i, e in enumerate(self.dev)}
        self.cache: dict[tuple[str, tuple[str, ...]], dict[str, ExampleScore]] = {}
        self.candidates: list[Candidate] = []
        self.on_candidate = on_candidate
        self.first_error: BaseException | None = None
        self.metric_calls = 0  # examples evaluated under a candidate (what DSPy's metric is called on)
        self.budget = ctx.token_budget(budget_tokens)  # the fit's; a dev or train scoring it cannot afford stops it

    def __deepcopy__(self, memo: dict) -> ScoreBook:
        return self

    def artifact(self, instruction: str, demo_ids: Sequence[str], meta: dict | None = None) -> PromptArtifact:
        demos = [self.by_id[i].solved_text() for i in demo_ids]
        return PromptArtifact(format=self.fmt, instruction=instruction, demos=demos, condition=self.condition,
                              meta=meta or {})

    def score(self, instruction: str, demo_ids: tuple[str, ...], example_id: str) -> ExampleScore:
        if example_id not in self.by_id:
            raise KeyError(f"example {example_id!r} is in neither train nor dev")
        key = (instruction, demo_ids)
        done = self.cache.setdefault(key, {})
        if example_id not in done:
            if example_id in self.dev_pos:
                start = self.dev_pos[example_id]
                batch = [e for e in (*self.dev[start:], *self.dev[:start]) if e.id not in done]
            else:
                batch = [self.by_id[example_id]]
            kind = "dev" if example_id in self.dev_pos else "train"
            if not self.budget.affords(self.budget.expected(kind)):
                raise BudgetSpent(f"budget_tokens ({self.budget.limit})")
            with self.budget.unit(kind):
                scores = self.scorer.score(self.artifact(instruction, demo_ids), batch, self.kind,
                                           desc="dspy: scoring")
            done.update((s.example_id, s) for s in scores)
            if example_id in self.dev_pos and all(e.id in done for e in self.dev):
                c = Candidate(instruction, demo_ids, self._dev_mean(done))
                self.candidates.append(c)
                self.on_candidate(c)
        return done[example_id]

    def _dev_mean(self, done: dict[str, ExampleScore]) -> float:
        return sum(metric_value(self.kind, done[e.id]) for e in self.dev) / len(self.dev)

    def dev_score(self, instruction: str, demo_ids: tuple[str, ...]) -> float:
        for e in self.dev:
            self.score(instruction, demo_ids, e.id)
        return self._dev_mean(self.cache[(instruction, demo_ids)])


class ScoredProgram(dspy.Module):
    """A one-predictor DSPy program whose predictions come from the shared scorer, not from generation."""

    def __init__(self, book: ScoreBook, instruction: str = "") -> None:
        super().__init__()
        self.book = book
        sig = dspy.Signature(SIGNATURE)
        self.predict = dspy.Predict(sig.with_instructions(instruction) if instruction.strip() else sig)

    def prompt(self) -> tuple[str, tuple[str, ...]]:
        """(instruction, demo ids) as the harness renders them; DSPy's stand-in for no instruction is none."""
        instruction = self.predict.signature.instructions
        instruction = "" if instruction == DEFAULT_INSTRUCTION else instruction
        return instruction, tuple(d["example_id"] for d in self.predict.demos)

    def forward(self, question: str, example_id: str):
        self.book.metric_calls += 1
        try:
            instruction, demo_ids = self.prompt()
            s = self.book.score(instruction, demo_ids, example_id)
        except Exception as e:  # DSPy counts errors and may go on with a score of 0; the fit must not
            self.book.first_error = self.book.first_error or e
            raise
        example = self.book.by_id[example_id]
        answer = choice_text(example, s.pred) if self.book.kind != "continuation" or s.correct else ""
        pred = dspy.Prediction(answer=answer, correct=bool(s.correct), metric=metric_value(self.book.kind, s))
        # Predict records (predictor, inputs, outputs) when it runs; bootstrapping collects demos from these
        trace = dspy.settings.trace
        if trace is not None and dspy.settings.max_trace_size > 0:
            if len(trace) >= dspy.settings.max_trace_size:
                trace.pop(0)
            trace.append((self.predict, {"question": question, "example_id": example_id}, pred))
        return pred


def metric(example, prediction, trace=None) -> float:
    """The metric the bridge computed from the scorer (``metric_value``)."""
    return prediction.metric


# --- the proposer ---------------------------------------------------------------------------
class LenientAdapter(dspy.ChatAdapter):
    """ChatAdapter that never fails on a malformed completion: missing output fields get the raw text.

    Small proposers ignore the ``[[ ## field ## ]]`` format; DSPy's own adapters then raise and
    COPRO/MIPROv2 stop. Here the text outside recognised fields becomes the first missing output field.
    """

    def __init__(self) -> None:
        super().__init__(use_json_adapter_fallback=False)

    def parse(self, signature, completion: str) -> dict[str, Any]:
        with contextlib.suppress(Exception):
            return super().parse(signature, completion)
        fields: dict[str, str] = {}
        loose: list[str] = []
        current: str | None = None
        for line in completion.splitlines():
            m = field_header_pattern.match(line.strip())
            if m:
                current = m.group(1) if m.group(1) in signature.output_fields and m.group(1) not in fields else None
                if current:
                    fields[current] = line.strip()[m.end():].strip()
                continue
            if current:
                fields[current] = (fields[current] + "\n" + line).strip()
            else:
                loose.append(line)
        rest = field_header_pattern.sub("", "\n".join(loose)).strip()
        for name in signature.output_fields:
            if not fields.get(name):
                fields[name], rest = rest, ""
        return fields


@dataclass
class Generation:
    prompt: str
    text: str
    temperature: float | None
    seed: int | None
    prompt_tokens: int = 0
    completion_tokens: int = 0


class LocalEngine:
    """A dspy engine (``complete(Request) -> Response``) over the local transformers model.

    Greedy at temperature 0 (or none), else sampled with a seed made from the run's seed, the
    prompt and how often that prompt was asked before: DSPy asks n identical requests for n
    candidates, and a rerun must get the same n answers.
    """

    def __init__(self, lm: LoadedModel, seed: int, max_tokens: int) -> None:
        self.lm, self.seed, self.max_tokens = lm, seed, max_tokens
        self.asked: dict[str, int] = {}
        self.generations: list[Generation] = []

    def __deepcopy__(self, memo: dict) -> LocalEngine:
        return self

    def _prompt(self, request) -> str:
        messages = []
        if request.system is not None:
            system = request.system if isinstance(request.system, str) else "".join(p.text for p in request.system)
            messages.append({"role": "system", "content": system})
        messages += [{"role": m.role, "content": m.text or ""} for m in request.messages]
        tok = self.lm.tokenizer
        if not self.lm.has_chat_template:
            return "\n\n".join(m["content"] for m in messages) + "\n\n"
        try:
            return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        except Exception:  # templates without a system role (Gemma): fold it into the first user turn
            if messages[0]["role"] != "system" or len(messages) < 2:
                raise
            first = {"role": messages[1]["role"], "content": messages[0]["content"] + "\n\n" + messages[1]["content"]}
            return tok.apply_chat_template([first, *messages[2:]], tokenize=False, add_generation_prompt=True)

    @torch.no_grad()
    def complete(self, request) -> Response:
        prompt = self._prompt(request)
        temperature = request.config.temperature
        max_tokens = min(request.config.max_tokens or self.max_tokens, self.max_tokens)
        tok = self.lm.tokenizer
        ids = tok(prompt, return_tensors="pt", add_special_tokens=not (tok.bos_token and prompt.startswith(
            tok.bos_token))).to(self.lm.device)
        n = self.asked.get(prompt, 0)
        self.asked[prompt] = n + 1
        sample = bool(temperature) and temperature > 0
        kwargs: dict[str, Any] = dict(do_sample=False, temperature=None, top_p=None, top_k=None)
        seed = None
        if sample:
            seed = stable_seed(self.seed, prompt, n)
            kwargs = dict(do_sample=True, temperature=float(temperature), top_p=1.0, top_k=0)
        with torch.random.fork_rng(devices=[self.lm.device] if self.lm.device.type == "cuda" else []):
            if seed is not None:
                torch.manual_seed(seed)
            out = self.lm.model.generate(**ids, max_new_tokens=max_tokens, pad_token_id=tok.pad_token_id
                                         or tok.eos_token_id, **kwargs)
        new = out[0, ids["input_ids"].shape[1]:]
        # the proposer's tokens are its own cost (proposer_usage, from the response's usage), not the task model's
        # scoring tokens (models.Usage), even when the proposer is the task model
        text = tok.decode(new, skip_special_tokens=True).split("[[ ## completed ## ]]")[0].strip()
        n_in, n_out = ids["input_ids"].shape[1], len(new)
        self.generations.append(Generation(prompt, text, temperature, seed, n_in, n_out))
        return Response(id=None, model=f"local/{self.lm.name}", message=Message.assistant([TextPart(text)]),
                        finish_reason="stop", usage=Usage(input_tokens=n_in, output_tokens=n_out,
                                                          total_tokens=n_in + n_out))

    def stream(self, request):
        raise NotImplementedError("the local proposer does not stream")

    def close(self) -> None:
        pass


def proposer_lm(search: Search, ctx: Any):
    """The LM that proposes instructions (and that DSPy's optimizers insist on having configured), and the local
    engine behind it (None for a served proposer).

    ``local``: the model being tuned, through ``LocalEngine``. Anything else: a DSPy/LiteLLM model name, at
    ``proposer_api_base`` when given (an OpenAI-compatible server: ``openai/<model>`` goes through DSPy's own
    client), with the key read from the environment variable ``proposer_api_key_env`` names. It is asked once
    with a short timeout here, so an unreachable proposer fails before the search starts.
    """
    name = search.proposer or "local"
    if name == "local":
        engine = LocalEngine(ctx.lm, search.seed, search.proposer_max_tokens)
        return dspy.LM(f"local/{ctx.lm.name}", engine=engine, cache=False, num_retries=0), engine
    client: dict[str, Any] = {}
    if search.proposer_api_key_env is not None:
        key = os.environ.get(search.proposer_api_key_env)
        if not key:
            raise UserError(f"condition {search.condition}: proposer_api_key_env names {search.proposer_api_key_env}, "
                            f"which is not set here; export it where the run's jobs start")
        client["api_key"] = key
    if search.proposer_api_base is not None:
        client["api_base"] = search.proposer_api_base
        # a server of one's own takes any key; never send it the provider's (OPENAI_API_KEY) by default
        client.setdefault("api_key", "none")
    lm = dspy.LM(name, cache=False, num_retries=0, timeout=search.proposer_timeout,
                 max_tokens=search.proposer_max_tokens, **client)
    try:
        lm("Reply with the word OK.")
    except Exception as e:
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        where = f" at {search.proposer_api_base}" if search.proposer_api_base else ""
        raise UserError(f"proposer {name!r}{where} could not be reached ({first}); check the model name, the server, "
                        f"its API key and the network, or use proposer = \"local\"") from None
    return lm, None


def proposer_usage(search: Search, tracker: Any, engine: LocalEngine | None) -> dict[str, Any] | None:
    """What the proposer cost: which model, where, its calls and prompt and completion tokens (DSPy's usage
    tracker, which every LM call of the search reports to, copies included); None when nothing proposes."""
    if search.proposer is None:
        return None
    calls = prompt = completion = 0
    for entries in tracker.usage_data.values():
        for u in entries:
            calls += 1
            prompt += int(u.get("prompt_tokens") or 0)
            completion += int(u.get("completion_tokens") or 0)
    where = "local" if engine is not None else (search.proposer_api_base or "the provider's default endpoint")
    return {"model": search.proposer, "where": where, "calls": calls, "prompt_tokens": prompt,
            "completion_tokens": completion}


# --- running a search ------------------------------------------------------------------------
@contextlib.contextmanager
def captured_output(buffer: io.StringIO):
    """DSPy's prints, log lines and tqdm bars go to ``buffer`` (kept in log.json), not the terminal.

    stdout holds results here, and stderr holds promptgap's own progress bar.
    """
    from unittest import mock

    import tqdm.std

    dspy_logger = logging.getLogger("dspy")
    handler = logging.StreamHandler(buffer)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    old_handlers = dspy_logger.handlers[:]
    tqdm_init = tqdm.std.tqdm.__init__

    def quiet_init(self, *args, **kwargs):  # a bar DSPy explicitly shows writes to stdout, captured too
        kwargs.setdefault("disable", True)
        tqdm_init(self, *args, **kwargs)

    dspy_logger.handlers = [handler]
    try:
        with contextlib.redirect_stdout(buffer), mock.patch.object(tqdm.std.tqdm, "__init__", quiet_init):
            yield
    finally:
        dspy_logger.handlers = old_handlers


@dataclass
class Search:
    """What a condition hands the driver: how to compile, how many candidates to expect."""

    condition: str
    fmt: str
    instruction: str
    seed: int
    expected_candidates: int
    compile: Callable[..., Any]  # (program, trainset, devset, proposer) -> compiled program
    proposer: str | None = None  # None: the condition proposes nothing (demos only)
    proposer_api_base: str | None = None  # a served proposer's base URL (ProposingSettings)
    proposer_api_key_env: str | None = None  # the environment variable holding its key
    proposer_max_tokens: int = 96
    proposer_timeout: float = 20.0
    info: dict[str, Any] = field(default_factory=dict)
    budget_tokens: int | None = None  # the fit's token budget (optimizer.TokenBudget); None: DSPy's own budget


def run_search(ctx: Any, search: Search) -> PromptArtifact:
    """Compile ``search`` on train/dev, and return the best program as a PromptArtifact (never sees test)."""
    t0 = time.perf_counter()
    if ctx.workdir is None:
        workdir = None
    else:
        workdir = Path(ctx.workdir)
        workdir.mkdir(parents=True, exist_ok=True)
    with bar(f"{search.condition}: candidates on dev", search.expected_candidates) as advance:
        best = [-float("inf")]

        def on_candidate(c: Candidate) -> None:
            best[0] = max(best[0], c.dev_score)
            advance(1, note=f"best {best[0]:.3f}")

        book = ScoreBook(ctx, search.fmt, search.condition, on_candidate, search.budget_tokens)
        student = ScoredProgram(book, search.instruction)
        trainset = [to_dspy(e) for e in shuffled(ctx.train, search.seed)]
        devset = [to_dspy(e) for e in ctx.dev]
        captured = io.StringIO()
        compiled = None
        # every proposer call, the reachability check and the optimizers' copies of the LM included, reports its
        # usage to this tracker: the proposer's cost, kept apart from the task model's tokens
        with dspy.track_usage() as tracker:
            lm, engine = proposer_lm(search, ctx)
        with dspy.context(lm=lm, adapter=LenientAdapter(), num_threads=1, max_errors=1, usage_tracker=tracker), \
                captured_output(captured):
            try:
                compiled = search.compile(student, trainset, devset, lm)
            except Exception:
                if book.first_error is not None and not isinstance(book.first_error, BudgetSpent):
                    raise book.first_error from None
                if book.first_error is None:
                    raise
    spent = isinstance(book.first_error, BudgetSpent)
    if book.first_error is not None and not spent:
        raise book.first_error
    for line in captured.getvalue().splitlines():
        if line.strip():
            log.debug("dspy: %s", line.rstrip())

    if spent or compiled is None:
        # the token budget ran out mid-search: the best prompt scored on the whole of dev so far (the first of
        # equals), else the starting program, unscored
        best_c = max(book.candidates, key=lambda c: c.dev_score, default=None)
        instruction, demo_ids = (best_c.instruction, best_c.demo_ids) if best_c else (search.instruction, ())
        dev_score: float | None = best_c.dev_score if best_c else None
        stopped = str(book.first_error)
        log.info("%s: stopped at %s after %d candidates", search.condition, stopped, len(book.candidates))
    else:
        instruction, demo_ids = compiled.prompt()
        dev_score = book.dev_score(instruction, demo_ids)
        stopped = "search"
        log.info("%s: best dev %s %.4f over %d candidates", search.condition, metric_name(book.kind), dev_score,
                 len(book.candidates))
    proposals = _proposals(search, book, compiled)
    summary = {"dspy_optimizer": search.info.get("dspy_optimizer"), "seed": search.seed,
               "dev_metric": metric_name(book.kind), "dev_score": dev_score, "demo_ids": list(demo_ids),
               "stopped": stopped, "budget_tokens": search.budget_tokens, "tokens": book.budget.spent,
               "metric_calls": book.metric_calls}
    usage = proposer_usage(search, tracker, engine)
    where = {"proposer_api_base": search.proposer_api_base} if search.proposer_api_base else {}
    meta = {**summary, "proposer": search.proposer, **where,
            **({"proposals": proposals} if search.proposer else {})}
    artifact = book.artifact(instruction, demo_ids, meta)
    if workdir is not None and compiled is not None:
        compiled.save(str(workdir / PROGRAM_FILE))
    ctx.report_log({"condition": search.condition, **search.info, **summary, "proposer": search.proposer, **where,
                    "proposer_usage": usage,
                    "fit_seconds": round(time.perf_counter() - t0, 2),
                    "candidates": [c.__dict__ | {"demo_ids": list(c.demo_ids)} for c in book.candidates],
                    "proposals": proposals,
                    "proposer_generations": [g.__dict__ for g in (engine.generations if engine else [])],
                    "dspy_stdout": captured.getvalue()[-20000:]})
    # every candidate DSPy compared was scored on all of dev (its valset); demos come from train
    ctx.report_selection([e.id for e in ctx.dev], f"dev {metric_name(book.kind)}")
    return artifact


def _proposals(search: Search, book: ScoreBook, compiled: Any) -> list[dict[str, Any]]:
    """Every instruction the optimizer considered, in order, with the best dev score of a prompt holding it."""
    # as the program holds them: a signature strips each line's leading whitespace
    proposed = [dspy.Signature(SIGNATURE).with_instructions(t).instructions if t.strip() else ""
                for t in search.info.pop("proposed_instructions", [])]
    texts = list(dict.fromkeys(proposed + [c.instruction for c in book.candidates]))
    out = []
    for t in texts:
        scored = [c.dev_score for c in book.candidates if c.instruction == t]
        p: dict[str, Any] = {"instruction": t, "best_dev_score": max(scored) if scored else None,
                             "prompts_scored": len(scored)}
        if looks_like_code(t):
            p["flag"] = "code, markup or empty"
        out.append(p)
    return out


# --- the optimizers ----------------------------------------------------------------------------
# each takes the condition's settings, the derived seed and the log's info dict, and returns
# compile(program, trainset, devset, proposer_lm) -> compiled program
def compile_fewshot(s: Any, seed: int, info: dict) -> Callable:
    def run(student, trainset, devset, lm):
        # these optimizers take no seed: the seed reaches them through the order of trainset
        if s.dspy_optimizer == "labeled":
            return dspy.LabeledFewShot(k=s.max_labeled_demos).compile(student, trainset=trainset)
        budget = {"metric": metric, "max_bootstrapped_demos": s.max_bootstrapped_demos,
                  "max_labeled_demos": s.max_labeled_demos, "max_errors": 1}
        if s.dspy_optimizer == "bootstrap":
            return dspy.BootstrapFewShot(**budget).compile(student, trainset=trainset)
        return dspy.BootstrapFewShotWithRandomSearch(**budget, num_candidate_programs=s.num_candidates,
                                                     num_threads=1).compile(student, trainset=trainset, valset=devset)
    return run


def compile_copro(s: Any, seed: int, info: dict) -> Callable:
    def run(student, trainset, devset, lm):
        # COPRO scores candidates on the set it is given: dev, so the choice is made on held-out data
        best = dspy.COPRO(prompt_model=lm, metric=metric, breadth=s.breadth, depth=s.depth,
                          init_temperature=s.temperature).compile(
            student, trainset=devset, eval_kwargs={"num_threads": 1, "display_progress": False})
        info["proposed_output_prefixes"] = sorted({c["prefix"] for c in best.candidate_programs})
        info["proposed_instructions"] = [c["instruction"] for c in best.candidate_programs]
        return best
    return run


def compile_mipro(s: Any, seed: int, info: dict) -> Callable:
    class Recording(dspy.MIPROv2):
        def _propose_instructions(self, *args, **kwargs):
            found = super()._propose_instructions(*args, **kwargs)
            info["proposed_instructions"] = list(found[0])
            return found

    def run(student, trainset, devset, lm):
        opt = Recording(metric=metric, prompt_model=lm, task_model=lm, auto=None, num_candidates=s.num_candidates,
                        max_bootstrapped_demos=s.max_bootstrapped_demos, max_labeled_demos=s.max_labeled_demos,
                        num_threads=1, max_errors=1, seed=seed, init_temperature=s.temperature, verbose=False)
        # seed passed explicitly: compile(seed=0) would fall back to 9 (`seed or self.seed`)
        return opt.compile(student, trainset=trainset, valset=devset, num_trials=s.num_trials, seed=seed,
                           minibatch=False, program_aware_proposer=False, data_aware_proposer=s.data_aware,
                           tip_aware_proposer=True, fewshot_aware_proposer=True)
    return run
