"""Vision towers by the HF `model_type` of their checkpoint: how to load one, which features Llava takes.

Each entry loads the vision-only model from a vision-only or a full (image + text) checkpoint, and says
how many tokens the tower puts before its patches. Llava's `vision_feature_select_strategy` follows:
`default` drops the one CLS token (CLIP, the paper's choice), `full` keeps every token (SigLIP has no CLS,
so nothing is dropped). The image-token count is (image_size / patch_size)² + kept prefix tokens.

SigLIP 2 comes in two forms. FixRes checkpoints (e.g. google/siglip2-so400m-patch14-384) publish
`model_type: siglip` and the SigLIP v1 graph, so the `siglip` entry loads them. NaFlex checkpoints
(`model_type: siglip2`) take a variable number of flattened patches plus `pixel_attention_mask` and
`spatial_shapes`; transformers' `LlavaProcessor` counts image tokens from a fixed pixel height and width, so
no stock Llava can run them. They are refused with that reason (`UNSUPPORTED`).
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
    native_preprocessing: str  # what the tower's own image processor does (`training/preprocess.py` names)
    load_kwargs: tuple[tuple[str, object], ...] = ()  # config overrides when loading (see SIGLIP)

    @property
    def select_strategy(self) -> str:
        """Llava's strategy that drops the prefix token (`default`) or, with none to drop, keeps all (`full`)."""
        return "default" if self.prefix_tokens else "full"

    def load(self, path: str | Path, dtype: torch.dtype, attention: str) -> PreTrainedModel:
        """The vision-only model from a vision-only or full checkpoint (path or hub id)."""
        return self.model_class.from_pretrained(
            path, dtype=dtype, attn_implementation=attention, **dict(self.load_kwargs)
        )

    def image_tokens(self, config: PreTrainedConfig, strategy: str) -> int:
        """Features per image that a Llava with this tower and `strategy` hands to the LLM."""
        patches = (config.image_size // config.patch_size) ** 2
        kept = self.prefix_tokens - 1 if strategy == "default" else self.prefix_tokens
        return patches + kept


CLIP = VisionTower("clip", CLIPVisionModel, prefix_tokens=1, native_preprocessing="crop")
# Llava reads hidden states only: SigLIP's attention-pooling head would run on every image and be saved for
# nothing, so it is not loaded (as in llava-onevision's SigLIP config).
SIGLIP = VisionTower(
    "siglip",
    SiglipVisionModel,
    prefix_tokens=0,
    native_preprocessing="resize",
    load_kwargs=(("vision_use_head", False),),
)

# Keyed by `model_type`: the vision-only config's and the full model's (whose vision half is loaded).
VISION_TOWERS: dict[str, VisionTower] = {
    "clip_vision_model": CLIP,
    "clip": CLIP,
    "siglip_vision_model": SIGLIP,
    "siglip": SIGLIP,
}


_NAFLEX = (
    "SigLIP 2 NaFlex takes variable-length flattened patches (pixel_attention_mask, spatial_shapes) that "
    "transformers' LlavaProcessor and Llava loaders do not produce; use a FixRes SigLIP 2 checkpoint "
    "(model_type siglip, e.g. google/siglip2-so400m-patch14-384)"
)
# Known families that cannot be registered, with the reason the error gives.
UNSUPPORTED: dict[str, str] = {"siglip2": _NAFLEX, "siglip2_vision_model": _NAFLEX}


def vision_tower(model_type: str | None) -> VisionTower:
    """The registry entry for a `model_type`; the error lists the registered ones (or says why it cannot be one)."""
    if model_type in UNSUPPORTED:
        raise ValueError(f"vision tower model_type {model_type!r} is not supported: {UNSUPPORTED[model_type]}")
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
