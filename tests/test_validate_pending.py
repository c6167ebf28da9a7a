"""validate_pending over the store, and `vistune validate-text`."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from flows.cli import get_app
from schemas.samples import ConversationOutput, QuestionAnswer
from tasks.curation.validate import sample_id_for, validate_pending
from tasks.prompting.formats import render
from tasks.store import query
from tests.curation_rows import add_response

GOOD = ConversationOutput(rounds=[
    QuestionAnswer(question="What is the man holding?", answer="The man is holding a black umbrella."),
    QuestionAnswer(question="Where is he standing?", answer="He is standing at a bus stop on a busy street."),
])


def test_validate_pending_writes_samples_and_rejects_once(db_path: Path) -> None:
    good = add_response(db_path, image_id=1, sample_type="conversation", content=render(GOOD, "structured"),
                        output_format="structured")
    bad = add_response(db_path, image_id=1, sample_type="detail_description",
                       content="According to the captions, a man stands with an", finish_reason="length")
    add_response(db_path, image_id=2, sample_type="conversation", content=None, status="server_error")
    refused = add_response(db_path, image_id=3, sample_type="conversation", content=None, status="refusal",
                           error="model refused: I can't help with that.")

    stats = validate_pending(db_path)
    assert (stats.checked, stats.samples, stats.rejected) == (3, 1, 2)
    assert stats.reject_codes == {"mentions_hidden_input": 1, "refusal": 1, "too_short": 1, "truncated": 1}

    sample = query("SELECT * FROM samples", path=db_path)
    assert len(sample) == 1 and sample[0]["sample_id"] == sample_id_for(good)
    assert sample[0]["text"].splitlines() == ["What is the man holding?", "The man is holding a black umbrella.",
                                              "Where is he standing?", "He is standing at a bus stop on a busy street."]
    assert sample[0]["image_id"] == 1 and sample[0]["prompt_version"] == "v-test"
    refusal = query("SELECT * FROM rejects WHERE code = 'refusal'", path=db_path)
    assert refusal[0]["response_id"] == refused and "can't help" in refusal[0]["detail"]
    rejects = query("SELECT response_id, code, detail FROM rejects WHERE code <> 'refusal' ORDER BY code",
                    path=db_path)
    assert [r["code"] for r in rejects] == ["mentions_hidden_input", "too_short", "truncated"]
    assert all(r["response_id"] == bad for r in rejects)
    assert "captions" in rejects[0]["detail"]

    again = validate_pending(db_path)
    assert (again.checked, again.samples, again.rejected) == (0, 0, 0)
    assert len(query("SELECT * FROM rejects", path=db_path)) == 4


def test_validate_text_cli(tmp_path: Path) -> None:
    runner = CliRunner()
    good = tmp_path / "good.txt"
    good.write_text(render(GOOD, "llava-text"))
    result = runner.invoke(get_app(), ["validate-text", "--type", "conversation", "--format", "llava-text", str(good)])
    assert result.exit_code == 0, result.output
    assert ConversationOutput.model_validate_json(result.stdout) == GOOD

    bad = tmp_path / "bad.json"
    bad.write_text('{"rounds": []}')
    result = runner.invoke(get_app(), ["validate-text", "--type", "conversation", str(bad)])
    assert result.exit_code == 1
    assert result.stdout.startswith("malformed: structured conversation")

    result = runner.invoke(get_app(), ["validate-text", "--type", "poem", str(bad)])
    assert result.exit_code == 2
