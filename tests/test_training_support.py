"""Shared, built-once material for the training tests (tiny base models, data, a stage-1 run).

Plain cached functions rather than conftest fixtures so the training area keeps to its own files.
"""

from __future__ import annotations

import atexit
import functools
import json
import shutil
import tempfile
from pathlib import Path

import torch

from training.tiny import build_tiny_base_models, write_tiny_config

_ROOT = Path(tempfile.mkdtemp(prefix="vistune-training-tests-"))
atexit.register(shutil.rmtree, _ROOT, True)

QUESTIONS = ["What is shown in the image?", "Is there anything unusual here?", "What colour is it?"]


def coco_captions(coco_mini: Path, count: int) -> list[tuple[str, str]]:
    """(file_name, first caption) for the first `count` train2017 images of coco-mini."""
    data = json.loads((coco_mini / "annotations" / "captions_train2017.json").read_text())
    files = {image["id"]: image["file_name"] for image in data["images"]}
    pairs: dict[int, tuple[str, str]] = {}
    for annotation in data["annotations"]:
        pairs.setdefault(annotation["image_id"], (files[annotation["image_id"]], annotation["caption"].strip()))
    return list(pairs.values())[:count]


@functools.cache
def tiny_base() -> tuple[Path, Path]:
    """(vision_path, llm_path) of the tiny random base models, built once per test session."""
    torch.set_num_threads(1)  # tiny matmuls: extra threads only contend on a busy 2-core host
    return build_tiny_base_models(_ROOT / "base")


@functools.cache
def caption_and_instruction_data(coco_mini: Path) -> tuple[Path, Path]:
    """Stage-1 caption pairs (8) and stage-2 instruction samples (multi-turn, plus a text-only one)."""
    pairs = coco_captions(coco_mini, 8)
    captions = [
        {
            "id": f"cap-{i}",
            "image": file_name,
            "conversations": [
                {"from": "human", "value": "<image>\nDescribe the image briefly."},
                {"from": "gpt", "value": caption},
            ],
        }
        for i, (file_name, caption) in enumerate(pairs)
    ]
    instructions = [
        {
            "id": f"inst-{i}",
            "image": file_name,
            "conversations": [
                {"from": "human", "value": f"<image>\n{QUESTIONS[i % 3]}"},
                {"from": "gpt", "value": caption},
                {"from": "human", "value": "Say it shorter."},
                {"from": "gpt", "value": " ".join(caption.split()[:4])},
            ],
        }
        for i, (file_name, caption) in enumerate(pairs)
    ]
    instructions.append(
        {
            "id": "text-only",
            "conversations": [{"from": "human", "value": "Name a colour."}, {"from": "gpt", "value": "Blue."}],
        }
    )
    data = _ROOT / "data"
    data.mkdir(exist_ok=True)
    (data / "captions.json").write_text(json.dumps(captions))
    (data / "instruct.json").write_text(json.dumps(instructions))
    return data / "captions.json", data / "instruct.json"


def tiny_config_file(coco_mini: Path, name: str, **fields: object) -> Path:
    """A tiny training config writing under a fresh run directory `name`."""
    vision, llm = tiny_base()
    captions, instructions = caption_and_instruction_data(coco_mini)
    stage1 = {"data": str(captions), **fields.pop("stage1", {})}
    stage2 = {"data": str(instructions), **fields.pop("stage2", {})}
    return write_tiny_config(
        _ROOT / name / "tiny.yaml",
        vision,
        llm,
        image_root=coco_mini / "train2017",
        output_dir=_ROOT / name / "run",
        stage1=stage1,
        stage2=stage2,
        **fields,
    )


# Stage 1 as the overfit test runs it; stage-2 tests start from its result.
STAGE1_OVERFIT = {"learning_rate": 3e-2, "batch_size": 8, "per_device_batch_size": 8, "epochs": 80}


@functools.cache
def stage1_run(coco_mini: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    """Run stage 1 once; returns (config path, parameters before training)."""
    from training.config import load_config
    from training.loop import train
    from training.model import build_base_model

    config_path = tiny_config_file(coco_mini, "stage1", stage1=STAGE1_OVERFIT)
    cfg = load_config(config_path)
    torch.manual_seed(cfg.seed)  # the loop seeds the same way, so this rebuild equals its starting point
    model, _ = build_base_model(cfg)
    before = {name: p.detach().clone() for name, p in model.state_dict().items()}
    train(cfg, "stage1")
    return config_path, before


def generate_reply(model_dir: Path, image_path: Path, question: str) -> tuple[str, int]:
    """Load with from_pretrained, ask about an image; returns (decoded reply, new token count)."""
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    from training.templates import VICUNA_SYSTEM

    model = LlavaForConditionalGeneration.from_pretrained(model_dir)
    processor = AutoProcessor.from_pretrained(model_dir)
    from PIL import Image

    prompt = f"{VICUNA_SYSTEM} USER: <image>\n{question} ASSISTANT:"
    inputs = processor(images=Image.open(image_path), text=prompt, return_tensors="pt")
    output = model.generate(**inputs, max_new_tokens=6, do_sample=False)
    new_tokens = output[0, inputs["input_ids"].shape[1] :]
    return processor.decode(new_tokens, skip_special_tokens=True), int(new_tokens.numel())
