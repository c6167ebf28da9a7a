"""A rate limiter shared by every thread and process on one machine: a token bucket in SQLite.

Why SQLite and not Prefect's global concurrency limits: each Prefect acquisition is a round trip
to the server (measured: 20 `rate_limit` calls took 15-27 s for a 5/s limit), far too slow to
gate ~158K requests one by one. Why not `filelock` + a JSON file: SQLite gives us the exclusive
lock (`BEGIN IMMEDIATE`) and the atomic read-modify-write of the bucket state in one stdlib
module, with no extra dependency and no hand-written file format. Each acquisition is one short
write transaction (WAL, `synchronous=OFF`: the bucket needs no durability), ~30 µs uncontended.

The bucket file must be on a local disk that every worker sees (SQLite locking is unreliable
over NFS); for workers on several machines, give each machine its share of the limit
(`rpm / n_machines`) — see docs/ORCHESTRATION.md.

The class implements the generation client's limiter protocol (`tasks/llm/ratelimit.py`):
`async acquire(requests=1, tokens=0)`, `penalize(retry_after_s)`, `observe_headers(headers)`.
It is safe to share one instance between threads that each run their own event loop (the
thread-pool task runner does exactly that: one loop per shard).
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import Mapping
from pathlib import Path

_SCHEMA = """
CREATE TABLE IF NOT EXISTS bucket (
    name TEXT PRIMARY KEY,
    requests REAL NOT NULL,      -- request permits currently in the bucket
    tokens REAL NOT NULL,        -- token permits currently in the bucket
    updated REAL NOT NULL,       -- wall-clock time of the last refill (time.time(): shared by processes)
    paused_until REAL NOT NULL   -- after a 429 everybody waits until this time
)
"""


class SharedRateLimiter:
    """Token buckets for requests per minute and tokens per minute, shared through a SQLite file.

    `rpm` / `tpm` of `None` mean "no limit on that axis". `burst_s` is how many seconds of
    permits may be spent at once (a small burst keeps every 1-minute window within the limit).
    """

    def __init__(
        self,
        path: str | Path,
        *,
        rpm: float | None = None,
        tpm: float | None = None,
        name: str = "default",
        burst_s: float = 1.0,
    ) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.rpm = rpm
        self.tpm = tpm
        self.burst_s = burst_s
        self._local = threading.local()
        con = self._connect()
        try:
            con.execute(_SCHEMA)
            con.execute(
                "INSERT OR IGNORE INTO bucket VALUES (?, ?, ?, ?, 0)",
                (name, self._capacity(rpm), self._capacity(tpm), time.time()),
            )
        finally:
            con.close()

    # ------------------------------------------------------------------ the limiter protocol
    async def acquire(self, requests: int = 1, tokens: int = 0) -> None:
        """Wait until `requests` request permits and `tokens` token permits are free, then take them."""
        while True:
            wait_s = self.try_acquire(requests, tokens)
            if wait_s <= 0:
                return
            await asyncio.sleep(wait_s)

    def penalize(self, retry_after_s: float) -> None:
        """A 429 was seen: every worker sharing the file pauses for `retry_after_s`."""
        until = time.time() + max(0.0, retry_after_s)
        with self._transaction() as con:
            con.execute(
                "UPDATE bucket SET paused_until = max(paused_until, ?), requests = min(requests, 0) "
                "WHERE name = ?",
                (until, self.name),
            )

    def observe_headers(self, headers: Mapping[str, str]) -> None:
        """Learn the limits from `x-ratelimit-limit-*` headers when none were configured."""
        lowered = {k.lower(): v for k, v in headers.items()}
        if self.rpm is None and (value := _number(lowered.get("x-ratelimit-limit-requests"))):
            self.rpm = value
        if self.tpm is None and (value := _number(lowered.get("x-ratelimit-limit-tokens"))):
            self.tpm = value

    def for_endpoint(self, key: str, *, rpm: float | None, tpm: float | None) -> SharedRateLimiter:
        """The bucket of one endpoint of an endpoints file (`key` names it), in the same file (`tasks/llm/pool.py`)."""
        return SharedRateLimiter(self.path, rpm=rpm, tpm=tpm, name=f"endpoint:{key}", burst_s=self.burst_s)

    def wait_estimate_s(self, tokens: int = 0) -> float:
        """About how long one more request with `tokens` would wait now, all processes counted (0: at once).

        A read, nothing taken: used to route requests between endpoints.
        """
        con = self._transaction().con
        row = con.execute("SELECT requests, tokens, updated, paused_until FROM bucket WHERE name = ?",
                          (self.name,)).fetchone()
        have_req, have_tok, updated, paused_until = row
        now = time.time()
        elapsed = max(0.0, now - updated)
        return max(paused_until - now,
                   self._shortfall_s(self._refill(have_req, elapsed, self.rpm), 1, self.rpm),
                   self._shortfall_s(self._refill(have_tok, elapsed, self.tpm), tokens, self.tpm), 0.0)

    # ------------------------------------------------------------------ the bucket
    def try_acquire(self, requests: int = 1, tokens: int = 0) -> float:
        """Take the permits if they are there and return 0, else return the seconds to wait first."""
        now = time.time()
        with self._transaction() as con:
            row = con.execute(
                "SELECT requests, tokens, updated, paused_until FROM bucket WHERE name = ?", (self.name,)
            ).fetchone()
            have_req, have_tok, updated, paused_until = row
            if now < paused_until:
                return paused_until - now
            elapsed = max(0.0, now - updated)
            have_req = self._refill(have_req, elapsed, self.rpm)
            have_tok = self._refill(have_tok, elapsed, self.tpm)
            wait_s = max(
                self._shortfall_s(have_req, requests, self.rpm),
                self._shortfall_s(have_tok, tokens, self.tpm),
            )
            if wait_s <= 0:
                have_req -= requests if self.rpm else 0
                have_tok -= tokens if self.tpm else 0
            con.execute(
                "UPDATE bucket SET requests = ?, tokens = ?, updated = ? WHERE name = ?",
                (have_req, have_tok, now, self.name),
            )
            return wait_s

    def _capacity(self, per_minute: float | None) -> float:
        return 0.0 if per_minute is None else max(1.0, per_minute / 60.0 * self.burst_s)

    def _refill(self, level: float, elapsed: float, per_minute: float | None) -> float:
        if per_minute is None:
            return 0.0
        return min(self._capacity(per_minute), level + elapsed * per_minute / 60.0)

    def _shortfall_s(self, level: float, need: float, per_minute: float | None) -> float:
        if per_minute is None or need <= 0:
            return 0.0
        # A request larger than the whole bucket may go once the bucket is full (else it never could).
        need = min(need, self._capacity(per_minute))
        if level >= need:
            return 0.0
        return (need - level) * 60.0 / per_minute

    # ------------------------------------------------------------------ sqlite plumbing
    def _connect(self) -> sqlite3.Connection:
        con = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
        con.execute("PRAGMA journal_mode=WAL")
        con.execute("PRAGMA synchronous=OFF")
        return con

    def _transaction(self) -> _Transaction:
        con = getattr(self._local, "con", None)
        if con is None:
            con = self._local.con = self._connect()
        return _Transaction(con)

    def __getstate__(self) -> dict[str, object]:
        # Picklable for process-based task runners: each process opens its own connections.
        state = self.__dict__.copy()
        state.pop("_local")
        return state

    def __setstate__(self, state: dict[str, object]) -> None:
        self.__dict__.update(state)
        self._local = threading.local()


class _Transaction:
    """`BEGIN IMMEDIATE` takes SQLite's write lock up front, so the read-modify-write is atomic."""

    def __init__(self, con: sqlite3.Connection) -> None:
        self.con = con

    def __enter__(self) -> sqlite3.Connection:
        self.con.execute("BEGIN IMMEDIATE")
        return self.con

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self.con.execute("ROLLBACK" if exc_type else "COMMIT")


def _number(value: str | None) -> float | None:
    try:
        return float(value) if value else None
    except ValueError:
        return None
