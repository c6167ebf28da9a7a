"""Launch a training stage as its own process and stream its log lines (no Prefect, no torch here).

Training runs out of process (DESIGN.md): the flow's process stays light, a crash or OOM in
training cannot take the orchestrator down, and the same command line runs on a GPU box or
under `accelerate launch`.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path

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
    tail: deque[str] = deque(maxlen=40)
    # Unbuffered child output, so lines reach the Prefect log as they happen.
    child_env = {**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        cmd,
        cwd=cwd,
        env=child_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
        errors="replace",
    )
    # The watchdog kills the child; reading its output then ends and we report the timeout.
    timed_out = threading.Event()

    def kill_on_timeout() -> None:
        timed_out.set()
        proc.kill()

    watchdog = threading.Timer(timeout_s, kill_on_timeout) if timeout_s else None
    if watchdog:
        watchdog.start()
    try:
        assert proc.stdout is not None
        for raw in proc.stdout:
            # tqdm redraws with \r; keep only the latest state of such a line.
            line = raw.rstrip("\n").rsplit("\r", 1)[-1]
            if line.strip():
                tail.append(line)
                on_line(line)
        returncode = proc.wait()
    except BaseException:
        proc.kill()  # an interrupted flow must not leave a training process behind
        proc.wait()
        raise
    finally:
        if watchdog:
            watchdog.cancel()
    if timed_out.is_set():
        raise TrainingFailed(_failure_message(cmd, f"ran past {timeout_s} s and was killed", tail))
    if returncode != 0:
        raise TrainingFailed(_failure_message(cmd, f"exited with code {returncode}", tail))
    return list(tail)


def _failure_message(cmd: Sequence[str], what: str, tail: Sequence[str]) -> str:
    last = "\n".join(tail) or "(no output)"
    return f"training command {' '.join(cmd)!r} {what}; its last lines:\n{last}"
