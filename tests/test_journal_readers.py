"""`vistune sql` sees journaled answers before they are flushed: once each, with the table's defaults."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import pytest
from typer.testing import CliRunner

from flows.cli import get_app
from schemas.tables import ResponseRow
from tasks import store
from tasks.store import journal as journal_module
from tasks.store.journal import Journal, include_journal_rows, is_vanished_segment, journal_dir
from tests.fakes import journal_row, plan_stand_ins


def _sql(db: Path, query: str, *extra: str) -> list[dict]:
    result = CliRunner().invoke(get_app(), ["sql", query, "--db", str(db), "--format", "json", *extra])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_sql_sees_unflushed_rows_once_and_flushed_only_does_not(db_path: Path) -> None:
    plan_stand_ins(db_path, "a", "b", "c")  # creates the schema too
    live = Journal(db_path)
    for i in range(3):
        live.append(journal_row("a", i))
    assert live.flush() == 3
    # The engine writes only the fields it has (a budget refusal has no tokens): defaults as on insert.
    live.append({k: v for k, v in journal_row("b", 1).items() if k != "content"} | {"status": "budget_exceeded"})
    live.append(journal_row("c", 1, prompt_tokens=7, cost_usd=0.5, latency_s=0.25))

    count = "SELECT count(*) AS n, count(DISTINCT response_id) AS ids FROM responses"
    assert _sql(db_path, count) == [{"n": 5, "ids": 5}]
    assert _sql(db_path, count, "--flushed-only") == [{"n": 3, "ids": 3}]
    row = _sql(db_path, "SELECT * FROM responses WHERE request_id = 'b'")[0]
    skipped = journal_row("b", 1, status="budget_exceeded", content=None)
    stored = ResponseRow.model_validate(skipped).model_dump(mode="json")
    assert {k: row[k] for k in ("prompt_tokens", "cost_usd", "mode", "content", "status")} == {
        k: stored[k] for k in ("prompt_tokens", "cost_usd", "mode", "content", "status")}
    assert _sql(db_path, "SELECT prompt_tokens, cost_usd, latency_s FROM responses WHERE request_id = 'c'") == [
        {"prompt_tokens": 7, "cost_usd": 0.5, "latency_s": 0.25}]

    live.close()  # flushes the rest: the table alone now says the same
    assert _sql(db_path, count, "--flushed-only") == [{"n": 5, "ids": 5}]
    assert _sql(db_path, count) == [{"n": 5, "ids": 5}]


def test_rows_being_flushed_and_torn_lines_are_not_counted_twice(db_path: Path) -> None:
    store.ensure_schema(db_path)
    plan_stand_ins(db_path, "a", "d")
    live = Journal(db_path)
    live.append(journal_row("a", 1))
    live.flush()
    folder = journal_dir(db_path)
    # A crashed process's segment (torn last line) and one whose flush committed but is not yet deleted.
    (folder / "999-dead.000001.jsonl").write_text(json.dumps(journal_row("d", 1)) + "\n" + '{"response_id": "to')
    (folder / "998-gone.000001.jsonl").write_text(json.dumps(journal_row("a", 1)) + "\n")
    with store.read(db_path) as con:
        assert include_journal_rows(con, db_path) == 3  # the live process's empty current segment too
        got = sorted(r[0] for r in con.execute("SELECT response_id FROM responses").fetchall())
    assert got == ["a-1", "d-1"]
    live.close()


def test_no_journal_leaves_the_table_as_is(db_path: Path) -> None:
    store.ensure_schema(db_path)
    with store.read(db_path) as con:
        assert include_journal_rows(con, db_path) == 0
        names = con.execute("SELECT table_catalog FROM information_schema.tables WHERE table_name = 'responses'")
        assert [r[0] for r in names.fetchall()] == ["vistune"]  # no temporary view was made


def test_a_segment_flushed_away_mid_query_is_listed_again(db_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store.ensure_schema(db_path)
    plan_stand_ins(db_path, "a", "e")
    live = Journal(db_path)
    live.append(journal_row("a", 1))
    extra = journal_dir(db_path) / "997-other.000001.jsonl"
    extra.write_text(json.dumps(journal_row("e", 1)) + "\n")

    with store.read(db_path) as con:  # what the CLI has to recognise
        include_journal_rows(con, db_path)
        moved = extra.read_text()
        extra.unlink()
        with pytest.raises(duckdb.Error) as failure:
            con.execute("SELECT count(*) FROM responses").fetchall()
        assert is_vanished_segment(failure.value)
        extra.write_text(moved)

    # The other process's flush committed its rows before this reader opened the file, and deletes
    # the segment right after the reader listed it.
    with store.write(db_path) as writer:
        store.insert_rows(writer, ResponseRow, [journal_row("e", 1)])
    calls: list[int] = []
    real = journal_module.include_journal_rows

    def flush_ends_after_listing(con, db, listed=None) -> int:
        segments = real(con, db, listed)
        if not calls:
            extra.unlink()
        calls.append(segments)
        return segments

    monkeypatch.setattr(journal_module, "include_journal_rows", flush_ends_after_listing)
    assert _sql(db_path, "SELECT request_id FROM responses ORDER BY 1") == [{"request_id": "a"}, {"request_id": "e"}]
    assert calls == [2, 1]
    live.close()


def test_odd_database_names_are_quoted(tmp_path: Path) -> None:
    db = tmp_path / "it's a \"db\".duckdb"
    store.ensure_schema(db)
    plan_stand_ins(db, "q")
    live = Journal(db)
    live.append(journal_row("q", 1))
    with store.read(db) as con:
        include_journal_rows(con, db)
        assert con.execute("SELECT request_id FROM responses").fetchall() == [("q",)]
    live.close()
