"""The DuckDB store: schema (derived from `schemas.tables`), migrations, connections, inserts.

DuckDB allows one writing process at a time, and a read-only process cannot open the file
while a writer holds it. So every writer here holds its connection only for one short
transaction (`with write() as con:`), and readers (`read()`, `vistune sql`) retry briefly until
the writer lets go. Long-running producers (generation) buffer in a journal, not in an open
connection. See README "Inspect the dataset with SQL".
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import threading
import time
import types
import typing
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from schemas.settings import get_settings
from schemas.tables import ALL_TABLES, PromptPrefixRow, RequestRow, TableRow
from tasks.store import prefixes
from tasks.store.queries import SLOT_STATUS_VIEW

# Bump when a migration below is added; `schema_version` records what a file has seen.
# 4: requests keep their shared prompt prefix once, in `prompt_prefixes` (`tasks/store/prefixes.py`).
SCHEMA_VERSION = 4

# Non-additive changes go here as (version, sql). Additive column changes need no entry:
# `migrate` adds any column a row model has and the table lacks.
MIGRATIONS: list[tuple[int, str]] = [
    # requests name the parser of their answer (tasks/llm/parsers.py); sample requests planned before had none
    # (the table is `requests_stored` since schema 4; `migrate` renames it before these run)
    (2, "UPDATE requests_stored SET kind = sample_type || '/' || output_format WHERE kind IS NULL"),
]
LEAN_BATCH = 20_000  # rows per step when schema 4 moves the prefixes of stored requests out

# One lock for this process's DuckDB connections, taken by `read()` and `write()` themselves: two
# connections to one file in one process must not overlap with different configurations, and
# journal flushes must not interleave with other writes. Re-entrant, so a helper that reads
# inside a caller's transaction does not deadlock its own thread.
DB_LOCK = threading.RLock()

# One sample per (image, sample type, prompt version): the first accepted one, should a slot hold two
# (answers of two processes before claims existed, or of two output formats).
DATASET_VIEW = """
CREATE OR REPLACE VIEW dataset AS
SELECT s.* FROM samples s
WHERE NOT EXISTS (SELECT 1 FROM duplicates d WHERE d.sample_id = s.sample_id)
QUALIFY row_number() OVER (PARTITION BY s.image_id, s.sample_type, s.prompt_version
                           ORDER BY s.created_at, s.sample_id) = 1
