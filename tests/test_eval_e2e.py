"""A tiny checkpoint end to end: build an eval set, answer it with `python -m training infer` (a subprocess),
judge with the simulator, report. On coco-mini's val2017 images (skipped where coco-mini is absent) and on the
bundled sample (always). A kill during inference, then a rerun, keeps every stored answer and redoes none."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from schemas.generation import GenerateConfig
from tasks import store
from tasks.eval import answers, judge, report, sets
from tasks.ingest.coco import ingest
from tests.fakes import wait_for
from tests.sim import SimConfig, start_simulator

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random tiny Llava (CLIP tower, two-layer Llama) saved with its processor, as training saves one."""
    import torch

    from training.config import load_config
    from training.model import build_base_model
    from training.tiny import build_tiny_base_models, write_tiny_config

    out = tmp_path_factory.mktemp("tiny")
    vision, llm = build_tiny_base_models(out / "base", texts=["a dog on a beach", "a plate of food on a table"])
    torch.manual_seed(0)
    model, processor = build_base_model(load_config(write_tiny_config(out / "tiny.yaml", vision, llm)))
    model.save_pretrained(out / "final")
    processor.save_pretrained(out / "final")
    return out / "final"


def evaluate_end_to_end(db: Path, coco: Path, split: str, checkpoint: Path) -> dict:
    ingest(coco, split, db)
    with start_simulator(SimConfig()) as sim:
        writer = GenerateConfig(model="gpt-4o-mini", base_url=sim.base_url, concurrency=4)
        built = sets.build_set(db, "e2e", split=split, per_category=2, config=writer)
        assert (built.questions, built.references) == (6, 6)
        lines: list[str] = []
        answered = answers.local_answers(db, "e2e", checkpoint, model_id="tiny", max_new_tokens=12,
                                         on_line=lines.append)
        assert (answered.new_answers, answered.failed) == (6, 0), "\n".join(lines[-20:])
        judged = judge.judge(db, "e2e", config=GenerateConfig(model="judge-llm", base_url=sim.base_url))
        assert (judged.new_reviews, judged.rejects) == (6, [])
        again = answers.local_answers(db, "e2e", checkpoint, model_id="tiny", max_new_tokens=12)
        assert (again.already_answered, again.new_answers) == (6, 0)  # no subprocess, nothing asked again
    rows = store.query("SELECT question_id, text, backend, checkpoint FROM eval_answers ORDER BY 1", path=db)
    assert [r["question_id"] for r in rows] == list(range(6))
    assert {r["backend"] for r in rows} == {"transformers"} and rows[0]["checkpoint"] == str(checkpoint.resolve())
    return report.report(db, "e2e")["models"]["tiny"]


def check_scores(scores: dict) -> None:
    for category in ("conv", "detail", "complex", "all"):
        assert scores[category] is not None and scores[category] >= 0
        low, high = scores["ci95"][category]
        assert low <= scores[category] <= high
    assert scores["n_reviews"] == 6
    # the reference is written from the captions, the random model's text is not: the grounded judge prefers it
    assert scores["mean_scores"]["all"]["reference"] > scores["mean_scores"]["all"]["candidate"]


def test_tiny_checkpoint_end_to_end_on_coco_mini(db_path: Path, coco_mini: Path, tiny_checkpoint: Path) -> None:
    check_scores(evaluate_end_to_end(db_path, coco_mini, "val2017", tiny_checkpoint))


def test_tiny_checkpoint_end_to_end_on_the_bundled_sample(db_path: Path, sample_coco: Path,
                                                           tiny_checkpoint: Path) -> None:
    check_scores(evaluate_end_to_end(db_path, sample_coco, "train2017", tiny_checkpoint))


def test_a_kill_during_inference_then_a_rerun_redoes_no_stored_answer(db_path: Path, sample_coco: Path,
                                                                       tiny_checkpoint: Path, tmp_path: Path) -> None:
    ingest(sample_coco, "train2017", db_path)
    with start_simulator(SimConfig()) as sim:
        sets.build_set(db_path, "k", split="train2017", per_category=4,
                       config=GenerateConfig(model="gpt-4o-mini", base_url=sim.base_url))
    work = tmp_path / "work"
    script = ("import sys; from tasks.eval.answers import local_answers; "
              f"local_answers({str(db_path)!r}, 'k', {str(tiny_checkpoint)!r}, model_id='tiny', batch_size=1, "
              f"max_new_tokens=64, work_dir={str(work)!r})")
    child = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, start_new_session=True,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ})
    out = work / "answers_0.jsonl"

    def answered() -> int:
        return len(out.read_text().splitlines()) if out.exists() else 0

    try:
        wait_for(lambda: answered() >= 2 or child.poll() is not None, 300, "two answers written")
        assert child.poll() is None, "inference ended before the kill"
    finally:
        os.killpg(child.pid, signal.SIGKILL)  # the orchestrator and its infer child, as a crash would
        child.wait()
    before = {json.loads(line)["question_id"]: json.loads(line) for line in out.read_text().splitlines()
              if line.strip().endswith("}")}
    assert 2 <= len(before) < 12
    lines: list[str] = []
    done = answers.local_answers(db_path, "k", tiny_checkpoint, model_id="tiny", batch_size=4, max_new_tokens=64,
                                 work_dir=work, on_line=lines.append)
    assert done.failed == 0 and store.table_counts(db_path)["eval_answers"] == 12
    stored = {r["question_id"]: r for r in store.query(
        "SELECT question_id, text, answer_id FROM eval_answers WHERE model_id = 'tiny'", path=db_path)}
    for qid, line in before.items():  # written before the kill: kept as it was, not answered again
        assert (stored[qid]["text"], stored[qid]["answer_id"]) == (line["text"], line["answer_id"])
    after = [json.loads(line)["question_id"] for line in out.read_text().splitlines() if line.strip()]
    assert sorted(after) == list(range(12))  # each question answered once in the file
