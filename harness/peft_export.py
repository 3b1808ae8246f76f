"""Export of a trained artifact as a PEFT adapter folder (a soft prompt as prompt tuning, a LoRA adapter as LoRA),
so the trained ceiling can be used outside promptgap: ``PeftModel.from_pretrained``, lm-eval's ``hf`` with ``peft=``."""

from __future__ import annotations

from pathlib import Path

from harness.artifact import PromptArtifact
from harness.atomic import atomic_dir
from harness.errors import UserError
from harness.models import model_config


def export_peft(artifact: PromptArtifact, model: str, folder: str | Path) -> Path:
    """Write ``folder`` as PEFT writes a prompt-tuning adapter (adapter_config.json, adapter_model.safetensors)
    for ``model`` (a name, hub id or folder, as everywhere), of which only the config is read.

    Only the ``start`` placement has a PEFT equivalent: PEFT puts the vectors before every input token.
    The adapter sees whatever ids it is given, so for a chat-format artifact apply the chat template first
    (``meta.format`` in the config says which).
    """
    from peft import PromptTuningConfig, TaskType
    from safetensors.torch import save_file

    if artifact.full:
        raise UserError(f"artifact of {artifact.condition or 'a condition'} is a full fine-tune: a whole model, not a "
                        f"PEFT adapter; export a soft-prompt or lora artifact")
    if artifact.adapter is not None:
        return _export_lora(artifact, model, Path(folder))
    if artifact.soft_prompt is None:
        raise UserError(f"artifact of {artifact.condition or 'a condition'} holds no soft prompt and no LoRA "
                        f"adapter; export a soft-prompt or lora artifact")
    if artifact.placement != "start":
        raise UserError(f"a soft prompt with placement {artifact.placement!r} has no PEFT form (PEFT prepends "
                        f"before every token); train with placement = \"start\" to export")
    cfg = model_config(model).get_text_config()
    if artifact.soft_prompt.shape[1] != cfg.hidden_size:
        raise UserError(f"the soft prompt's width {artifact.soft_prompt.shape[1]} is not model {model}'s "
                        f"{cfg.hidden_size}; export with the model it was trained on")
    config = PromptTuningConfig(
        task_type=TaskType.CAUSAL_LM, num_virtual_tokens=artifact.n_soft, token_dim=cfg.hidden_size,
        num_transformer_submodules=1, num_attention_heads=cfg.num_attention_heads, num_layers=cfg.num_hidden_layers,
        base_model_name_or_path=model,
    )
    folder = Path(folder)
    with atomic_dir(folder) as tmp:
        config.save_pretrained(str(tmp))
        # the key PEFT's get_peft_model_state_dict writes for prompt tuning
        save_file({"prompt_embeddings": artifact.soft_prompt.contiguous()}, str(tmp / "adapter_model.safetensors"),
                  metadata={"format": "pt", "promptgap_format": artifact.format})
    return folder


def _export_lora(artifact: PromptArtifact, model: str, folder: Path) -> Path:
    """A LoRA artifact as PEFT saves a LoRA adapter: its config with the target modules the weights name, and the
    weights under PEFT's keys (``base_model.model.`` + the module path, no adapter name). The prompt is the base
    prompt: score it with the chat template when ``meta.format`` in the config says chat."""
    from peft import LoraConfig, TaskType
    from safetensors.torch import save_file

    assert artifact.adapter is not None and artifact.adapter_config is not None
    settings = artifact.adapter_config
    targets = sorted({k.split(".lora_")[0].rsplit(".", 1)[-1] for k in artifact.adapter})
    config = LoraConfig(task_type=TaskType.CAUSAL_LM, r=settings["r"], lora_alpha=settings["lora_alpha"],
                        lora_dropout=settings.get("lora_dropout") or 0.0, target_modules=targets,
                        base_model_name_or_path=model)
    with atomic_dir(folder) as tmp:
        config.save_pretrained(str(tmp))
        save_file({f"base_model.model.{k}": t.contiguous() for k, t in artifact.adapter.items()},
                  str(tmp / "adapter_model.safetensors"),
                  metadata={"format": "pt", "promptgap_format": artifact.format})
    return folder
