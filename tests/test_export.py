"""Export: LLaVA json that a strict reader accepts, per-type files, stage-1 pairs, parquet, determinism."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from schemas.samples import ComplexReasoningOutput, ConversationOutput, QuestionAnswer
from tasks.curation.dedup import dedup
from tasks.curation.export import export, export_files, instructions
from tasks.curation.validate import validate_pending
from tasks.prompting.formats import render
from tests.curation_rows import add_images, add_response

DESCRIPTION = ("A red square fills the frame on a plain background. The edges are sharp and the color is even, "
               "with no texture or shading, and nothing else appears anywhere in the picture, which gives it the "
               "look of a simple test pattern used to check a screen.")


def conversation(i: int) -> ConversationOutput:
    return ConversationOutput(rounds=[
        QuestionAnswer(question=f"What color is square number {i}?", answer="The square is a deep shade of red."),
        QuestionAnswer(question="Is there anything else in the picture?", answer="No, the square is alone."),
        QuestionAnswer(question="What could it be used for?", answer="It could be a test pattern for a display."),
    ])


def reasoning(i: int) -> ComplexReasoningOutput:
    return ComplexReasoningOutput(
        question=f"Why might someone take picture {i} of a plain red square?",
        answer=("Someone might photograph a plain red square to test how a camera or a screen reproduces a single, "
                "saturated color, since any tint or noise would be easy to see against the even surface."),
    )


def read_llava_strict(path: Path, image_root: Path) -> list[dict]:
    """A reader with LLaVA's expectations, written independently of `schemas.llava`."""
    records = json.loads(path.read_text())
    assert isinstance(records, list)
    for record in records:
        assert set(record) == {"id", "image", "conversations"}, record
        turns = record["conversations"]
        assert len(turns) >= 2 and len(turns) % 2 == 0, record["id"]
        for index, turn in enumerate(turns):
            assert set(turn) == {"from", "value"}
            assert turn["from"] == ("human" if index % 2 == 0 else "gpt"), (record["id"], index)
            assert isinstance(turn["value"], str) and turn["value"].strip()
        assert sum(turn["value"].count("<image>") for turn in turns) == 1, record["id"]
        first = turns[0]["value"]
        assert first.startswith("<image>\n") or first.endswith("\n<image>"), first
        assert (image_root / record["image"]).is_file(), record["image"]
    return records


@pytest.fixture
def exported_db(db_path: Path, tmp_path: Path) -> tuple[Path, Path]:
    root = tmp_path / "coco"
    add_images(db_path, root, [1, 2, 3], captions=3)
    for i in (1, 2, 3):
        add_response(db_path, image_id=i, sample_type="conversation", content=render(conversation(i), "llava-text"))
        add_response(db_path, image_id=i, sample_type="complex_reasoning",
                     content=render(reasoning(i), "structured"), output_format="structured")
        add_response(db_path, image_id=i, sample_type="detail_description", content=DESCRIPTION)
    # an exact duplicate (another response with the same content) that dedup removes before export
    add_response(db_path, image_id=1, sample_type="detail_description", content=DESCRIPTION, attempt=2)
    validate_pending(db_path)
    assert dedup(db_path).exact_duplicates == 1
    return db_path, root


