"""Vision towers by model_type (`training/vision.py`): CLIP and SigLIP Llavas built from tiny configs, no downloads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from transformers import AutoProcessor, LlavaForConditionalGeneration

from tests.test_training_support import tiny_base, tiny_config_file
from training.config import TrainConfig, load_config
from training.model import build_base_model, num_image_tokens
from training.tiny import TINY_IMAGE_SIZE, TINY_PATCH_SIZE, TINY_VISION, write_tiny_config
from training.vision import VISION_TOWERS

PATCHES = (TINY_IMAGE_SIZE // TINY_PATCH_SIZE) ** 2
# tower name -> (Llava strategy, tokens the tower emits per image)
EXPECTED = {"clip": ("default", PATCHES + 1), "siglip": ("full", PATCHES)}


def _config(tmp_path: Path, vision_path: Path, **fields: object) -> TrainConfig:
    _, llm = tiny_base()
    return load_config(write_tiny_config(tmp_path / "tiny.yaml", vision_path, llm, **fields))


@pytest.mark.parametrize("tower", ["clip", "siglip"])
def test_tiny_llava_with_each_tower_forwards_its_image_tokens_and_reloads(tmp_path, tower):
    cfg = _config(tmp_path, TINY_VISION[tower](tmp_path / tower))
    torch.manual_seed(0)
    model, processor = build_base_model(cfg)
    strategy, emitted = EXPECTED[tower]
    assert model.config.vision_feature_select_strategy == processor.vision_feature_select_strategy == strategy
    assert model.config.image_seq_length == num_image_tokens(processor) == PATCHES  # nothing but patches

    image = Image.new("RGB", (48, 40), (200, 30, 30))
    inputs = processor(images=image, text="USER: <image>\nWhat is it?", return_tensors="pt")
    assert int((inputs["input_ids"] == model.config.image_token_id).sum()) == PATCHES
    model.eval()
    with torch.no_grad():
        tower_tokens = model.model.vision_tower(inputs["pixel_values"]).last_hidden_state.shape[1]
        features = model.get_image_features(pixel_values=inputs["pixel_values"]).pooler_output[0]
        outputs = model(**inputs, labels=inputs["input_ids"])
    assert (tower_tokens, features.shape[0]) == (emitted, PATCHES)
    assert torch.isfinite(outputs.loss)

    model.save_pretrained(tmp_path / "llava")
    processor.save_pretrained(tmp_path / "llava")
    reloaded = LlavaForConditionalGeneration.from_pretrained(tmp_path / "llava").eval()
    reprocessor = AutoProcessor.from_pretrained(tmp_path / "llava")
    assert reloaded.config.vision_feature_select_strategy == strategy
    assert reloaded.config.vision_config.model_type == f"{tower}_vision_model"
    reinputs = reprocessor(images=image, text="USER: <image>\nWhat is it?", return_tensors="pt")
    assert torch.equal(reinputs["input_ids"], inputs["input_ids"])
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**reinputs).logits, outputs.logits)


def test_siglip_tower_loads_from_a_full_siglip_checkpoint(tmp_path):
    from transformers import SiglipConfig, SiglipModel
    from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

    vision = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2}
    text = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2}
    siglip = SiglipModel(SiglipConfig(text_config=text, vision_config={**vision, "image_size": 32, "patch_size": 8}))
    siglip.save_pretrained(tmp_path / "siglip")
    SiglipImageProcessorPil(size={"height": 32, "width": 32}).save_pretrained(tmp_path / "siglip")
    model, processor = build_base_model(_config(tmp_path, tmp_path / "siglip"))
    loaded = model.model.vision_tower.encoder.layers[1].self_attn.q_proj.weight
    torch.testing.assert_close(loaded, siglip.vision_model.encoder.layers[1].self_attn.q_proj.weight, rtol=0, atol=0)
    assert model.config.vision_feature_select_strategy == "full"
    assert num_image_tokens(processor) == model.config.image_seq_length == PATCHES


def test_unknown_vision_model_type_fails_naming_it_and_the_registered_ones(tmp_path):
    (tmp_path / "dino").mkdir()
    (tmp_path / "dino" / "config.json").write_text(json.dumps({"model_type": "dinov2"}))
    with pytest.raises(ValueError, match="'dinov2' is not registered") as error:
        build_base_model(_config(tmp_path, tmp_path / "dino"))
    assert all(model_type in str(error.value) for model_type in VISION_TOWERS)


def test_default_strategy_on_a_tower_without_cls_is_rejected(tmp_path):
    cfg = _config(tmp_path, TINY_VISION["siglip"](tmp_path / "siglip"), vision_feature_select_strategy="default")
    with pytest.raises(ValueError, match="siglip tower has none"):
        build_base_model(cfg)


def test_stage1_trains_a_siglip_llava(coco_images, tmp_path):
    from training.loop import train

    siglip = TINY_VISION["siglip"](tmp_path / "siglip")
    cfg = load_config(tiny_config_file(coco_images, "siglip", vision_model=siglip), ["stage1.max_steps=2"])
    out = train(cfg, "stage1")
    model = LlavaForConditionalGeneration.from_pretrained(out / "final")
    assert type(model.model.vision_tower).__name__ == "SiglipVisionModel"
    assert model.config.vision_feature_select_strategy == "full" and model.config.image_seq_length == PATCHES


def test_siglip2_naflex_is_refused_with_the_reason(tmp_path):
    from transformers import Siglip2VisionConfig, Siglip2VisionModel

    # A tiny NaFlex tower (model_type siglip2_vision_model): LlavaProcessor cannot count its variable patches.
    tiny = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2}
    Siglip2VisionModel(Siglip2VisionConfig(**tiny, patch_size=8)).save_pretrained(tmp_path / "naflex")
    with pytest.raises(ValueError, match=r"NaFlex.*FixRes SigLIP 2 checkpoint"):
        build_base_model(_config(tmp_path, tmp_path / "naflex"))
