"""Live generation progress in the Prefect UI: one progress artifact plus a summary at the end.

Shards report `GenerateStats` snapshots from their own threads; storing a snapshot is a dict
assignment under a lock. A background thread pushes the totals to the progress artifact at most
once per `interval_s`, so no HTTP call to the Prefect server ever runs inside a shard's event loop.
Its artifact calls say `_sync=True`: the generate flow is async (flows/generate.py), but this runs in threads.
"""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Callable, Hashable

from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)

from schemas.generation import GenerateStats

PROGRESS_KEY = "generation-progress"
SUMMARY_KEY = "generation-summary"

# In-process observers of the totals (the CLI's progress bar); called from the pusher thread.
Listener = Callable[[GenerateStats, int], None]
_listeners: list[Listener] = []


def add_listener(listener: Listener) -> Callable[[], None]:
    """Call `listener(totals, total_requests)` on every push; returns a function that removes it."""
    _listeners.append(listener)
    return lambda: _listeners.remove(listener)


def combine(snapshots: list[GenerateStats]) -> GenerateStats:
    """Sum of several shards' statistics (wall time: the longest)."""
    total = GenerateStats()
    for s in snapshots:
        total.add(s)
    return total


def describe(stats: GenerateStats, total: int) -> str:
    """One line for the UI: done/total, failures, tokens, cost."""
    finished = stats.done + stats.already_ok
    return (f"{finished:,}/{total:,} done · {stats.failed:,} failed · {stats.attempts:,} calls · "
            f"{stats.tokens:,} tokens · ${stats.cost_usd:,.4f}")


class GenerationProgress:
    """Aggregates shard snapshots and mirrors them into a Prefect progress artifact."""

    def __init__(self, total: int = 0, *, interval_s: float = 1.0) -> None:
        self.total = total  # grows with every round of the generate step (`add_total`)
        self.interval_s = interval_s
        self._snapshots: dict[Hashable, GenerateStats] = {}
        self._lock = threading.Lock()
        self._changed = threading.Event()
        self._stop = threading.Event()
        self.artifact_id = create_progress_artifact(
            progress=0.0 if total else 100.0, key=PROGRESS_KEY,
            description=f"0/{total:,} requests (nothing to send)" if not total else f"0/{total:,} requests",
            _sync=True,
        )
        # The pusher needs the flow's Prefect context (API URL, the run's API client): copy it over.
        context = contextvars.copy_context()
        self._thread = threading.Thread(target=context.run, args=(self._push_loop,), daemon=True)
        self._thread.start()

    def add_total(self, n: int) -> None:
        """Count `n` more requests to send (the next round's)."""
        with self._lock:
            self.total += n
        self._changed.set()

    def report(self, shard: Hashable, stats: GenerateStats) -> None:
        """Record the latest snapshot of one shard (cheap; called from the shard's thread)."""
        with self._lock:
            self._snapshots[shard] = stats.model_copy()
        self._changed.set()

    def totals(self) -> GenerateStats:
        """Everything reported so far, summed over shards."""
        with self._lock:
            return combine(list(self._snapshots.values()))

    def percent(self, stats: GenerateStats) -> float:
        """Share of requests that have ended (good or finally failed), 0-100."""
        if not self.total:
            return 100.0
        return min(100.0, 100.0 * (stats.done + stats.already_ok + stats.failed) / self.total)

    def _push(self) -> None:
        stats = self.totals()
        update_progress_artifact(self.artifact_id, self.percent(stats), description=describe(stats, self.total),
                                 _sync=True)
        for listener in list(_listeners):
            listener(stats, self.total)

    def _push_loop(self) -> None:
        while not self._stop.is_set():
            if self._changed.wait(timeout=self.interval_s) and not self._stop.is_set():
                self._changed.clear()
                self._push()
                self._stop.wait(self.interval_s)

    def finish(self, *, model: str, warnings: list[str] | None = None) -> GenerateStats:
        """Stop the pusher, write the final figures and a summary (markdown + table) artifact.

        `warnings` (e.g. costs not counted for an unpriced model) head the summary.
        """
        self._stop.set()
        self._changed.set()  # wake the pusher now, not at the end of its wait (up to `interval_s` per run)
        self._thread.join(timeout=10)
        self._push()
        stats = self.totals()
        create_markdown_artifact(
            key=SUMMARY_KEY,
            markdown=(
                f"## Generation with `{model}`\n\n"
                + "".join(f"**Warning:** {w}\n\n" for w in warnings or [])
                + f"{describe(stats, self.total)}\n\n"
                f"- requests planned: {self.total:,} (already answered before this run: {stats.already_ok:,})\n"
                f"- input tokens: {stats.prompt_tokens:,} (cached: {stats.cached_tokens:,}), "
                f"output tokens: {stats.completion_tokens:,}\n"
                f"- cost: ${stats.cost_usd:,.4f}\n"
            ),
            description="generation summary",
            _sync=True,
        )
        rows = [{"status": status, "attempts": n, "final": stats.final_by_status.get(status, 0)}
                for status, n in sorted(stats.attempts_by_status.items())]
        if rows:
            create_table_artifact(table=rows, key=f"{SUMMARY_KEY}-statuses", description="attempts by status",
                                  _sync=True)
        return stats
