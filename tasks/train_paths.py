"""Before training starts on a machine: can it see every path the run needs, and which device will it use?

On two machines (a CPU box that generates, a GPU box that trains) the export folder, the image root and the
checkpoint folder must be on storage both see. A path that exists only on the other machine, or a relative
path that resolves elsewhere here, would otherwise fail minutes later inside the training process, after its
imports and preflight. `missing_training_paths` answers in milliseconds, before anything loads; `probe_device`
asks torch in a short child process (the flow's own process stays free of torch, like the training launch).

No Prefect and no torch are imported here.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

STAGES_READ = ("stage1", "stage2")  # the stages whose data, images and base models are read


class TrainingPathsMissing(RuntimeError):
    """Some path the training run needs is missing or unreadable on this machine; the message names each."""


class NoGpuVisible(RuntimeError):
    """A GPU is required here and torch sees none."""


def machine() -> str:
    """`host:cwd`, so a message says on which machine (and from which folder) a path was looked up."""
    return f"{socket.gethostname()}:{Path.cwd()}"


def _key_values(overrides: Sequence[str]) -> list[str]:
    # the training CLI's KEY=VALUE overrides; other arguments (flags) do not change paths
    return [o for o in overrides if "=" in o and not o.startswith("-")]


def _looks_local(name: str) -> bool:
    """A base model given as a folder (absolute, ./ or ~), not a hub id like `org/model`."""
    return name.startswith(("/", ".", "~")) or Path(name).expanduser().exists()


def _unreadable_file(path: Path) -> str | None:
    if not path.exists():
        return "does not exist"
    if not path.is_file():
        return "is not a file"
    try:
        with path.open("rb") as handle:
            handle.read(1)
    except OSError as exc:
        return f"cannot be read ({exc.strerror or exc})"
    return None


def _unreadable_dir(path: Path) -> str | None:
    if not path.exists():
        return "does not exist"
    if not path.is_dir():
        return "is not a folder"
    try:
        next(os.scandir(path), None)
    except OSError as exc:
        return f"cannot be listed ({exc.strerror or exc})"
    return None


def _unwritable_dir(path: Path) -> str | None:
    """Create the output folder if needed and write a probe file into it."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-probe-"):
            pass
    except OSError as exc:
        return f"is not writable ({exc.strerror or exc})"
    return None


def missing_training_paths(
    config: str | Path,
    overrides: dict[str, Sequence[str]] | None = None,
    *,
    stages: Sequence[str] = STAGES_READ,
) -> list[str]:
    """Every path the training of `stages` needs that is missing or unreadable here, one line each.

    `overrides` maps a stage to its extra CLI arguments (`stage1_overrides`, ...): they can move paths.
    Checked: the config file; per stage, its data json, a held-out json (`eval_split` as a file), an explicit
    `init_from` checkpoint, the image root and local base-model folders; the output folder must be writable.
    An empty list means training can start. Relative paths resolve against this process's folder, as in
    the training process it launches.
    """
    from training.config import load_config  # pydantic + yaml only

    config = Path(config)
    if problem := _unreadable_file(config):
        return [f"training config {config.resolve()} {problem}"]
    overrides = overrides or {}
    problems: dict[str, str] = {}  # path -> line, so a path shared by both stages is named once
    for stage in stages:
        try:
            cfg = load_config(config, _key_values(overrides.get(stage, ())))
        except Exception as exc:  # a malformed config is the training process's to explain, in full
            problems[f"config:{stage}"] = f"training config {config.resolve()} cannot be read for {stage}: {exc}"
            continue
        stage_cfg = getattr(cfg, stage)
        files = {f"{stage}.data": stage_cfg.data}
        if isinstance(stage_cfg.eval_split, Path):
            files[f"{stage}.eval_split"] = stage_cfg.eval_split
        for what, path in files.items():
            if path is not None and (problem := _unreadable_file(Path(path))):
                problems.setdefault(str(Path(path).resolve()), f"{what} {Path(path).resolve()} {problem}")
        # stage 2 starts from stage 1's result by default: that one is written by this run, not checked
        if stage_cfg.init_from is not None and (problem := _unreadable_dir(stage_cfg.init_from)):
            problems.setdefault(str(stage_cfg.init_from.resolve()),
                                f"{stage}.init_from {stage_cfg.init_from.resolve()} {problem}")
        folders = {"image_root": cfg.image_root} if stage_cfg.data is not None else {}
        for what in ("vision_model", "llm"):
            name = getattr(cfg, what)
            if _looks_local(name):
                folders[what] = Path(name).expanduser()
        for what, path in folders.items():
            if problem := _unreadable_dir(path):
                problems.setdefault(str(path.resolve()), f"{what} {path.resolve()} {problem}")
        if problem := _unwritable_dir(cfg.output_dir):
            problems.setdefault(str(cfg.output_dir.resolve()), f"output_dir {cfg.output_dir.resolve()} {problem}")
    return list(problems.values())


