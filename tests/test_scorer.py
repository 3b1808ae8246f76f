"""The shared scorer against an independent, naive computation: one full forward pass per request."""

from __future__ import annotations

import functools
import math
import os
import threading
from pathlib import Path

import pytest
import torch

from harness.artifact import PromptArtifact
from harness.data import Example
from harness.render import TokenRequest, request_hash
from harness.scorer import Loglik, Scorer, example_score
from tasks.antonyms import Antonyms
from tasks.winogrande import WinoGrande


def naive(lm, requests: list[TokenRequest]) -> list[tuple[float, bool]]:
    """What lm-eval's HFLM does, written out plainly: no batching, no prefix sharing."""
    out = []
    with torch.no_grad():
        for r in requests:
            ids = torch.tensor([list(r.context + r.continuation)[:-1]], device=lm.device)
            logp = torch.log_softmax(lm.model(input_ids=ids).logits[0].float(), dim=-1)
            rows = logp[len(r.context) - 1 :]
            tgt = torch.tensor(r.continuation, device=lm.device)
            out.append((float(rows.gather(1, tgt[:, None]).sum()), bool((rows.argmax(-1) == tgt).all())))
    return out


def flat_requests(scorer: Scorer, artifact: PromptArtifact, examples) -> list[TokenRequest]:
    return [r for reqs in scorer.renderer.requests(artifact, examples) for r in reqs]


@pytest.fixture(scope="module")
def antonyms():
    return Antonyms().split(0)


def test_matches_naive_forward_with_shared_instruction_and_demos(lm, scorer, antonyms) -> None:
    # instruction + demos in a chat template: a deep prefix tree with a long shared root
    art = PromptArtifact(format="chat", instruction="Give the opposite word.",
                         demos=[e.solved_text() for e in antonyms.train[:2]])
    reqs = flat_requests(scorer, art, antonyms.test[:10])
    ours = scorer.loglikelihood(reqs)
    ref = naive(lm, reqs)
    for o, (ll, greedy) in zip(ours, ref, strict=True):
        assert abs(o.loglik - ll) < 1e-4
        assert o.greedy == greedy
        assert o.n_tokens > 0
    # what each score was read from, as the passes report it back: its own request's tokens
    assert [o.read for o in ours] == [r.context + r.continuation for r in reqs]


def test_matches_naive_forward_winogrande_raw(lm, scorer) -> None:
    examples = WinoGrande(Path(__file__).parent / "fixtures" / "winogrande").all_examples()
    reqs = flat_requests(scorer, PromptArtifact(), examples)
    for o, (ll, greedy) in zip(scorer.loglikelihood(reqs), naive(lm, reqs), strict=True):
        assert abs(o.loglik - ll) < 1e-4 and o.greedy == greedy


def test_prefix_and_duplicate_requests(lm, scorer) -> None:
    """A request whose input is a prefix of another's, and an exact duplicate, still score independently."""
    enc = scorer.renderer.encode_pair
    reqs = [enc("The cat sat on the", " mat"), enc("The cat sat on the", " mat and purred"),
            enc("The cat sat on the mat and", " purred"), enc("The cat sat on the", " mat"),
            enc("A dog", " barked loudly")]
    ours = scorer.loglikelihood(reqs)
    for o, (ll, greedy) in zip(ours, naive(lm, reqs), strict=True):
        assert abs(o.loglik - ll) < 1e-4 and o.greedy == greedy
    # a request ending inside another's row, and a duplicate, are read from their own tokens all the same
    assert [o.read for o in ours] == [r.context + r.continuation for r in reqs]


def test_score_rows_carry_the_hash_of_what_they_were_read_from(scorer, antonyms) -> None:
    art = PromptArtifact(format="chat", instruction="Give the opposite word.")
    rows = scorer.score(art, antonyms.test[:12], "continuation")
    rendered = scorer.renderer.requests(art, antonyms.test[:12])
    assert [r.request_hash for r in rows] == [request_hash(reqs) for reqs in rendered]
    # a different prompt renders different tokens, so its hash differs on every row
    other = scorer.renderer.requests(PromptArtifact(format="chat", instruction="Opposite:"), antonyms.test[:12])
    assert all(r.request_hash != request_hash(reqs) for r, reqs in zip(rows, other, strict=True))


