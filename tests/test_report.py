"""The dataset report: tables from the store, markdown and plots in the export folder; `vistune curate`."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from flows.cli import get_app
from schemas.samples import SAMPLE_TYPES, ConversationOutput, QuestionAnswer
from tasks import store
from tasks.curation.dedup import dedup
from tasks.curation.report import build_report
from tasks.curation.validate import validate_pending
from tasks.prompting.formats import render
from tests.curation_rows import add_images, add_response


def conversation(rounds: int, tag: str) -> str:
    return render(ConversationOutput(rounds=[
        QuestionAnswer(question=f"What is object {tag} number {k}?", answer=f"It is a red square, piece {k} of {tag}.")
        for k in range(rounds)
    ]), "llava-text")


def fill(db: Path, root: Path) -> None:
    add_images(db, root, [1, 2])
    add_response(db, image_id=1, sample_type="conversation", content=conversation(2, "a"), cost_usd=0.25)
    add_response(db, image_id=2, sample_type="conversation", content=conversation(3, "b"), cost_usd=0.25)
    add_response(db, image_id=2, sample_type="conversation", content=conversation(3, "b"), cost_usd=0.25, attempt=2)
    add_response(db, image_id=1, sample_type="detail_description", content="Sorry, I cannot describe this image.",
                 cost_usd=0.25)


def test_report_tables_markdown_and_plots(db_path: Path, tmp_path: Path) -> None:
    fill(db_path, tmp_path / "coco")
    validate_pending(db_path)
    dedup(db_path)
    report = build_report(db_path, tmp_path / "out")

    funnel = report.tables["funnel"][0]
    assert (funnel["responses"], funnel["valid_samples"], funnel["duplicates"], funnel["dataset"]) == (4, 3, 1, 2)
    mix = {r["sample_type"]: r for r in report.tables["type_mix"]}
    assert mix["conversation"]["samples"] == 2 and mix["conversation"]["share"] == 1.0
    assert mix["complex_reasoning"]["llava_158k"] == 77_000
    assert report.tables["rounds_per_conversation"] == [{"rounds": 2, "conversations": 1},
                                                        {"rounds": 3, "conversations": 1}]
    lengths = {r["sample_type"]: r for r in report.tables["answer_lengths"]}
    assert lengths["conversation"]["answers"] == 5 and lengths["detail_description"]["answers"] == 0
    reasons = {r["code"]: r["responses"] for r in report.tables["reject_reasons"]}
    assert reasons == {"refusal": 1, "too_short": 1}
    assert report.tables["cost"][0]["cost_usd"] == 1.0
    assert report.tables["cost"][0]["usd_per_kept_sample"] == 0.5
    assert report.tables["cost"][0]["rejected_usd"] == 0.25  # the refused description was paid for
    assert "of which $0.2500 on answers that were rejected" in report.markdown
    assert report.tables["dedup"] == [{"method": "exact", "scope": "image", "removed": 1, "rate": round(1 / 3, 4),
                                       "mean_similarity": 1.0}]

    assert report.path == tmp_path / "out" / "report.md"
    assert report.path.read_text() == report.markdown
    assert "58K / 23K / 77K" in report.markdown and "refusal" in report.markdown
    for plot in report.plots:
        assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"]({plot.name})" in report.markdown


def test_eval_requests_are_counted_apart_from_generation(db_path: Path, tmp_path: Path) -> None:
    fill(db_path, tmp_path / "coco")
    # an eval set's question and a judge review of the same images: LLM calls, not generation
    add_response(db_path, image_id=1, sample_type="eval:question", content='{"question": "Q?"}', cost_usd=2.0,
                 model="writer-llm")
    add_response(db_path, image_id=1, sample_type="eval:review", content="8 6\nfine", cost_usd=4.0,
                 model="judge-llm")
    validate_pending(db_path)
    dedup(db_path)
    report = build_report(db_path, tmp_path / "out")

    funnel = report.tables["funnel"][0]
    assert (funnel["requests"], funnel["responses"], funnel["with_content"]) == (3, 4, 4)  # generation's only
    assert [(r["model"], r["cost_usd"]) for r in report.tables["cost"]] == [("test-model", 1.0)]
    assert [(r["stage"], r["model"], r["cost_usd"]) for r in report.tables["eval_cost"]] == [
        ("eval:question", "writer-llm", 2.0), ("eval:review", "judge-llm", 4.0)]
    assert "generation cost $1.0000" in report.markdown and "evaluation cost $6.0000" in report.markdown
    evaluation = report.markdown.split("## Evaluation cost\n", 1)[1].split("## ", 1)[0]
    assert "judge-llm" in evaluation and "test-model" not in evaluation
    assert "eval:" not in {r["sample_type"] for r in report.tables["type_mix"]}


def test_report_on_an_empty_database(db_path: Path, tmp_path: Path) -> None:
    store.ensure_schema(db_path)  # reports only read: the database exists, with no rows
    report = build_report(db_path, tmp_path / "out")
    assert report.tables["funnel"][0]["dataset"] == 0
    assert [r["sample_type"] for r in report.tables["type_mix"]] == list(SAMPLE_TYPES)
    assert len(report.plots) == 2


def test_curate_cli_runs_every_step(db_path: Path, tmp_path: Path) -> None:
    fill(db_path, tmp_path / "coco")
    out = tmp_path / "export"
    result = CliRunner().invoke(get_app(), ["curate", "--out", str(out), "--db", str(db_path)])
    assert result.exit_code == 0, result.output
    assert "4 responses checked" in result.output and "1 exact" in result.output
    assert {"llava_instruct.json", "llava_pretrain.parquet", "report.md", "answer_lengths.png"} <= {
        p.name for p in out.iterdir()}
    again = CliRunner().invoke(get_app(), ["curate", "--out", str(out), "--db", str(db_path), "--scope", "moon"])
    assert again.exit_code == 2 and "scope" in again.output
    again = CliRunner().invoke(get_app(), ["curate", "--out", str(out), "--db", str(db_path), "--threshold", "2"])
    assert again.exit_code == 2 and "threshold" in again.output


def test_report_and_curate_name_the_records_whose_image_is_missing(db_path: Path, tmp_path: Path) -> None:
    add_images(db_path, tmp_path / "coco", [1, 2])
    (tmp_path / "coco" / "train2017" / f"{2:012d}.jpg").unlink()  # image 2's file is gone
    add_response(db_path, image_id=1, sample_type="conversation", content=conversation(2, "a"))
    add_response(db_path, image_id=2, sample_type="conversation", content=conversation(3, "b"))
    result = CliRunner().invoke(get_app(), ["curate", "--out", str(tmp_path / "out"), "--db", str(db_path)])
    assert result.exit_code == 0, result.output
    report = (tmp_path / "out" / "report.md").read_text()
    assert "**Missing images:**" in report and "000000000002.jpg" in report
    dropped = CliRunner().invoke(get_app(), ["curate", "--out", str(tmp_path / "strict"), "--db", str(db_path),
                                             "--require-images"])
    assert dropped.exit_code == 0, dropped.output
    records = json.loads((tmp_path / "strict" / "llava_instruct.json").read_text())
    assert [r["image"] for r in records] == ["train2017/000000000001.jpg"]
