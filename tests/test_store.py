"""The DuckDB store: schema from the row models, migrations, inserts, readers beside a writer."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import duckdb
import pytest

from schemas.tables import ALL_TABLES, DuplicateRow, ImageRow, SampleRow
from tasks import store


def _image(image_id: int, file_name: str = "a.jpg") -> ImageRow:
    return ImageRow(image_id=image_id, split="train2017", file_name=file_name, width=4, height=3, coco_root="/c")


def test_every_table_has_exactly_the_row_model_columns(db_path: Path) -> None:
    store.ensure_schema(db_path)
    with store.read(db_path) as con:
        for model in ALL_TABLES:
            cols = con.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_name = ? ORDER BY ordinal_position",
                [model.table]).fetchall()
            assert [c[0] for c in cols] == list(model.model_fields), model.table
        views = con.execute("SELECT view_name FROM duckdb_views() WHERE NOT internal").fetchall()
    assert ("dataset",) in views


def test_default_path_comes_from_vistune_db(db_path: Path) -> None:
    assert store.resolve_db() == db_path
    store.ensure_schema()
    assert db_path.exists()


def test_migrate_is_idempotent_and_adds_missing_columns(db_path: Path) -> None:
    con = duckdb.connect(str(db_path))
    con.execute("CREATE TABLE images (image_id BIGINT PRIMARY KEY, split VARCHAR)")  # an older, narrower table
    con.execute("INSERT INTO images VALUES (1, 'val2014')")
    store.migrate(con)
    store.migrate(con)
    cols = [r[0] for r in con.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_name = 'images'").fetchall()]
    assert cols == list(ImageRow.model_fields)
    assert con.execute("SELECT image_id, split FROM images").fetchall() == [(1, "val2014")]
    assert con.execute("SELECT count(*) FROM schema_version").fetchall() == [(1,)]
    con.close()


def test_a_schema_2_file_loses_its_large_key_indexes_and_keeps_its_rows(db_path: Path) -> None:
    # Schema 2 gave every table a PRIMARY KEY; in the CLI-readable format every checkpoint rewrites it whole.
    con = duckdb.connect(str(db_path), config={"storage_compatibility_version": store.STORAGE_COMPATIBILITY})
    con.execute("CREATE TABLE images (image_id BIGINT PRIMARY KEY, split VARCHAR, file_name VARCHAR, "
                "width BIGINT, height BIGINT, coco_root VARCHAR)")
    con.execute("INSERT INTO images VALUES (1, 'train2017', 'a.jpg', 4, 3, '/c')")
    con.execute("CREATE TABLE schema_version (version INTEGER, applied_at TIMESTAMP)")
    con.execute("INSERT INTO schema_version VALUES (2, now()::TIMESTAMP)")
    con.close()
    store.ensure_schema(db_path)
    with store.read(db_path) as con:
        indexed = {r[0] for r in con.execute(
            "SELECT table_name FROM duckdb_constraints() WHERE constraint_type = 'PRIMARY KEY'").fetchall()}
        assert con.execute("SELECT image_id, file_name FROM images").fetchall() == [(1, "a.jpg")]
    assert indexed == {m.table for m in ALL_TABLES if m.key_index}
    assert "images" not in indexed and "requests" not in indexed
    with store.write(db_path) as con:  # the key still holds, now kept by insert_rows
        assert store.insert_rows(con, ImageRow, [_image(1, "other.jpg"), _image(2), _image(2, "dup.jpg")]) == 1
    assert store.query("SELECT image_id, file_name FROM images ORDER BY 1", path=db_path) == [
        {"image_id": 1, "file_name": "a.jpg"}, {"image_id": 2, "file_name": "a.jpg"}]


def test_insert_conflict_modes(db_path: Path) -> None:
    with store.write(db_path) as con:
        assert store.insert_rows(con, ImageRow, [_image(1), _image(2)]) == 2
        assert store.insert_rows(con, ImageRow, [_image(1, "changed.jpg"), _image(3)]) == 1
    assert store.query("SELECT file_name FROM images WHERE image_id = 1", path=db_path) == [{"file_name": "a.jpg"}]
    with store.write(db_path) as con:
        store.insert_rows(con, ImageRow, [_image(1, "changed.jpg")], on_conflict="replace")
    assert store.query("SELECT file_name FROM images WHERE image_id = 1", path=db_path) == [
        {"file_name": "changed.jpg"}]
    with pytest.raises(duckdb.ConstraintException), store.write(db_path) as con:
        store.insert_rows(con, ImageRow, [_image(9), _image(1)], on_conflict="error")
    # the failed transaction rolled back as a whole: image 9 is not there
    assert store.query("SELECT count(*) n FROM images", path=db_path) == [{"n": 3}]


def test_json_columns_round_trip_and_dataset_view_drops_duplicates(db_path: Path) -> None:
    now = store.utcnow()

    def sample(sample_id: str) -> SampleRow:
        return SampleRow(sample_id=sample_id, request_id="r", response_id=f"resp-{sample_id}", image_id=1,
                         sample_type="detail_description", prompt_version="v", model="m",
                         data={"description": f"text {sample_id}"}, text=f"text {sample_id}", created_at=now)

    with store.write(db_path) as con:
        store.insert_rows(con, SampleRow, [sample("a"), sample("b")])
        store.insert_rows(con, DuplicateRow, [DuplicateRow(sample_id="b", duplicate_of="a", method="exact",
                                                           similarity=1.0, scope="image", created_at=now)])
    rows = store.query("SELECT sample_id, data->>'description' AS d FROM dataset", path=db_path)
    assert rows == [{"sample_id": "a", "d": "text a"}]


def test_read_only_connection_refuses_writes(db_path: Path) -> None:
    store.ensure_schema(db_path)
    with store.read(db_path) as con, pytest.raises(duckdb.Error, match="read-only"):
        con.execute("DELETE FROM images")


def test_missing_database_has_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="vistune ingest"):
        store.query("SELECT 1", path=tmp_path / "nope.duckdb")


def _duckdb_cli_read(db_path: Path, sql: str) -> subprocess.CompletedProcess[str]:
    """Run the `duckdb` CLI read-only, retrying while a writer holds the lock, as a user would."""
    cli = Path(sys.executable).parent / "duckdb"
    assert cli.exists(), "the duckdb CLI comes with the dev extra: pip install -e '.[dev]'"
    deadline = time.monotonic() + 5
    while True:
        result = subprocess.run([str(cli), "-readonly", str(db_path), "-csv", sql], capture_output=True, text=True)
        if result.returncode == 0 or "lock" not in result.stderr.lower() or time.monotonic() > deadline:
            return result
        time.sleep(0.05)


def test_duckdb_cli_reads_the_store(db_path: Path, sample_coco: Path) -> None:
    from tasks.ingest.coco import ingest

    ingest(sample_coco, "train2017", db_path)
    result = _duckdb_cli_read(db_path, "SELECT count(*) AS n FROM captions")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["n", "20"]


def test_readers_get_in_between_short_writes_of_another_process(db_path: Path) -> None:
    store.ensure_schema(db_path)
    writer = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import time
        from schemas.tables import ImageRow
        from tasks import store
        end = time.monotonic() + 4
        i = 0
        while time.monotonic() < end:
            with store.write({str(db_path)!r}) as con:
                store.insert_rows(con, ImageRow, [ImageRow(image_id=i, split="s", file_name="f", width=1,
                                                           height=1, coco_root="/")])
            i += 1
            time.sleep(0.02)
        print(i)
    """)], stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(1.0)
        waits, counts = [], []
        for _ in range(10):
            started = time.monotonic()
            counts.append(store.query("SELECT count(*) n FROM images", path=db_path)[0]["n"])
            waits.append(time.monotonic() - started)
        # the duckdb CLI (dev extra) in read-only mode, as the README shows it
        started = time.monotonic()
        cli = _duckdb_cli_read(db_path, "SELECT count(*) AS n FROM images")
        waits.append(time.monotonic() - started)
        assert cli.returncode == 0, cli.stderr
        out, _ = writer.communicate(timeout=30)
    finally:
        writer.kill()
    assert writer.returncode == 0
    assert int(out) > 20  # the writer kept writing while we read
    # readers see committed progress (the writer had a 1 s head start), never a rollback, never past the end
    assert counts[0] > 0 and counts == sorted(counts), counts
    assert counts[-1] <= int(cli.stdout.split()[-1]) <= int(out)
    assert max(waits) < 5.0


