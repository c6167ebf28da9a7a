"""`training/` runs as its own process and must never pull in Prefect."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import REPO


def test_training_package_does_not_import_prefect():
    modules = (
        "training.loop, training.merge, training.tiny, training.cli, training.data, training.lora, training.vision"
    )
    code = f"import sys, {modules}; print('prefect' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "False"


def test_cli_help_lists_the_three_commands():
    result = subprocess.run(
        [sys.executable, "-m", "training", "--help"], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "{stage1,stage2,merge}" in result.stdout
