"""The training loop for both stages (the stage config says what differs): `build_run` loads everything,
`train_step` advances one micro-batch, `save` writes a checkpoint or the result, and `train` loops over them."""

from __future__ import annotations

import json
import logging
import math
import os
import random
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate import Accelerator, PartialState
from accelerate.utils import broadcast_object_list, gather_object, set_seed
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
from training.model import load_for_stage, processor_for_stage, resolve_dtype
from training.preflight import PreflightFailed, load_json_list, preflight_stage
from training.sampler import ModalityLengthGroupedSampler
from training.serving import warn_if_linear
from training.stages import freeze_backbones, group_of
from training.templates import record_template

log = logging.getLogger(__name__)
PROJECTOR_FILE = "projector.safetensors"
RANK_TRACE_DIR = "rank_trace"


class TooManyBadSamples(RuntimeError):
    """More records failed at training time than `data.max_bad_fraction` allows."""


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
    failed: list[str] = field(default_factory=list)
    start: float = field(default_factory=time.perf_counter)


@dataclass
class StageData:
    """A stage's records after preflight: what trains, what is held out, and how many were dropped."""

    train: list[dict]
    eval: list[dict]
    skipped: int = 0


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
    eval_loader: DataLoader | None = None
    skipped: int = 0
    bad_ids: set[str] = field(default_factory=set)
    train_records: int = 0
    image_only: list[torch.nn.Parameter] = field(default_factory=list)
    started: float = field(default_factory=time.perf_counter)
    start_step: int = 0
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
    cfg: TrainConfig,
    stage_name: StageName,
    processor: LlavaProcessor,
    records: list[dict] | None = None,
) -> tuple[ModalityLengthGroupedSampler, DataLoader]:
    """The stage's dataset behind a length-grouped sampler, batched per device (`records`: its data, after
    preflight; read from `stageN.data` when not given)."""
    stage = cfg.stage(stage_name)
    records = load_records(stage.data) if records is None else records
    dataset = LlavaJsonDataset(
        records, cfg.image_root, processor, stage.template, cfg.model_max_length, replace_bad=True
    )
    if len(dataset) == 0:
        raise ValueError(f"{stage_name}.data {stage.data} holds no records")
    # Grouped by the global batch (as LLaVA: per device x processes x accumulation), so one optimizer step
    # holds one modality and the order is the same for any number of processes: a 2-process run and a
    # 1-process run with the same global batch train on the same samples at every step.
    sampler = ModalityLengthGroupedSampler(
        dataset.modality_lengths(),
        stage.batch_size,
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


def _check_and_filter(cfg: TrainConfig, stage_name: StageName, files: dict[str, Path]) -> dict:
    """On the main process: preflight each file; returns {"bad": {name: indices}, "skipped", "error"}."""
    stage = cfg.stage(stage_name)
    out = cfg.stage_dir(stage_name)
    outcome: dict = {"bad": {}, "skipped": 0, "error": None}
    try:
        processor = processor_for_stage(cfg, stage)
        for name, path in files.items():
            report_dir = out / ("preflight" if name == "train" else f"preflight-{name}")
            report = preflight_stage(cfg, stage_name, processor, load_json_list(path), path, report_dir)
            if report.ok:
                continue
            if cfg.data.on_bad_sample == "fail":
                outcome["error"] = report.failure_message(report_dir)
                return outcome
            outcome["bad"][name] = report.bad_indices
            if name == "train":
                outcome["skipped"] = len(report.bad_indices)
            log.warning("data.on_bad_sample=skip: dropping %d bad record(s) of %s (listed in %s)",
                        len(report.bad_indices), path, report_dir / "bad_records.jsonl")
    except Exception as exc:  # every rank must learn of it, not wait for a broadcast forever
        outcome["error"] = f"preflight of {stage_name} failed: {type(exc).__name__}: {exc}"
    return outcome


def load_stage_data(cfg: TrainConfig, stage_name: StageName, accelerator: Accelerator) -> StageData:
    """The stage's records, preflighted (on the main process; the verdict is broadcast) and split into train
    and held-out parts. Raises `PreflightFailed` listing every bad record under `data.on_bad_sample: fail`."""
    stage = cfg.stage(stage_name)
    files = {"train": Path(stage.data)}
    if isinstance(stage.eval_split, Path):
        files["eval"] = stage.eval_split
    if cfg.data.preflight:
        outcome = _check_and_filter(cfg, stage_name, files) if accelerator.is_main_process else None
        outcome = broadcast_object_list([outcome])[0] if accelerator.num_processes > 1 else outcome
        if outcome["error"]:
            raise PreflightFailed(outcome["error"])
        loaded = {}
        for name, path in files.items():
            drop = set(outcome["bad"].get(name, []))
            loaded[name] = [r for i, r in enumerate(load_json_list(path)) if i not in drop]
        skipped = outcome["skipped"]
    else:
        loaded, skipped = {name: load_records(path) for name, path in files.items()}, 0
    train_records = loaded["train"]
    held_out = loaded.get("eval", [])
    if isinstance(stage.eval_split, float):
        # Held out by seed, so every rank and every resume sets aside the same records.
        order = list(range(len(train_records)))
        random.Random(cfg.seed).shuffle(order)
        held = set(order[: max(1, round(stage.eval_split * len(order)))])
        held_out = [r for i, r in enumerate(train_records) if i in held]
        train_records = [r for i, r in enumerate(train_records) if i not in held]
    return StageData(train_records, held_out, skipped)


def build_eval_loader(cfg: TrainConfig, stage_name: StageName, processor: LlavaProcessor, records: list[dict],
                      rank: int, processes: int) -> DataLoader | None:
    """This process's share of the held-out records (every `processes`-th), in order.

    Shares are padded to equal length with records from the start (at most one per process, counted twice), so
    every process runs the same number of forwards: ZeRO-3 gathers weights collectively in each forward.
    """
    if not records:
        return None
    stage = cfg.stage(stage_name)
    share = records[rank::processes]
    share += records[: math.ceil(len(records) / processes) - len(share)]
    dataset = LlavaJsonDataset(
        share, cfg.image_root, processor, stage.template, cfg.model_max_length, replace_bad=True
    )
    return DataLoader(dataset, batch_size=stage.per_device_batch_size,
                      collate_fn=Collator(processor.tokenizer.pad_token_id))


def build_run(cfg: TrainConfig, stage_name: StageName) -> Run:
    """Model, data, optimizer and schedule of one stage, restored from its newest checkpoint when resuming."""
    stage = cfg.stage(stage_name)
    if stage.data is None:
        raise ValueError(f"{stage_name}.data is not set: give the LLaVA json (e.g. {stage_name}.data=path.json)")
    out = cfg.stage_dir(stage_name)
    dtype = resolve_dtype(cfg.dtype)
    # Without CUDA, `cpu=True` is what makes accelerate join a launcher's processes over gloo (MULTI_CPU);
    # the default would leave each launched process training alone as rank 0.
    cpu = not torch.cuda.is_available()
    accumulation = _accumulation_steps(
        stage.batch_size, stage.per_device_batch_size, PartialState(cpu=cpu).num_processes
    )
    accelerator = Accelerator(
        cpu=cpu,
        gradient_accumulation_steps=accumulation,
        mixed_precision="bf16" if dtype == torch.bfloat16 and torch.cuda.is_available() else "no",
    )
    set_seed(cfg.seed)
    if cfg.cpu_threads:
        torch.set_num_threads(cfg.cpu_threads)
    if accelerator.is_main_process:
        dump_config(cfg, out / "config.yaml")
    data = load_stage_data(cfg, stage_name, accelerator)  # before any weights load: bad data fails in seconds

    model, processor = prepare_model(cfg, stage)
    trainable = [p for p in model.parameters() if p.requires_grad]
    # Trainable weights that only images reach: a text-only batch must still touch them, or DDP waits forever.
    image_only = [p for n, p in model.named_parameters() if p.requires_grad and group_of(n) in ("projector", "vision")]
    sampler, loader = build_loader(cfg, stage_name, processor, data.train)
    eval_loader = build_eval_loader(
        cfg, stage_name, processor, data.eval, accelerator.process_index, accelerator.num_processes
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
        eval_loader=eval_loader,
        skipped=data.skipped,
        train_records=len(data.train),
        image_only=image_only,
        start_step=progress.step,
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
    batch = dict(batch)
    sample_ids, failed = batch.pop("sample_ids", []), batch.pop("failed_ids", [])
    window.failed.extend(failed)
    if run.cfg.rank_trace:
        _trace(run, {"epoch": progress.epoch, "batch": progress.batches_in_epoch, "ids": list(sample_ids)})
    with accelerator.accumulate(run.model):
        outputs = run.model(**batch)
        # A batch whose labels were all truncated away has a NaN mean loss; contribute zero instead.
        has_labels = bool((batch["labels"] != IGNORE_INDEX).any())
        loss = outputs.loss if has_labels else outputs.logits.sum() * 0.0
        if "pixel_values" not in batch and run.image_only:
            loss = loss + sum(p.sum() for p in run.image_only) * 0.0
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
    _count_bad_samples(run)
    elapsed = time.perf_counter() - window.start
    per_step = (time.perf_counter() - run.started) / max(1, progress.step - run.start_step)
    step = {
        "loss": accelerator.reduce(torch.stack(window.losses).mean(), reduction="mean").item(),
        "lr": run.scheduler.get_last_lr()[-1],  # the LLM group when the projector has its own
        "grad_norm": float(grad_norm) if grad_norm is not None else float("nan"),
        "epoch": progress.epoch + progress.batches_in_epoch / max(1, len(run.loader)),
        "samples_per_s": window.samples * accelerator.num_processes / elapsed,
        "tokens_per_s": window.tokens * accelerator.num_processes / elapsed,
        "eta_s": per_step * (run.total_steps - progress.step),
        "total_steps": run.total_steps,  # with `step`, the progress a watcher (the train flow) can show
    }
    if run.bad_ids:
        step["bad_samples"] = len(run.bad_ids)
    if run.skipped and progress.step == run.start_step + 1:
        step["preflight_skipped"] = run.skipped
    run.window = Window()
    return step


def _count_bad_samples(run: Run) -> None:
    """Log the samples replaced since the last step (all ranks') and stop past `data.max_bad_fraction`."""
    failed = run.window.failed
    if run.accelerator.num_processes > 1:
        failed = gather_object([failed])  # one list per rank; every rank gets all of them
        failed = [sample_id for part in failed for sample_id in part]
    new = sorted(set(failed) - run.bad_ids)
    if not new:
        return
    run.bad_ids.update(new)
    allowed = run.cfg.data.max_bad_fraction * run.train_records
    if run.accelerator.is_main_process:
        log.warning("step %d: sample(s) %s failed and were replaced (%d bad so far, %d allowed)",
                    run.progress.step, ", ".join(new), len(run.bad_ids), int(allowed))
    if len(run.bad_ids) > allowed:
        raise TooManyBadSamples(
            f"{len(run.bad_ids)} of {run.train_records} samples failed at training time "
            f"({', '.join(sorted(run.bad_ids))}), more than data.max_bad_fraction={run.cfg.data.max_bad_fraction}; "
            "run `python -m training check` to list what is wrong with the data"
        )


def _trace(run: Run, record: dict) -> None:
    """Append to this process's trace (`rank_trace: true`): what it trained on, for the distributed tests."""
    directory = run.out / RANK_TRACE_DIR
    directory.mkdir(parents=True, exist_ok=True)
    record = {"rank": run.accelerator.process_index, "pid": os.getpid(), **record}
    with (directory / f"rank-{run.accelerator.process_index}.jsonl").open("a") as handle:
        handle.write(json.dumps(record) + "\n")


def evaluate(run: Run) -> float:
    """Token-weighted loss on the held-out records, summed over all processes (each holds its own share)."""
    accelerator = run.accelerator
    total = torch.zeros((), dtype=torch.float64, device=accelerator.device)
    tokens = torch.zeros((), dtype=torch.float64, device=accelerator.device)
    run.model.eval()
    with torch.no_grad():
        for batch in run.eval_loader or []:
            batch = {k: v.to(accelerator.device) for k, v in batch.items() if isinstance(v, torch.Tensor)}
            count = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())  # the model shifts labels by one
            loss = run.model(**batch).loss  # run even when it counts for nothing: ranks forward in lockstep
            if count:
                total += loss.double() * count
                tokens += count
    run.model.train()
    total, tokens = accelerator.reduce(total, reduction="sum"), accelerator.reduce(tokens, reduction="sum")
    return float(total / tokens) if tokens > 0 else float("nan")


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
        if run.accelerator.is_main_process:  # a curve to look at (or publish) while training runs
            plot_loss(run.metrics.path, run.out / "loss_curve.png")
        return
    run.accelerator.wait_for_everyone()
    _save_final(run.accelerator, run.model, run.processor, run.out / "final")
    if run.accelerator.is_main_process:
        record_template(run.out / "final", run.stage.template)  # inference renders prompts the same way
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
            every = run.stage.eval_every
            if run.eval_loader is not None and (
                progress.step == run.total_steps or (every and progress.step % every == 0)
            ):
                eval_loss = evaluate(run)
                run.metrics.log(progress.step, {"eval_loss": eval_loss})
                if run.accelerator.is_main_process:
                    log.info("step %d: held-out loss %.4f", progress.step, eval_loss)
                    plot_loss(run.metrics.path, run.out / "loss_curve.png")
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
    if cfg.rank_trace:
        _save_rank_weights(run)
    return run.out


def _save_rank_weights(run: Run) -> None:
    """This process's trainable weights (`rank_trace: true`): identical on every rank when gradients sync."""
    unwrapped = run.accelerator.unwrap_model(run.model)
    state = {n: p.detach().cpu().contiguous() for n, p in unwrapped.named_parameters() if p.requires_grad}
    save_file(state, str(run.out / RANK_TRACE_DIR / f"rank-{run.accelerator.process_index}.safetensors"))


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
