"""Tiny random base models (a CLIP or SigLIP vision tower + Llama with a byte-level BPE tokenizer), built offline.

For tests and the end-to-end demo: `build_tiny_base_models(out_dir)` saves both with `save_pretrained`
and writes `out_dir/tiny.yaml`, a config on which stage 1 and stage 2 each run in seconds on a CPU.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

import torch
import yaml
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    CLIPVisionConfig,
    CLIPVisionModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    SiglipVisionConfig,
    SiglipVisionModel,
)
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil
from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

from training.templates import VICUNA_SYSTEM

TINY_IMAGE_SIZE = 32
TINY_PATCH_SIZE = 8  # 4 x 4 = 16 image tokens
_CORPUS = [
    VICUNA_SYSTEM,
    "USER: What is in the image? ASSISTANT: A man riding a bike down a city street.",
    "USER: Describe the image in detail. ASSISTANT: Two people are standing next to a red car on the road.",
    "A cat is sitting on a wooden table near a window. A dog plays with a ball in the green grass.",
    "There is a plate of food with broccoli, a sandwich and a cup of coffee on the kitchen counter.",
    "Why might the woman be holding an umbrella? Because it is raining and she wants to stay dry.",
    "A train, a bus, a truck and an airplane; a giraffe, an elephant, a zebra and a horse in a field.",
]


def build_tokenizer(texts: Iterable[str] = (), vocab_size: int = 512) -> PreTrainedTokenizerFast:
    """A byte-level BPE (any text encodes, nothing is unknown) trained on a small corpus plus `texts`."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<unk>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator([*_CORPUS, *texts], trainer)
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", tokenizer.token_to_id("<s>"))]
    )
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


_TINY_TOWER = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 3,
    "num_attention_heads": 2,
    "image_size": TINY_IMAGE_SIZE,
    "patch_size": TINY_PATCH_SIZE,
}


def save_tiny_clip(path: Path) -> Path:
    """A tiny random CLIP vision tower (one CLS token + 16 patches) and its resize + center-crop processor."""
    CLIPVisionModel(CLIPVisionConfig(**_TINY_TOWER, projection_dim=32)).save_pretrained(path)
    CLIPImageProcessorPil(
        size={"shortest_edge": TINY_IMAGE_SIZE}, crop_size={"height": TINY_IMAGE_SIZE, "width": TINY_IMAGE_SIZE}
    ).save_pretrained(path)
    return path


def save_tiny_siglip(path: Path) -> Path:
    """A tiny random SigLIP vision tower (16 patches, no CLS) and its resize-to-square processor."""
    SiglipVisionModel(SiglipVisionConfig(**_TINY_TOWER)).save_pretrained(path)
    SiglipImageProcessorPil(size={"height": TINY_IMAGE_SIZE, "width": TINY_IMAGE_SIZE}).save_pretrained(path)
    return path


TINY_VISION: dict[str, Callable[[Path], Path]] = {"clip": save_tiny_clip, "siglip": save_tiny_siglip}


def tiny_llama_config(
    tokenizer: PreTrainedTokenizerFast, *, hidden_size: int = 64, heads: int = 4, kv_heads: int = 2,
    initializer_range: float = 0.2,
) -> LlamaConfig:
    """A two-layer Llama for `tokenizer` (wider `hidden_size` where a kernel wants head sizes such as 64)."""
    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=2,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=1024,
        tie_word_embeddings=False,
        # Wider than Llama's 0.02 so a frozen random LLM can still express peaked next-token distributions.
        initializer_range=initializer_range,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )


def build_tiny_base_models(
    out_dir: Path | str,
    texts: Iterable[str] = (),
    initializer_range: float = 0.2,
    seed: int = 0,
    vision: str = "clip",
) -> tuple[Path, Path]:
    """Save a tiny vision tower (`vision`: a key of `TINY_VISION`) and a tiny Llama (+ tokenizer) under
    `out_dir`; also writes `tiny.yaml`.

    Returns (vision_path, llm_path). `texts` (e.g. the training captions) improve the tokenizer's merges.
    """
    if vision not in TINY_VISION:
        raise ValueError(f"unknown tiny vision tower {vision!r}; choose one of {sorted(TINY_VISION)}")
    out_dir = Path(out_dir)
    torch.manual_seed(seed)  # same seed, same tiny weights: demo runs are reproducible
    vision_path, llm_path = TINY_VISION[vision](out_dir / f"tiny-{vision}-vision"), out_dir / "tiny-llama"
    tokenizer = build_tokenizer(texts)
    llm_config = tiny_llama_config(tokenizer, initializer_range=initializer_range)
    LlamaForCausalLM(llm_config).save_pretrained(llm_path)
    tokenizer.save_pretrained(llm_path)
    write_tiny_config(out_dir / "tiny.yaml", vision_path, llm_path)
    return vision_path, llm_path


def write_tiny_config(path: Path, vision_path: Path, llm_path: Path, **fields: object) -> Path:
    """A training config sized for the tiny models; `fields` (e.g. image_root, output_dir) are merged in."""
    config: dict = {
        "vision_model": str(vision_path),
        "llm": str(llm_path),
        "projector": "mlp2x_gelu",
        "model_max_length": 512,
        "dtype": "float32",
        "gradient_checkpointing": False,
        "num_workers": 0,
        "cpu_threads": 1,
        "save_every": 1000,
        "progress_bar": False,
        "stage1": {"learning_rate": 1e-2, "batch_size": 4, "per_device_batch_size": 4, "epochs": 1},
        "stage2": {"learning_rate": 1e-3, "batch_size": 4, "per_device_batch_size": 2, "epochs": 1},
    }
    for key, value in fields.items():
        if isinstance(value, dict):
            config.setdefault(key, {}).update(value)
        else:
            config[key] = str(value) if isinstance(value, Path) else value
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path
