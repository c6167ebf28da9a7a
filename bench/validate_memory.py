"""Peak RSS of `validate_pending` on a large database under different DuckDB memory limits (issue 16 goal 5).

Run each limit in its own process on its own copy of a database whose responses are not validated yet (e.g. a
`bench/gen_scale.py` database with `DELETE FROM samples` run on a copy); `--batches` stops after that many
batches of 5,000, since each page's query reads the whole tables whatever the page.

    VISTUNE_DUCKDB_MEMORY_LIMIT=18GB python -m bench.validate_memory --db copy1.duckdb   # about uncapped
    VISTUNE_DUCKDB_MEMORY_LIMIT=512MB python -m bench.validate_memory --db copy2.duckdb
"""

from __future__ import annotations

import argparse
import itertools
import time
from pathlib import Path

from tasks.curation import validate
from tasks.store import memory_limit


def _status_mib(field: str) -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) // 1024 for line in status if line.startswith(field + ":"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", type=Path, required=True)
    parser.add_argument("--batches", type=int, default=30, help="batches of 5,000 responses to validate")
    args = parser.parse_args()
    pages = validate._pending_batches
    validate._pending_batches = lambda path, size: itertools.islice(pages(path, size), args.batches)
    with open("/proc/self/clear_refs", "w") as refs:  # "5": reset VmHWM to the current RSS (Linux)
        refs.write("5")
    before, start = _status_mib("VmRSS"), time.perf_counter()
    stats = validate.validate_pending(args.db)
    seconds = time.perf_counter() - start
    print(f"memory_limit {memory_limit()}: {stats.checked:,} responses validated in {seconds:.1f} s, "
          f"RSS {before:,} MiB before, peak {_status_mib('VmHWM'):,} MiB")


if __name__ == "__main__":
    main()