def _duckdb_shows(size: str) -> str:
    """How DuckDB reports a memory_limit of `size` (it rounds to its own units)."""
    con = duckdb.connect()
    con.execute(f"SET memory_limit = '{size}'")
    return con.execute("SELECT current_setting('memory_limit')").fetchall()[0][0]


def test_store_connections_cap_duckdb_memory(db_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every store connection caps DuckDB's memory (default 256MB, `VISTUNE_DUCKDB_MEMORY_LIMIT`), not 80% of RAM."""
    from pydantic import ValidationError

    store.ensure_schema(db_path)
    limit = "SELECT current_setting('memory_limit')"
    with store.read(db_path) as con:
        assert con.execute(limit).fetchall()[0][0] == _duckdb_shows("256MB")
    monkeypatch.setenv("VISTUNE_DUCKDB_MEMORY_LIMIT", "512MB")
    with store.write(db_path) as con:
        assert con.execute(limit).fetchall()[0][0] == _duckdb_shows("512MB")
    monkeypatch.setenv("VISTUNE_DUCKDB_MEMORY_LIMIT", "lots")
    with pytest.raises(ValidationError, match="VISTUNE_DUCKDB_MEMORY_LIMIT='lots' is not a DuckDB size"):
        store.connect(db_path, read_only=True)


def test_a_bad_setting_is_one_line_naming_it_not_a_traceback(tmp_path: Path) -> None:
    env = {**__import__("os").environ, "VISTUNE_DB": str(tmp_path / "x.duckdb"), "VISTUNE_DUCKDB_MEMORY_LIMIT": "lots"}
    done = subprocess.run([sys.executable, "-c", "import sys; sys.argv = ['vistune', 'sql', 'select 1']; "
                           "from flows.cli import main; main()"], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert ("error: setting VISTUNE_DUCKDB_MEMORY_LIMIT: VISTUNE_DUCKDB_MEMORY_LIMIT='lots' is not a DuckDB size"
            in done.stderr)
    assert "Traceback" not in done.stderr
