"""A per-process append-only journal of response rows, flushed into DuckDB in short batches.

Why: DuckDB admits one writing process and locks readers out while it writes. Holding a write
connection for a whole run would shut out `vistune sql` and other workers; committing every
attempt would spend the run in lock waits. So each attempt is appended to a JSONL file and
flushed to the OS at once (a SIGKILL then loses only calls still in flight), and the rows move
into `responses` every minute or two in one short `store.write()` transaction.

Readers: `include_journal_rows` lets a read-only connection see `responses` with the rows still in
journals (of live and of crashed processes), so `vistune sql` is current even though flushes are
minutes apart. The `duckdb` CLI sees the table as of the last flush.

Layout, under `<db>.journal/`: `<owner>.lock` is held (flock) by the live process for its whole
life; its rows go to `<owner>.<seq>.jsonl` segments. A flush closes the current segment, starts
the next, inserts the closed one and deletes it. A crashed process leaves its lock unheld and
its segments behind; `replay_orphans` inserts them (idempotent by `response_id`), releases the
dead process's request claims (`tasks/store/queries.py`) and deletes them.

Only well-formed lines enter `responses`: each must validate as a `ResponseRow` and name a request
that exists in `requests_stored`. Anything else (a forged or corrupted line) is skipped, counted and logged,
never stored; `include_journal_rows` shows readers the same rows.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import duckdb
from pydantic import ValidationError

from schemas.tables import ResponseRow
from tasks import store
from tasks.store import queries

log = logging.getLogger("vistune.journal")
# Runs inside the transaction that stores a flush's rows: the engine settles its claims there.
InTransaction = Callable[[duckdb.DuckDBPyConnection], Any]


def journal_dir(db_path: str | Path) -> Path:
    """The folder beside the database that holds the journals."""
    db = Path(db_path)
    return db.with_name(db.name + ".journal")


class Journal:
    """Append response rows durably; move them to DuckDB with `flush()`."""

    def __init__(self, db_path: str | Path) -> None:
        self.db_path = Path(db_path)
        self.dir = journal_dir(self.db_path)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.owner = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        # Locked under a temporary name, then renamed: `replay_orphans` (another engine's, maybe in this
        # process) only ever sees a `.lock` that is already held, never one it could take for an orphan's.
        pending_lock = self.dir / f"{self.owner}.lock.new"
        self._lock_file = open(pending_lock, "w")  # noqa: SIM115 - held for the object's life
        fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        self._lock_path = pending_lock.rename(self.dir / f"{self.owner}.lock")
        self._seq = 0
        self._mutex = threading.Lock()  # append (event loop) vs rotate (flush thread)
        self._segment = self._open_segment()
        self._pending = 0
        self._unloaded: list[Path] = []  # closed segments not yet in DuckDB
        self._flush_lock = threading.Lock()
        self.flushed = 0

    def _open_segment(self):
        self._seq += 1
        return open(self.dir / f"{self.owner}.{self._seq:06d}.jsonl", "a", encoding="utf-8")

    @property
    def pending(self) -> int:
        """Rows appended but not yet in DuckDB."""
        return self._pending

    def append(self, row: dict[str, Any]) -> None:
        """Write one response row (a `ResponseRow` dump) and hand it to the OS before returning."""
        line = json.dumps(row, ensure_ascii=False, default=str) + "\n"
        with self._mutex:
            self._segment.write(line)
            self._segment.flush()
            self._pending += 1

    def flush(self, then: InTransaction | None = None) -> int:
        """Move every appended row into DuckDB; returns how many rows were new. Thread-safe.

        `then(con)` runs in the same transaction, after the rows are inserted (also when there are none).
        """
        with self._flush_lock:
            with self._mutex:
                if self._pending:
                    closed = self._segment
                    self._segment = self._open_segment()
                    closed.close()
                    self._unloaded.append(Path(closed.name))
                    self.flushed += self._pending
                    self._pending = 0
                paths = list(self._unloaded)
            if not paths and then is None:
                return 0
            # This engine's own rows: each names a request it claimed from `requests`, so the check that the
            # request exists (a scan of every stored request id) is left to replays of others' journals.
            new = load_segments(paths, self.db_path, then=then, own=True)  # on error the segments stay, retried
            self._unloaded = [p for p in self._unloaded if p not in paths]
            return new

    def close(self) -> None:
        """Flush what is left, then release the lock and remove this process's files."""
        self.flush()
        self._segment.close()
        Path(self._segment.name).unlink(missing_ok=True)
        fcntl.flock(self._lock_file, fcntl.LOCK_UN)
        self._lock_file.close()
        self._lock_path.unlink(missing_ok=True)


def read_segment(path: Path) -> list[dict[str, Any]]:
    """The complete lines of a segment, parsed; a torn last line (killed mid-write) is skipped.

    A line that is not a JSON object is returned as None (`load_segments` counts it as skipped).
    """
    rows: list[Any] = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if not line.endswith("\n"):
                break
            try:
                row = json.loads(line)
            except ValueError:
                row = None
            rows.append(row if isinstance(row, dict) else None)
    return rows


def _well_formed(rows: list[Any]) -> tuple[list[ResponseRow], int]:
    good, bad = [], 0
    for row in rows:
        try:
            good.append(ResponseRow.model_validate(row))
        except ValidationError:
            bad += 1
    return good, bad


