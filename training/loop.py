"""The training loop for both stages (the stage config says what differs): `build_run` loads everything,
`train_step` advances one micro-batch, `save` writes a checkpoint or the result, and `train` loops over them."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate import Accelerator, PartialState
from accelerate.utils import set_seed
from safetensors.torch import save_file
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import LlavaProcessor, get_cosine_schedule_with_warmup

from training.checkpoint import Progress, latest_checkpoint, load_checkpoint, save_checkpoint
from training.compile import compile_layers
from training.config import StageConfig, StageName, TrainConfig, dump_config
from training.data import IGNORE_INDEX, Collator, LlavaJsonDataset, load_records
from training.lora import apply_lora
from training.metrics import MetricsLog, plot_loss
from training.model import load_for_stage, resolve_dtype
from training.sampler import ModalityLengthGroupedSampler
from training.serving import warn_if_linear
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


@dataclass
class Window:
    """What the micro-batches since the last optimizer step add up to (one step's metrics)."""

    losses: list[torch.Tensor] = field(default_factory=list)
    tokens: int = 0
    samples: int = 0
    start: float = field(default_factory=time.perf_counter)


@dataclass
class Run:
    """Everything one stage trains with, built once by `build_run` and advanced by `train_step`."""

    cfg: TrainConfig
    stage_name: StageName
    stage: StageConfig
    out: Path
    accelerator: Accelerator
    model: torch.nn.Module
    processor: LlavaProcessor
    trainable: list[torch.nn.Parameter]
    sampler: ModalityLengthGroupedSampler
    loader: DataLoader
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    total_steps: int
    progress: Progress
    metrics: MetricsLog
    window: Window = field(default_factory=Window)


def prepare_model(cfg: TrainConfig, stage: StageConfig) -> tuple[torch.nn.Module, LlavaProcessor]:
    """The stage's starting model with LoRA, checkpointing, freezing, fp32 trainables and compile applied."""
    model, processor = load_for_stage(cfg, stage)
    disable_kv_cache(model)
    if stage.method == "full" and stage.gradient_checkpointing:
        enable_checkpointing(model)
    if stage.method in ("lora", "qlora"):
        model = apply_lora(model, stage, stage.gradient_checkpointing)
        if stage.gradient_checkpointing and stage.method == "lora":
            enable_checkpointing(model)
    freeze_backbones(model, stage.train, stage.method)
    if stage.fp32_trainable:
        for parameter in model.parameters():
            if parameter.requires_grad:
                parameter.data = parameter.data.float()
    if cfg.compile:
        compile_layers(model, cfg.compile_backend)
    return model, processor


def build_loader(
    cfg: TrainConfig, stage_name: StageName, processor: LlavaProcessor, processes: int
) -> tuple[ModalityLengthGroupedSampler, DataLoader]:
    """The stage's dataset behind a length-grouped sampler, batched per device."""
    stage = cfg.stage(stage_name)
    dataset = LlavaJsonDataset(
        load_records(stage.data), cfg.image_root, processor, stage.template, cfg.model_max_length
    )
    if len(dataset) == 0:
        raise ValueError(f"{stage_name}.data {stage.data} holds no records")
    sampler = ModalityLengthGroupedSampler(
        dataset.modality_lengths(),
        stage.per_device_batch_size * processes,
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
    return sampler, loader


def build_run(cfg: TrainConfig, stage_name: StageName) -> Run:
    """Model, data, optimizer and schedule of one stage, restored from its newest checkpoint when resuming."""
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

    model, processor = prepare_model(cfg, stage)
    trainable = [p for p in model.parameters() if p.requires_grad]
    sampler, loader = build_loader(cfg, stage_name, processor, accelerator.num_processes)
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
    return Run(
        cfg=cfg,
        stage_name=stage_name,
        stage=stage,
        out=out,
        accelerator=accelerator,
        model=model,
        processor=processor,
        trainable=trainable,
        sampler=sampler,
        loader=loader,
        optimizer=optimizer,
        scheduler=scheduler,
        total_steps=total_steps,
        progress=progress,
        metrics=metrics,
    )


def epoch_batches(run: Run) -> Iterable[dict[str, torch.Tensor]]:
    """The current epoch's micro-batches, without those a resumed checkpoint already consumed."""
    batches = run.loader
    if run.progress.batches_in_epoch:
        batches = run.accelerator.skip_first_batches(run.loader, run.progress.batches_in_epoch)
    # accelerate's loaders re-set the sampler epoch from their own counter on each pass; align it first
    (batches.set_epoch if hasattr(batches, "set_epoch") else run.sampler.set_epoch)(run.progress.epoch)
    return batches


def train_step(run: Run, batch: dict[str, torch.Tensor]) -> dict[str, float] | None:
    """Forward and backward one micro-batch; on the one that completes an optimizer step, also step the
    optimizer and schedule and return the step's metrics (None while gradients still accumulate)."""
    accelerator, progress, window = run.accelerator, run.progress, run.window
    with accelerator.accumulate(run.model):
        outputs = run.model(**batch)
        # A batch whose labels were all truncated away has a NaN mean loss; contribute zero instead.
        has_labels = bool((batch["labels"] != IGNORE_INDEX).any())
        loss = outputs.loss if has_labels else outputs.logits.sum() * 0.0
        accelerator.backward(loss)
        window.losses.append(loss.detach())
        window.tokens += int(batch["attention_mask"].sum())
        window.samples += batch["input_ids"].shape[0]
        if accelerator.sync_gradients:
            grad_norm = accelerator.clip_grad_norm_(run.trainable, run.stage.max_grad_norm)
            run.optimizer.step()
            run.scheduler.step()
            run.optimizer.zero_grad(set_to_none=True)
    progress.batches_in_epoch += 1
    if not accelerator.sync_gradients:
        return None
    progress.step += 1
    elapsed = time.perf_counter() - window.start
    step = {
        "loss": accelerator.reduce(torch.stack(window.losses).mean(), reduction="mean").item(),
        "lr": run.scheduler.get_last_lr()[-1],  # the LLM group when the projector has its own
        "grad_norm": float(grad_norm) if grad_norm is not None else float("nan"),
        "epoch": progress.epoch + progress.batches_in_epoch / max(1, len(run.loader)),
        "samples_per_s": window.samples * accelerator.num_processes / elapsed,
        "tokens_per_s": window.tokens * accelerator.num_processes / elapsed,
    }
    run.window = Window()
    return step


def save(run: Run, final: bool) -> None:
    """A resumable checkpoint (`checkpoints/step-N/`), or the stage's result (`final/` and the loss curve)."""
    if not final:
        save_checkpoint(
            run.accelerator,
            run.out / "checkpoints",
            run.model,
            run.optimizer,
            run.scheduler,
            run.progress,
            run.cfg.keep_checkpoints,
        )
        return
    run.accelerator.wait_for_everyone()
    _save_final(run.accelerator, run.model, run.processor, run.out / "final")
    if run.accelerator.is_main_process:
        plot_loss(run.metrics.path, run.out / "loss_curve.png")


def train(cfg: TrainConfig, stage_name: StageName) -> Path:
    """Run one stage; returns its directory (`final/` holds the result)."""
    run = build_run(cfg, stage_name)
    progress = run.progress
    show = cfg.progress_bar and run.accelerator.is_main_process
    bar = tqdm(total=run.total_steps, initial=progress.step, desc=stage_name, disable=not show)
    run.model.train()
    while progress.step < run.total_steps:
        for batch in epoch_batches(run):
            step = train_step(run, batch)
            if step is None:  # still accumulating gradients
                continue
            if progress.step % cfg.log_every == 0 or progress.step == run.total_steps:
                run.metrics.log(progress.step, step)
            bar.update(1)
            bar.set_postfix(loss=f"{step['loss']:.4f}")
            if progress.step % cfg.save_every == 0:
                save(run, final=False)
            if progress.step >= run.total_steps:
                break
        if progress.step < run.total_steps:
            progress.epoch += 1
            progress.batches_in_epoch = 0
    bar.close()
    run.metrics.close()
    save(run, final=True)
    return run.out


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
        warn_if_linear(unwrapped.config, final)
