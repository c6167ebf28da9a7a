"""Eval sets: built from held-out images through the engine, imported from LLaVA-Bench files; resumable; eval
requests never become sample slots or samples; bad files are named with their line and problem."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from schemas.generation import GenerateConfig
from tasks import store
from tasks.curation.validate import validate_pending
from tasks.eval import sets
from tasks.ingest.coco import ingest
from tests.sim import SimConfig, answered_twice, start_simulator


@pytest.fixture
def ingested(db_path: Path, sample_coco: Path) -> Path:
    ingest(sample_coco, "train2017", db_path)
    return db_path


def config(base_url: str, fmt: str = "structured", **fields) -> GenerateConfig:
    return GenerateConfig(model="gpt-4o-mini", base_url=base_url, format=fmt, concurrency=4, **fields)


@pytest.mark.parametrize("fmt", ["structured", "llava-text"])
def test_build_writes_questions_and_references_once(ingested: Path, fmt: str) -> None:
    with start_simulator(SimConfig()) as sim:
        built = sets.build_set(ingested, "s", split="train2017", per_category=2, config=config(sim.base_url, fmt))
        served = len(sim.log)
        again = sets.build_set(ingested, "s", split="train2017", per_category=2, config=config(sim.base_url, fmt))
        assert len(sim.log) == served  # nothing stored is asked for again
        assert not answered_twice(sim.log)
    assert (built.images, built.questions, built.references) == (2, 6, 6)
    assert (again.new_questions, again.new_references) == (0, 0)
    questions = store.query("SELECT question_id, category, text FROM eval_questions ORDER BY 1", path=ingested)
    assert [q["question_id"] for q in questions] == list(range(6))
    assert [q["category"] for q in questions] == ["conv", "detail", "complex"] * 2
    assert all(q["text"].strip() and "\n" not in q["text"] for q in questions)
    refs = store.query("SELECT text, source, model FROM eval_references", path=ingested)
    assert all(r["source"] == "generated" and r["model"] == "gpt-4o-mini" and r["text"] for r in refs)
    # the same pick every time, and another name with other parameters is another set
    picked = [r["image_id"] for r in store.query("SELECT image_id FROM eval_images ORDER BY position", path=ingested)]
    assert picked == sets.pick_images(ingested, "train2017", 2)
    with pytest.raises(ValueError, match="exists with other parameters"):
        sets.build_set(ingested, "s", split="train2017", per_category=3, config=config("http://127.0.0.1:9"))


def test_eval_requests_are_no_sample_slots_and_are_never_validated(ingested: Path) -> None:
    with start_simulator(SimConfig()) as sim:
        sets.build_set(ingested, "s", split="train2017", per_category=1, config=config(sim.base_url))
    kinds = store.query("SELECT DISTINCT sample_type FROM requests ORDER BY 1", path=ingested)
    assert [k["sample_type"] for k in kinds] == ["eval:question", "eval:reference"]
    assert store.query("SELECT count(*) AS n FROM slot_status", path=ingested)[0]["n"] == 0
    checked = validate_pending(ingested)
    assert (checked.checked, checked.samples, checked.rejected) == (0, 0, 0)
    assert store.table_counts(ingested)["rejects"] == 0


def test_too_few_images_is_a_clear_error(ingested: Path) -> None:
    with pytest.raises(ValueError, match="split 'val2017' has 0 ingested image"):
        sets.build_set(ingested, "s", split="val2017", per_category=2, config=config("http://127.0.0.1:9"))


# ---------------------------------------------------------------- LLaVA-Bench import
def write_bench(folder: Path, coco: Path, *, answers: bool = True) -> dict[str, Path]:
    """LLaVA-Bench-shaped files over two images of the bundled sample (written for this test)."""
    images = sorted(p.name for p in (coco / "train2017").iterdir())[:2]
    folder.mkdir(parents=True, exist_ok=True)
    context = [{"id": i, "image": name, "captions": [f"A test picture number {i} with a dog on a beach."],
                "instances": [{"category": "dog", "bbox": [0.1, 0.2, 0.5, 0.9]}]} for i, name in enumerate(images)]
    questions = [{"question_id": qid, "image": images[qid // 3], "text": f"question {qid}?",
                  "category": ["conv", "detail", "complex"][qid % 3]} for qid in range(6)]
    files = {"questions": folder / "questions.jsonl", "context": folder / "context.jsonl"}
    files["questions"].write_text("\n".join(map(json.dumps, questions)) + "\n")
    files["context"].write_text("\n".join(map(json.dumps, context)) + "\n")
    if answers:
        files["answers"] = folder / "answers.jsonl"
        files["answers"].write_text("\n".join(json.dumps({"question_id": q, "text": f"reference {q}"})
                                              for q in range(6)) + "\n")
    return files


def test_import_with_reference_answers_calls_no_llm(db_path: Path, sample_coco: Path, tmp_path: Path) -> None:
    files = write_bench(tmp_path / "bench", sample_coco)
    done = sets.import_llava_bench(db_path, "bench", image_root=sample_coco / "train2017",
                                   config=config("http://127.0.0.1:9"), **files)
    assert (done.images, done.questions, done.references, done.new_references) == (2, 6, 6, 6)
    refs = store.query("SELECT question_id, text, source FROM eval_references ORDER BY 1", path=db_path)
    assert refs[4] == {"question_id": 4, "text": "reference 4", "source": "imported"}
    context = store.query("SELECT captions, instances FROM eval_images ORDER BY position", path=db_path)[0]
    assert json.loads(context["instances"]) == [{"category": "dog", "bbox": [0.1, 0.2, 0.5, 0.9]}]
    assert store.table_counts(db_path)["requests"] == 0


def test_import_without_answers_generates_the_references(db_path: Path, sample_coco: Path, tmp_path: Path) -> None:
    files = write_bench(tmp_path / "bench", sample_coco, answers=False)
    with start_simulator(SimConfig()) as sim:
        done = sets.import_llava_bench(db_path, "bench", image_root=sample_coco / "train2017",
                                       config=config(sim.base_url), **files)
        assert len(sim.log) == 6
    assert done.references == 6
    assert {r["source"] for r in store.query("SELECT source FROM eval_references", path=db_path)} == {"generated"}
    reference_request = store.query("SELECT messages FROM requests WHERE sample_type = 'eval:reference' LIMIT 1",
                                    path=db_path)[0]
    assert "dog: [0.1, 0.2, 0.5, 0.9]" in reference_request["messages"]  # the context the LLM reads


BAD_LINES = [
    ("questions", '{"question_id": 0, "image": "x.jpg", "text": "q"', "questions.jsonl:2: not JSON"),
    ("questions", '{"question_id": 7, "image": "IMG", "text": "q", "category": "chat"}',
     "questions.jsonl:2: category: Input should be 'conv', 'detail' or 'complex'"),
    ("questions", '{"question_id": 0, "image": "IMG", "text": "again", "category": "conv"}',
     "questions.jsonl:2: question_id 0 repeats line 1"),
    ("questions", '{"question_id": 9, "image": "other.jpg", "text": "q", "category": "conv"}',
     "questions.jsonl:2: image 'other.jpg' has no line in"),
    ("context", '{"image": "z.jpg", "captions": ["c"], "instances": [{"category": "dog", "bbox": [0, 0, 2, 1]}]}',
     "context.jsonl:3: instances.0.bbox: Value error, bbox [0.0, 0.0, 2.0, 1.0] is not normalised"),
    ("context", '{"image": "z.jpg", "captions": []}', "context.jsonl:3: captions: List should have at least 1 item"),
    ("answers", '{"question_id": 99, "text": "r"}', "answers.jsonl:7: question_id 99 is not in"),
    ("answers", '{"question_id": 1}', "answers.jsonl:7: text: Field required"),
]


@pytest.mark.parametrize(("which", "line", "message"), BAD_LINES)
def test_bad_llava_bench_lines_are_named(db_path: Path, sample_coco: Path, tmp_path: Path, which: str, line: str,
                                         message: str) -> None:
    files = write_bench(tmp_path / "bench", sample_coco)
    first_image = json.loads(files["questions"].read_text().splitlines()[0])["image"]
    text = files[which].read_text().splitlines()
    text.insert(1 if which == "questions" else len(text), line.replace("IMG", first_image))
    files[which].write_text("\n".join(text) + "\n")
    with pytest.raises(sets.EvalFileError) as raised:
        sets.import_llava_bench(db_path, "bench", image_root=sample_coco / "train2017", **files)
    assert message in str(raised.value)
    assert not db_path.exists()  # every file is checked before anything is written


def test_missing_image_file_and_cli_error_are_one_line(db_path: Path, sample_coco: Path, tmp_path: Path) -> None:
    from flows.cli import get_app

    files = write_bench(tmp_path / "bench", sample_coco)
    done = CliRunner().invoke(get_app(), [
        "eval", "import-llava-bench", "--name", "b", "--questions", str(files["questions"]), "--context",
        str(files["context"]), "--image-root", str(tmp_path), "--answers", str(files["answers"]), "--db",
        str(db_path)])
    assert done.exit_code == 2
    assert "questions.jsonl:1: image file" in done.output and "not found (--image-root)" in done.output
    assert "Traceback" not in done.output


def test_cli_build_prints_the_set_as_json(ingested: Path) -> None:
    from flows.cli import get_app

    with start_simulator(SimConfig()) as sim:
        done = CliRunner().invoke(get_app(), ["eval", "build", "--name", "c", "--split", "train2017",
                                              "--per-category", "1", "--model", "gpt-4o-mini", "--base-url",
                                              sim.base_url, "--db", str(ingested), "--json"],
                                  env={"OPENAI_API_KEY": "sk-test"})
    assert done.exit_code == 0, done.output
    printed = json.loads(done.stdout)
    assert (printed["images"], printed["questions"], printed["references"]) == (1, 3, 3)
    bad = CliRunner().invoke(get_app(), ["eval", "build", "--name", "c", "--split", "train2017", "--per-category",
                                         "2", "--db", str(ingested)])
    assert bad.exit_code == 2 and "exists with other parameters" in bad.output


def test_image_ids_come_from_coco_file_names() -> None:
    assert sets.image_id_of("COCO_val2014_000000441147.jpg") == 441147
    assert sets.image_id_of("val2017/000000000139.jpg") == 139
    assert sets.image_id_of("photo.jpg") < 0  # not a COCO name: never an ingested image's id
    assert sets.image_id_of("photo.jpg") == sets.image_id_of("photo.jpg")