"""

# Files are written in a format that DuckDB 1.5 (the current `duckdb` CLI on PyPI) can still read,
# so users can inspect the store with the CLI as well as from Python.
STORAGE_COMPATIBILITY = "v1.5.0"

_LOCK_MARKERS = ("could not set lock", "conflicting lock", "database is locked", "lock on file")
_migrated: set[str] = set()  # files this process has brought to SCHEMA_VERSION


def utcnow() -> datetime:
    """Naive UTC now: DuckDB `TIMESTAMP` columns hold UTC without a zone."""
    return datetime.now(UTC).replace(tzinfo=None)


def stable_hash(*parts: Any, length: int = 32) -> str:
    """A content hash of JSON-serialisable parts, stable across processes and runs."""
    blob = json.dumps(parts, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:length]


def resolve_db(path: str | Path | None = None) -> Path:
    """The database file: the argument, else `VISTUNE_DB`, else `data/vistune.duckdb`."""
    return Path(path) if path is not None else get_settings().db_path


# ---------------------------------------------------------------- schema from the row models
def _sql_type(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if origin in (types.UnionType, typing.Union):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _sql_type(args[0])
    if annotation is str:
        return "VARCHAR"
    if annotation is bool:
        return "BOOLEAN"
    if annotation is int:
        return "BIGINT"
    if annotation is float:
        return "DOUBLE"
    if annotation is datetime:
        return "TIMESTAMP"
    if origin in (dict, list) or annotation in (dict, list):
        return "JSON"
    raise TypeError(f"no DuckDB type for annotation {annotation!r}")


def columns(model: type[TableRow]) -> dict[str, str]:
    """Column name -> DuckDB type for a row model, in field order."""
    return {name: _sql_type(field.annotation) for name, field in model.model_fields.items()}


def create_table_sql(model: type[TableRow]) -> str:
    """`CREATE TABLE IF NOT EXISTS` for a row model, with its primary key index where it keeps one."""
    cols = [f"{name} {sql_type}" for name, sql_type in columns(model).items()]
    if model.primary_key and model.key_index:
        cols.append(f"PRIMARY KEY ({', '.join(model.primary_key)})")
    return f"CREATE TABLE IF NOT EXISTS {model.table} (\n  " + ",\n  ".join(cols) + "\n)"


def migrate(con: duckdb.DuckDBPyConnection) -> None:
    """Bring a database to the current schema. Idempotent: safe on every open."""
    con.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER, applied_at TIMESTAMP)")
    current = con.execute("SELECT coalesce(max(version), 0) FROM schema_version").fetchall()[0][0]
    if current < 4 and _base_table(con, "requests"):  # schema 4: the table behind the view `requests`
        con.execute(f"ALTER TABLE requests RENAME TO {RequestRow.table}")
    for model in ALL_TABLES:
        con.execute(create_table_sql(model))
        existing = {r[0] for r in con.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = ?", [model.table]
        ).fetchall()}
        for name, sql_type in columns(model).items():
            if name not in existing:
                con.execute(f"ALTER TABLE {model.table} ADD COLUMN {name} {sql_type}")
    for version, sql in MIGRATIONS:
        if version > current:
            con.execute(sql)
    if current < 3:
        _drop_key_indexes(con)
    if current < 4:
        store_prefixes_once(con)
    con.execute(prefixes.requests_view_sql(list(columns(RequestRow))))
    con.execute(DATASET_VIEW)
    con.execute(SLOT_STATUS_VIEW)
    if current < SCHEMA_VERSION:
        con.execute("INSERT INTO schema_version VALUES (?, ?)", [SCHEMA_VERSION, utcnow()])


def _base_table(con: duckdb.DuckDBPyConnection, name: str) -> bool:
    return bool(con.execute("SELECT count(*) FROM information_schema.tables WHERE table_name = ? "
                            "AND table_type = 'BASE TABLE'", [name]).fetchall()[0][0])


def store_prefixes_once(con: duckdb.DuckDBPyConnection, *, batch: int = LEAN_BATCH) -> int:
    """Schema 4: keep the shared prefix of requests stored whole once, in `prompt_prefixes`; returns rows changed.

    Idempotent and resumable (each step commits on its own; a prefix is stored before the rows naming it).
    Ids and the view's messages stay the same bytes. DuckDB reuses the freed blocks for later rows but does
    not shrink the file; a copy (`COPY FROM DATABASE`) does.
    """
    changed, after = 0, ""
    while True:
        rows = con.execute(
            f"SELECT request_id, messages FROM {RequestRow.table} WHERE prefix_id IS NULL AND request_id > ? "
            "AND json_array_length(messages) > ? ORDER BY request_id LIMIT ?",
            [after, prefixes.OWN_MESSAGES, batch]).fetchall()
        if not rows:
            return changed
        after = rows[-1][0]
        known: dict[str, str] = {}  # prefix text -> id: a few prefixes among many rows
        found: dict[str, list[dict[str, Any]]] = {}
        ids, pids, owns = [], [], []
        for request_id, text in rows:
            prefix, own = prefixes.split(json.loads(text))
            key = json.dumps(prefix, ensure_ascii=False)
            if key not in known:
                known[key] = prefixes.prefix_id(prefix)
                found[known[key]] = prefix
            ids.append(request_id)
            pids.append(known[key])
            owns.append(_cell(own, "JSON"))
        now = utcnow()
        insert_rows(con, PromptPrefixRow, [PromptPrefixRow(prefix_id=pid, messages=m, created_at=now)
                                           for pid, m in found.items()])
        con.register("_vistune_lean", pa.table({"request_id": ids, "prefix_id": pids, "messages": owns}))
        try:
            changed += _inserted(con.execute(
                f"UPDATE {RequestRow.table} AS q SET prefix_id = l.prefix_id, messages = l.messages "
                "FROM _vistune_lean l WHERE q.request_id = l.request_id"))
        finally:
            con.unregister("_vistune_lean")


def _drop_key_indexes(con: duckdb.DuckDBPyConnection) -> None:
    # Schema 3: large tables keep their key without a PRIMARY KEY index (see TableRow.key_index).
    # DuckDB cannot drop a primary key in place, so such a table is copied, dropped and renamed.
    indexed = {r[0] for r in con.execute(
        "SELECT table_name FROM duckdb_constraints() WHERE constraint_type = 'PRIMARY KEY'").fetchall()}
    for model in ALL_TABLES:
        if model.key_index or model.table not in indexed:
            continue
        con.execute(f"CREATE TABLE {model.table}__rebuilt AS SELECT * FROM {model.table}")
        con.execute(f"DROP TABLE {model.table}")
        con.execute(f"ALTER TABLE {model.table}__rebuilt RENAME TO {model.table}")


# ---------------------------------------------------------------- connections
def _is_lock_error(exc: Exception) -> bool:
    return any(marker in str(exc).lower() for marker in _LOCK_MARKERS)


def connect(
    path: str | Path | None = None, *, read_only: bool = False, timeout_s: float = 30.0
) -> duckdb.DuckDBPyConnection:
    """Open the database, waiting up to `timeout_s` while another process holds the write lock."""
    db = resolve_db(path)
    if read_only and not db.exists():
        raise FileNotFoundError(f"no vistune database at {db}: run `vistune ingest` (or set VISTUNE_DB)")
    db.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + timeout_s
    delay = 0.005
    while True:
        try:
            if read_only:
                con = duckdb.connect(str(db), read_only=True)
            else:
                con = duckdb.connect(str(db), config={"storage_compatibility_version": STORAGE_COMPATIBILITY})
        except (duckdb.IOException, duckdb.ConnectionException) as exc:
            if not _is_lock_error(exc) or time.monotonic() > deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 0.1)
            continue
        # SET, not `config=`: a connection with its own config cannot join an instance the process has open.
        con.execute(f"SET memory_limit = '{memory_limit()}'")
        return con


def memory_limit() -> str:
    """DuckDB's memory for each database this process opens (the `duckdb_memory_limit` setting)."""
    return get_settings().duckdb_memory_limit


