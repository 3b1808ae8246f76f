"""A promptgap plugin: random search over paraphrases of the task's instruction, the winner chosen on dev.

It uses only the public API (harness.api) and nothing else of
promptgap: the harness hands it the train and dev splits and the shared scorer, and scores the returned
artifact on the test split itself.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from harness.api import FitContext, Optimizer, PromptArtifact, Settings, UserError, dev_score

# {i} is the task's own instruction; each template is one readable rewording of it
TEMPLATES = (
    "{i}",
    "Task: {i}",
    "{i} Answer with a single word.",
    "Read carefully. {i}",
    "You are an expert. {i}",
    "Instructions: {i} Be precise.",
    "{i} Think about what fits best.",
    "Complete the text. {i}",
)


@dataclass
class ParaphraseSettings(Settings):
    candidates: int = 4  # how many paraphrases to try (the task's own instruction is always one)
    extra: list[str] = field(default_factory=list)  # more instructions of your own to try
    format: str = "chat"  # "raw" or "chat"

    def __post_init__(self) -> None:
        if self.candidates < 1:
            raise UserError(f"condition paraphrase-search: candidates = {self.candidates}; give 1 or more")
        if self.format not in ("raw", "chat"):
            raise UserError(f"condition paraphrase-search: format {self.format!r}; use raw or chat")


class ParaphraseSearch(Optimizer):
    name = "paraphrase-search"
    summary = "random search over paraphrases of the task's instruction, best dev gold NLL wins (example plugin)"
    settings_class = ParaphraseSettings

    def fit(self, ctx: FitContext) -> PromptArtifact:
        s: ParaphraseSettings = self.settings  # type: ignore[assignment]
        if not ctx.dev:
            raise UserError("condition paraphrase-search needs a dev split to choose on; give the task a dev size")
        pool = [t.format(i=ctx.task.instruction) for t in TEMPLATES[1:]]
        random.Random(ctx.seed).shuffle(pool)
        candidates = [ctx.task.instruction, *pool[: s.candidates - 1], *s.extra]
        tried = []
        for text in candidates:
            artifact = PromptArtifact(format=s.format, instruction=text, condition=self.name)
            dev = dev_score(ctx, artifact, desc=f"dev: {text[:40]}")  # the shared scorer, on all of dev
            tried.append({"instruction": text, "dev_gold_nll": dev.loss, "dev_accuracy": dev.accuracy})
            ctx.log.info("paraphrase-search: dev gold NLL %.4f, accuracy %.4f: %s", dev.loss, dev.accuracy, text)
        best = min(tried, key=lambda t: (t["dev_gold_nll"], -t["dev_accuracy"]))
        ctx.report_selection([e.id for e in ctx.dev], "dev gold NLL")  # the audit checks these are dev ids
        ctx.report_log({"tried": tried})  # kept as the cell's log.json
        return PromptArtifact(format=s.format, instruction=best["instruction"], condition=self.name,
                              meta={"tried": tried})
