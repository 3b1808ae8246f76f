"""The one shared scorer: every condition's test numbers come out of ``Scorer.score``.

Contract (lm-eval's ``loglikelihood``): for each (context, continuation) token request,
the summed log-probability of the continuation, its token count, and whether greedy
decoding would produce it. Numerically it matches lm-eval's HFLM; it is faster because
work that requests share is done once:

1. all input sequences go into a prefix tree (a radix tree: chains without branches are
   one node), so every distinct prefix token runs through the model exactly once. A chat
   header, an instruction or demos shared by all requests is the root; the two contexts
   of a WinoGrande example share a node up to the option; BoolQ's choices share the input;
2. nodes run level by level, batched by length; a node's past is its ancestors' saved
   key/value slices, so nothing is recomputed. On a multi-core CPU the passes of a level
   run side by side on single-threaded workers. Memory is bounded: a level runs in chunks
   whose subtrees finish before the next chunk starts, each node keeps only its own tokens'
   keys/values, a pass's budget counts each row's past, and a pass that runs out of memory
   is halved and retried;
3. only the positions that predict continuation tokens go through the LM head.

Rows of different lengths are padded; an explicit 4D attention mask hides padded keys
and explicit position ids keep rotary/absolute positions exact.
"""

from __future__ import annotations

import contextlib
import math
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from harness.adapters import applied
from harness.artifact import PromptArtifact
from harness.data import Example, TaskKind
from harness.forward import common_prefix, head_logits, run_tree_rows, use_tree_attention
from harness.models import OUT_OF_MEMORY, LoadedModel, config_positions, map_large_buffers, release
from harness.progress import bar
from harness.render import Ledger, Renderer, TokenRequest, tokens_hash


@dataclass(frozen=True)
class Loglik:
    """One request's log-likelihood, and ``read``: the token ids it was read from (the input row through the
    last position read, then that position's target), as the passes that read it reported them back. It equals
    the request's context + continuation unless the scores were put back in the wrong order."""

    loglik: float
    n_tokens: int
    greedy: bool
    read: tuple[int, ...] = ()


@dataclass
class ExampleScore:
    """One line of an ``eval`` JSONL file."""

    example_id: str
    choice_loglik: list[float]
    choice_ntokens: list[int]
    choice_greedy: list[bool]
    gold: int
    pred: int
    correct: bool
    gold_nll: float
    greedy_match: bool | None = None
    # multiple choice: lm-eval's acc_norm (argmax of each choice's log-likelihood over its length in characters)
    correct_norm: bool | None = None
    # ``render.tokens_hash`` of the token ids the choices' log-likelihoods were read from: the audit re-renders the
    # example's requests from the split, the artifact and the tokenizer and compares, so a score that landed on
    # another example, or a prompt that is not the one saved, fails `promptgap check`
    request_hash: str | None = None

    def to_json(self) -> dict:
        return {k: v for k, v in asdict(self).items()
                if v is not None or k not in ("greedy_match", "correct_norm", "request_hash")}


def norm_pred(example: Example, lls: Sequence[float]) -> int:
    """lm-eval's acc_norm prediction: argmax of loglik / len(choice text) (``completion_len``, characters, not bytes:
    ``ConfigurableTask.process_results`` in lm-eval 0.4.13), the first on ties."""
    scores = [ll / n if (n := len(example.choice_text(i))) else -math.inf for i, ll in enumerate(lls)]
    return max(range(len(scores)), key=lambda i: (scores[i], -i))


def example_score(example: Example, kind: TaskKind, results: Sequence[Loglik]) -> ExampleScore:
    """Per-example metrics from the per-choice log-likelihoods (lm-eval's acc: argmax, first on ties)."""
    lls = [r.loglik for r in results]
    pred = max(range(len(lls)), key=lambda i: (lls[i], -i))
    if kind == "continuation":
        r = results[0]
        return ExampleScore(example.id, lls, [r.n_tokens], [r.greedy], example.gold, 0, r.greedy,
                            -r.loglik / r.n_tokens, greedy_match=r.greedy, request_hash=tokens_hash([r.read]))
    log_z = max(lls) + math.log(sum(math.exp(x - max(lls)) for x in lls))
    return ExampleScore(example.id, lls, [r.n_tokens for r in results], [r.greedy for r in results], example.gold, pred,
                        pred == example.gold, log_z - lls[example.gold],
                        correct_norm=norm_pred(example, lls) == example.gold,
                        request_hash=tokens_hash([r.read for r in results]))