@contextmanager
def write(path: str | Path | None = None, *, timeout_s: float = 300.0) -> Iterator[duckdb.DuckDBPyConnection]:
    """A short write transaction: committed on success, rolled back on error, connection closed."""
    db = resolve_db(path)
    with DB_LOCK:
        con = connect(db, timeout_s=timeout_s)
        try:
            key = str(db.resolve())
            if key not in _migrated:
                migrate(con)
                _migrated.add(key)
            con.execute("BEGIN")
            try:
                yield con
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise
        finally:
            con.close()


@contextmanager
def read(path: str | Path | None = None, *, timeout_s: float = 30.0) -> Iterator[duckdb.DuckDBPyConnection]:
    """A read-only connection that never blocks a writer for longer than the caller's queries.

    A file written by an older vistune is migrated once first (only the store creates or changes
    tables); a current one is only read.
    """
    db = resolve_db(path)
    with DB_LOCK:
        con = connect(db, read_only=True, timeout_s=timeout_s)
        try:
            key = str(db.resolve())
            if key not in _migrated:
                if not _is_current(con):
                    con.close()
                    ensure_schema(db)
                    con = connect(db, read_only=True, timeout_s=timeout_s)
                _migrated.add(key)
            yield con
        finally:
            con.close()


def _is_current(con: duckdb.DuckDBPyConnection) -> bool:
    # Every table and column of the row models exists and no migration is due.
    try:
        version = con.execute("SELECT coalesce(max(version), 0) FROM schema_version").fetchall()[0][0]
    except duckdb.CatalogException:
        return False
    existing = set(con.execute("SELECT table_name, column_name FROM information_schema.columns").fetchall())
    return version >= SCHEMA_VERSION and all(
        (model.table, name) in existing for model in ALL_TABLES for name in columns(model))


def ensure_schema(path: str | Path | None = None) -> Path:
    """Create or migrate the database file; returns its path."""
    with write(path):
        pass
    return resolve_db(path)


def query(
    sql: str, params: Sequence[Any] | None = None, path: str | Path | None = None
) -> list[dict[str, Any]]:
    """Run a read-only query and return rows as dicts."""
    with read(path) as con:
        cur = con.execute(sql, params or [])
        names = [d[0] for d in cur.description]
        return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


# ---------------------------------------------------------------- inserts
def json_cell(value: Any) -> str:
    """The text a JSON column stores for `value` (what `insert_rows` writes; `insert_columns` expects it)."""
    return json.dumps(value, ensure_ascii=False, default=str)


def _cell(value: Any, sql_type: str) -> Any:
    if value is None:
        return None
    if sql_type == "JSON":
        return json_cell(value)
    if isinstance(value, datetime) and value.tzinfo is not None:
        return value.astimezone(UTC).replace(tzinfo=None)
    return value


def insert_rows(
    con: duckdb.DuckDBPyConnection,
    model: type[TableRow],
    rows: Iterable[TableRow | dict[str, Any]],
    *,
    on_conflict: str = "ignore",
) -> int:
    """Insert rows of one table in one statement; returns how many rows were new.

    `on_conflict` decides what a row whose primary key is already stored (or repeated in `rows`)
    does: "ignore" keeps the first (idempotent re-runs), "replace" keeps the last, "error" raises
    `duckdb.ConstraintException`. The key is enforced here, not by a DuckDB index (`TableRow.key_index`).
    """
    _check_on_conflict(on_conflict)
    cols = columns(model)
    records = [(r if isinstance(r, TableRow) else model.model_validate(r)).model_dump() for r in rows]
    arrays = {name: [_cell(rec[name], sql_type) for rec in records] for name, sql_type in cols.items()}
    return insert_columns(con, model, arrays, on_conflict=on_conflict)


