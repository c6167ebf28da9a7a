"""`launch_training` streams a child's lines and turns its failure into an exception."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from tasks.train_launch import TrainingFailed, launch_training, training_command

# Stands in for `python -m training`: the launcher runs this script with the same arguments.
FAKE_TRAINING = """
import sys, time
args = sys.argv[1:]
print("args", " ".join(args), flush=True)
for step in range(3):
    print(f"step {step} loss {1.0 / (step + 1):.3f}", flush=True)
print("progress 10%\\rprogress 100%", flush=True)
if "--fail" in args:
    print("CUDA out of memory", file=sys.stderr, flush=True)
    sys.exit(3)
if "--hang" in args:
    time.sleep(60)
"""


def fake_launcher() -> list[str]:
    return [sys.executable, "-c", FAKE_TRAINING]


def test_command_line_is_python_dash_m_training() -> None:
    assert training_command("stage2", Path("c.yaml"), ["--lr", "1e-4"])[1:] == [
        "-m", "training", "stage2", "--config", "c.yaml", "--lr", "1e-4"]
    with pytest.raises(ValueError, match="unknown training stage 'stage3'"):
        training_command("stage3", "c.yaml")


def test_lines_are_streamed_as_they_come() -> None:
    lines: list[str] = []
    tail = launch_training("stage1", "cfg.yaml", ["--x", "1"], on_line=lines.append, launcher=fake_launcher())
    assert lines[0] == "args training stage1 --config cfg.yaml --x 1"
    assert lines[1:4] == ["step 0 loss 1.000", "step 1 loss 0.500", "step 2 loss 0.333"]
    assert lines[-1] == "progress 100%"  # a carriage-return redraw keeps its final state
    assert tail == lines


def test_failure_raises_with_the_last_lines() -> None:
    with pytest.raises(TrainingFailed, match="exited with code 3") as info:
        launch_training("stage2", "cfg.yaml", ["--fail"], on_line=lambda _: None, launcher=fake_launcher())
    assert "CUDA out of memory" in str(info.value)
    assert "training stage2 --config cfg.yaml --fail" in str(info.value)


def test_timeout_kills_the_child() -> None:
    start = time.monotonic()
    with pytest.raises(TrainingFailed, match=r"ran past 1\.5 s"):
        launch_training("stage1", "cfg.yaml", ["--hang"], on_line=lambda _: None, launcher=fake_launcher(),
                        timeout_s=1.5)
    assert time.monotonic() - start < 30
