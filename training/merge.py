"""Merge: stage-2 result (full model, or LoRA adapters + trained projector) -> one transformers checkpoint."""

from __future__ import annotations

from pathlib import Path

import torch
from peft import PeftModel
from transformers import AutoProcessor

from training.config import TrainConfig
from training.model import load_model, resolve_dtype
from training.serving import warn_if_linear
from training.templates import record_template, recorded_template


def merge(cfg: TrainConfig, dtype: torch.dtype | None = None) -> Path:
    """Write `cfg.merged_dir`, loadable by `LlavaForConditionalGeneration`/`AutoProcessor.from_pretrained`.

    Adapters trained on an NF4 base (QLoRA) are merged into the unquantized base weights, as usual.
    """
    stage2 = cfg.stage("stage2")
    final = cfg.stage_dir("stage2") / "final"
    if not final.exists():
        raise FileNotFoundError(f"{final} not found: run `python -m training stage2` first")
    dtype = dtype or resolve_dtype(cfg.dtype)
    if (final / "adapter_config.json").exists():
        base = load_model(stage2.init_from, dtype)
        model = PeftModel.from_pretrained(base, final).merge_and_unload()
    else:
        model = load_model(final, dtype)
    model.to(dtype)
    out = cfg.merged_dir
    model.save_pretrained(out)
    AutoProcessor.from_pretrained(final).save_pretrained(out)
    record_template(out, recorded_template(final))
    warn_if_linear(model.config, out)
    return out
