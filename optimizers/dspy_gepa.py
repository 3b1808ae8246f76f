"""dspy-gepa: DSPy's GEPA (reflective prompt evolution) searching the instruction, every candidate scored by the shared
scorer through the bridge's ScoreBook, with feedback a reflective proposer can act on, the final choice made on dev.

GEPA (Agrawal et al., 2025) evaluates a parent instruction on a small train minibatch, shows a reflection LM each
example's score and a feedback text, and keeps the proposed child when it beats its parent on that minibatch and then
on all of dev. Here the feedback is what the scorer saw: the gold answer, the model's top choice (multiple choice) or
its greedy continuation (continuation tasks), and the gold answer's log-probability. Budget: ``max_metric_calls``
(one example scored under one candidate; DSPy's ``auto`` levels are accepted, but they count calls for minibatches of
35 (DSPy #10245), so the log records what they came to) and, like every search, ``budget_tokens``. The log records
the metric calls GEPA made beside its budget: GEPA checks the budget only between iterations, so a run may pass it by
at most one iteration (two minibatches and one dev evaluation).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from harness.errors import UserError
from optimizers.dspy_conditions import DSPyCondition, ProposingSettings

AUTO = ("light", "medium", "heavy")
SELECTION = ("pareto", "current_best")
FIRST_FEEDBACK = 64  # a greedy continuation of a few tokens after an example's context


@dataclass
class GepaSettings(ProposingSettings):
    owner: ClassVar[str] = "dspy-gepa"
    max_bootstrapped_demos: int = 0  # GEPA evolves the instruction only
    max_labeled_demos: int = 0
    max_metric_calls: int | None = 150  # GEPA's budget in metric calls; None with auto
    auto: str | None = None  # light, medium or heavy: DSPy's budget levels instead of max_metric_calls
    reflection_minibatch_size: int = 3  # train examples a proposal is shown and first judged on
    candidate_selection_strategy: str = "pareto"  # which candidate is improved next: pareto or current_best
    feedback: bool = True  # the feedback text (gold, the model's answer, the gold log-probability); False: the score
    proposer_max_tokens: int = 192  # a reflected instruction is longer than a COPRO proposal

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.max_demos():
            raise UserError(f"condition {self.owner}: GEPA evolves the instruction only; leave out "
                            f"max_bootstrapped_demos and max_labeled_demos (or use dspy-mipro)")
        if self.auto is not None:
            if self.auto not in AUTO:
                raise UserError(f"condition {self.owner}: auto = {self.auto!r}; use {', '.join(AUTO)}, or "
                                f"max_metric_calls")
            self.max_metric_calls = None  # auto replaces the default count
        elif isinstance(self.max_metric_calls, bool) or not isinstance(self.max_metric_calls, int):
            raise UserError(f"condition {self.owner}: max_metric_calls = {self.max_metric_calls!r}; give a whole "
                            f"number of metric calls (or auto = \"light\")")
        self.at_least("reflection_minibatch_size", 1)
        if self.max_metric_calls is not None:
            self.at_least("max_metric_calls", 2 * self.reflection_minibatch_size + 1)
        if self.candidate_selection_strategy not in SELECTION:
            raise UserError(f"condition {self.owner}: candidate_selection_strategy = "
                            f"{self.candidate_selection_strategy!r}; use {', '.join(SELECTION)}")

    def dspy_optimizer_name(self) -> str:
        return "GEPA"

    def expected_candidates(self) -> int:
        """The progress bar's length, a guess: an accepted child costs two minibatches and a dev evaluation."""
        return 1 + (self.max_metric_calls or 400) // (2 * self.reflection_minibatch_size + 25)


def feedback_text(book: Any, example: Any, score: Any, greedy: str | None) -> str:
    """What the reflection LM is told about one example under the instruction it is improving."""
    from optimizers.dspy_bridge import choice_text

    logp = -score.gold_nll
    if book.kind == "continuation":
        said = "matches" if score.greedy_match else "does not match"
        return (f"The correct answer is {choice_text(example, score.gold)!r}. The model's greedy continuation "
                f"was {greedy!r}, which {said} it. Log-probability of the correct answer per token: {logp:.3f} "
                f"(0 is certain; higher is better).")
    verdict = "right" if score.correct else "wrong"
    return (f"The correct answer is {choice_text(example, score.gold)!r}. The model chose "
            f"{choice_text(example, score.pred)!r} ({verdict}). Log-probability of the correct answer: {logp:.3f} "
            f"(0 is certain; higher is better).")