def test_export_is_valid_llava(exported_db: tuple[Path, Path], tmp_path: Path) -> None:
    db, root = exported_db
    result = export(db, tmp_path / "out", root, seed=0)
    out = tmp_path / "out"
    assert result.missing_images == []
    assert sorted(Path(p).name for p in result.paths) == sorted(
        f"{stem}{suffix}" for stem in export_files() for suffix in (".json", ".parquet"))

    everything = read_llava_strict(out / "llava_instruct.json", root)
    assert len(everything) == 9 and len({r["id"] for r in everything}) == 9
    assert [r["id"] for r in everything] == sorted(r["id"] for r in everything)
    assert {r["image"] for r in everything} == {f"train2017/{i:012d}.jpg" for i in (1, 2, 3)}
    per_type = {t: read_llava_strict(out / f"llava_instruct_{t}.json", root)
                for t in ("conversation", "detail_description", "complex_reasoning")}
    assert sorted(r["id"] for records in per_type.values() for r in records) == sorted(r["id"] for r in everything)

    conv = per_type["conversation"][0]
    assert len(conv["conversations"]) == 6
    assert conv["conversations"][0]["value"].replace("<image>", "").strip().startswith("What color is square")
    assert conv["conversations"][5]["value"] == "It could be a test pattern for a display."
    for record in per_type["detail_description"]:
        instruction = record["conversations"][0]["value"].replace("<image>", "").strip()
        assert instruction in instructions("detail_description")
        assert record["conversations"][1]["value"] == DESCRIPTION
    assert per_type["complex_reasoning"][0]["conversations"][1]["value"].startswith("Someone might photograph")

    pretrain = read_llava_strict(out / "llava_pretrain.json", root)
    assert len(pretrain) == 3
    for record in pretrain:
        assert len(record["conversations"]) == 2
        assert record["conversations"][0]["value"].replace("<image>", "").strip() in instructions("brief_caption")
        image_id = int(record["id"])
        assert record["conversations"][1]["value"] in {
            f"A small red square number {image_id}, caption {k}." for k in range(3)}


def test_same_db_and_seed_give_identical_bytes(exported_db: tuple[Path, Path], tmp_path: Path) -> None:
    db, root = exported_db
    first = export(db, tmp_path / "a", root, seed=7)
    second = export(db, tmp_path / "b", root, seed=7)
    other = export(db, tmp_path / "c", root, seed=8)
    for path_a, path_b in zip(first.paths, second.paths, strict=True):
        assert Path(path_a).read_bytes() == Path(path_b).read_bytes(), path_a
    instruct = "llava_instruct.json"
    assert (tmp_path / "a" / instruct).read_bytes() != (tmp_path / "c" / instruct).read_bytes()
    assert other.counts == first.counts


def test_parquet_loads_with_datasets(exported_db: tuple[Path, Path], tmp_path: Path) -> None:
    from datasets import load_dataset

    db, root = exported_db
    export(db, tmp_path / "out", root)
    for stem in ("llava_instruct", "llava_pretrain"):
        loaded = load_dataset("parquet", data_files=str(tmp_path / "out" / f"{stem}.parquet"), split="train",
                              cache_dir=str(tmp_path / "hf-cache"))
        from_json = json.loads((tmp_path / "out" / f"{stem}.json").read_text())
        assert loaded.to_list() == from_json


def test_missing_images_are_reported(db_path: Path, tmp_path: Path) -> None:
    root = tmp_path / "coco"
    add_images(db_path, root, [5], make_files=False)
    result = export(db_path, tmp_path / "out", root)
    assert result.missing_images == ["train2017/000000000005.jpg"]
    assert result.counts["llava_instruct"] == 0 and result.counts["llava_pretrain"] == 1


