"""`vistune sql` runs queries only, and journal replay stores only well-formed rows of planned requests."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import duckdb
import pytest
from typer.testing import CliRunner

from flows.cli import get_app
from tasks import store
from tasks.store.journal import Journal, journal_dir, replay_orphans
from tests.fakes import plan_stand_ins


def _sql(db: Path, query: str) -> object:
    return CliRunner().invoke(get_app(), ["sql", query, "--db", str(db), "--format", "csv"])




@pytest.fixture
def db(db_path: Path) -> Path:
    store.ensure_schema(db_path)
    plan_stand_ins(db_path, "r1")
    return db_path


@pytest.mark.parametrize(("query", "says"), [
    ("COPY requests TO '{victim}'", "COPY"),
    ("COPY (SELECT 1) TO '{tmp}/out.csv'", "COPY"),
    ("ATTACH '{victim}' AS other (READ_WRITE)", "ATTACH"),
    ("ATTACH '{tmp}/new.duckdb' AS other", "ATTACH"),
    ("SELECT * FROM read_text('/etc/passwd')", "no other file"),
    ("SELECT * FROM read_csv('/etc/passwd')", "no other file"),
    ("SELECT * FROM glob('/root/*')", "no other file"),
    ("SELECT * FROM read_json('{tmp}/vistune.duckdb.journal/x.jsonl')", "no other file"),
    ("CREATE TEMP TABLE t AS SELECT 1", "CREATE"),
    ("CREATE TEMP VIEW responses AS SELECT 1", "CREATE"),
    ("SET memory_limit = '1GB'", "SET"),
    ("RESET memory_limit", "SET"),
    ("SET VARIABLE x = 1", "SET"),
    ("INSTALL httpfs", "INSTALL"),
    ("LOAD httpfs", "INSTALL"),
    ("PRAGMA enable_profiling", "PRAGMA enable_profiling"),
    ("PRAGMA memory_limit = '1GB'", "SET"),  # DuckDB parses it as SET
    ("CHECKPOINT", "CALL"),
    ("EXPORT DATABASE '{tmp}/export'", "EXPORT"),
    ("SELECT 1; COPY requests TO '{victim}'", "COPY"),
    ("EXPLAIN ANALYZE CREATE TEMP TABLE t AS SELECT 1", "CREATE"),
    ("INSERT INTO requests SELECT * FROM requests", "INSERT"),
    ("BEGIN", "transactions"),
])
def test_writes_and_escapes_are_refused_with_one_line(db: Path, tmp_path: Path, query: str, says: str) -> None:
    victim = tmp_path / "other.duckdb"
    duckdb.connect(str(victim)).close()
    before = victim.read_bytes()
    result = _sql(db, query.format(victim=victim, tmp=tmp_path))
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: refused:") and says in lines[0], result.output
    assert victim.read_bytes() == before
    assert not (tmp_path / "out.csv").exists() and not (tmp_path / "new.duckdb").exists()
    assert not (tmp_path / "export").exists()


@pytest.mark.parametrize("query", [
    "SELECT count(*) FROM requests", "FROM requests", "DESCRIBE requests", "SHOW TABLES", "SUMMARIZE requests",
    "PRAGMA table_info('requests')", "EXPLAIN SELECT 1", "WITH x AS (SELECT 1 AS a) SELECT a FROM x",
    "SELECT current_setting('enable_external_access') AS access",
])
def test_queries_still_work(db: Path, query: str) -> None:
    result = _sql(db, query)
    assert result.exit_code == 0, result.output
    if "external" in query:
        assert result.output.strip().splitlines()[-1].lower() == "false"


def test_the_journal_view_still_works_with_files_locked(db: Path) -> None:
    live = Journal(db)
    live.append({"response_id": "x1", "request_id": "r1", "attempt": 1, "status": "ok", "content": "c",
                 "created_at": store.utcnow().isoformat()})
    result = _sql(db, "SELECT response_id FROM responses")
    assert result.exit_code == 0, result.output
    assert result.output.strip().splitlines() == ["response_id", "x1"]
    live.close()


def test_replay_stores_only_well_formed_rows_of_planned_requests(db: Path, caplog: pytest.LogCaptureFixture) -> None:
    folder = journal_dir(db)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "777-forged.lock").write_text("")  # a dead owner's journal, or a file someone wrote there
    good = {"response_id": "g1", "request_id": "r1", "attempt": 1, "status": "ok", "content": "paid",
            "created_at": "2024-01-01T00:00:00"}
    lines = [
        json.dumps(good),
        json.dumps({**good, "response_id": "f1", "request_id": "never-planned"}),  # a forged answer
        json.dumps({**good, "response_id": "f2", "attempt": "many"}),  # not a ResponseRow
        json.dumps({**good, "response_id": "f3", "injected": "column"}),  # unknown field
        json.dumps(["not", "an", "object"]),
        "{not json",
        json.dumps({"response_id": "f4"}),  # required fields missing
    ]
    (folder / "777-forged.000001.jsonl").write_text("\n".join(lines) + "\n")
    shown = _sql(db, "SELECT response_id FROM responses ORDER BY 1")  # readers do not see forged rows either
    assert {"g1"} <= set(shown.output.split()) and not {"f1", "f2", "f4"} & set(shown.output.split()), shown.output
    with caplog.at_level(logging.WARNING, logger="vistune.journal"):
        assert replay_orphans(db) == 1
    assert "skipped 6 line(s)" in caplog.text
    assert [r["response_id"] for r in store.query("SELECT response_id FROM responses", path=db)] == ["g1"]
    assert not list(folder.iterdir())


def test_a_query_past_duckdbs_memory_cap_names_the_setting(db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VISTUNE_DUCKDB_MEMORY_LIMIT", "8MB")
    result = _sql(db, "SELECT i, md5(i::VARCHAR) AS h FROM range(3000000) t(i) ORDER BY h")
    assert result.exit_code == 1
    assert "Out of Memory" in result.output
    assert "VISTUNE_DUCKDB_MEMORY_LIMIT=8MB" in result.output and "raise it" in result.output
