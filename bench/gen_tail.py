"""Generation speed against the store's size: the last K requests of a store of N, the first N - K answered.

For each size N (default LLaVA's 158,000 and 10x that), one database is built once: N synthetic images,
one planned request each, and a stored `ok` response for all but the last K requests (written in SQL,
so only the store's size differs). Then each side generates those K requests against one zero-latency
simulator process, on its own copy of that database:
- before: claims of 1,000 requests whatever the store's size, and each flush of the engine's own journal
          checks that every response names a stored request (a scan of the request ids), as before;
- after:  the claim chunk sized from the store (`engine.claim_chunk_for`), own flushes not checked.
Reported per side and size: requests per second, and the seconds spent in claim transactions and in
flushes (summed over their threads). Linear means the same rate at every N.

    python -m bench.gen_tail --sizes 158000 1580000 --tail 20000 --json tail.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bench.gen_scale import synthetic_images
from schemas.generation import GenerateConfig
from tasks import store
from tasks.llm.engine import run_requests_sync
from tasks.prompting.plan import plan_requests
from tasks.store import journal, queries
from tests.sim import SimConfig, start_simulator_process

SIDES = ("before", "after")
OLD_CLAIM_CHUNK = 1000


def build(db: Path, n: int, tail: int) -> list[str]:
    """N planned requests, all but the last `tail` answered; returns the unanswered ids."""
    synthetic_images(db, n)
    ids = plan_requests(db, sample_types=["complex_reasoning"], model="gpt-4o-mini").request_ids
    with store.write(db) as con:
        con.execute("CREATE TEMP TABLE tail AS SELECT unnest(?::VARCHAR[]) AS request_id", [ids[-tail:]])
        con.execute(
            "INSERT INTO responses (response_id, request_id, attempt, status, content, created_at, run_id, endpoint) "
            "SELECT md5(request_id) || 'b', request_id, 1, 'ok', '{}', now()::TIMESTAMP, 'bench', 'default' "
            "FROM requests_stored ANTI JOIN tail USING (request_id)")
    return ids[-tail:]


@contextmanager
def timed(module: Any, name: str, totals: dict[str, list[float]]) -> Iterator[None]:
    """Count and time every call of `module.name` (from any thread) into `totals[name]`."""
    real: Callable[..., Any] = getattr(module, name)
    totals[name] = [0, 0.0]

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return real(*args, **kwargs)
        finally:
            totals[name][0] += 1
            totals[name][1] += time.perf_counter() - start

    setattr(module, name, wrapper)
    try:
        yield
    finally:
        setattr(module, name, real)


@contextmanager
def side_code(side: str) -> Iterator[None]:
    """The engine as `side` runs it (see the module docstring)."""
    if side == "after":
        yield
        return
    real_load = journal.load_segments

    def checked(*args: Any, own: bool = False, **kwargs: Any) -> int:
        return real_load(*args, **kwargs)  # as before: every flush checks its request ids

    journal.load_segments = checked  # type: ignore[assignment]
    try:
        yield
    finally:
        journal.load_segments = real_load  # type: ignore[assignment]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[158_000, 1_580_000])
    parser.add_argument("--tail", type=int, default=20_000, help="requests generated per side and size")
    parser.add_argument("--sides", nargs="+", choices=SIDES, default=list(SIDES))
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if args.tail < 1 or any(n <= args.tail for n in args.sizes):
        parser.error(f"--tail {args.tail} must be at least 1 and below every size in --sizes {args.sizes}: the first "
                     "N - K requests are the answered part of the store")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="vistune-tail-"))
    workdir.mkdir(parents=True, exist_ok=True)
    results: list[dict[str, Any]] = []
    with start_simulator_process(SimConfig(latency_ms=0, token_counter="approx", log_in_memory=False)) as sim:
        for n in args.sizes:
            base = workdir / f"base-{n}.duckdb"
            started = time.perf_counter()
            ids = build(base, n, args.tail)
            print(f"{n:,} stored requests, the last {args.tail:,} unanswered: built in "
                  f"{time.perf_counter() - started:.0f} s", flush=True)
            for side in args.sides:
                db = workdir / f"{side}-{n}.duckdb"
                shutil.copy(base, db)
                config = GenerateConfig(model="gpt-4o-mini", base_url=sim.base_url, api_key="sk-bench",
                                        concurrency=args.concurrency, timeout=60, max_attempts=3,
                                        claim_chunk=OLD_CLAIM_CHUNK if side == "before" else None)
                totals: dict[str, list[float]] = {}
                with side_code(side), timed(queries, "claim", totals), timed(journal, "load_segments", totals):
                    started = time.perf_counter()
                    stats = run_requests_sync(ids, db_path=db, config=config)
                    wall = time.perf_counter() - started
                row = {"stored_requests": n, "side": side, "requests": len(ids), "done": stats.done,
                       "failed": stats.failed, "wall_s": round(wall, 1), "req_per_s": round(stats.done / wall),
                       "claims": totals["claim"][0], "claim_s": round(totals["claim"][1], 2),
                       "flushes": totals["load_segments"][0], "flush_s": round(totals["load_segments"][1], 2)}
                results.append(row)
                print(json.dumps(row), flush=True)
                db.unlink()
                shutil.rmtree(journal.journal_dir(db), ignore_errors=True)
    print(json.dumps(results, indent=1))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