def test_batch_size_invariance(lm, shared_data) -> None:
    examples = WinoGrande(shared_data / "winogrande").all_examples()[:16]
    art = PromptArtifact(format="chat", instruction="Pick the option that makes sense.")
    one = Scorer(lm, batch_size=1).score(art, examples, "multiple_choice")
    many = Scorer(lm, batch_size=32).score(art, examples, "multiple_choice")
    diffs = [abs(a - b) for x, y in zip(one, many, strict=True)
             for a, b in zip(x.choice_loglik, y.choice_loglik, strict=True)]
    assert max(diffs) < 1e-4


def test_parallel_workers_and_one_thread_give_the_same_bits(lm, shared_data) -> None:
    # on a multi-threaded CPU a level's passes run on single-threaded workers; which worker runs which pass, and
    # how many threads the process has, must not change a bit: the passes are planned the same way whatever the
    # threads, and each pass runs on one thread either way (a Slurm job and a laptop give the same bytes)
    examples = WinoGrande(shared_data / "winogrande").all_examples()[:24]
    art = PromptArtifact(format="chat")
    # many small passes per level, so both workers are busy; a small memory budget, so the key/value and LM-head
    # budgets decide how passes and head reads are cut
    scorer = Scorer(lm, batch_size=2, memory=8 * 2**20)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        first = scorer.score(art, examples, "multiple_choice")
        second = scorer.score(art, examples, "multiple_choice")
        assert torch.get_num_threads() == 2  # the workers' one-thread setting does not leak out
        torch.set_num_threads(1)
        serial = scorer.score(art, examples, "multiple_choice")
    finally:
        torch.set_num_threads(threads)
    for other in (second, serial):
        assert [x.choice_loglik for x in first] == [x.choice_loglik for x in other]
        assert [x.choice_greedy for x in first] == [x.choice_greedy for x in other]
    plain = Scorer(lm).score(art, examples, "multiple_choice")  # the default budget: other passes, same numbers
    diffs = [abs(a - b) for x, y in zip(first, plain, strict=True)
             for a, b in zip(x.choice_loglik, y.choice_loglik, strict=True)]
    assert max(diffs) < 1e-4


def test_no_pass_runs_with_gradients_in_any_worker(lm, monkeypatch) -> None:
    """Grad mode is per thread and a new thread starts with it on, so the scorer's worker threads must turn it off
    themselves: with a trainable adapter in the model, a pass with grad mode on would build an autograd graph."""
    seen: list[tuple[int, bool]] = []
    decoder = type(lm.model.base_model)
    real = decoder.forward

    @functools.wraps(real)  # the decoder's signature stays (LoadedModel.cache_kwarg reads it)
    def forward(module, *args, **kwargs):
        seen.append((threading.get_ident(), torch.is_grad_enabled()))
        return real(module, *args, **kwargs)

    monkeypatch.setattr(decoder, "forward", forward)
    examples = WinoGrande(Path(__file__).parent / "fixtures" / "winogrande").all_examples()[:8]
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)  # the workers run only on a CPU with several threads
        Scorer(lm, batch_size=2).score(PromptArtifact(format="chat"), examples, "multiple_choice")
    finally:
        torch.set_num_threads(threads)
    assert {t for t, _ in seen} - {threading.get_ident()}  # passes did run on worker threads
    assert not any(grad for _, grad in seen)


def test_greedy_flag_follows_the_models_own_argmax(lm, scorer) -> None:
    ctx = scorer.renderer.encode("The capital of France is")
    ids, greedy_tokens = list(ctx), []
    with torch.no_grad():
        for _ in range(3):  # the model's own greedy continuation, one token at a time
            nxt = int(lm.model(input_ids=torch.tensor([ids], device=lm.device)).logits[0, -1].argmax())
            greedy_tokens.append(nxt)
            ids.append(nxt)
    own = TokenRequest(tuple(ctx), tuple(greedy_tokens))
    other = TokenRequest(tuple(ctx), tuple(greedy_tokens[:2]) + ((greedy_tokens[2] + 1) % 49152,))
    got = scorer.loglikelihood([own, other])
    assert got[0].greedy is True
    assert got[1].greedy is False
    assert got[0].loglik > got[1].loglik