def check_training_paths(config: str | Path, overrides: dict[str, Sequence[str]] | None = None) -> None:
    """Raise `TrainingPathsMissing` naming every missing path (see `missing_training_paths`)."""
    if problems := missing_training_paths(config, overrides):
        raise TrainingPathsMissing(
            f"training cannot start on {machine()}: " + "; ".join(problems)
            + " (on two machines, every path must be on storage both see, at the same absolute path)")


# ---------------------------------------------------------------- the device
_PROBE = """
import json, torch
info = {"torch": torch.__version__, "cuda_build": torch.version.cuda, "gpus": []}
if torch.cuda.is_available():
    for i in range(torch.cuda.device_count()):
        free, total = torch.cuda.mem_get_info(i)
        info["gpus"].append({"name": torch.cuda.get_device_name(i), "total": total, "free": free})
print(json.dumps(info))
"""


@dataclass(frozen=True)
class Device:
    """What torch sees on this machine (from `probe_device`)."""

    torch: str
    cuda_build: str | None
    gpus: tuple[dict[str, object], ...]
    error: str | None = None

    @property
    def has_gpu(self) -> bool:
        return bool(self.gpus)

    def describe(self) -> str:
        """One line: `device cuda: 2 GPU(s): 0 NVIDIA H200 (139.8 GiB, 139.2 free), ...` or why it is the CPU."""
        if self.error:
            return f"device cpu: torch could not be asked ({self.error})"
        if not self.gpus:
            why = "torch built without CUDA" if not self.cuda_build else "no GPU visible (check CUDA_VISIBLE_DEVICES)"
            return f"device cpu: {why}; torch {self.torch}"
        gib = 1024**3
        gpus = ", ".join(f"{i} {g['name']} ({int(g['total']) / gib:.1f} GiB, {int(g['free']) / gib:.1f} free)"
                         for i, g in enumerate(self.gpus))
        return f"device cuda: {len(self.gpus)} GPU(s): {gpus}; torch {self.torch}, CUDA {self.cuda_build}"


def probe_device(python: str = sys.executable, timeout_s: float = 120.0) -> Device:
    """Ask torch in a child process (the environment the training process gets) what it sees."""
    try:
        done = subprocess.run([python, "-c", _PROBE], capture_output=True, text=True, timeout=timeout_s)
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["no output"])[-1]
            return Device(torch="?", cuda_build=None, gpus=(), error=f"exit {done.returncode}: {last}")
        info = json.loads(done.stdout.strip().splitlines()[-1])
    except (OSError, subprocess.TimeoutExpired, ValueError, IndexError) as exc:
        return Device(torch="?", cuda_build=None, gpus=(), error=str(exc))
    return Device(torch=info["torch"], cuda_build=info["cuda_build"], gpus=tuple(info["gpus"]))


def require_device(device: Device, *, require_gpu: bool, allow_cpu: bool) -> None:
    """Raise `NoGpuVisible` when a GPU is required here, torch sees none and CPU training was not allowed."""
    if require_gpu and not allow_cpu and not device.has_gpu:
        raise NoGpuVisible(
            f"this training run needs a GPU and {machine()} has none: {device.describe()}. Run it on a worker of "
            "the GPU pool, or set the train parameter allow_cpu=true to train on the CPU (tiny models only)")