@dataclass(eq=False)
class _Node:
    """A run of tokens shared by every input below it; ``start`` is its first position."""

    start: int
    tokens: tuple[int, ...]
    parent: _Node | None = field(repr=False)
    children: list[_Node] = field(default_factory=list, repr=False)
    # (offset in this node, request index, target token): positions whose logits are read here
    reads: list[tuple[int, int, int]] = field(default_factory=list, repr=False)

    @property
    def end(self) -> int:
        return self.start + len(self.tokens)


def _read_tokens(where: tuple[_Node, int, int] | None) -> tuple[int, ...]:
    """The token ids a request was read from, given its deepest read (node, offset, target): the tokens on the
    tree's path to that position, then the target. Every read of a request lies on that one path."""
    if where is None:
        return ()
    node, off, target = where
    parts = [node.tokens[: off + 1]]
    up = node.parent
    while up is not None:
        parts.append(up.tokens)
        up = up.parent
    return tuple(t for part in reversed(parts) for t in part) + (target,)


def build_tree(seqs: list[tuple[int, ...]]) -> tuple[_Node, list[_Node]]:
    """Radix tree of ``seqs``; returns the root and, per sequence, the node it ends in."""
    order = sorted(range(len(seqs)), key=lambda u: seqs[u])
    ends: list[_Node | None] = [None] * len(seqs)
    root = _Node(0, (), None)
    stack = [(root, order, 0)]  # (node to fill, its members in sorted order, node start)
    while stack:
        node, members, start = stack.pop()
        first, last = seqs[members[0]], seqs[members[-1]]
        # sorted order: the lcp of the first and last member is the lcp of all
        end = min(common_prefix(first, last), min(len(seqs[m]) for m in members))
        node.tokens = first[start:end]
        rest = []
        for m in members:
            if len(seqs[m]) == end:
                ends[m] = node
            else:
                rest.append(m)
        i = 0
        while i < len(rest):  # children: runs of members sharing the next token
            j = i
            while j < len(rest) and seqs[rest[j]][end] == seqs[rest[i]][end]:
                j += 1
            child = _Node(end, (), node)
            node.children.append(child)
            stack.append((child, rest[i:j], end))
            i = j
    return root, ends  # type: ignore[return-value]


# a forward pass's fixed cost in tokens' worth of work (measured on CPU: a pass of ~50 one-token
# rows took as long as ~100 tokens in a wide pass)
PASS_COST = 64
# what scoring may hold beyond the model, by default: on a CPU 512 MB, which with map_large_buffers keeps WinoGrande
# dev below lm-eval's peak resident memory; on a GPU half of what is free once the model is loaded
CPU_MEMORY = 512 * 2**20
# how a scorer's memory is shared out (``Scorer.__init__``); the rest is headroom for what a pass allocates besides
# (hidden states, masks). Measured here: the keys/values a level keeps for its children bind first (smaller chunks
# make narrower passes; twice the share scored WinoGrande dev about 6% faster), while larger pass buffers made a GCG
# step about 30% slower when measured (before shared keys were read once and small levels split between workers)
PASS_SHARE, KEEP_SHARE, HEAD_SHARE = 0.2, 0.4, 0.1
GPU_SHARE = 0.5
# passes are planned as if this many run at once, whatever the thread count: the plan decides which rows share a
# pass, and so the last bits of the scores, which must not depend on the process's threads (each pass runs on one
# thread either way). With more CPU threads than this, more passes than planned may be in flight.
PLANNED_WORKERS = 2


def reads_shared(width: int, n_shared: int) -> bool:
    """Whether a pass whose widest row is ``width`` reads the ``n_shared`` keys/values every row shares once
    (``Scorer._shared``) rather than copying them into each row: the planner and the pass must agree."""
    return width <= n_shared


def default_memory(lm: LoadedModel) -> int:
    """Bytes a scorer may use for keys/values, pass buffers and LM-head tables on ``lm``'s device."""
    if lm.device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(lm.device)
        return max(CPU_MEMORY, int(free * GPU_SHARE))
    return CPU_MEMORY