def test_export_cli(exported_db: tuple[Path, Path], tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from flows.cli import get_app

    db, root = exported_db
    result = CliRunner().invoke(get_app(), ["export", "--out", str(tmp_path / "cli"), "--db", str(db)])
    assert result.exit_code == 0, result.output
    assert "llava_instruct" in result.output
    read_llava_strict(tmp_path / "cli" / "llava_instruct.json", root)  # image root defaults to the COCO root


# ------------------------------------------------------------------ one bad record never fails the export
def _bad_caption_and_sample(db: Path) -> None:
    """An ingested-before-the-fix caption with `<image>`, and a stored sample with `<image>` in its answer."""
    from tasks.store import write

    with write(db) as con:
        con.execute("UPDATE captions SET caption = 'A red <image> square.' WHERE image_id = 2")
        con.execute("""UPDATE samples SET data = '{"description": "A red square <image> on a plain background."}'
                       WHERE sample_type = 'detail_description' AND image_id = 3""")


def test_bad_records_are_skipped_counted_and_the_rest_written(
        exported_db: tuple[Path, Path], tmp_path: Path) -> None:
    db, root = exported_db
    _bad_caption_and_sample(db)
    result = export(db, tmp_path / "out", root)
    assert sorted((s.stem, s.record_id) for s in result.skipped) == sorted([
        ("llava_pretrain", "000000000002"),
        ("llava_instruct", next(s.record_id for s in result.skipped if s.stem == "llava_instruct"))])
    assert all("<image>" in s.reason for s in result.skipped), result.skipped
    assert result.counts["llava_instruct"] == 8 and result.counts["llava_pretrain"] == 2
    assert len(read_llava_strict(tmp_path / "out" / "llava_instruct.json", root)) == 8
    assert len(read_llava_strict(tmp_path / "out" / "llava_pretrain.json", root)) == 2
    assert result.as_dict()["skipped_count"] == 2 and "skipped=2" in repr(result)


def test_sample_without_image_row_is_skipped(db_path: Path, tmp_path: Path) -> None:
    from tests.curation_rows import add_samples

    root = tmp_path / "coco"
    add_images(db_path, root, [1])
    add_samples(db_path, [("s-orphan", 99, "detail_description", DESCRIPTION)], data={"description": DESCRIPTION})
    result = export(db_path, tmp_path / "out", root)
    assert [(s.record_id, "images" in s.reason) for s in result.skipped] == [("s-orphan", True)]
    assert result.counts["llava_pretrain"] == 1


@pytest.mark.parametrize("command", ["export", "curate"])
def test_export_and_curate_cli_survive_a_bad_record(
        exported_db: tuple[Path, Path], tmp_path: Path, command: str) -> None:
    from typer.testing import CliRunner

    from flows.cli import get_app

    db, root = exported_db
    _bad_caption_and_sample(db)
    out = tmp_path / command
    result = CliRunner().invoke(get_app(), [command, "--out", str(out), "--db", str(db)])
    assert result.exit_code == 0, result.output
    assert len(read_llava_strict(out / "llava_instruct.json", root)) == 8
    assert len(read_llava_strict(out / "llava_pretrain.json", root)) == 2


# ------------------------------------------- an image path that leaves the image root (issue 13, item 4)
@pytest.mark.parametrize("file_name", ["../../../../etc/passwd", "/etc/passwd", "a/../../../outside.jpg"])
def test_an_image_path_leaving_the_root_is_skipped_counted_and_reported(
        exported_db: tuple[Path, Path], tmp_path: Path, file_name: str) -> None:
    from tasks.store import write

    db, root = exported_db
    with write(db) as con:  # a database ingested before ingest refused such paths (or edited since)
        con.execute("UPDATE images SET file_name = ? WHERE image_id = 2", [file_name])
    result = export(db, tmp_path / "out", root)
    assert result.bad_paths == 4  # image 2's three samples and its caption pair
    assert {s.stem for s in result.skipped} == {"llava_instruct", "llava_pretrain"}
    assert all(s.reason.startswith("bad_path: image path") for s in result.skipped), result.skipped
    assert "000000000002" in [s.record_id for s in result.skipped]
    assert result.as_dict()["bad_path_count"] == 4
    assert result.counts["llava_instruct"] == 6 and result.counts["llava_pretrain"] == 2
    for stem in ("llava_instruct", "llava_pretrain"):
        records = read_llava_strict(tmp_path / "out" / f"{stem}.json", root)
        assert all(".." not in r["image"] and not r["image"].startswith("/") for r in records)
    assert not any("etc" in m or ".." in m for m in result.missing_images)


def test_missing_images_are_all_counted_and_the_first_named() -> None:
    from tasks.curation.export import MISSING_KEPT, MissingImages

    missing = MissingImages()
    paths = [f"train2017/{i:012d}.jpg" for i in range(MISSING_KEPT * 3, 0, -1)]
    for path in paths + paths[:50]:  # an image of several records is one missing image
        missing.add(path)
    assert missing.count() == len(paths)
    assert missing.first == sorted(paths)[:MISSING_KEPT]
    assert MissingImages().count() == 0 and MissingImages().first == []