def test_example_metrics_by_hand() -> None:
    ex = Example("e", contexts=("q",), continuations=("a", "b"), gold=1)
    s = example_score(ex, "multiple_choice", [Loglik(-1.0, 1, True), Loglik(-2.0, 2, False)])
    assert s.pred == 0 and s.correct is False
    # cross-entropy of the gold choice under a softmax over the summed log-likelihoods
    assert s.gold_nll == pytest.approx(math.log(math.exp(-1) + math.exp(-2)) + 2.0)
    tie = example_score(ex, "multiple_choice", [Loglik(-1.0, 1, True), Loglik(-1.0, 1, True)])
    assert tie.pred == 0  # lm-eval's argmax takes the first on ties
    cont = Example("c", contexts=("q",), continuations=("x",), gold=0)
    c = example_score(cont, "continuation", [Loglik(-6.0, 3, True)])
    assert c.gold_nll == pytest.approx(2.0) and c.greedy_match is True and c.correct is True


def test_empty_and_invalid_requests(scorer) -> None:
    assert scorer.loglikelihood([]) == []
    with pytest.raises(ValueError):
        scorer.loglikelihood([TokenRequest((), (5,))])
    with pytest.raises(ValueError):
        Scorer(scorer.lm, batch_size=0)


def test_a_prompt_that_makes_a_request_too_long_names_the_example(scorer) -> None:
    """The rows passed the check before the model loaded; a condition's long instruction is caught where it is
    rendered, before any pass, naming the example, its length and the model's limit."""
    from harness.render import RequestTooLong

    example = Example(id="short-1", contexts=("Here are two antonyms hot and",), continuations=(" cold",), gold=0)
    limit = scorer.max_len
    assert limit == 8192  # the embedded SmolLM2's, from its config
    artifact = PromptArtifact(format="raw", instruction="yes " * limit)
    text = scorer.renderer.text_requests(artifact, example)[0]
    tokens = scorer.renderer.token_request(artifact, text.context, text.continuation)
    length = len(tokens.context) + len(tokens.continuation) - 1
    assert length > limit
    before = scorer.lm.usage.snapshot()
    with pytest.raises(RequestTooLong, match=f"'short-1' is {length} tokens long .* the model's {limit} positions"):
        scorer.score(artifact, [example], "continuation")
    assert scorer.lm.usage.since(before).tokens == 0  # refused before any pass


def test_shared_keys_are_read_once_not_copied_into_every_row(lm, scorer, monkeypatch) -> None:
    """A chat prompt's head is every request's past: a pass reads its keys/values where they are kept
    (``forward.tree_attention``) instead of copying them into each row, and scores as the naive forward does."""
    import harness.scorer as scorer_module

    assert lm.model.config._attn_implementation == "promptgap_tree"  # the embedded model loads with sdpa
    examples = WinoGrande(Path(__file__).parent / "fixtures" / "winogrande").all_examples()
    art = PromptArtifact(format="chat", instruction="Fill in the blank.")
    reqs = flat_requests(scorer, art, examples)
    head = os.path.commonprefix([r.context for r in reqs])  # the template's head and the instruction
    passes = []
    real = scorer_module.run_tree_rows

    def spy(lm_, rows, pasts, starts, soft=None, shared=()):
        buf, n_past, hidden = real(lm_, rows, pasts, starts, soft, shared)
        passes.append((sum(s.shape[3] for s in shared), max(starts), n_past))
        return buf, n_past, hidden

    monkeypatch.setattr(scorer_module, "run_tree_rows", spy)
    ours = scorer.loglikelihood(reqs)
    below_root = [p for p in passes if p[1] > 0]
    assert len(head) > 20 and below_root and all(n_shared >= len(head) for n_shared, _, _ in below_root)
    # each pass's buffer holds its rows' own pasts only: the longest past less the shared run
    assert all(n_past == longest - n_shared for n_shared, longest, n_past in below_root)
    for o, (ll, greedy) in zip(ours, naive(lm, reqs), strict=True):
        assert abs(o.loglik - ll) < 1e-4  # lm-eval's own agreement, as in the tests above
        assert o.greedy == greedy