@dataclass
class _Budget:
    """What one pass may hold, and what a level keeps for its children, in token positions (and LM-head rows)."""

    batch_tokens: int  # padded tokens through the model in one pass (compute)
    max_rows: int  # rows in one pass
    pass_kv: int  # key/value positions of one pass's buffer: rows x (widest past + widest row)
    keep_kv: int  # key/value positions kept for the children of a chunk of a level
    head_rows: int  # LM-head rows at once (each a vocabulary-wide float32 row, twice: logits and log-softmax)

    def halved(self) -> _Budget:
        return _Budget(max(1, self.batch_tokens // 2), max(1, self.max_rows // 2), max(1, self.pass_kv // 2),
                       max(1, self.keep_kv // 2), max(1, self.head_rows // 2))


def _scoring_thread() -> None:
    """A scoring worker's thread state, set once when it starts. One intra-op thread: the workers share the cores.
    No gradients: grad mode is per thread, and a new thread starts with it on, so the ``no_grad`` around
    ``Scorer.loglikelihood`` does not reach the workers; with it on, a model with trainable weights (an adapter)
    would build an autograd graph in every pass."""
    torch.set_num_threads(1)
    torch.set_grad_enabled(False)


class Scorer:
    """Log-likelihoods of continuations under one frozen model, each distinct prefix computed once."""

    def __init__(self, lm: LoadedModel, batch_size: int = 32, batch_tokens: int | None = None,
                 memory: int | None = None) -> None:
        """``batch_size`` sets the size of a forward pass; results do not depend on it.

        Tree nodes are short (often a few tokens), so a pass of ``batch_size`` rows would be too
        small to use the hardware well: a pass holds up to ``batch_tokens`` padded tokens (default
        64 per unit of ``batch_size``) in up to ``8 * batch_size`` rows. ``memory`` (bytes; default
        ``default_memory``) bounds what scoring holds beyond the model: ``PASS_SHARE`` for the key/value buffers of
        the passes running at once, ``KEEP_SHARE`` for the keys/values kept for the next level, ``HEAD_SHARE`` for
        LM-head tables.
        """
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self.lm = lm
        self.batch_size = batch_size
        self.memory = memory or default_memory(lm)
        layers, kv_heads, head_dim = lm.kv_shape
        self.kv_bytes = layers * 2 * kv_heads * head_dim * lm.dtype.itemsize  # one position's keys and values
        self.vocab = lm.model.get_output_embeddings().weight.shape[0]
        self._budget0 = _Budget(batch_tokens=batch_tokens or 64 * batch_size,
                                max_rows=8 * batch_size,  # bounds the key/value buffer of a pass of narrow nodes
                                pass_kv=max(1, int(PASS_SHARE * self.memory) // self.kv_bytes),
                                keep_kv=max(1, int(KEEP_SHARE * self.memory) // self.kv_bytes),
                                head_rows=max(1, int(HEAD_SHARE * self.memory) // (2 * 4 * self.vocab)))
        self.budget = self._budget0  # halved for good after an out-of-memory error
        self.max_len = config_positions(lm.model.config)
        self.renderer = Renderer(lm.tokenizer, max_positions=self.max_len,
                                 split_special_tokens=lm.split_special_tokens, truncate_left=lm.truncate_left)
        self._soft: torch.Tensor | None = None  # the soft vectors of the current ``loglikelihood`` call
        # whether a pass reads its rows' shared ancestors' keys/values where they are kept (``forward.tree_attention``)
        # or copies them into each row's buffer (models loaded with an attention other than sdpa)
        self._tree = use_tree_attention(lm)
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    @property
    def batch_tokens(self) -> int:
        return self.budget.batch_tokens

    @property
    def max_rows(self) -> int:
        return self.budget.max_rows

    # --- the public entry points -------------------------------------------
    @contextlib.contextmanager
    def recording(self, keep_requests: bool = False):
        """Record every example rendered (scored, or rendered for training) inside the block: ``with
        scorer.recording() as ledger``. The harness wraps each fit and each test scoring in one; with
        ``keep_requests`` the ledger also keeps each request's BOS evidence."""
        if self.renderer.ledger is not None:
            raise RuntimeError("the scorer is already recording")
        ledger = Ledger(self.lm.tokenizer, keep_requests)
        self.renderer.ledger = ledger
        try:
            yield ledger
        finally:
            self.renderer.ledger = None

    def score(self, artifact: PromptArtifact, examples: Sequence[Example], kind: TaskKind,
              desc: str = "scoring") -> list[ExampleScore]:
        per_example = self.renderer.requests(artifact, examples)
        flat = [r for reqs in per_example for r in reqs]
        results = self._loglikelihood(flat, desc=desc, prompt=artifact)
        out, k = [], 0
        for ex, reqs in zip(examples, per_example, strict=True):
            out.append(example_score(ex, kind, results[k : k + len(reqs)]))
            k += len(reqs)
        return out

    def loglikelihood(self, requests: Sequence[TokenRequest], desc: str = "scoring",
                      prompt: PromptArtifact | None = None, of: Sequence[Example] | None = None) -> list[Loglik]:
        """``prompt`` supplies trained tensors: soft vectors for the requests' sentinel ids, and a key/value
        prefix that comes before every request (a virtual parent of the tree's root). ``of``: the examples the
        requests were rendered from (a gradient search scoring many candidate prompts): while recording, each is
        noted as read; without it the call counts as bare, naming no example."""
        ledger = self.renderer.ledger
        if ledger is not None:
            if of is None:
                ledger.bare_calls += 1
            else:
                for e in of:
                    ledger.read(e)
        return self._loglikelihood(requests, desc, prompt)

    def _loglikelihood(self, requests: Sequence[TokenRequest], desc: str = "scoring",
                       prompt: PromptArtifact | None = None) -> list[Loglik]:
        # trained weights (a LoRA adapter, a full fine-tune) are in the model for this call only; any other prompt
        # is scored without them
        with applied(self.lm, prompt.adapter_config if prompt is not None else None,
                     prompt.trained_weights() if prompt is not None else None):
            if self.lm.device.type != "cpu":
                return self._score_requests(requests, desc, prompt)
            with map_large_buffers():  # the passes' buffers live in host memory: keep them from fragmenting it
                return self._score_requests(requests, desc, prompt)

    @torch.no_grad()
    def _score_requests(self, requests: Sequence[TokenRequest], desc: str, prompt: PromptArtifact | None
                        ) -> list[Loglik]:
        if not requests:
            return []
        n_prefix = prompt.n_prefix if prompt is not None else 0
        self._soft = None
        if prompt is not None and prompt.soft_prompt is not None:
            self._soft = prompt.soft_prompt.to(self.lm.device, self.lm.dtype)
        # lm-eval feeds (context + continuation)[:-1] and reads the last len(continuation) positions
        seq_of: dict[tuple[int, ...], int] = {}
        seqs: list[tuple[int, ...]] = []
        for r in requests:
            if not r.context or not r.continuation:
                raise ValueError("a request needs a non-empty context and continuation")
            s = (r.context + r.continuation)[:-1]
            if s not in seq_of:
                seq_of[s] = len(seqs)
                seqs.append(s)
        if self.max_len and n_prefix + max(map(len, seqs)) > self.max_len:  # bare requests (rendered ones: above)
            raise ValueError(f"a request is longer than the model's {self.max_len} positions")
        lowest = min(min(s) for s in seqs)
        if self._soft is None and lowest < 0:
            raise ValueError("requests hold soft-prompt sentinel ids but no soft_prompt was given")
        if self._soft is not None and -1 - lowest >= self._soft.shape[0]:
            raise ValueError(f"a sentinel id asks for a soft vector beyond the {self._soft.shape[0]} given")

        root, ends = build_tree(seqs)
        for ri, r in enumerate(requests):
            node = ends[seq_of[(r.context + r.continuation)[:-1]]]
            for j in range(len(r.continuation) - 1, -1, -1):  # walk up from the last position
                pos = len(r.context) - 1 + j
                while node.start > pos:
                    node = node.parent
                node.reads.append((pos - node.start, ri, r.continuation[j]))

        # each pass's log-probabilities and greedy hits stay on the device until the end (no wait per pass); they
        # are summed per request in the order the passes ran, and a request is read by at most one pass per level
        self._reads: list[tuple[list[int], torch.Tensor, torch.Tensor, list[tuple[_Node, int, int]]]] = []
        with bar(desc, sum(len(r.continuation) for r in requests)) as advance:
            self._advance = advance
            kv: dict[_Node, torch.Tensor] = {}  # a node's own keys/values, while its descendants still run
            if n_prefix:
                kv = self._prefix_root(root, prompt.prefix_kv)
            with self._workers():
                self._run_tree([root] if root.tokens else root.children, kv)
        sums, counts, greedy = [0.0] * len(requests), [0] * len(requests), [True] * len(requests)
        last: list[tuple[_Node, int, int] | None] = [None] * len(requests)  # each request's deepest read
        if self._reads:
            lps = torch.cat([lp for _, lp, _, _ in self._reads]).tolist()
            hits = torch.cat([hit for _, _, hit, _ in self._reads]).tolist()
            owners = [ri for o, _, _, _ in self._reads for ri in o]
            where = [w for _, _, _, ws in self._reads for w in ws]
            for ri, lp, g, w in zip(owners, lps, hits, where, strict=True):
                sums[ri] += lp
                counts[ri] += 1
                greedy[ri] = greedy[ri] and g
                if (at := last[ri]) is None or w[0].start + w[1] > at[0].start + at[1]:
                    last[ri] = w
        self._reads = []
        return [Loglik(s, n, g, _read_tokens(w)) for s, n, g, w in zip(sums, counts, greedy, last, strict=True)]

    # --- running -------------------------------------------------------------
    @contextlib.contextmanager
    def _workers(self):
        """On a CPU with several threads, the passes of a level run side by side, one thread each.

        A pass's matrix products are small (a few hundred rows), and one core runs them better than two cores
        share them: on 2 cores, WinoGrande dev scores about 10% faster this way. A pass's numbers do not depend
        on which worker runs it, and no two passes of a level read for the same request.
        """
        threads = torch.get_num_threads()
        if self.lm.device.type != "cpu" or threads < 2:
            self._pool = None
            yield
            return
        with ThreadPoolExecutor(threads, initializer=_scoring_thread) as pool:
            self._pool = pool
            try:
                yield
            finally:
                self._pool = None
                torch.set_num_threads(threads)

    def _prefix_root(self, root: _Node, prefix_kv: torch.Tensor) -> dict[_Node, torch.Tensor]:
        """Make a key/value prefix the past of the whole tree: every node moves ``n_prefix`` positions
        right (real tokens start at position n_prefix, as in PEFT's prefix tuning)."""
        n_prefix = prefix_kv.shape[3]
        stack = [root]
        while stack:
            n = stack.pop()
            n.start += n_prefix
            stack.extend(n.children)
        parent = root
        if root.tokens:  # the root runs first, so its parent holds the prefix
            parent = _Node(0, (), None)
            parent.children.append(root)
            root.parent = parent
        return {parent: prefix_kv.to(self.lm.device, self.lm.dtype)}

    def _run_tree(self, level: list[_Node], kv: dict[_Node, torch.Tensor]) -> None:
        """Run ``level`` (nodes whose ancestors' keys/values are in ``kv``) and everything below it.

        Depth first over chunks of a level: a chunk keeps at most ``budget.keep_kv`` positions of its own
        keys/values for its children, its whole subtree runs, then its keys/values are dropped and the next chunk
        of the level starts. Memory is so bounded by the tree's depth times one chunk, not by a whole level (a
        level of WinoGrande dev is 1267 examples' contexts), while a chunk's children still fill whole passes.
        """
        stack: list[list[_Node] | tuple[_Node, ...]] = [level]
        while stack:
            item = stack.pop()
            if isinstance(item, tuple):  # a chunk whose subtree has run: its keys/values are needed no more
                for n in item:
                    kv.pop(n, None)
                continue
            chunk, kept = [], 0
            for n in item:
                if chunk and n.children and kept + len(n.tokens) > self.budget.keep_kv:
                    break
                chunk.append(n)
                kept += len(n.tokens) if n.children else 0
            if len(chunk) < len(item):
                stack.append(item[len(chunk):])
            kv.update(self._run_level(chunk, kv))
            parents = tuple(n for n in chunk if n.children)
            if parents:
                stack.append(parents)
                stack.append([c for n in parents for c in n.children])

    @staticmethod
    def _ancestors(node: _Node, kv: dict[_Node, torch.Tensor]) -> list[_Node]:
        """The ancestors whose keys/values make a node's past, root first."""
        out = []
        a = node.parent
        while a is not None:
            if a in kv:
                out.append(a)
            a = a.parent
        return out[::-1]

    def _shared(self, nodes: list[_Node], kv: dict[_Node, torch.Tensor]) -> list[_Node]:
        """The ancestors every node of a level's chunk has (the chat template's head, a trained prefix, a prompt): a
        pass of rows no wider than their run reads their keys/values once for all its rows, with ``tree_attention``
        (none without it); wider rows, whose own keys outnumber the shared ones, copy the run as before. Measured on
        2 cores: WinoGrande dev in chat format (rows of ~10 tokens after a 24-token head) scored 8-9% faster, a GCG
        step 15% faster (with ``_run_level`` splitting small levels), picking the same tokens."""
        if not self._tree:
            return []
        common = self._ancestors(nodes[0], kv)
        for n in nodes[1:]:
            if not common:
                break
            mine = self._ancestors(n, kv)
            k = 0
            while k < min(len(common), len(mine)) and common[k] is mine[k]:
                k += 1
            common = common[:k]
        return common

    def _run_level(self, nodes: list[_Node], kv: dict[_Node, torch.Tensor]) -> dict[_Node, torch.Tensor]:
        """Run ``nodes`` (whose ancestors are done) in length-sorted passes.

        Returns, for each node with children, its own tokens' keys/values [layers, 2, kv_heads, len, head_dim].
        """
        out: dict[_Node, torch.Tensor] = {}

        def run(batch: list[_Node], tries: int = 0) -> None:
            try:
                kept, read = self._pass(batch, kv, shared, n_shared)
            except OUT_OF_MEMORY:
                if len(batch) == 1 and tries >= 2:  # a single row, with LM-head chunks already quartered
                    raise
                kept = None  # the retry happens outside the handler, whose frame holds the failed pass's tensors
            if kept is None:
                self._shrink(batch)
                if len(batch) == 1:  # a row cannot be split: what shrinks is how many LM-head rows run at once
                    run(batch, tries + 1)
                else:
                    for half in (batch[: len(batch) // 2], batch[len(batch) // 2 :]):
                        run(half)
                return
            out.update(kept)
            if read is not None:
                self._reads.append(read)
                self._advance(len(read[0]))

        self.lm.usage.tokens += sum(len(n.tokens) for n in nodes)  # here, not in the workers: no shared counter
        shared = self._shared(nodes, kv)
        n_shared = sum(kv[a].shape[3] for a in shared)  # a trained prefix's keys stand for no tokens: count those
        passes = self._batches(sorted(nodes, key=lambda n: (len(n.tokens), n.start)), n_shared)
        # a level of fewer passes than twice the workers leaves a worker idle while the last one runs (a GCG step's
        # levels, once shared keys no longer narrowed their passes, ran ~20% slower): halve the largest
        while len(passes) < 2 * PLANNED_WORKERS:
            big = max(range(len(passes)), key=lambda i: len(passes[i]) * len(passes[i][-1].tokens))
            if len(passes[big]) < 2:
                break
            half = len(passes[big]) // 2
            passes[big : big + 1] = [passes[big][:half], passes[big][half:]]
        if self._pool is None:
            for batch in passes:
                run(batch)
        else:  # the biggest passes first, so the workers finish together
            passes.sort(key=lambda b: len(b) * len(b[-1].tokens), reverse=True)
            for _ in self._pool.map(run, passes):
                pass
        return out

    def _shrink(self, batch: list[_Node]) -> None:
        """After an out-of-memory error: halve every budget for the rest of this scorer's life (the next call, and
        the next cell, start at the size that fits), free what the failed pass held, and say so."""
        with self._lock:
            self.budget = self.budget.halved()
            b = self.budget
            self.lm.fallbacks.append({
                "where": "scorer",
                "what": f"out of memory in a pass of {len(batch)} row(s); "
                        f"{'pass halved' if len(batch) > 1 else 'LM-head chunks halved'} and retried; passes now at "
                        f"most {b.max_rows} rows, {b.batch_tokens} tokens, {b.pass_kv} key/value positions, "
                        f"{b.head_rows} LM-head rows at once"})
        release(self.lm.device)

    def _pass(self, batch: list[_Node], kv: dict[_Node, torch.Tensor], shared: list[_Node], n_shared: int):
        """One forward pass: (the batch's nodes with children -> their own keys/values, the pass's reads or None).
        ``shared``: ancestors of every row (``n_shared`` positions), read once unless the rows are wider. Nothing is
        accumulated here, so a pass that fails can run again."""
        if not reads_shared(max(len(n.tokens) for n in batch), n_shared):
            shared = []
        own = [[kv[a] for a in self._ancestors(n, kv)[len(shared):]] for n in batch]
        buf, n_past, hidden = run_tree_rows(self.lm, [list(n.tokens) for n in batch], own, [n.start for n in batch],
                                            self._soft, [kv[a] for a in shared])
        read = self._read(hidden, batch)
        kept = {}
        for row, n in enumerate(batch):
            if n.children:  # its own tokens only: its ancestors' keys/values are kept once, by them
                kept[n] = buf[:, :, row, :, n_past : n_past + len(n.tokens)].clone()
        return kept, read

    def _batches(self, ordered: list[_Node], n_shared: int = 0) -> list[list[_Node]]:
        """Cut width-sorted nodes into passes that minimise padded tokens plus a fixed cost per pass.

        A pass costs its padded tokens (rows x widest row) plus ``PASS_COST`` tokens' worth of work
        that does not shrink with its size (every layer's weights are read once per pass, and every
        op is dispatched once). Splitting a level only where widths jump is therefore not enough:
        many narrow passes waste more than some padding does. Contiguous groups of the sorted nodes
        are optimal for this cost; dynamic programming finds the best cut, with at most
        ``batch_tokens`` padded tokens and ``max_rows`` rows per pass, and a key/value buffer of at most
        ``pass_kv`` positions (rows x (longest own past + widest row): the ``n_shared`` positions every row has are
        read where they are kept), shared by the passes that run at once.
        """
        n = len(ordered)
        b = self.budget
        pass_kv = max(1, b.pass_kv // PLANNED_WORKERS)
        widths = np.array([len(x.tokens) for x in ordered], dtype=np.float64)
        starts = np.array([x.start - n_shared for x in ordered], dtype=np.float64)  # own pasts: buffer positions
        best = np.zeros(n + 1)  # best[j]: cost of the first j nodes
        cut = np.zeros(n + 1, dtype=np.int64)
        for j in range(1, n + 1):
            w = widths[j - 1]  # the widest of any group ending at j
            lo = max(0, j - min(b.max_rows, max(1, int(b.batch_tokens // w))))
            # the longest past of each group [i, j), and its buffer; groups only grow as i falls, so the ones that
            # fit are a run ending at j (a single row always runs)
            past = np.maximum.accumulate(starts[lo:j][::-1])[::-1] + (0 if reads_shared(int(w), n_shared) else n_shared)
            fits = (j - np.arange(lo, j)) * (past + w) <= pass_kv
            lo = max(lo + int(np.argmax(fits)) if fits.any() else j - 1, lo)
            starts_i = np.arange(lo, j)
            costs = best[lo:j] + (j - starts_i) * w
            k = int(np.argmin(costs))
            best[j], cut[j] = costs[k] + PASS_COST, lo + k
        out: list[list[_Node]] = []
        j = n
        while j > 0:
            out.append(ordered[cut[j] : j])
            j = int(cut[j])
        return out[::-1]

    def _read(self, hidden: torch.Tensor, batch: list[_Node]):
        """LM head only at continuation-predicting positions, ``budget.head_rows`` at a time: (request of each
        read, log-probabilities, greedy hits, where each read was: node, offset, target), the second and third on the
        device; None when the pass reads nothing."""
        rows, offs, targets, owners, read_at = [], [], [], [], []
        for row, node in enumerate(batch):
            for off, ri, tok in node.reads:
                rows.append(row)
                offs.append(off)
                targets.append(tok)
                owners.append(ri)
                read_at.append((node, off, tok))
        if not rows:
            return None
        dev = hidden.device
        where = torch.tensor([rows, offs, targets], device=dev)
        h = hidden[where[0], where[1]]
        step = max(1, self.budget.head_rows // PLANNED_WORKERS)
        lps, hits = [], []
        for a in range(0, len(rows), step):
            logits = head_logits(self.lm, h[a : a + step])
            tgt = where[2, a : a + step]
            lps.append(torch.log_softmax(logits, dim=-1).gather(1, tgt[:, None])[:, 0])
            hits.append(logits.argmax(dim=-1) == tgt)
        return owners, torch.cat(lps), torch.cat(hits), read_at
