"""LoRA / QLoRA on the LLM's linear layers only (never the vision tower's q/k/v, never lm_head).

The projector is a PEFT `modules_to_save` module: trained in full precision and saved with the adapter.
"""

from __future__ import annotations

import re

import torch
from peft import LoraConfig, PeftModel, get_peft_model, prepare_model_for_kbit_training
from torch import nn

from training.config import StageConfig


def llm_linear_leaf_names(model: nn.Module) -> list[str]:
    """Leaf names (q_proj, down_proj, ...) of the linear layers inside the language model."""
    names = set()
    for name, module in model.model.language_model.named_modules():
        if isinstance(module, nn.Linear) or type(module).__name__ in {"Linear4bit", "Linear8bitLt"}:
            names.add(name.rsplit(".", 1)[-1])
    return sorted(names)


def lora_target_regex(model: nn.Module) -> str:
    """A PEFT target regex that matches only language-model linears."""
    leaves = "|".join(re.escape(name) for name in llm_linear_leaf_names(model))
    return rf".*language_model\..*\.({leaves})$"


def apply_lora(model: nn.Module, stage: StageConfig, gradient_checkpointing: bool) -> PeftModel:
    """Wrap the model with LoRA adapters (after k-bit preparation for QLoRA)."""
    if stage.method == "qlora":
        model = prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False},
        )
    config = LoraConfig(
        r=stage.lora_r,
        lora_alpha=stage.lora_alpha,
        lora_dropout=stage.lora_dropout,
        target_modules=lora_target_regex(model),
        modules_to_save=["multi_modal_projector"],
        task_type="CAUSAL_LM",
    )
    peft_model = get_peft_model(model, config)
    for name, parameter in peft_model.named_parameters():
        if "lora_" in name or "modules_to_save" in name:
            parameter.data = parameter.data.to(torch.float32)  # adapters and projector train in fp32
    return peft_model
