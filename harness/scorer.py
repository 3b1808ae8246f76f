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
   run side by side on single-threaded workers;
3. only the positions that predict continuation tokens go through the LM head.

Rows of different lengths are padded; an explicit 4D attention mask hides padded keys
and explicit position ids keep rotary/absolute positions exact.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from harness.artifact import PromptArtifact
from harness.data import Example, TaskKind
from harness.forward import common_prefix, head_logits, run_tree_rows
from harness.models import LoadedModel
from harness.progress import bar
from harness.render import Ledger, Renderer, TokenRequest


@dataclass(frozen=True)
class Loglik:
    loglik: float
    n_tokens: int
    greedy: bool


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

    def to_json(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None or k not in ("greedy_match", "correct_norm")}


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
                            -r.loglik / r.n_tokens, greedy_match=r.greedy)
    log_z = max(lls) + math.log(sum(math.exp(x - max(lls)) for x in lls))
    return ExampleScore(example.id, lls, [r.n_tokens for r in results], [r.greedy for r in results], example.gold, pred,
                        pred == example.gold, log_z - lls[example.gold],
                        correct_norm=norm_pred(example, lls) == example.gold)


@dataclass(eq=False)
class _Node:
    """A run of tokens shared by every input below it; ``start`` is its first position."""

    start: int
    tokens: tuple[int, ...]
    parent: _Node | None = field(repr=False)
    children: list[_Node] = field(default_factory=list, repr=False)
    # (offset in this node, request index, target token): positions whose logits are read here
    reads: list[tuple[int, int, int]] = field(default_factory=list, repr=False)
    size: int = 0  # tokens in this node's subtree

    @property
    def end(self) -> int:
        return self.start + len(self.tokens)


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


