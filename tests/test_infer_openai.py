"""`vistune infer --backend openai`: an OpenAI-compatible vision endpoint answers a LLaVA questions file through
the engine (images as parts, every call journaled), and a rerun after a lost answers file pays for nothing twice."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from flows.cli import get_app
from tasks import store
from tests.sim import SimConfig, start_simulator
from tests.test_inference_support import question_images, write_questions


def _infer(questions: Path, image_root: Path, out: Path, *extra: str) -> str:
    result = CliRunner().invoke(get_app(), ["infer", "--backend", "openai", "--model", "gpt-4o",
                                            "--questions", str(questions), "--image-root", str(image_root),
                                            "--out", str(out), "--batch-size", "2", *extra])
    assert result.exit_code == 0, result.output
    return result.output


def test_an_endpoint_answers_a_questions_file_and_a_rerun_pays_nothing_twice(
    coco_images: Path, db_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    image_root = coco_images / "train2017"
    questions = write_questions(tmp_path / "questions.jsonl", question_images(coco_images, 2), count=3)
    out = tmp_path / "answers.jsonl"
    with start_simulator(SimConfig()) as sim:
        monkeypatch.setenv("OPENAI_BASE_URL", sim.base_url)
        monkeypatch.setenv("VISTUNE_DB", str(db_path))
        printed = _infer(questions, image_root, out)
        answers = [json.loads(line) for line in out.read_text().splitlines()]
        assert [a["question_id"] for a in answers] == [0, 1, 2] and all(a["text"] for a in answers)
        assert {a["model_id"] for a in answers} == {"gpt-4o"} and answers[0]["metadata"]["backend"] == "openai"
        assert "3 new answer(s)" in printed
        calls = [r for r in sim.log if r.path.endswith("/chat/completions")]
        assert len(calls) == 3 and all(r.status == 200 for r in calls)
        out.unlink()  # the answers file is lost: the store still has every paid answer
        _infer(questions, image_root, out)
        assert len([r for r in sim.log if r.path.endswith("/chat/completions")]) == 3
        assert [json.loads(line)["text"] for line in out.read_text().splitlines()] == [a["text"] for a in answers]
    stored = store.query("SELECT messages FROM requests WHERE sample_type = 'eval:answer'", path=db_path)
    assert len(stored) == 3
    first = json.loads(stored[0]["messages"])[0]["content"]
    assert first[0]["type"] == "image_ref" and first[1]["type"] == "text"  # the image travels as a content part


def test_an_endpoint_that_gives_no_answer_is_one_line_naming_the_question(
    coco_images: Path, db_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    questions = write_questions(tmp_path / "questions.jsonl", question_images(coco_images, 1), count=1)
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")  # nothing listens on the discard port
    monkeypatch.setenv("VISTUNE_DB", str(db_path))
    result = CliRunner().invoke(get_app(), ["infer", "--backend", "openai", "--model", "gpt-4o",
                                            "--questions", str(questions), "--image-root",
                                            str(coco_images / "train2017"), "--out", str(tmp_path / "a.jsonl")])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and "error:" in result.output
    assert not (tmp_path / "a.jsonl").exists() or not (tmp_path / "a.jsonl").read_text()
