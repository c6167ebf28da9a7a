"""Resumable checkpoints: trainable weights, optimizer, scheduler, position in the data, RNG state.

Only trainable weights are stored (a projector is megabytes, a frozen 7B LLM is not re-saved every N
steps). Resume restores all of it and skips the batches already seen, so the loss trajectory continues.
Under DeepSpeed the sharded state goes through `accelerator.save_state` instead (not exercised by the
tests here: DeepSpeed needs GPUs).
"""

from __future__ import annotations

import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType
from torch import nn

STATE_FILE = "trainer_state.pt"


@dataclass
class Progress:
    """Where training stands: optimizer steps done, epoch, micro-batches consumed in that epoch."""

    step: int = 0
    epoch: int = 0
    batches_in_epoch: int = 0


def save_checkpoint(
    accelerator: Accelerator, directory: Path, model: nn.Module, optimizer, scheduler, progress: Progress, keep: int
) -> Path:
    """Write `directory/step-N/` and drop all but the newest `keep` checkpoints. Call on every process."""
    path = directory / f"step-{progress.step:08d}"
    state: dict = {"scheduler": scheduler.state_dict(), "progress": asdict(progress)}
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        # ZeRO shards optimizer state (and weights under stage 3) across ranks: only accelerate can save it.
        accelerator.save_state(str(path / "accelerate"))
    else:
        unwrapped = accelerator.unwrap_model(model)
        state["trainable"] = {n: p.detach().cpu() for n, p in unwrapped.named_parameters() if p.requires_grad}
        state["optimizer"] = optimizer.state_dict()
        state["rng_cpu"] = torch.get_rng_state()
        state["rng_cuda"] = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
    if accelerator.is_main_process:
        path.mkdir(parents=True, exist_ok=True)
        torch.save(state, path / STATE_FILE)
        for old in sorted(directory.glob("step-*"))[:-keep] if keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return path


def latest_checkpoint(directory: Path) -> Path | None:
    """The newest complete checkpoint under `directory`, if any."""
    done = [p for p in sorted(directory.glob("step-*")) if (p / STATE_FILE).exists()]
    return done[-1] if done else None


def load_checkpoint(accelerator: Accelerator, path: Path, model: nn.Module, optimizer, scheduler) -> Progress:
    """Restore a checkpoint written by `save_checkpoint` into live objects; returns the progress."""
    state = torch.load(path / STATE_FILE, map_location="cpu", weights_only=True)
    scheduler.load_state_dict(state["scheduler"])
    if "trainable" not in state:
        accelerator.load_state(str(path / "accelerate"))
        return Progress(**state["progress"])
    parameters = dict(accelerator.unwrap_model(model).named_parameters())
    missing = set(state["trainable"]) - set(parameters)
    if missing:
        raise ValueError(f"checkpoint {path} has weights the model lacks: {sorted(missing)[:3]}; config changed?")
    with torch.no_grad():
        for name, value in state["trainable"].items():
            parameters[name].copy_(value.to(parameters[name].device))
    optimizer.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["rng_cpu"])
    if state["rng_cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["rng_cuda"])
    return Progress(**state["progress"])