def greedy_continuation(book: Any, instruction: str, example: Any, n_tokens: int) -> str:
    """The model's greedy continuation of the example's context under ``instruction``: the task model's work, so
    counted in its tokens (and the search's token budget), unlike the proposer's."""
    import torch

    lm, renderer = book.scorer.lm, book.scorer.renderer
    request = renderer.text_requests(book.artifact(instruction, ()), example)[0]
    ids = torch.tensor([renderer.encode(request.context)], device=lm.device)
    with torch.no_grad():
        out = lm.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=n_tokens,
                                do_sample=False, temperature=None, top_p=None, top_k=None,
                                pad_token_id=lm.tokenizer.pad_token_id or lm.tokenizer.eos_token_id)
    new = out[0, ids.shape[1]:]
    lm.usage.tokens += ids.shape[1] + new.shape[0]
    return lm.tokenizer.decode(new, skip_special_tokens=True)


def compile_gepa(s: GepaSettings, seed: int, info: dict[str, Any]) -> Any:
    """The bridge's compile step for GEPA: ``run(student, trainset, devset, lm) -> program``."""
    import dspy
    from dspy.teleprompt.gepa.instruction_proposal import InstructionProposer

    from optimizers import dspy_bridge as bridge

    def run(student: Any, trainset: list, devset: list, lm: Any) -> Any:
        book = student.book

        def metric(gold: Any, pred: Any, trace: Any = None, pred_name: Any = None, pred_trace: Any = None) -> Any:
            # the score is the bridge's (what the other DSPy conditions use); with a predictor named, GEPA asks
            # for feedback too, and the score must stay the same number
            if pred_name is None or not s.feedback or not pred_trace:
                return pred.metric
            predictor = pred_trace[0][0]
            instruction = predictor.signature.instructions
            instruction = "" if instruction == bridge.DEFAULT_INSTRUCTION else instruction
            example = book.by_id[gold.example_id]
            score = book.score(instruction, (), gold.example_id)  # scored already: read from the cache
            greedy = None
            if book.kind == "continuation" and book.budget.affords(book.budget.expected("feedback", FIRST_FEEDBACK)):
                gold_len = len(book.scorer.renderer.encode_plain(example.continuations[score.gold]))
                with book.budget.unit("feedback"):
                    greedy = greedy_continuation(book, instruction, example, gold_len + 2)
            return dspy.Prediction(score=pred.metric, feedback=feedback_text(book, example, score, greedy))

        class Recording(InstructionProposer):
            def __call__(self, candidate, reflective_dataset, components_to_update):
                # a reflection is the proposer's cost (proposer_usage), not the task model's budget
                if book.first_error is not None:  # the budget is spent: propose nothing more
                    return {}
                out = super().__call__(candidate, reflective_dataset, components_to_update)
                info.setdefault("proposed_instructions", []).extend(out.values())
                return out

        budget = {"auto": s.auto} if s.auto else {"max_metric_calls": s.max_metric_calls}
        opt = dspy.GEPA(metric=metric, **budget, reflection_minibatch_size=s.reflection_minibatch_size,
                        candidate_selection_strategy=s.candidate_selection_strategy,
                        reflection_lm=lm.copy(temperature=s.temperature),
                        instruction_proposer=Recording(adapter=bridge.LenientAdapter()),
                        # one component: a merge has nothing to combine, and its sampling needs positive scores
                        use_merge=False, num_threads=1, track_stats=True, seed=seed,
                        # GEPA scores an example that raised as 0 and goes on: a spent budget must stop it
                        gepa_kwargs={"stop_callbacks": [lambda state: book.first_error is not None]})
        calls = s.max_metric_calls
        if s.auto:  # what DSPy's level comes to here (one predictor, this dev split)
            from dspy.teleprompt.gepa.gepa import AUTO_RUN_SETTINGS

            calls = opt.auto_budget(num_preds=1, num_candidates=AUTO_RUN_SETTINGS[s.auto]["n"],
                                    valset_size=len(devset))
        info["metric_calls_budget"] = calls
        # GEPA's stop check runs between iterations; one iteration scores two minibatches and, if kept, all of dev
        info["metric_calls_allowance"] = 2 * s.reflection_minibatch_size + len(devset)
        compiled = opt.compile(student, trainset=trainset, valset=devset)
        result = compiled.detailed_results
        info["gepa_metric_calls"] = result.total_metric_calls  # GEPA's own count, beside the bridge's metric_calls
        info["accepted"] = len(result.candidates) - 1  # besides the starting instruction
        info["val_scores"] = list(result.val_aggregate_scores)
        return compiled

    return run


class DSPyGepa(DSPyCondition):
    name = "dspy-gepa"
    summary = ("a DSPy GEPA-evolved instruction, no demos (reflection on the scorer's feedback by the local model "
               "unless proposer is set)")
    settings_class = GepaSettings

    def compile_step(self, s: Any, seed: int, info: dict[str, Any]) -> Any:
        return compile_gepa(s, seed, info)
