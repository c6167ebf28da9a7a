"""A tiny SigLIP Llava through the whole recipe: stage 1, stage 2 (full and QLoRA), merge, stock load + generate.

Runs with `image_preprocessing: pad` (the LLaVA-1.5 recipe), so the saved processor's mode is checked too.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import AutoProcessor, LlavaForConditionalGeneration

from tests.test_training_support import coco_captions, generate_reply, tiny_config_file
from training.config import load_config
from training.loop import train
from training.merge import merge
from training.preprocess import preprocessing_of
from training.tiny import TINY_IMAGE_SIZE, TINY_PATCH_SIZE, save_tiny_siglip

PATCHES = (TINY_IMAGE_SIZE // TINY_PATCH_SIZE) ** 2


def _config_file(coco_images: Path, name: str, siglip: Path, **stage2: object) -> Path:
    return tiny_config_file(
        coco_images,
        name,
        vision_model=siglip,
        image_preprocessing="pad",
        stage1={"max_steps": 2},
        stage2={"max_steps": 2, **stage2},
    )


@pytest.fixture(scope="module")
def siglip_stage1(coco_images: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(tiny SigLIP tower, stage-1 final dir), trained once for this module."""
    siglip = save_tiny_siglip(tmp_path_factory.mktemp("siglip") / "tower")
    cfg = load_config(_config_file(coco_images, "siglip-stage1", siglip))
    return siglip, train(cfg, "stage1") / "final"


def _assert_stock_siglip_llava(path: Path, coco_images: Path) -> None:
    model = LlavaForConditionalGeneration.from_pretrained(path)
    assert type(model.model.vision_tower).__name__ == "SiglipVisionModel"
    assert model.config.vision_config.model_type == "siglip_vision_model"
    assert model.config.vision_config.vision_use_head is False  # Llava reads hidden states; the head is not kept
    assert not any(".head." in name for name, _ in model.model.vision_tower.named_parameters())
    assert (model.config.vision_feature_select_strategy, model.config.image_seq_length) == ("full", PATCHES)
    assert preprocessing_of(AutoProcessor.from_pretrained(path).image_processor) == "pad"
    image = coco_images / "train2017" / coco_captions(coco_images, 1)[0][0]
    _, new_tokens = generate_reply(path, image, "What is shown in the image?")
    assert new_tokens > 0


def test_siglip_stage1_result_is_a_stock_checkpoint(siglip_stage1, coco_images):
    _assert_stock_siglip_llava(siglip_stage1[1], coco_images)


@pytest.mark.parametrize("method", ["full", "qlora"])
def test_siglip_stage2_and_merge_load_and_generate(siglip_stage1, coco_images, method):
    siglip, stage1_final = siglip_stage1
    cfg = load_config(_config_file(coco_images, f"siglip-{method}", siglip, method=method, init_from=str(stage1_final)))
    final = train(cfg, "stage2") / "final"
    assert (final / ("adapter_config.json" if method == "qlora" else "model.safetensors")).exists()
    _assert_stock_siglip_llava(merge(cfg), coco_images)
