"""Inference throughput: answers/s and generated tokens/s of `training.inference` backends, batch sizes side by side.

A random LLaVA checkpoint is built (nothing downloaded), saved the way training saves one (model, processor,
template record) and loaded back through the backend, so loading, prompt rendering in the trained template, left
padding, `generate` and decoding are all measured. Every row answers the same questions greedily (noise images of
COCO's 640x480), so with left padding each question gets the same reply at every batch size: the rows differ only
in how the work is batched. Tokens count what each reply generated (up to its eos), not the padding of rows that
finished early.

    python bench/infer_bench.py                               # tiny model on CPU, batch 1 4 16 (~30 s)
    python bench/infer_bench.py --json infer.json             # also write the rows
    python bench/infer_bench.py --shape 7b --backend transformers vllm --batch-sizes 1 8 32 --questions 64

`--shape 7b` builds a random Vicuna-7B (LlamaConfig) + CLIP ViT-L/14-336 (576 image tokens) in bf16 on the GPU
and saves it under `--workdir` (~14 GB) for the backends to load; only meaningful on a GPU (refused without CUDA).
Its vocabulary is the tiny BPE tokenizer's (~600 ids, not 32,000): the lm_head is then ~0.04% rather than ~2% of
the 7B FLOPs per token. `--backend vllm` needs vLLM installed (skipped with a note otherwise).
"""

from __future__ import annotations

import argparse
import gc
import json
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from training.cli import silence_known_noise
from training.inference import BackendUnavailable, Conversation, GenerationParams, create_backend
from training.templates import record_template

QUESTIONS = [
    "What is shown in the image?",
    "Describe the image in detail.",
    "What might the people here be about to do, and why?",
    "How many objects can you count, and what colours are they?",
]


@dataclass
class Row:
    """One line of the table."""

    shape: str
    backend: str
    batch_size: int
    answers: int
    seconds: float
    answers_per_s: float
    tokens_per_s: float
    tokens_per_answer: float
    speedup_vs_batch_1: float | None = None
    note: str = ""


def tiny_checkpoint(workdir: Path) -> Path:
    """The tiny CLIP + Llama of the tests, assembled as stage 1 assembles it, saved."""
    from training.config import load_config
    from training.model import build_base_model
    from training.tiny import build_tiny_base_models

    build_tiny_base_models(workdir / "base")
    torch.manual_seed(0)
    model, processor = build_base_model(load_config(workdir / "base" / "tiny.yaml"))
    return save_checkpoint(model, processor, workdir / "tiny-llava")


