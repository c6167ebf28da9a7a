"""Built-once checkpoints of every kind vistune writes, for the inference and chat tests.

Stage 1 is the training tests' own run (`stage1_run`, cached per session); stage 2 runs two steps per method.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

from tests.test_training_support import coco_captions, stage1_run, tiny_config_file


@functools.cache
def inference_checkpoints(coco_images: Path) -> dict[str, Path]:
    """{"stage1", "full", "adapter", "merged"}: stage-1 final, stage-2 full final, a LoRA adapter folder (stage-2
    final with method lora) and the merge of that adapter."""
    from training.config import load_config
    from training.loop import train
    from training.merge import merge

    config_path, _ = stage1_run(coco_images)
    stage1 = load_config(config_path).stage_dir("stage1") / "final"
    found = {"stage1": stage1}
    for kind, method in (("full", "full"), ("adapter", "lora")):
        cfg = load_config(
            tiny_config_file(coco_images, f"infer-{method}"),
            [f"stage2.init_from={stage1}", f"stage2.method={method}", "stage2.max_steps=2"],
        )
        found[kind] = train(cfg, "stage2") / "final"
        if method == "lora":
            found["merged"] = merge(cfg)
    return found


def question_images(coco_images: Path, count: int) -> list[str]:
    """File names (relative to `coco_images/train2017`) of `count` images with captions."""
    return [file_name for file_name, _ in coco_captions(coco_images, count)]


QUESTION_TEXTS = [
    "What is shown in the image?",
    "Describe the image in detail, every object you can see and where it is.",
    "What might happen next?",
    "Is there anything unusual here?",
    "What colour is it?",
]


def write_questions(path: Path, images: list[str], count: int = 5) -> Path:
    """A LLaVA questions file of `count` questions (ids 0.., categories cycling) over `images`."""
    categories = ["conv", "detail", "complex"]
    lines = [
        json.dumps({"question_id": i, "image": images[i % len(images)], "text": QUESTION_TEXTS[i % len(QUESTION_TEXTS)],
                    "category": categories[i % 3]})
        for i in range(count)
    ]
    path.write_text("\n".join(lines) + "\n")
    return path
