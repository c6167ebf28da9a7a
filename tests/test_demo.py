"""`vistune demo` end to end, as a user runs it: the bundled sample, the simulator, tiny CPU training."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tasks import store

REPO = Path(__file__).resolve().parents[1]
VISTUNE = shutil.which("vistune", path=str(Path(sys.executable).parent)) or "vistune"

pytestmark = pytest.mark.timeout(400)


def vistune(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "VISTUNE_DB")}
    env["COLUMNS"] = "200"  # keep rich from wrapping the printed commands
    return subprocess.run([VISTUNE, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=360)


def test_demo_runs_the_whole_dag_and_prints_working_queries(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    done = vistune("demo", "--out", str(out), cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    text = done.stdout
    assert "Neither OPENAI_API_KEY nor OPENAI_BASE_URL is set" in text  # says plainly it uses the simulator

    db = out / "vistune.duckdb"
    counts = store.table_counts(db)
    assert counts["images"] == 4 and counts["requests"] == 12 and counts["dataset"] > 0
    assert (out / "export" / "llava_instruct.json").exists() and (out / "export" / "report.md").exists()
    checkpoint = out / "train" / "runs" / "stage2" / "final"
    assert f"checkpoint: {checkpoint}" in text
    for label in ("database:", "dataset:", "report:"):
        assert label in text

    queries = re.findall(r'vistune sql --db \S+ "(.+)"', text)
    assert len(queries) == 3
    for sql in queries:
        answer = vistune("sql", "--db", str(db), sql, "--format", "json", cwd=tmp_path)
        assert answer.returncode == 0, answer.stderr
        assert answer.stdout.strip() not in ("", "[]"), sql

    from transformers import LlavaForConditionalGeneration

    model = LlavaForConditionalGeneration.from_pretrained(checkpoint)
    assert model.config.model_type == "llava"

    again = vistune("demo", "--out", str(out), "--no-train", cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "nothing new to send" in again.stdout
    assert store.table_counts(db)["responses"] == counts["responses"]