def llava_7b_checkpoint(workdir: Path) -> Path:
    """Random Vicuna-7B + CLIP ViT-L/14-336 with an `mlp2x_gelu` projector, built on the GPU in bf16, saved."""
    from transformers import CLIPImageProcessor, CLIPVisionConfig, LlavaForConditionalGeneration

    from bench.gpu_train import default_dtype, model_configs
    from schemas.llava import IMAGE_PLACEHOLDER
    from training.config import TrainConfig
    from training.model import build_processor
    from training.tiny import build_tokenizer
    from training.vision import vision_tower_of

    config, image_size = model_configs(tiny=False, projector="mlp2x_gelu")
    base = workdir / "base-7b"
    build_tokenizer().save_pretrained(base / "llm")
    config.vision_config.save_pretrained(base / "vision")
    CLIPImageProcessor(size={"shortest_edge": image_size},
                       crop_size={"height": image_size, "width": image_size}).save_pretrained(base / "vision")
    cfg = TrainConfig(vision_model=str(base / "vision"), llm=str(base / "llm"), projector="mlp2x_gelu")
    tower = vision_tower_of(str(base / "vision"))
    assert isinstance(config.vision_config, CLIPVisionConfig)
    processor = build_processor(cfg, config.vision_config.patch_size, tower, image_size)
    tokenizer = processor.tokenizer
    config.text_config.vocab_size = len(tokenizer)
    config.image_token_index = tokenizer.convert_tokens_to_ids(IMAGE_PLACEHOLDER)
    config.text_config.pad_token_id = tokenizer.pad_token_id
    with default_dtype(torch.bfloat16), torch.device("cuda"):
        model = LlavaForConditionalGeneration(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    path = save_checkpoint(model, processor, workdir / "llava-7b-random")
    del model
    gc.collect()
    torch.cuda.empty_cache()
    return path


def save_checkpoint(model, processor, path: Path) -> Path:
    """What a stage's `final/` holds: the model, its processor and the template it answers in."""
    model.save_pretrained(path)
    processor.save_pretrained(path)
    record_template(path, "vicuna_v1")
    return path


def noise_images(directory: Path, count: int, seed: int = 0) -> list[Path]:
    """`count` random 640x480 RGB images (COCO's usual size), saved as PNG."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for index in range(count):
        path = directory / f"noise-{index}.png"
        Image.fromarray(rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def measure(backend, shape: str, conversations: list[Conversation], batch_size: int,
            params: GenerationParams) -> Row:
    """Answer every conversation in batches of `batch_size` (after one warm-up batch); time it."""
    backend.generate(conversations[:batch_size], params)  # warm-up: lazy init, kernels, allocator
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    tokens = 0
    start = time.perf_counter()
    for first in range(0, len(conversations), batch_size):
        tokens += sum(g.tokens_generated for g in backend.generate(conversations[first : first + batch_size], params))
    seconds = time.perf_counter() - start
    answers = len(conversations)
    return Row(shape, backend.name, batch_size, answers, round(seconds, 3), round(answers / seconds, 2),
               round(tokens / seconds, 1), round(tokens / answers, 1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=["tiny", "7b"], default="tiny", help="tiny (CPU) or a random 7B (GPU)")
    parser.add_argument("--backend", nargs="+", default=["transformers"], help="transformers and/or vllm")
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 4, 16], metavar="N")
    parser.add_argument("--questions", type=int, default=64, help="questions answered per row")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="default 32 (tiny), 128 (7b)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: steady figures on busy hosts)")
    parser.add_argument("--workdir", type=Path, default=None, help="where the random checkpoint is saved")
    parser.add_argument("--json", type=Path, default=None, metavar="FILE", help="also write the rows as json")
    args = parser.parse_args()
    silence_known_noise()
    if args.shape == "7b" and not torch.cuda.is_available():
        parser.error("--shape 7b needs a CUDA GPU (a random 7B on CPU measures nothing useful)")
    torch.set_num_threads(args.threads)
    params = GenerationParams(max_new_tokens=args.max_new_tokens or (32 if args.shape == "tiny" else 128))
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="infer-bench-"))
    try:
        checkpoint = tiny_checkpoint(workdir) if args.shape == "tiny" else llava_7b_checkpoint(workdir)
        images = noise_images(workdir / "images", 4)
        conversations = [Conversation.question(QUESTIONS[i % len(QUESTIONS)], images[i % len(images)], str(i))
                         for i in range(args.questions)]
        rows: list[Row] = []
        for name in args.backend:
            try:
                backend = create_backend(name, checkpoint)
            except BackendUnavailable as exc:
                rows.append(Row(args.shape, name, 0, 0, 0, 0, 0, 0, note=f"skipped: {exc}"))
                continue
            for batch_size in args.batch_sizes:
                row = measure(backend, args.shape, conversations, batch_size, params)
                first = next((r for r in rows if r.backend == name and r.batch_size == 1), None)
                row.speedup_vs_batch_1 = round(row.answers_per_s / first.answers_per_s, 2) if first else None
                rows.append(row)
                print(json.dumps(asdict(row)), flush=True)
            del backend  # free its memory before the next backend loads (vLLM reserves most of the GPU)
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU, {args.threads} thread(s)"
    print(f"\n{args.shape} LLaVA, {device}, {args.questions} questions, greedy, max_new_tokens "
          f"{params.max_new_tokens}")
    print(f"{'backend':<13}{'batch':>6}{'answers/s':>11}{'tokens/s':>10}{'tok/answer':>12}{'vs batch 1':>12}  note")
    for row in rows:
        speedup = f"{row.speedup_vs_batch_1:.2f}x" if row.speedup_vs_batch_1 else "-"
        print(f"{row.backend:<13}{row.batch_size:>6}{row.answers_per_s:>11.2f}{row.tokens_per_s:>10.1f}"
              f"{row.tokens_per_answer:>12.1f}{speedup:>12}  {row.note}")
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in rows], indent=2))


if __name__ == "__main__":
    main()
