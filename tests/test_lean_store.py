"""Schema 4: each shared prompt prefix stored once; the full messages rebuilt byte for byte wherever they are read."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import duckdb
import pytest
from typer.testing import CliRunner

from flows.cli import get_app
from schemas.samples import SAMPLE_TYPES
from schemas.tables import RequestRow, ResponseRow
from tasks import store
from tasks.ingest.coco import ingest
from tasks.llm.batch import batch_line
from tasks.prompting import plan as plan_module
from tasks.prompting import prompts
from tasks.prompting.plan import PrefixedHash, plan_requests
from tasks.prompting.prompts import build_messages, load_contexts
from tasks.store import queries
from tests.test_image_prompts import IMAGE_SET, _add_images

TYPES = list(SAMPLE_TYPES)
LLAVA_SET = Path(__file__).resolve().parent / "fixtures" / "llava_prompts"
MODEL = "gpt-4o-mini"
# The `requests` table as schema 3 created it (`store.create_table_sql` of RequestRow then): a fixed fact.
SCHEMA_3_REQUESTS = """CREATE TABLE requests (
  request_id VARCHAR, image_id BIGINT, sample_type VARCHAR, prompt_version VARCHAR, model VARCHAR,
  output_format VARCHAR, kind VARCHAR, regeneration BIGINT, messages JSON, params JSON, est_input_tokens BIGINT,
  created_at TIMESTAMP, run_id VARCHAR)"""
SCHEMA_3_COLUMNS = ["request_id", "image_id", "sample_type", "prompt_version", "model", "output_format", "kind",
                    "regeneration", "messages", "params", "est_input_tokens", "created_at", "run_id"]


@pytest.fixture(autouse=True)
def fresh_caches() -> Iterator[None]:
    prompts.clear_caches()
    yield
    prompts.clear_caches()


@pytest.fixture
def ingested(db_path: Path, sample_coco: Path) -> Path:
    ingest(sample_coco, "train2017", db_path, check_images=False)
    return db_path


@contextmanager
def schema_3_planning() -> Iterator[None]:
    """Plan the way schema 3 did: full messages in every row, ids by `store.stable_hash`."""
    plan_module.SHARE_PREFIXES = False
    try:
        yield
    finally:
        plan_module.SHARE_PREFIXES = True


def _text(messages: list[dict[str, Any]]) -> str:
    return json.dumps(messages, ensure_ascii=False)  # how the store writes a JSON cell


def _expected(db: Path, output_format: str, prompt_set: Path | None, types: list[str]) -> dict[str, list[dict]]:
    """request id -> the messages `build_messages` returns, for every image of `db` and each type."""
    with store.read(db) as con:
        ids = [r[0] for r in con.execute("SELECT image_id FROM images ORDER BY 1").fetchall()]
        contexts = load_contexts(con, ids)
        params = {r[0]: json.loads(r[1]) for r in con.execute(
            "SELECT sample_type, any_value(params) FROM requests_stored WHERE output_format = ? GROUP BY 1",
            [output_format]).fetchall()}
    expected = {}
    for image_id in ids:
        for t in types:
            messages, _ = build_messages(contexts[image_id], t, output_format, prompt_set)
            expected[store.stable_hash(MODEL, messages, params[t])] = messages
    return expected


def _check_rebuilt(db: Path, expected: dict[str, list[dict]]) -> None:
    ids = list(expected)
    with store.read(db) as con:
        found = queries.unanswered(con, ids)
        view = dict(con.execute("SELECT request_id, messages FROM requests WHERE request_id IN "
                                "(SELECT unnest(?::VARCHAR[]))", [ids]).fetchall())
        lean = con.execute("SELECT count(*) FROM requests_stored WHERE request_id IN (SELECT unnest(?::VARCHAR[])) "
                           "AND prefix_id IS NOT NULL AND json_array_length(messages) = 1", [ids]).fetchall()[0][0]
    assert not found.missing and [r.request_id for r in found.requests] == ids  # the ids hash the full messages
    for request in found.requests:
        assert request.messages == expected[request.request_id]
        assert _text(request.messages) == _text(expected[request.request_id])  # byte for byte
        assert view[request.request_id] == _text(expected[request.request_id])  # the SQL view too
        line = json.loads(batch_line(request.request_id, request.model, request.messages, request.params))
        assert line["body"]["messages"][:-1] == expected[request.request_id][:-1]  # the batch file's prefix
    assert lean == len(ids)  # each row keeps only the image's own message
    with store.write(db) as con:
        claimed = queries.claim(con, ids, "test-owner", lease_s=60, now=store.utcnow())
    assert [_text(r.messages) for r in claimed.requests] == [_text(expected[i]) for i in ids]


@pytest.mark.parametrize("output_format", ["structured", "llava-text"])
def test_rebuilt_messages_are_byte_identical_for_every_type(ingested: Path, output_format: str) -> None:
    plan = plan_requests(ingested, sample_types=TYPES, model=MODEL, output_format=output_format)
    expected = _expected(ingested, output_format, None, TYPES)
    assert sorted(expected) == sorted(plan.request_ids)
    _check_rebuilt(ingested, expected)
    prefixes = store.query("SELECT count(*) AS n FROM prompt_prefixes", path=ingested)[0]["n"]
    assert prefixes == len(TYPES)  # one per (type, format, prompt version)


def test_rebuilt_messages_are_byte_identical_for_a_llava_layout_set(ingested: Path) -> None:
    plan = plan_requests(ingested, sample_types=TYPES, model=MODEL, output_format="llava-text", prompt_set=LLAVA_SET)
    expected = _expected(ingested, "llava-text", LLAVA_SET, TYPES)
    assert sorted(expected) == sorted(plan.request_ids)
    _check_rebuilt(ingested, expected)


def test_rebuilt_messages_keep_the_image_reference(db_path: Path, tmp_path: Path) -> None:
    _add_images(db_path, tmp_path / "coco", {1: (640, 480), 2: (320, 200)})
    types = ["conversation", "detail_description"]
    plan = plan_requests(db_path, sample_types=types, model=MODEL, prompt_set=IMAGE_SET)
    expected = _expected(db_path, "structured", IMAGE_SET, types)
    assert sorted(expected) == sorted(plan.request_ids) and len(expected) == 4
    _check_rebuilt(db_path, expected)


def test_prefixed_hash_is_stable_hash() -> None:
    prefix = [{"role": "system", "content": "Ünïcode 🦆 \"quoted\"\n"}, {"role": "user", "content": "x"}]
    own = [{"role": "user", "content": [{"type": "text", "text": "é"}, {"type": "image_ref", "id": 3}]}]
    params = {"temperature": 0.2, "response_format": {"b": 1, "a": [1, 2]}, "seed": 2}
    got = PrefixedHash(MODEL, prefix)(own, plan_module._dumps(params))
    assert got == store.stable_hash(MODEL, prefix + own, params)


def test_old_and_new_planning_give_the_same_ids(ingested: Path, tmp_path: Path, sample_coco: Path) -> None:
    old_db = tmp_path / "old.duckdb"
    ingest(sample_coco, "train2017", old_db, check_images=False)
    with schema_3_planning():
        old = plan_requests(old_db, sample_types=TYPES, model=MODEL)
    new = plan_requests(ingested, sample_types=TYPES, model=MODEL)
    assert old.request_ids == new.request_ids and old.est_input_tokens == new.est_input_tokens
    query = "SELECT request_id, messages FROM requests ORDER BY 1"
    assert store.query(query, path=old_db) == store.query(query, path=ingested)


def _as_schema_3(db: Path) -> None:
    """Turn a file planned the schema-3 way into the schema-3 layout: table `requests`, no prefixes, version 3."""
    con = duckdb.connect(str(db), config={"storage_compatibility_version": store.STORAGE_COMPATIBILITY})
    for view in ("slot_status", "dataset", "requests"):
        con.execute(f"DROP VIEW {view}")
    con.execute(SCHEMA_3_REQUESTS)
    con.execute(f"INSERT INTO requests SELECT {', '.join(SCHEMA_3_COLUMNS)} FROM requests_stored")
    con.execute("DROP TABLE requests_stored")
    con.execute("DROP TABLE prompt_prefixes")
    con.execute("DELETE FROM schema_version")
    con.execute("INSERT INTO schema_version VALUES (3, now()::TIMESTAMP)")
    con.execute(queries.SLOT_STATUS_VIEW.replace("requests_stored", "requests"))  # schema 3's view
    con.execute(store.DATASET_VIEW)
    con.close()
    store._migrated.clear()  # this process must look at the file again, as a new process would


def test_a_schema_3_file_is_migrated_in_place(ingested: Path) -> None:
    with schema_3_planning():
        plan = plan_requests(ingested, sample_types=TYPES, model=MODEL)
        plan_requests(ingested, sample_types=TYPES, model=MODEL, output_format="llava-text")
    ok = plan.request_ids[:5]
    with store.write(ingested) as con:
        store.insert_rows(con, ResponseRow, [ResponseRow(response_id=f"r-{rid}", request_id=rid, attempt=1,
                                                         status="ok", created_at=store.utcnow()) for rid in ok])
    _as_schema_3(ingested)
    con = duckdb.connect(str(ingested), read_only=True)
    cols = [r[0] for r in con.execute("SELECT column_name FROM information_schema.columns WHERE table_name = "
                                      "'requests' ORDER BY ordinal_position").fetchall()]
    before = con.execute("SELECT * FROM requests ORDER BY request_id").fetchall()
    slots = con.execute("SELECT * FROM slot_status ORDER BY ALL").fetchall()
    tables = [r[0] for r in con.execute("SHOW TABLES").fetchall() if r[0] != "schema_version"]
    counts = {t: con.execute(f"SELECT count(*) FROM {t}").fetchall()[0][0] for t in tables}
    con.close()
    assert cols == SCHEMA_3_COLUMNS and "requests_stored" not in tables and len(before) == 2 * plan.pending
    size_before = sum(len(r[8]) for r in before)

    store.ensure_schema(ingested)
    with store.read(ingested) as con:
        after = con.execute("SELECT * FROM requests ORDER BY request_id").fetchall()
        assert con.execute("SELECT * FROM slot_status ORDER BY ALL").fetchall() == slots
        assert {t: con.execute(f"SELECT count(*) FROM {t}").fetchall()[0][0] for t in tables} == counts
        stored = con.execute("SELECT sum(length(messages::VARCHAR)), count(*) FILTER (WHERE prefix_id IS NULL), "
                             "count(*) FROM requests_stored").fetchall()[0]
        assert con.execute("SELECT count(*) FROM prompt_prefixes").fetchall()[0][0] == 2 * len(TYPES)
        assert max(r[0] for r in con.execute("SELECT version FROM schema_version").fetchall()) == store.SCHEMA_VERSION
        found = queries.unanswered(con, [r[0] for r in before])
    assert after == before  # same ids, columns and bytes through the view
    assert stored[1] == 0 and stored[2] == len(before) and stored[0] < size_before / 4
    assert sorted(found.missing) == [] and len(found.requests) == len(before) - len(ok)
    by_id = {r[0]: r[8] for r in before}
    assert all(_text(r.messages) == by_id[r.request_id] for r in found.requests)
    again = plan_requests(ingested, sample_types=TYPES, model=MODEL)  # ids unchanged: nothing new to plan
    assert again.planned_new == 0 and again.already_ok == len(ok) and again.pending == plan.pending - len(ok)
    store.ensure_schema(ingested)  # idempotent
    assert store.query("SELECT count(*) AS n FROM requests", path=ingested)[0]["n"] == len(before)


def test_a_schema_2_file_with_requests_migrates(db_path: Path) -> None:
    con = duckdb.connect(str(db_path), config={"storage_compatibility_version": store.STORAGE_COMPATIBILITY})
    con.execute(SCHEMA_3_REQUESTS.replace("run_id VARCHAR)", "run_id VARCHAR, PRIMARY KEY (request_id))"))
    full = [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]
    con.execute("INSERT INTO requests VALUES ('r1', 1, 'conversation', 'v', 'm', 'structured', NULL, 0, ?, '{}', 1, "
                "now()::TIMESTAMP, NULL)", [_text(full)])
    con.execute("CREATE TABLE schema_version (version INTEGER, applied_at TIMESTAMP)")
    con.execute("INSERT INTO schema_version VALUES (1, now()::TIMESTAMP)")
    con.close()
    assert store.query("SELECT kind, messages FROM requests", path=db_path) == [
        {"kind": "conversation/structured", "messages": _text(full)}]
    assert store.query("SELECT messages FROM requests_stored", path=db_path) == [{"messages": _text(full[1:])}]


def test_vistune_sql_and_the_duckdb_cli_show_the_full_messages(ingested: Path) -> None:
    plan_requests(ingested, sample_types=["conversation"], model=MODEL, limit_images=1)
    expected = next(iter(_expected(ingested, "structured", None, ["conversation"]).values()))
    result = CliRunner().invoke(get_app(), ["sql", "SELECT messages FROM requests", "--db", str(ingested),
                                            "--format", "json"])
    assert result.exit_code == 0, result.output
    assert json.loads(json.loads(result.output)[0]["messages"]) == expected
    cli = Path(sys.executable).parent / "duckdb"
    out = subprocess.run([str(cli), "-readonly", str(ingested), "-json", "SELECT messages FROM requests"],
                         capture_output=True, text=True, check=True).stdout
    assert json.loads(out)[0]["messages"] == expected  # the CLI prints a JSON column as JSON


def test_a_request_naming_a_lost_prefix_fails_clearly(ingested: Path) -> None:
    plan = plan_requests(ingested, sample_types=["conversation"], model=MODEL, limit_images=1)
    with store.write(ingested) as con:
        con.execute("DELETE FROM prompt_prefixes")
    with store.read(ingested) as con, pytest.raises(LookupError, match="prompt_prefixes lacks"):
        queries.unanswered(con, plan.request_ids)


def test_rows_without_a_prefix_are_read_as_stored(db_path: Path) -> None:
    row = RequestRow(request_id="r", image_id=1, sample_type="t", prompt_version="v", model="m", output_format="x",
                     kind="k", messages=[{"role": "user", "content": "q"}], params={}, est_input_tokens=1,
                     created_at=store.utcnow())
    with store.write(db_path) as con:
        store.insert_rows(con, RequestRow, [row])
    with store.read(db_path) as con:
        assert queries.unanswered(con, ["r"]).requests[0].messages == row.messages
    assert store.query("SELECT messages FROM requests", path=db_path) == [{"messages": _text(row.messages)}]