def load_segments(
    paths: list[Path], db_path: str | Path, *, then: InTransaction | None = None, own: bool = False
) -> int:
    """Insert the well-formed rows of the segments into `responses` in one transaction, then delete them.

    A line that is no `ResponseRow`, or names a request that is not in `requests`, is skipped and
    logged. `then(con)` runs inside the same transaction. Returns how many rows were new. `own`: the
    segments are the calling engine's, written only for requests it claimed, so every request exists.
    """
    rows, skipped = _well_formed([row for p in paths if p.exists() for row in read_segment(p)])
    new = 0
    if rows or then is not None:
        with store.write(db_path) as con:
            if rows:
                kept = rows
                if not own:
                    known = {r[0] for r in con.execute(
                        "SELECT request_id FROM requests_stored WHERE request_id IN (SELECT unnest(?::VARCHAR[]))",
                        [sorted({r.request_id for r in rows})]).fetchall()}
                    kept = [r for r in rows if r.request_id in known]
                    skipped += len(rows) - len(kept)
                new = store.insert_rows(con, ResponseRow, kept, on_conflict="ignore")
            if then is not None:
                then(con)
    if skipped:
        log.warning("journal: skipped %d line(s) of %s that are not a response row of a planned request",
                    skipped, ", ".join(p.name for p in paths))
    for p in paths:
        p.unlink(missing_ok=True)
    return new


def owner_alive(db_path: str | Path, owner: str) -> bool:
    """Whether the journal of `owner` may still hold rows: its lock file exists (held by a live process,
    or left by a dead one whose rows `replay_orphans` has not loaded yet)."""
    return (journal_dir(db_path) / f"{owner}.lock").exists()


def replay_orphans(db_path: str | Path) -> int:
    """Load the journals of processes that died before flushing; returns the rows recovered."""
    folder = journal_dir(db_path)
    if not folder.exists():
        return 0
    recovered = 0
    for lock_path in sorted(folder.glob("*.lock")):
        owner = lock_path.stem
        with open(lock_path, "a") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # its process is alive and will flush its own rows
            segments = sorted(folder.glob(f"{owner}.*.jsonl"))
            # its claims go in the same transaction as its rows: another engine may now send the rest
            release = lambda con, owner=owner: queries.release_claims(con, owner)  # noqa: E731
            recovered += load_segments(segments, db_path, then=release)
            lock_path.unlink(missing_ok=True)
    return recovered


_VANISHED_MARKERS = ("no files found", "cannot open file", "no such file")


def _sql_literal(value: Any) -> str:
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    return repr(value)


def segments(db_path: str | Path) -> list[Path]:
    """The journal segments of a database (of live and of crashed processes), sorted."""
    return sorted(journal_dir(db_path).glob("*.jsonl"))


def include_journal_rows(
    con: duckdb.DuckDBPyConnection, db_path: str | Path, listed: list[Path] | None = None
) -> int:
    """Make `responses` in this connection also show the rows still in journals; returns the segments read.

    A temporary view named `responses` shadows the table for this connection only: the table's rows
    plus every complete journal row whose `response_id` is not in the table yet (a flush inserts a
    segment before deleting it). Columns and defaults come from `ResponseRow`, as a flush would
    store them. As on replay, only rows of planned requests are shown (a line that does not parse is
    skipped by `read_json`). A segment can vanish between listing and reading (its flush finished):
    the caller retries when `is_vanished_segment(exc)`. `listed`: the segments to read (default: `segments`).
    """
    chosen = segments(db_path) if listed is None else listed
    if not chosen:
        return 0
    catalog = con.execute("SELECT current_database()").fetchall()[0][0]
    table = '"' + catalog.replace('"', '""') + '".main.responses'
    types = store.columns(ResponseRow)
    required = " AND ".join(f"j.{name} IS NOT NULL" for name, f in ResponseRow.model_fields.items() if f.is_required())
    select = []
    for name, field in ResponseRow.model_fields.items():
        default = None if field.is_required() else field.default
        select.append(f"coalesce(j.{name}, {_sql_literal(default)}) AS {name}" if default is not None else f"j.{name}")
    files = ", ".join(_sql_literal(str(p)) for p in chosen)
    spec = ", ".join(f"{_sql_literal(name)}: {_sql_literal(sql_type)}" for name, sql_type in types.items())
    con.execute(
        f"CREATE OR REPLACE TEMP VIEW responses AS SELECT * FROM {table} UNION ALL BY NAME "
        f"SELECT {', '.join(select)} FROM read_json([{files}], format = 'newline_delimited', "
        f"columns = {{{spec}}}, ignore_errors = true) j "  # a torn last line (killed mid-write) is skipped
        f"WHERE j.response_id NOT IN (SELECT response_id FROM {table}) "
        f"AND {required} AND j.request_id IN (SELECT request_id FROM {table.removesuffix('responses')}requests_stored)"
    )
    return len(chosen)


def is_vanished_segment(exc: BaseException) -> bool:
    """True when a query failed because a journal segment was flushed and deleted meanwhile."""
    return isinstance(exc, duckdb.IOException) and any(m in str(exc).lower() for m in _VANISHED_MARKERS)
