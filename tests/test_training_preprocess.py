"""Image preprocessing modes (`training/preprocess.py`): resize, pad, crop on non-square images.

Each mode is checked against an independent PIL rendering of what docs/TRAINING.md says it does (LLaVA's
`expand2square` for pad), on a committed synthetic 48x24 image (runs anywhere) and on a coco-mini photo; the
saved processor reproduces it through `AutoProcessor.from_pretrained`, and a stage run uses and saves it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoImageProcessor, AutoProcessor
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil
from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

from tests.test_training_support import tiny_base, tiny_config_file
from training.config import load_config
from training.model import build_processor, num_image_tokens
from training.preprocess import PREPROCESSING, image_processor_for, preprocessing_of
from training.tiny import TINY_IMAGE_SIZE, save_tiny_clip, save_tiny_siglip, write_tiny_config

SYNTHETIC = Path(__file__).parent / "assets" / "nonsquare_48x24.png"  # red | green | blue stripes, 8/32/8 px wide
RED, GREEN, BLUE = (220, 20, 20), (20, 200, 20), (20, 20, 220)


def _reference(image: Image.Image, mode: str, size: int, processor) -> np.ndarray:
    """What each mode is documented to do, written with PIL only; returns normalised CHW float32."""
    width, height = image.size
    resample = Image.Resampling(int(processor.resample))
    if mode == "pad":  # LLaVA-1.5's expand2square with the mean color, then resize
        side = max(width, height)
        square = Image.new("RGB", (side, side), tuple(int(m * 255) for m in processor.image_mean))
        square.paste(image, ((side - width) // 2, (side - height) // 2))
        image = square.resize((size, size), resample)
    elif mode == "resize":
        image = image.resize((size, size), resample)
    else:  # crop: short side to `size`, long side scaled by int(), then the center `size` x `size`
        scale = size / min(width, height)
        new = (size, int(height * scale)) if width < height else (int(width * scale), size)
        image = image.resize(new, resample)
        left, top = (new[0] - size) // 2, (new[1] - size) // 2
        image = image.crop((left, top, left + size, top + size))
    pixels = np.asarray(image, dtype=np.float32).transpose(2, 0, 1) / 255.0
    mean = np.asarray(processor.image_mean, dtype=np.float32)[:, None, None]
    std = np.asarray(processor.image_std, dtype=np.float32)[:, None, None]
    return (pixels - mean) / std


def _rgb(pixels: torch.Tensor, processor) -> np.ndarray:
    """Normalised CHW pixels back to HWC 0..255 (for readable colour checks)."""
    mean = torch.tensor(processor.image_mean)[:, None, None]
    std = torch.tensor(processor.image_std)[:, None, None]
    return ((pixels * std + mean) * 255).permute(1, 2, 0).numpy()


def _close_to(rgb: np.ndarray, colour: tuple[int, int, int], tolerance: float = 12) -> bool:
    return bool(np.abs(rgb - np.asarray(colour)).max() <= tolerance)


@pytest.mark.parametrize("base", [CLIPImageProcessorPil, SiglipImageProcessorPil], ids=["clip", "siglip"])
@pytest.mark.parametrize("mode", PREPROCESSING)
def test_modes_match_their_documented_pixels_on_a_synthetic_image(tmp_path, base, mode):
    processor = image_processor_for(base(), mode, TINY_IMAGE_SIZE)
    image = Image.open(SYNTHETIC).convert("RGB")
    pixels = processor(images=image, return_tensors="pt")["pixel_values"][0]
    assert pixels.shape == (3, TINY_IMAGE_SIZE, TINY_IMAGE_SIZE)
    np.testing.assert_allclose(pixels.numpy(), _reference(image, mode, TINY_IMAGE_SIZE, processor), atol=1e-5)

    rgb = _rgb(pixels, processor)
    if mode == "crop":  # 48x24 -> 64x32, center 32 columns = source columns 12..36: green only
        assert _close_to(rgb, GREEN)
    elif mode == "resize":  # the whole width squeezed in: red left, blue right, full height
        assert _close_to(rgb[:, 0], RED) and _close_to(rgb[:, -1], BLUE) and _close_to(rgb[:, 16], GREEN)
    else:  # 48x48 with the image in rows 12..36 -> rows 8..24 of 32; bands of exactly the mean colour
        mean_colour = tuple(int(m * 255) for m in processor.image_mean)
        assert _close_to(rgb[:6], mean_colour, 0.01) and _close_to(rgb[-6:], mean_colour, 0.01)
        assert _close_to(rgb[10:22, 0], RED) and _close_to(rgb[10:22, -1], BLUE)

    processor.save_pretrained(tmp_path)
    reloaded = AutoImageProcessor.from_pretrained(tmp_path)
    assert preprocessing_of(reloaded) == mode
    assert torch.equal(reloaded(images=image, return_tensors="pt")["pixel_values"][0], pixels)


@pytest.mark.parametrize("mode", PREPROCESSING)
def test_modes_on_a_coco_mini_photo_at_clip_336(coco_mini, mode):
    path = next(
        p for p in sorted((coco_mini / "train2017").glob("*.jpg")) if Image.open(p).size[0] != Image.open(p).size[1]
    )
    image = Image.open(path).convert("RGB")
    base = CLIPImageProcessorPil(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336})
    processor = image_processor_for(base, mode, 336)
    pixels = processor(images=image, return_tensors="pt")["pixel_values"][0]
    np.testing.assert_allclose(pixels.numpy(), _reference(image, mode, 336, processor), atol=1e-5)
    if mode == "pad":  # landscape photo: mean-colour bands above and below, as tall as the missing height
        width, height = image.size
        band = int((width - height) / 2 * 336 / width) - 2  # minus the resampling footprint
        rgb = _rgb(pixels, processor)
        mean_colour = tuple(int(m * 255) for m in processor.image_mean)
        assert _close_to(rgb[:band], mean_colour, 0.01) and _close_to(rgb[-band:], mean_colour, 0.01)
        assert not _close_to(rgb[band + 4 : -band - 4], mean_colour, 0.01)


def test_native_modes_reproduce_the_towers_own_processors():
    image = Image.open(SYNTHETIC).convert("RGB")
    for base, native in ((CLIPImageProcessorPil(), "crop"), (SiglipImageProcessorPil(), "resize")):
        size = base.crop_size["height"] if native == "crop" else base.size["height"]
        ours = image_processor_for(base, native, size)(images=image, return_tensors="pt")["pixel_values"]
        assert torch.equal(ours, base(images=image, return_tensors="pt")["pixel_values"])


@pytest.mark.parametrize(("tower", "mode"), [("clip", None), ("clip", "pad"), ("siglip", None), ("siglip", "crop")])
def test_config_sets_the_processor_and_unset_follows_the_tower(tmp_path, tower, mode):
    vision = {"clip": save_tiny_clip, "siglip": save_tiny_siglip}[tower](tmp_path / tower)
    _, llm = tiny_base()
    cfg = load_config(write_tiny_config(tmp_path / "tiny.yaml", vision, llm), [f"image_preprocessing={mode or 'null'}"])
    processor = build_processor(cfg, patch_size=8)
    assert preprocessing_of(processor.image_processor) == (mode or {"clip": "crop", "siglip": "resize"}[tower])
    assert num_image_tokens(processor) == (TINY_IMAGE_SIZE // 8) ** 2


def test_stage_trains_with_the_configured_mode_and_saves_it(coco_images):
    from training.data import LlavaJsonDataset, load_records
    from training.loop import train

    cfg = load_config(
        tiny_config_file(coco_images, "preprocess-pad"), ["image_preprocessing=pad", "stage1.max_steps=1"]
    )
    out = train(cfg, "stage1") / "final"
    saved = AutoProcessor.from_pretrained(out)
    assert preprocessing_of(saved.image_processor) == "pad"
    record = load_records(cfg.stage1.data)[0]
    dataset = LlavaJsonDataset([record], cfg.image_root, saved, "plain", cfg.model_max_length)
    image = Image.open(cfg.image_root / record["image"]).convert("RGB")
    expected = _reference(image, "pad", TINY_IMAGE_SIZE, saved.image_processor)
    np.testing.assert_allclose(dataset[0].pixel_values.numpy(), expected, atol=1e-5)

    # stage 2 with another mode: the config wins over the stage-1 processor, and its result saves that mode
    stage2 = load_config(
        tiny_config_file(coco_images, "preprocess-pad"),
        ["image_preprocessing=resize", "stage2.max_steps=1", f"stage2.init_from={out}"],
    )
    stage2_out = train(stage2, "stage2") / "final"
    assert preprocessing_of(AutoProcessor.from_pretrained(stage2_out).image_processor) == "resize"
