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


def assert_held_out(db: Path, export: Path) -> None:
    """The eval set's image is in no training file of the export (it was held out before export)."""
    import json

    held_out = {r["image"] for r in store.query(
        "SELECT i.split || '/' || i.file_name AS image FROM eval_images e JOIN images i USING (image_id)", path=db)}
    exported = {r["image"] for name in ("llava_instruct.json", "llava_pretrain.json")
                for r in json.loads((export / name).read_text())}
    assert len(held_out) == 1 and exported and not held_out & exported


def test_demo_runs_the_whole_dag_and_prints_working_queries(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    done = vistune("demo", "--out", str(out), cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    text = done.stdout
    assert "Neither OPENAI_API_KEY nor OPENAI_BASE_URL is set" in text  # says plainly it uses the simulator

    db = out / "vistune.duckdb"
    counts = store.table_counts(db)
    sample_requests = store.query("SELECT count(*) AS n FROM requests WHERE NOT starts_with(sample_type, 'eval:')",
                                  path=db)[0]["n"]  # eval questions, references and reviews are requests too
    assert counts["images"] == 4 and sample_requests == 12 and counts["dataset"] > 0
    # the tiny model's relative score, computed from stored reviews of its answers to the held-out questions
    score = re.search(r"tiny model's relative score: ([\d.]+)% overall", text)
    assert score, text[-2000:]
    assert counts["eval_answers"] == 3 and counts["eval_reviews"] == 3
    from tasks.eval.report import report

    assert float(score.group(1)) == report(db, "demo")["models"]["tiny"]["all"]
    assert_held_out(db, out / "export")
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


@pytest.mark.usefixtures("prefect_harness")
def test_demo_with_prefect_runs_the_pipeline_flow_with_the_same_steps(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from flows.cli import get_app
    from tasks.eval.report import report

    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "VISTUNE_DB"):
        monkeypatch.delenv(name, raising=False)
    out = tmp_path / "demo"
    done = CliRunner().invoke(get_app(), ["demo", "--out", str(out), "--prefect"], env={"COLUMNS": "200"})
    assert done.exit_code == 0, done.output[-3000:]
    db = out / "vistune.duckdb"
    assert_held_out(db, out / "export")  # the pipeline flow's eval-set subflow ran before its curate subflow
    score = re.search(r"tiny model's relative score: ([\d.]+)% overall", done.output)
    assert score, done.output[-2000:]
    assert float(score.group(1)) == report(db, "demo")["models"]["tiny"]["all"]
    assert store.table_counts(db)["eval_reviews"] == 3
