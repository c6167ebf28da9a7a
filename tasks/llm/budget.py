"""`--max-cost-usd`, held across every run that shares a `budget_id` (shards, Prefect retries, batch rounds).

Money already spent is read from the store when a budget is opened: the `cost_usd` of every response
of every run whose `runs.params` names the budget, journal rows not yet flushed included. Engines of
one process (shards run as threads) that open the same (database, budget_id) share one `Budget`
object, so their reservations see each other; it is dropped when the last of them closes, and the
next one (a retry) starts again from the store.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tasks import store
from tasks.store.journal import include_journal_rows, is_vanished_segment

_SPENT_SQL = """
SELECT coalesce(sum(r.cost_usd), 0) FROM responses r
WHERE r.run_id IN (SELECT run_id FROM runs WHERE json_extract_string(params, '$.budget_id') = ?)
"""


class Budget:
    """An attempt may start only if spent + reserved + its own estimate fits the cap. Thread-safe."""

    def __init__(self, cap: float | None, spent: float = 0.0) -> None:
        self.cap = cap
        self.spent = spent
        self.reserved = 0.0
        self._lock = threading.Lock()

    def try_reserve(self, estimate: float) -> bool:
        """Reserve an attempt's estimated cost; False when the cap would be passed."""
        with self._lock:
            if self.cap is not None and self.spent + self.reserved + estimate > self.cap:
                return False
            self.reserved += estimate
            return True

    def hold(self, estimate: float) -> None:
        """Reserve money already committed (an open batch), cap or not."""
        with self._lock:
            self.reserved += estimate

    def settle(self, estimate: float, actual: float) -> None:
        """Replace a reservation by what the attempt really cost."""
        with self._lock:
            self.reserved -= estimate
            self.spent += actual


def spent_usd(db_path: Path, budget_id: str, *, attempts: int = 5) -> float:
    """What the runs of `budget_id` have paid so far, journaled rows included."""
    for attempt in range(attempts):
        with store.read(db_path) as con:
            try:
                include_journal_rows(con, db_path)
                return float(con.execute(_SPENT_SQL, [budget_id]).fetchall()[0][0])
            except Exception as exc:  # a segment flushed between listing and reading: list again
                if not is_vanished_segment(exc) or attempt == attempts - 1:
                    raise
    raise AssertionError("unreachable")


_shared: dict[tuple[str, str], tuple[Budget, int]] = {}
_shared_lock = threading.Lock()


@contextmanager
def shared_budget(db_path: Path, budget_id: str, cap: float | None) -> Iterator[Budget]:
    """The process's `Budget` for (database, budget_id), opened from the store by its first user."""
    key = (str(Path(db_path).resolve()), budget_id)
    with _shared_lock:
        if key in _shared:
            budget, users = _shared[key]
            budget.cap = cap  # the latest caller's cap: a retry may raise it
        else:
            budget, users = Budget(cap, spent_usd(db_path, budget_id)), 0
        _shared[key] = (budget, users + 1)
    try:
        yield budget
    finally:
        with _shared_lock:
            budget, users = _shared[key]
            if users <= 1:
                del _shared[key]
            else:
                _shared[key] = (budget, users - 1)