class Scorer:
    """Log-likelihoods of continuations under one frozen model, each distinct prefix computed once."""

    def __init__(self, lm: LoadedModel, batch_size: int = 32, batch_tokens: int | None = None) -> None:
        """``batch_size`` sets the size of a forward pass; results do not depend on it.

        Tree nodes are short (often a few tokens), so a pass of ``batch_size`` rows would be too
        small to use the hardware well: a pass holds up to ``batch_tokens`` padded tokens (default
        64 per unit of ``batch_size``) in up to ``8 * batch_size`` rows.
        """
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self.lm = lm
        self.batch_size = batch_size
        self.batch_tokens = batch_tokens or 64 * batch_size
        self.max_rows = 8 * batch_size  # bounds the key/value buffer of a pass of narrow nodes
        self.renderer = Renderer(lm.tokenizer)
        cfg = lm.model.config.get_text_config()
        self.max_len = getattr(cfg, "max_position_embeddings", None)
        self._soft: torch.Tensor | None = None  # the soft vectors of the current ``loglikelihood`` call
        self._pool: ThreadPoolExecutor | None = None

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

    @torch.no_grad()
    def _loglikelihood(self, requests: Sequence[TokenRequest], desc: str = "scoring",
                       prompt: PromptArtifact | None = None) -> list[Loglik]:
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
        if self.max_len and n_prefix + max(map(len, seqs)) >= self.max_len:
            raise ValueError(f"a request is longer than the model's {self.max_len} positions")
        if self._soft is None and any(t < 0 for s in seqs for t in s):
            raise ValueError("requests hold soft-prompt sentinel ids but no soft_prompt was given")

        root, ends = build_tree(seqs)
        for ri, r in enumerate(requests):
            node = ends[seq_of[(r.context + r.continuation)[:-1]]]
            for j in range(len(r.continuation) - 1, -1, -1):  # walk up from the last position
                pos = len(r.context) - 1 + j
                while node.start > pos:
                    node = node.parent
                node.reads.append((pos - node.start, ri, r.continuation[j]))
        self._sizes(root)

        self._sum = [0.0] * len(requests)
        self._count = [0] * len(requests)
        self._greedy = [True] * len(requests)
        with bar(desc, sum(len(r.continuation) for r in requests)) as advance:
            self._advance = advance
            # level by level; a node's saved keys/values cover its whole prefix, so they
            # are needed only by its children and are dropped once those have run
            kv_of: dict[_Node, torch.Tensor] = {}
            if n_prefix:
                kv_of = self._prefix_root(root, prompt.prefix_kv)
            level = [root] if root.tokens else root.children
            with self._workers():
                while level:
                    kv_of = self._run_level(level, kv_of)
                    level = [c for n in level for c in n.children]
        return [Loglik(s, n, g) for s, n, g in zip(self._sum, self._count, self._greedy, strict=True)]

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
        with ThreadPoolExecutor(threads, initializer=torch.set_num_threads, initargs=(1,)) as pool:
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

    @staticmethod
    def _sizes(root: _Node) -> None:
        order, stack = [], [root]
        while stack:
            n = stack.pop()
            order.append(n)
            stack.extend(n.children)
        for n in reversed(order):
            n.size = len(n.tokens) + sum(c.size for c in n.children)

    def _run_level(self, nodes: list[_Node], kv_of: dict[_Node, torch.Tensor]) -> dict[_Node, torch.Tensor]:
        """Run ``nodes`` (whose parents are done) in length-sorted batches.

        Returns, for each node with children, its prefix's keys/values as one tensor
        [layers, 2, kv_heads, node.end, head_dim].
        """
        out: dict[_Node, torch.Tensor] = {}

        def run(batch: list[_Node]) -> None:
            buf, n_past, hidden = self._forward([list(n.tokens) for n in batch],
                                                [kv_of.get(n.parent) for n in batch], [n.start for n in batch])
            self._read(hidden, batch)
            for row, n in enumerate(batch):
                if n.children:  # the row's past is right-aligned, so its whole prefix is one slice
                    out[n] = buf[:, :, row, :, n_past - n.start : n_past + len(n.tokens)].clone()

        self.lm.usage.tokens += sum(len(n.tokens) for n in nodes)  # here, not in the workers: no shared counter
        passes = self._batches(sorted(nodes, key=lambda n: len(n.tokens)))
        if self._pool is None:
            for batch in passes:
                run(batch)
        else:  # the biggest passes first, so the workers finish together
            passes.sort(key=lambda b: len(b) * len(b[-1].tokens), reverse=True)
            for _ in self._pool.map(run, passes):
                pass
        return out

    def _batches(self, ordered: list[_Node]) -> list[list[_Node]]:
        """Cut width-sorted nodes into passes that minimise padded tokens plus a fixed cost per pass.

        A pass costs its padded tokens (rows x widest row) plus ``PASS_COST`` tokens' worth of work
        that does not shrink with its size (every layer's weights are read once per pass, and every
        op is dispatched once). Splitting a level only where widths jump is therefore not enough:
        many narrow passes waste more than some padding does. Contiguous groups of the sorted nodes
        are optimal for this cost; dynamic programming finds the best cut, with at most
        ``batch_tokens`` padded tokens and ``max_rows`` rows per pass.
        """
        n = len(ordered)
        widths = np.array([len(x.tokens) for x in ordered], dtype=np.float64)
        best = np.zeros(n + 1)  # best[j]: cost of the first j nodes
        cut = np.zeros(n + 1, dtype=np.int64)
        for j in range(1, n + 1):
            w = widths[j - 1]  # the widest of any group ending at j
            lo = max(0, j - min(self.max_rows, max(1, int(self.batch_tokens // w))))
            starts = np.arange(lo, j)
            costs = best[lo:j] + (j - starts) * w
            k = int(np.argmin(costs))
            best[j], cut[j] = costs[k] + PASS_COST, lo + k
        out: list[list[_Node]] = []
        j = n
        while j > 0:
            out.append(ordered[cut[j] : j])
            j = int(cut[j])
        return out[::-1]

    def _read(self, hidden: torch.Tensor, batch: list[_Node]) -> None:
        """LM head only at continuation-predicting positions; accumulate sums, counts, greedy flags."""
        rows, offs, targets, owners = [], [], [], []
        for row, node in enumerate(batch):
            for off, ri, tok in node.reads:
                rows.append(row)
                offs.append(off)
                targets.append(tok)
                owners.append(ri)
        if not rows:
            return
        dev = hidden.device
        h = hidden[torch.tensor(rows, device=dev), torch.tensor(offs, device=dev)]
        logits = head_logits(self.lm, h)
        # log p(target) = logit - logsumexp: no full log-softmax table is written
        tgt = torch.tensor(targets, device=dev)
        tok_lp = torch.log_softmax(logits, dim=-1).gather(1, tgt[:, None])[:, 0].tolist()
        hit = (logits.argmax(dim=-1) == tgt).tolist()
        for ri, lp, g in zip(owners, tok_lp, hit, strict=True):
            self._sum[ri] += lp
            self._count[ri] += 1
            self._greedy[ri] = self._greedy[ri] and g
        self._advance(len(rows))

    def _forward(self, rows: list[list[int]], parents: list[torch.Tensor | None], starts: list[int]):
        """(buffer, past width, hidden) of ``rows`` after their parents' prefixes: ``forward.run_tree_rows``."""
        return run_tree_rows(self.lm, rows, parents, starts, self._soft)
