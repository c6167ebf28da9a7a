"""The training loop, top to bottom: one function for both stages (the stage config says what differs)."""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import torch
from accelerate import Accelerator, PartialState
from accelerate.utils import set_seed
from safetensors.torch import save_file
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import get_cosine_schedule_with_warmup

from training.checkpoint import Progress, latest_checkpoint, load_checkpoint, save_checkpoint
from training.compile import compile_layers
from training.config import StageConfig, StageName, TrainConfig, dump_config
from training.data import IGNORE_INDEX, Collator, LlavaJsonDataset, load_records
from training.lora import apply_lora
from training.metrics import MetricsLog, plot_loss
from training.model import load_for_stage, resolve_dtype
from training.sampler import ModalityLengthGroupedSampler
from training.stages import freeze_backbones, group_of

log = logging.getLogger(__name__)
PROJECTOR_FILE = "projector.safetensors"


def projector_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The trained projector weights under their plain Llava names (PEFT's wrapper names removed)."""
    state = {}
    for name, parameter in model.named_parameters():
        if "multi_modal_projector" in name and "original_module" not in name:
            plain = name.replace("base_model.model.", "").replace("modules_to_save.default.", "")
            state[plain] = parameter.detach().to("cpu", torch.float32).contiguous()
    return state


def enable_checkpointing(model: torch.nn.Module) -> None:
    """Activation (gradient) checkpointing, non-reentrant so frozen inputs still pass gradients through."""
    enable = getattr(model, "activation_checkpointing_enable", None)  # the transformers >= 5.2x name
    if enable is not None:
        enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def disable_kv_cache(model: torch.nn.Module) -> None:
    """No KV cache while training: Llava's own `use_cache` does not reach its language model's config."""
    model.config.use_cache = False
    model.config.get_text_config().use_cache = False


def parameter_groups(model: torch.nn.Module, stage: StageConfig) -> list[dict]:
    """Trainable parameters, with the projector in its own group when it has its own learning rate."""
    projector, rest = [], []
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            (projector if group_of(name) == "projector" else rest).append(parameter)
    if stage.projector_learning_rate is None:
        return [{"params": projector + rest}]
    groups = [{"params": projector, "lr": stage.projector_learning_rate}]
    return groups + ([{"params": rest}] if rest else [])


def _accumulation_steps(batch_size: int, per_device: int, processes: int) -> int:
    if batch_size % (per_device * processes):
        raise ValueError(
            f"batch_size {batch_size} is not a multiple of per_device_batch_size {per_device} x {processes} processes"
        )
    return batch_size // (per_device * processes)


def train(cfg: TrainConfig, stage_name: StageName, stop_after: int | None = None) -> Path:
    """Run one stage; returns its directory (`final/` holds the result). `stop_after` simulates a crash."""
    stage = cfg.stage(stage_name)
    if stage.data is None:
        raise ValueError(f"{stage_name}.data is not set: give the LLaVA json (e.g. {stage_name}.data=path.json)")
    out = cfg.stage_dir(stage_name)
    dtype = resolve_dtype(cfg.dtype)
    accumulation = _accumulation_steps(stage.batch_size, stage.per_device_batch_size, PartialState().num_processes)
    accelerator = Accelerator(
        gradient_accumulation_steps=accumulation,
        mixed_precision="bf16" if dtype == torch.bfloat16 and torch.cuda.is_available() else "no",
    )
    set_seed(cfg.seed)
    if cfg.cpu_threads:
        torch.set_num_threads(cfg.cpu_threads)
    if accelerator.is_main_process:
        dump_config(cfg, out / "config.yaml")

    model, processor = load_for_stage(cfg, stage)
    disable_kv_cache(model)
    if stage.method == "full" and stage.gradient_checkpointing:
        enable_checkpointing(model)
    if stage.method in ("lora", "qlora"):
        model = apply_lora(model, stage, stage.gradient_checkpointing)
        if stage.gradient_checkpointing and stage.method == "lora":
            enable_checkpointing(model)
    freeze_backbones(model, stage.train, stage.method)
    trainable = [p for p in model.parameters() if p.requires_grad]
    if stage.fp32_trainable:
        for parameter in trainable:
            parameter.data = parameter.data.float()
    if cfg.compile:
        compile_layers(model, cfg.compile_backend)

    dataset = LlavaJsonDataset(
        load_records(stage.data), cfg.image_root, processor, stage.template, cfg.model_max_length
    )
    if len(dataset) == 0:
        raise ValueError(f"{stage_name}.data {stage.data} holds no records")
    sampler = ModalityLengthGroupedSampler(
        dataset.modality_lengths(),
        stage.per_device_batch_size * accelerator.num_processes,
        seed=cfg.seed,
        group=cfg.group_by_length,
    )
    loader = DataLoader(
        dataset,
        batch_size=stage.per_device_batch_size,
        sampler=sampler,
        collate_fn=Collator(processor.tokenizer.pad_token_id),
        num_workers=cfg.num_workers,
        generator=torch.Generator().manual_seed(cfg.seed),  # keeps the global RNG untouched: resume stays exact
    )
    optimizer = torch.optim.AdamW(
        parameter_groups(model, stage), lr=stage.learning_rate, weight_decay=stage.weight_decay
    )
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    steps_per_epoch = math.ceil(len(loader) / accumulation)
    total_steps = stage.max_steps or max(1, math.ceil(stage.epochs * steps_per_epoch))
    # Stepped by hand on optimizer steps only (not prepared: accelerate would step it once per process).
    scheduler = get_cosine_schedule_with_warmup(optimizer, math.ceil(stage.warmup_ratio * total_steps), total_steps)

    progress = Progress()
    checkpoint = latest_checkpoint(out / "checkpoints") if cfg.resume else None
    if checkpoint is not None:
        progress = load_checkpoint(accelerator, checkpoint, model, optimizer, scheduler)
        log.info("resumed %s from %s at step %d", stage_name, checkpoint, progress.step)
    metrics = MetricsLog(out, resume_step=progress.step, enabled=accelerator.is_main_process)
    bar = tqdm(
        total=total_steps,
        initial=progress.step,
        desc=stage_name,
        disable=not (cfg.progress_bar and accelerator.is_main_process),
    )
    model.train()
    window_losses: list[torch.Tensor] = []
    window_tokens = window_samples = 0
    window_start = time.perf_counter()
    while progress.step < total_steps:
        batches = loader
        if progress.batches_in_epoch:
            batches = accelerator.skip_first_batches(loader, progress.batches_in_epoch)
        # accelerate's loaders re-set the sampler epoch from their own counter on each pass; align it first
        (batches.set_epoch if hasattr(batches, "set_epoch") else sampler.set_epoch)(progress.epoch)
        for batch in batches:
            with accelerator.accumulate(model):
                outputs = model(**batch)
                # A batch whose labels were all truncated away has a NaN mean loss; contribute zero instead.
                has_labels = bool((batch["labels"] != IGNORE_INDEX).any())
                loss = outputs.loss if has_labels else outputs.logits.sum() * 0.0
                accelerator.backward(loss)
                window_losses.append(loss.detach())
                window_tokens += int(batch["attention_mask"].sum())
                window_samples += batch["input_ids"].shape[0]
                if accelerator.sync_gradients:
                    grad_norm = accelerator.clip_grad_norm_(trainable, stage.max_grad_norm)
                    optimizer.step()
                    scheduler.step()
                    optimizer.zero_grad(set_to_none=True)
            progress.batches_in_epoch += 1
            if not accelerator.sync_gradients:
                continue
            progress.step += 1
            elapsed = time.perf_counter() - window_start
            step_loss = accelerator.reduce(torch.stack(window_losses).mean(), reduction="mean").item()
            if progress.step % cfg.log_every == 0 or progress.step == total_steps:
                metrics.log(
                    progress.step,
                    {
                        "loss": step_loss,
                        "lr": scheduler.get_last_lr()[-1],  # the LLM group when the projector has its own
                        "grad_norm": float(grad_norm) if grad_norm is not None else float("nan"),
                        "epoch": progress.epoch + progress.batches_in_epoch / max(1, len(loader)),
                        "samples_per_s": window_samples * accelerator.num_processes / elapsed,
                        "tokens_per_s": window_tokens * accelerator.num_processes / elapsed,
                    },
                )
            bar.update(1)
            bar.set_postfix(loss=f"{step_loss:.4f}")
            window_losses, window_tokens, window_samples = [], 0, 0
            window_start = time.perf_counter()
            if progress.step % cfg.save_every == 0:
                save_checkpoint(
                    accelerator, out / "checkpoints", model, optimizer, scheduler, progress, cfg.keep_checkpoints
                )
            if progress.step >= total_steps or progress.step == stop_after:
                break
        if progress.step == stop_after:
            bar.close()
            metrics.close()
            return out
        if progress.step < total_steps:
            progress.epoch += 1
            progress.batches_in_epoch = 0
    bar.close()
    metrics.close()
    accelerator.wait_for_everyone()
    _save_final(accelerator, model, processor, out / "final")
    if accelerator.is_main_process:
        plot_loss(metrics.path, out / "loss_curve.png")
    return out


def _save_final(accelerator: Accelerator, model, processor, final: Path) -> None:
    """Full model (or adapter + projector) + processor + the projector alone, loadable by transformers/PEFT."""
    unwrapped = accelerator.unwrap_model(model)
    state = accelerator.get_state_dict(model)
    if accelerator.is_main_process:
        final.mkdir(parents=True, exist_ok=True)
        unwrapped.config.get_text_config().use_cache = True  # undo `disable_kv_cache`: the result serves inference
        unwrapped.save_pretrained(final, state_dict=state, save_function=accelerator.save)
        processor.save_pretrained(final)
        save_file(projector_state(unwrapped), str(final / PROJECTOR_FILE))
