"""Planning at scale: `plan_requests` on N synthetic images, store with and without PRIMARY KEY indexes.

Side by side in one run, per size: the old store (a PRIMARY KEY index on every table, as schema 2
had) and the current one (keys kept by `store.insert_rows`, indexes only on small tables). Each
plan runs in a fresh database; the figure is the wall time of `plan_requests` alone (context
loading, message building, token counting, hashing and inserts, planning included).

    python bench/plan_scale.py --requests 20000 60000
    python bench/plan_scale.py --requests 158000 --json plan.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bench.gen_scale import synthetic_images
from schemas.tables import ALL_TABLES
from tasks.prompting.plan import plan_requests


@contextmanager
def indexed_store(indexed: bool) -> Iterator[None]:
    """With `indexed`, every table is created with its PRIMARY KEY index (the schema-2 store)."""
    if not indexed:
        yield
        return
    saved = {model: model.__dict__.get("key_index") for model in ALL_TABLES}
    try:
        for model in ALL_TABLES:
            model.key_index = True
        yield
    finally:
        for model, value in saved.items():
            if value is None:
                del model.key_index  # back to the inherited default
            else:
                model.key_index = value


def plan_seconds(n: int, indexed: bool) -> tuple[float, float]:
    """(seconds to plan n requests, database MiB) in a fresh database."""
    with tempfile.TemporaryDirectory() as tmp, indexed_store(indexed):
        db = Path(tmp) / "plan.duckdb"
        synthetic_images(db, n)
        start = time.perf_counter()
        plan = plan_requests(db, sample_types=["complex_reasoning"], model="gpt-4o-mini")
        seconds = time.perf_counter() - start
        assert plan.pending == n, plan.pending
        return seconds, db.stat().st_size / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, nargs="+", default=[20_000, 60_000])
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    rows = []
    print(f"{'requests':>9} {'store':>10} {'seconds':>8} {'s per 1K':>9} {'MiB':>6}")
    for n in args.requests:
        for indexed in (True, False):
            seconds, mib = plan_seconds(n, indexed)
            row = {"requests": n, "store": "pk-indexed" if indexed else "current", "seconds": round(seconds, 2),
                   "s_per_1k": round(seconds / n * 1000, 3), "mib": round(mib)}
            rows.append(row)
            print(f"{n:>9,} {row['store']:>10} {seconds:>8.1f} {row['s_per_1k']:>9.3f} {mib:>6.0f}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
