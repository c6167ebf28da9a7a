"""Stages are data (prismatic's `freeze_backbones`): a stage names module groups; this sets `requires_grad`.

Groups: `vision` (the vision tower), `projector`, `llm` (language model + lm_head). With LoRA methods the
LLM trains only through its adapters. The `linear` projector's second layer is a fixed identity and
never trains. The function logs and returns what trains and what is frozen.
"""

from __future__ import annotations

import logging

from torch import nn

from training.model import projector_type

log = logging.getLogger(__name__)

GROUP_MARKERS = {
    "vision": ("vision_tower",),
    "projector": ("multi_modal_projector",),
    "llm": ("language_model", "lm_head"),
}


def group_of(parameter_name: str) -> str:
    """Which module group a (possibly PEFT-prefixed) parameter name belongs to."""
    for group, markers in GROUP_MARKERS.items():
        if any(marker in parameter_name for marker in markers):
            return group
    raise ValueError(f"parameter {parameter_name} belongs to no known group {sorted(GROUP_MARKERS)}")


def _is_fixed(name: str, fixed_identity_projector: bool) -> bool:
    if "original_module" in name:  # PEFT's untouched copy beside a `modules_to_save` module
        return True
    return fixed_identity_projector and "multi_modal_projector" in name and ".linear_2." in name


def freeze_backbones(model: nn.Module, train: tuple[str, ...], method: str) -> dict[str, dict[str, int]]:
    """Set `requires_grad` per group for a stage; returns {group: {"trainable": n, "frozen": n}} parameter counts."""
    config = model.config
    fixed_identity = projector_type(config) == "linear"
    summary: dict[str, dict[str, int]] = {g: {"trainable": 0, "frozen": 0} for g in GROUP_MARKERS}
    for name, parameter in model.named_parameters():
        group = group_of(name)
        if group == "llm" and method != "full":
            trainable = "llm" in train and "lora_" in name
        else:
            trainable = group in train and "lora_" not in name
        trainable = trainable and not _is_fixed(name, fixed_identity)
        parameter.requires_grad_(trainable)
        summary[group]["trainable" if trainable else "frozen"] += parameter.numel()
    for group, counts in summary.items():
        log.info("%-9s trainable %12d  frozen %12d", group, counts["trainable"], counts["frozen"])
    return summary
