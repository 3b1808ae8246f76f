"""The PEFT export of a start-placement soft prompt: peft loads it and gives our scorer's log-likelihoods."""

from __future__ import annotations

import pytest
import torch

from harness.artifact import PromptArtifact
from harness.errors import UserError
from harness.models import load_model
from harness.peft_export import export_peft
from tasks.antonyms import Antonyms


def test_peft_loads_the_export_and_agrees(lm, scorer, tmp_path) -> None:
    from peft import PeftModel

    soft = torch.randn(4, 576, generator=torch.Generator().manual_seed(3)) * 0.1
    art = PromptArtifact(format="chat", placement="start", soft_prompt=soft, condition="soft-prompt")
    examples = Antonyms().split(0).test[:4]
    ours = [s.choice_loglik[0] for s in scorer.score(art, examples, "continuation")]

    adapter = export_peft(art, lm.name, tmp_path / "adapter")  # from the model's config alone
    peft_model = PeftModel.from_pretrained(load_model(device=str(lm.device), dtype="float32").model, str(adapter))
    peft_model.eval()
    plain = PromptArtifact(format="chat")  # PEFT adds the vectors itself, before these ids
    theirs = []
    with torch.no_grad():
        for reqs in scorer.renderer.requests(plain, examples):
            r = reqs[0]
            ids = torch.tensor([list(r.context + r.continuation)[:-1]], device=lm.device)
            logits = peft_model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0, art.n_soft :]
            logp = torch.log_softmax(logits.float(), dim=-1)[len(r.context) - 1 :]
            theirs.append(float(logp.gather(1, torch.tensor(r.continuation, device=lm.device)[:, None]).sum()))
    assert max(abs(a - b) for a, b in zip(ours, theirs, strict=True)) < 1e-4


def test_only_start_placement_exports(lm, tmp_path) -> None:
    art = PromptArtifact(format="chat", placement="before_input", soft_prompt=torch.zeros(2, 576))
    with pytest.raises(UserError, match="no PEFT form"):
        export_peft(art, lm.name, tmp_path / "x")
    assert not (tmp_path / "x").exists()