def insert_columns(
    con: duckdb.DuckDBPyConnection,
    model: type[TableRow],
    data: dict[str, Sequence[Any]],
    *,
    on_conflict: str = "ignore",
    keys_unique: bool = False,
) -> int:
    """`insert_rows` for rows given as columns already in cell form; returns how many rows were new.

    For bulk writers (planning, ingest) that build columns directly instead of a row model per row:
    `data` has a list (or numpy array) per column of `model` (a missing column is NULL), JSON columns as JSON text,
    timestamps naive UTC. Rows are not validated by the model: the caller builds them from checked values.
    Repeated keys within `data` and stored keys behave as in `insert_rows`; `keys_unique` says the caller
    checked that `data` repeats no key (the check here is then skipped).
    """
    _check_on_conflict(on_conflict)
    cols = columns(model)
    unknown = set(data) - set(cols)
    if unknown:
        raise ValueError(f"{model.table} has no column(s) {sorted(unknown)}")
    n = len(next(iter(data.values()))) if data else 0
    if any(len(values) != n for values in data.values()):
        raise ValueError(f"{model.table}: columns of different lengths {[len(v) for v in data.values()]}")
    if not n:
        return 0
    table = _arrow_table(model, {name: data.get(name, [None] * n) for name in cols})
    key = model.primary_key
    # one row per key, as `insert_rows` keeps
    if key and not keys_unique and table.group_by(list(key)).aggregate([]).num_rows < n:
        first: dict[tuple[Any, ...], int] = {}
        for index, k in enumerate(zip(*(table.column(c).to_pylist() for c in key), strict=True)):
            if k in first and on_conflict == "error":
                raise duckdb.ConstraintException(f"{model.table}: duplicate key {dict(zip(key, k, strict=True))}")
            if on_conflict == "replace" or k not in first:
                first[k] = index
        table = table.take(sorted(first.values()))
    return _insert_table(con, model, table, on_conflict)


_ARROW_TYPES = {"VARCHAR": pa.string(), "JSON": pa.string(), "BIGINT": pa.int64(), "DOUBLE": pa.float64(),
                "BOOLEAN": pa.bool_(), "TIMESTAMP": pa.timestamp("us")}


def _check_on_conflict(on_conflict: str) -> None:
    if on_conflict not in ("ignore", "replace", "error"):
        raise ValueError(f"on_conflict must be ignore, replace or error, got {on_conflict!r}")


def _arrow_table(model: type[TableRow], arrays: dict[str, Any]) -> pa.Table:
    return pa.table({name: pa.array(arrays[name], type=_ARROW_TYPES[t]) for name, t in columns(model).items()})


def _insert_table(con: duckdb.DuckDBPyConnection, model: type[TableRow], table: pa.Table, on_conflict: str) -> int:
    # One statement for the whole batch; the key is kept here, not by a DuckDB index (`TableRow.key_index`).
    key = model.primary_key
    con.register("_vistune_rows", table)
    try:
        if not key:
            return _inserted(con.execute(f"INSERT INTO {model.table} BY NAME SELECT * FROM _vistune_rows"))
        using = ", ".join(key)
        # The stored keys among this batch's (a scan of the key columns, then a small join).
        existing = f"(SELECT {using} FROM {model.table} SEMI JOIN _vistune_rows USING ({using}))"
        if on_conflict == "error":
            clash = con.execute(f"SELECT {using} FROM {existing} LIMIT 1").fetchall()
            if clash:
                raise duckdb.ConstraintException(
                    f"{model.table}: duplicate key {dict(zip(key, clash[0], strict=True))}")
        replaced = 0
        if on_conflict == "replace":
            replaced = _inserted(con.execute(
                f"DELETE FROM {model.table} WHERE ({using}) IN (SELECT ({using}) FROM _vistune_rows)"))
        new = _inserted(con.execute(
            f"INSERT INTO {model.table} BY NAME SELECT r.* FROM _vistune_rows r ANTI JOIN {existing} USING ({using})"))
        return new - replaced
    finally:
        with contextlib.suppress(duckdb.Error):  # an aborted transaction refuses it; close() cleans up
            con.unregister("_vistune_rows")


def _inserted(cursor: duckdb.DuckDBPyConnection) -> int:
    # DuckDB answers an INSERT or DELETE with one row: the number of rows it changed.
    return int(cursor.fetchall()[0][0])


def table_counts(path: str | Path | None = None) -> dict[str, int]:
    """Row count of every table and of the `dataset` view; requests are counted as `requests` (the view)."""
    with read(path) as con:
        names = ["requests" if m is RequestRow else m.table for m in ALL_TABLES] + ["dataset"]
        return {n: con.execute(f"SELECT count(*) FROM {n}").fetchall()[0][0] for n in names}
