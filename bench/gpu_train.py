"""Training throughput on one GPU: LLaVA stage 1, stage 2 full (bf16 + gradient checkpointing), stage 2 QLoRA.

Random-initialised Vicuna-7B (LlamaConfig) + CLIP ViT-L/14-336 (CLIPVisionConfig), nothing downloaded;
random tokens at sequence length 2048 with 576 image tokens. Uses the same freezing, LoRA/QLoRA and
checkpointing code as `python -m training`. Prints samples/s, tokens/s, achieved TFLOP/s, MFU and peak
memory per configuration. MFU counts model FLOPs only (no recompute): 2N per token forward, +2N for the
input gradients (always needed: the projector trains), +2N_trainable for weight gradients, attention
4*L*s*d per token forward (x2 / x3 likewise), vision tower forward only.

    python bench/gpu_train.py                 # H100/H200, < 8 min
    python bench/gpu_train.py --tiny          # CPU smoke run of the same code, seconds
    python bench/gpu_train.py --only stage1 --compile --stage1-checkpointing off --stage1-batch 6 --warmup 3
    python bench/gpu_train.py --only stage1 --vision clip siglip   # CLIP-336 vs SigLIP-so400m-384, one run

`--vision` picks the tower(s): `clip` is CLIP ViT-L/14-336 (577 tokens, CLS dropped: 576 image tokens), `siglip`
is SigLIP so400m-patch14-384 (729 tokens, no CLS, no pooling head: 729 image tokens), both random. Each row runs at
the same `--seq-len`, so a SigLIP sample carries 153 fewer text tokens.

`--compile` compiles each decoder layer with `training.compile.compile_layers` (what `compile=true` does in
the loop); the warmup steps absorb the compile time. Stage 1 checkpoints activations when the loop would
(`TrainConfig().stage("stage1").gradient_checkpointing`) unless `--stage1-checkpointing` says otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import gc
import json
import resource
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration, SiglipVisionConfig

from training.compile import compile_layers
from training.config import TrainConfig
from training.loop import disable_kv_cache, enable_checkpointing
from training.lora import apply_lora
from training.model import PROJECTOR_ACT, load_model
from training.stages import freeze_backbones
from training.vision import VISION_TOWERS

PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0}  # dense, per GPU


@dataclass
class Result:
    """One row of the table."""

    config: str
    vision: str
    micro_batch: int
    seq_len: int
    samples_per_s: float
    tokens_per_s: float
    tflops: float
    mfu: float | None
    peak_mem_gib: float | None
    note: str = ""


def vision_config(tiny: bool, kind: str) -> CLIPVisionConfig | SiglipVisionConfig:
    """CLIP ViT-L/14-336 or SigLIP so400m-patch14-384 (as LLaVA-style models load it: no pooling head)."""
    if tiny:
        shape = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2}
        shape.update(image_size=32, patch_size=8)
        return CLIPVisionConfig(**shape) if kind == "clip" else SiglipVisionConfig(**shape, vision_use_head=False)
    if kind == "clip":
        return CLIPVisionConfig(
            hidden_size=1024,
            intermediate_size=4096,
            num_hidden_layers=24,
            num_attention_heads=16,
            image_size=336,
            patch_size=14,
            projection_dim=768,
        )
    return SiglipVisionConfig(
        hidden_size=1152,
        intermediate_size=4304,
        num_hidden_layers=27,
        num_attention_heads=16,
        image_size=384,
        patch_size=14,
        vision_use_head=False,
    )


def model_configs(tiny: bool, projector: str, vision_kind: str = "clip") -> tuple[LlavaConfig, int]:
    """(Llava config, image size): Vicuna-7B + CLIP ViT-L/14-336 or SigLIP-384, or a tiny pair for CPU checks."""
    vision = vision_config(tiny, vision_kind)
    if tiny:
        text = LlamaConfig(
            vocab_size=1000,
            hidden_size=128,
            intermediate_size=256,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=512,
            tie_word_embeddings=False,
        )
    else:
        text = LlamaConfig(
            vocab_size=32000,
            hidden_size=4096,
            intermediate_size=11008,
            num_hidden_layers=32,
            num_attention_heads=32,
            num_key_value_heads=32,
            max_position_embeddings=4096,
            rms_norm_eps=1e-5,
            tie_word_embeddings=False,
        )
    tower = VISION_TOWERS[vision.model_type]
    image_tokens = tower.image_tokens(vision, tower.select_strategy)  # the registry's rule, as training uses
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=text.vocab_size - 1,
        image_seq_length=image_tokens,
        projector_hidden_act=PROJECTOR_ACT[projector],
        vision_feature_layer=-2,
        vision_feature_select_strategy=tower.select_strategy,
    )
    return config, vision.image_size


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype):
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def random_model(config: LlavaConfig, device: torch.device, dtype: torch.dtype) -> LlavaForConditionalGeneration:
    """Random weights built directly on the device (no 7B copy on the host)."""
    with default_dtype(dtype), device:
        model = LlavaForConditionalGeneration(config)
    disable_kv_cache(model)
    return model


def random_batch(config: LlavaConfig, image_size: int, batch: int, seq_len: int, device: torch.device) -> dict:
    """Token ids with one image block after bos; labels on every text token after the image."""
    image_tokens = config.image_seq_length
    ids = torch.randint(3, config.text_config.vocab_size - 1, (batch, seq_len), device=device)
    ids[:, 0] = 1
    ids[:, 1 : 1 + image_tokens] = config.image_token_index
    labels = ids.clone()
    labels[:, : 1 + image_tokens] = -100
    pixels = torch.randn(batch, 3, image_size, image_size, device=device)
    return {"input_ids": ids, "labels": labels, "attention_mask": torch.ones_like(ids), "pixel_values": pixels}


def count(module: torch.nn.Module, trainable: bool | None = None) -> int:
    """Parameter count (4-bit packed weights counted as their logical size)."""
    total = 0
    for p in module.parameters():
        if trainable is None or p.requires_grad == trainable:
            total += p.numel() * (2 if p.dtype == torch.uint8 else 1)
    return total


def flops_per_sample(
    config: LlavaConfig, seq_len: int, llm_params: int, llm_trainable: int, vision_params: int
) -> float:
    """Model FLOPs per training sample (see module docstring)."""
    text = config.text_config
    attention_fwd = 4 * text.num_hidden_layers * seq_len * text.hidden_size  # per token
    llm = seq_len * (2 * llm_params + attention_fwd) * 2  # forward + input gradients
    llm += seq_len * 2 * llm_trainable + (seq_len * attention_fwd if llm_trainable else 0)
    vision = config.vision_config
    tokens = (vision.image_size // vision.patch_size) ** 2 + VISION_TOWERS[vision.model_type].prefix_tokens
    return llm + 2 * vision_params * tokens


def peak_tflops(device: torch.device, override: float | None) -> float | None:
    if override:
        return override
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)


def measure(name, model, config, image_size, batch, seq_len, device, steps, warmup, peak, dtype) -> Result:
    """Train `warmup + steps` optimizer steps on random data; time the last `steps`."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-5, fused=device.type == "cuda")
    data = random_batch(config, image_size, batch, seq_len, device)
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    llm = count(base.model.language_model) + count(base.lm_head)
    llm_trainable = sum(
        p.numel() for n, p in model.named_parameters() if p.requires_grad and ("language_model" in n or "lm_head" in n)
    )
    flops = flops_per_sample(config, seq_len, llm, llm_trainable, count(base.model.vision_tower))
    model.train()
    for step in range(warmup + steps):
        if step == warmup:
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
        with autocast:
            loss = model(**data).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    samples_per_s = steps * batch / elapsed
    achieved = samples_per_s * flops / 1e12
    peak_mem = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    del optimizer
    return Result(
        name,
        config.vision_config.model_type.removesuffix("_vision_model"),
        batch,
        seq_len,
        samples_per_s,
        samples_per_s * seq_len,
        achieved,
        achieved / peak if peak else None,
        peak_mem,
        f"loss {loss.item():.2f}",
    )


