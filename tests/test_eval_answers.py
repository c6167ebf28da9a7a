"""Answers of the models under test: an OpenAI-compatible vision endpoint through the engine (images as base64
parts, counted as usage), LLaVA answer files, and the infer subprocess's failure message."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from schemas.generation import GenerateConfig
from tasks import store
from tasks.eval import answers, sets
from tests.sim import SimConfig, start_simulator
from tests.test_eval_sets import write_bench


@pytest.fixture
def bench(db_path: Path, sample_coco: Path, tmp_path: Path) -> Path:
    files = write_bench(tmp_path / "bench", sample_coco)
    sets.import_llava_bench(db_path, "s", image_root=sample_coco / "train2017", **files)
    return db_path


def test_openai_backend_sends_the_image_as_a_part_and_stores_answers_once(bench: Path) -> None:
    with start_simulator(SimConfig()) as sim:
        config = GenerateConfig(base_url=sim.base_url, concurrency=4, temperature=0.0, max_tokens=200)
        done = answers.openai_answers(bench, "s", model="gpt-4o", config=config, detail="low")
        served = list(sim.log)
        again = answers.openai_answers(bench, "s", model="gpt-4o", config=config, detail="low")
        assert len(sim.log) == len(served)
    assert (done.new_answers, done.questions, again.already_answered, again.new_answers) == (6, 6, 6, 0)
    stored = store.query("SELECT messages, kind FROM requests WHERE sample_type = 'eval:answer'", path=bench)
    assert len(stored) == 6 and {r["kind"] for r in stored} == {"eval/answer"}
    parts = json.loads(stored[0]["messages"])[0]["content"]
    assert parts[0]["type"] == "image_ref" and "base64" not in stored[0]["messages"]  # a reference, not the pixels
    assert parts[1] == {"type": "text", "text": json.loads(stored[0]["messages"])[0]["content"][1]["text"]}
    # the simulator decoded each image and counted it: gpt-4o, detail low = 85 tokens on top of the text
    assert all(r.status == 200 and r.prompt_tokens > 85 for r in served)
    rows = store.query("SELECT backend, checkpoint, text FROM eval_answers", path=bench)
    assert {(r["backend"], r["checkpoint"]) for r in rows} == {("openai", "gpt-4o")} and all(r["text"] for r in rows)


def test_answer_files_are_checked_line_by_line(bench: Path, tmp_path: Path) -> None:
    good = tmp_path / "a.jsonl"
    good.write_text(json.dumps({"question_id": 0, "text": "x", "model_id": "other"}) + "\n")
    assert answers.import_answers(bench, "s", good).model_id == "other"
    bad = tmp_path / "b.jsonl"
    bad.write_text(json.dumps({"question_id": 0, "text": "x"}) + "\n" + json.dumps({"question_id": 42, "text": "y"}))
    with pytest.raises(ValueError, match=r"b.jsonl:2: question_id 42 is not a question of eval set 's'"):
        answers.import_answers(bench, "s", bad, model_id="m")


def test_a_failing_infer_process_is_reported_with_its_last_lines() -> None:
    cmd = [sys.executable, "-c", "import sys; print('loading'); print('boom: no such checkpoint'); sys.exit(3)"]
    lines: list[str] = []
    with pytest.raises(answers.InferenceFailed, match=r"exited with code 3; its last lines:\nloading\nboom"):
        answers.run_streaming(cmd, on_line=lines.append)
    assert lines == ["loading", "boom: no such checkpoint"]
    with pytest.raises(answers.InferenceFailed, match=r"ran past 0\.5 s and was killed"):
        answers.run_streaming([sys.executable, "-c", "import time; time.sleep(30)"], timeout_s=0.5)


def test_infer_command_and_model_ids(tmp_path: Path) -> None:
    cmd = answers.infer_command(tmp_path / "ckpt", tmp_path / "q.jsonl", tmp_path, tmp_path / "a.jsonl",
                                model_id="m", batch_size=4, temperature=0.0)
    assert cmd[1:4] == ["-m", "training", "infer"]
    assert cmd[cmd.index("--batch-size") + 1] == "4" and cmd[cmd.index("--temperature") + 1] == "0.0"
    assert "--top-p" not in cmd and cmd[cmd.index("--model-id") + 1] == "m"
    assert answers.model_id_for(tmp_path / "runs" / "stage2" / "final") == "stage2/final"
    assert answers.parse_model_spec("tiny=runs/x") == ("tiny", "runs/x")
    assert answers.parse_model_spec("runs/x") == (None, "runs/x")
