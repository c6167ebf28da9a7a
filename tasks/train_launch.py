"""Launch a training stage as its own process and stream its log lines (no Prefect, no torch here).

Training runs out of process (DESIGN.md): the flow's process stays light, a crash or OOM in
training cannot take the orchestrator down, and the same command line runs on a GPU box or
under `accelerate launch`.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from tasks.child_process import stream_process

STAGES = ("stage1", "stage2", "merge")


class TrainingFailed(RuntimeError):
    """The training process exited non-zero; the message carries the command and its last lines."""


def training_command(
    stage: str,
    config: str | Path,
    overrides: Sequence[str] = (),
    *,
    launcher: Sequence[str] | None = None,
) -> list[str]:
    """`python -m training STAGE --config FILE [overrides]`, or the same under a launcher.

    `launcher` replaces `python`, e.g. `["accelerate", "launch", "--num_processes", "8", "-m"]`.
    """
    if stage not in STAGES:
        raise ValueError(f"unknown training stage {stage!r}: expected one of {', '.join(STAGES)}")
    prefix = list(launcher) if launcher else [sys.executable, "-m"]
    return [*prefix, "training", stage, "--config", str(config), *overrides]


def launch_training(
    stage: str,
    config: str | Path,
    overrides: Sequence[str] = (),
    *,
    on_line: Callable[[str], None] = print,
    launcher: Sequence[str] | None = None,
    cwd: str | Path | None = None,
    env: dict[str, str] | None = None,
    timeout_s: float | None = None,
) -> list[str]:
    """Run one stage, calling `on_line` for every line it prints (stdout and stderr merged).

    Returns the last lines of its output; raises `TrainingFailed` (with those lines) when the
    process exits non-zero or runs past `timeout_s`.
    """
    cmd = training_command(stage, config, overrides, launcher=launcher)
    return stream_process(cmd, on_line=on_line, failure=TrainingFailed, label="training command ", cwd=cwd, env=env,
                          timeout_s=timeout_s)