def free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def run_config(name, build, args, config, image_size, device, dtype, peak) -> Result:
    """Build, freeze and measure one configuration; an OOM becomes a table row instead of a crash."""
    free(device)
    try:
        model, batch = build()
        return measure(
            name, model, config, image_size, batch, args.seq_len, device, args.steps, args.warmup, peak, dtype
        )
    except torch.OutOfMemoryError as error:
        vision = config.vision_config.model_type.removesuffix("_vision_model")
        return Result(name, vision, 0, args.seq_len, 0, 0, 0, None, None, f"OOM: {str(error)[:60]}")
    finally:
        free(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="tiny models on CPU: checks the script, no real figures")
    parser.add_argument("--seq-len", type=int, default=None, help="default 2048 (128 with --tiny)")
    parser.add_argument("--projector", choices=["linear", "mlp2x_gelu"], default="mlp2x_gelu")
    parser.add_argument(
        "--vision",
        nargs="+",
        choices=["clip", "siglip"],
        default=["clip"],
        help="vision tower(s): CLIP ViT-L/14-336 and/or SigLIP so400m-384; each gets its own rows",
    )
    parser.add_argument("--stage1-batch", type=int, default=4)
    parser.add_argument("--full-batch", type=int, default=4)
    parser.add_argument("--qlora-batch", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--compile", action="store_true", help="compile each decoder layer, as compile=true does")
    parser.add_argument("--compile-backend", default="inductor", help="aot_eager: no C++ compiler needed (CPU)")
    parser.add_argument(
        "--stage1-checkpointing",
        choices=["on", "off"],
        default=None,
        help="activation checkpointing in stage 1; default: the loop's default for stage 1",
    )
    parser.add_argument("--peak-tflops", type=float, default=None, help="override the GPU's dense bf16 peak")
    configs = ["stage1", "stage2-full", "stage2-qlora"]
    parser.add_argument("--only", nargs="*", choices=configs, default=configs, help="which rows to run")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()), help="QLoRA base is saved here")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows as json")
    args = parser.parse_args()
    device = torch.device("cpu" if args.tiny or not torch.cuda.is_available() else "cuda")
    dtype = torch.float32 if device.type == "cpu" else torch.bfloat16
    args.seq_len = args.seq_len or (128 if args.tiny else 2048)
    if args.tiny:
        torch.set_num_threads(1)
    peak = peak_tflops(device, args.peak_tflops)
    defaults = TrainConfig()
    stage1, stage2 = defaults.stage("stage1"), defaults.stage("stage2")
    stage1_checkpointing = (
        stage1.gradient_checkpointing if args.stage1_checkpointing is None else args.stage1_checkpointing == "on"
    )

    compiled_layers = {}  # config -> layers compile_layers compiled (0: it skipped them)

    def compiled(model, name: str):
        if args.compile:
            compiled_layers[name] = compile_layers(model, args.compile_backend)
        return model

    def build_stage1(config: LlavaConfig):
        model = random_model(config, device, dtype)
        if stage1_checkpointing:
            enable_checkpointing(model)
        freeze_backbones(model, stage1.train, stage1.method)
        for p in model.parameters():
            if p.requires_grad:
                p.data = p.data.float()  # the projector trains in fp32 under bf16 autocast, as in the loop
        return compiled(model, "stage1"), args.stage1_batch

    def build_full(config: LlavaConfig):
        model = random_model(config, device, dtype)
        enable_checkpointing(model)
        freeze_backbones(model, stage2.train, "full")  # bf16 weights + bf16 AdamW state: fits one 80 GB GPU
        return compiled(model, "stage2-full"), args.full_batch

    def build_qlora(config: LlavaConfig):
        base_dir = args.workdir / "vistune-bench-qlora-base"
        model = random_model(config, device, dtype)
        model.save_pretrained(base_dir)
        del model
        free(device)
        try:
            model = load_model(base_dir, dtype, "sdpa", quantize_4bit=True)
        finally:
            shutil.rmtree(base_dir, ignore_errors=True)
        qlora = stage2.model_copy(update={"method": "qlora"})
        model = apply_lora(model, qlora, gradient_checkpointing=True)
        freeze_backbones(model, qlora.train, "qlora")
        return compiled(model, "stage2-qlora"), args.qlora_batch  # compile_layers skips 4-bit layers and says so

    builders = {"stage1": build_stage1, "stage2-full": build_full, "stage2-qlora": build_qlora}
    settings = {
        "stage1": f"ckpt {'on' if stage1_checkpointing else 'off'}",
        "stage2-full": "ckpt on",
        "stage2-qlora": "ckpt on",
    }
    results = []
    for vision in args.vision:
        config, image_size = model_configs(args.tiny, args.projector, vision)
        for name in args.only:
            started = time.perf_counter()
            compiled_layers.pop(name, None)
            build = functools.partial(builders[name], config)
            result = run_config(name, build, args, config, image_size, device, dtype, peak)
            compile_note = f", compile {args.compile_backend}" if compiled_layers.get(name) else ""
            result.note += f"; {config.image_seq_length} image tokens; {settings[name]}{compile_note}"
            result.note += f"; {time.perf_counter() - started:.0f}s"
            results.append(result)
            print(json.dumps(asdict(result)), flush=True)

    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU (--tiny: not real figures)"
    print(f"\n{where}, seq len {args.seq_len}, peak {peak or 'unknown'} TFLOP/s")
    print("| config | vision | micro-batch | samples/s | tokens/s | TFLOP/s | MFU | peak GiB | note |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        mfu = f"{100 * r.mfu:.1f}%" if r.mfu is not None else "n/a"
        mem = f"{r.peak_mem_gib:.1f}" if r.peak_mem_gib is not None else "n/a"
        print(
            f"| {r.config} | {r.vision} | {r.micro_batch} | {r.samples_per_s:.2f} | {r.tokens_per_s:.0f} | "
            f"{r.tflops:.1f} | {mfu} | {mem} | {r.note} |"
        )
    if device.type == "cpu":
        print(f"process peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB")
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=2))


if __name__ == "__main__":
    main()
