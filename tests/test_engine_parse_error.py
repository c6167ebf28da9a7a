"""A bug in our own parser: the paid answer is kept as `parse_error`, never retried, never re-sent, and curation
turns it into a reject instead of crashing."""

from __future__ import annotations

from pathlib import Path

import pytest

from schemas.generation import GenerateConfig
from tasks import store
from tasks.llm import parsers, transport
from tasks.llm.engine import run_requests_sync
from tests.fakes import CountingSender, plant_requests

KIND = "test/buggy-parser"


def _buggy(content: str | None) -> str:
    if content == "bad":
        raise parsers.OutputError("the model's fault")
    raise KeyError("our own bug")


@pytest.fixture
def sender(monkeypatch: pytest.MonkeyPatch) -> CountingSender:
    fake = CountingSender(content="answer that our parser cannot handle")
    monkeypatch.setattr(transport, "make_sender", lambda client, name, timeout: fake)
    parsers.register(KIND, _buggy)
    return fake


def _config(**overrides) -> GenerateConfig:
    values = {"base_url": "http://127.0.0.1:9/v1", "api_key": "sk-test-parse-error-0123", "concurrency": 2,
              "max_attempts": 4, "backoff_base_s": 0.01, "backoff_max_s": 0.02, "flush_interval_s": 0.1}
    return GenerateConfig(**{**values, **overrides})


def test_parse_error_is_stored_with_content_and_never_sent_again(db_path: Path, sender: CountingSender) -> None:
    ids = plant_requests(db_path, 3, KIND)
    stats = run_requests_sync(ids, db_path=db_path, config=_config())
    assert sum(sender.calls.values()) == 3 and set(sender.calls.values()) == {1}  # not retried
    assert stats.final_by_status == {"parse_error": 3} and stats.attempts_by_status == {"parse_error": 3}
    rows = store.query("SELECT status, content, error, cost_usd FROM responses", path=db_path)
    assert len(rows) == 3
    for row in rows:
        assert row["status"] == "parse_error"
        assert row["content"] == sender.content  # the paid answer is kept for a fixed parser
        assert "KeyError" in row["error"] and row["cost_usd"] > 0

    again = run_requests_sync(ids, db_path=db_path, config=_config())  # a rerun pays nothing
    assert sum(sender.calls.values()) == 3
    assert (again.attempts, again.held_parse_error, again.already_ok) == (0, 3, 0)


def test_output_error_is_the_models_fault_and_retried(db_path: Path, sender: CountingSender) -> None:
    sender.content = "bad"
    ids = plant_requests(db_path, 2, KIND)
    stats = run_requests_sync(ids, db_path=db_path, config=_config(max_attempts=3))
    assert set(sender.calls.values()) == {3}
    assert stats.final_by_status == {"bad_output": 2}


def test_unknown_kind_fails_before_anything_is_sent(db_path: Path, sender: CountingSender) -> None:
    ids = plant_requests(db_path, 2, "test/nobody-registered-this")
    with pytest.raises(ValueError, match="nobody-registered-this"):
        run_requests_sync(ids, db_path=db_path, config=_config())
    assert not sender.calls


def test_validate_turns_a_parser_exception_into_a_parse_error_reject(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bench.gen_scale import synthetic_images
    from schemas.tables import ResponseRow
    from tasks.curation import validate
    from tasks.prompting.plan import plan_requests

    synthetic_images(db_path, 2)
    plan = plan_requests(db_path, sample_types=["complex_reasoning"], model="gpt-4o-mini")
    rows = [ResponseRow(response_id=f"resp-{i}", request_id=rid, attempt=1, status="parse_error", content="{}",
                        created_at=store.utcnow()) for i, rid in enumerate(plan.request_ids)]
    with store.write(db_path) as con:
        store.insert_rows(con, ResponseRow, rows)

    def broken(*args):
        raise ZeroDivisionError("parser bug")

    monkeypatch.setattr(validate, "parse", broken)
    stats = validate.validate_pending(db_path)
    assert stats.reject_codes == {"parse_error": 2} and stats.samples == 0
    details = {r["response_id"]: r["detail"] for r in store.query("SELECT * FROM rejects", path=db_path)}
    for response_id, detail in details.items():
        assert response_id in detail and "ZeroDivisionError" in detail
