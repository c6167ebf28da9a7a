"""Vision towers by the HF `model_type` of their checkpoint: how to load one, which features Llava takes.

Each entry loads the vision-only model from a vision-only or a full (image + text) checkpoint, and says
how many tokens the tower puts before its patches. Llava's `vision_feature_select_strategy` follows:
`default` drops the one CLS token (CLIP, the paper's choice), `full` keeps every token (SigLIP has no CLS,
so nothing is dropped). The image-token count is (image_size / patch_size)² + kept prefix tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import CLIPVisionModel, PreTrainedConfig, PreTrainedModel, SiglipVisionModel


@dataclass(frozen=True)
class VisionTower:
    """One registered tower family."""

    name: str
    model_class: type[PreTrainedModel]  # its `from_pretrained` reads vision-only and full checkpoints alike
    prefix_tokens: int  # tokens before the patches (CLIP: CLS); 0 means there is nothing to drop

    @property
    def select_strategy(self) -> str:
        """Llava's strategy that drops the prefix token (`default`) or, with none to drop, keeps all (`full`)."""
        return "default" if self.prefix_tokens else "full"

    def load(self, path: str | Path, dtype: torch.dtype, attention: str) -> PreTrainedModel:
        """The vision-only model from a vision-only or full checkpoint (path or hub id)."""
        return self.model_class.from_pretrained(path, dtype=dtype, attn_implementation=attention)

    def image_tokens(self, config: PreTrainedConfig, strategy: str) -> int:
        """Features per image that a Llava with this tower and `strategy` hands to the LLM."""
        patches = (config.image_size // config.patch_size) ** 2
        kept = self.prefix_tokens - 1 if strategy == "default" else self.prefix_tokens
        return patches + kept


CLIP = VisionTower("clip", CLIPVisionModel, prefix_tokens=1)
SIGLIP = VisionTower("siglip", SiglipVisionModel, prefix_tokens=0)

# Keyed by `model_type`: the vision-only config's and the full model's (whose vision half is loaded).
VISION_TOWERS: dict[str, VisionTower] = {
    "clip_vision_model": CLIP,
    "clip": CLIP,
    "siglip_vision_model": SIGLIP,
    "siglip": SIGLIP,
}


def vision_tower(model_type: str | None) -> VisionTower:
    """The registry entry for a `model_type`; the error lists the registered ones."""
    if model_type not in VISION_TOWERS:
        raise ValueError(
            f"vision tower model_type {model_type!r} is not registered; registered: {sorted(VISION_TOWERS)} "
            "(add an entry to training/vision.py VISION_TOWERS)"
        )
    return VISION_TOWERS[model_type]


def vision_tower_of(path: str | Path) -> VisionTower:
    """The registry entry for a checkpoint (path or hub id), from the `model_type` in its config.json."""
    config, _ = PreTrainedConfig.get_config_dict(str(path))
    try:
        return vision_tower(config.get("model_type"))
    except ValueError as error:
        raise ValueError(f"vision_model {path}: {error}") from None


def select_strategy(tower: VisionTower, requested: str | None) -> str:
    """The configured strategy, or the tower's own when unset; `default` on a tower without CLS is an error."""
    if requested is None:
        return tower.select_strategy
    if requested == "default" and not tower.prefix_tokens:
        raise ValueError(
            f"vision_feature_select_strategy=default drops a CLS token, but a {tower.name} tower has none "
            "(it would drop a patch); use full or leave it unset"
        )
    return requested
