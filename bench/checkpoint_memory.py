"""DuckDB's memory in a checkpoint, against its memory cap: why the store's cap sets a 10x run's peak.

Appends `--steps` transactions of 10,000 rows (a 32-character key and ~0.8 KB of JSON text each, a plan step's
shape) to one table, each in its own connection as the store's short transactions are, and records how far
each step (insert, commit, and the close's automatic checkpoint, where the large spikes are) raised the
process's peak RSS (VmHWM) above its RSS before the step. One fresh process per cap, side by side:

    python bench/checkpoint_memory.py --caps 128MB 256MB 512MB --steps 60
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROWS = 10_000


def _status_mib(field: str) -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) // 1024 for line in status if line.startswith(field + ":"))


def run_cap(cap: str, steps: int) -> dict[str, float]:
    """The steps under one cap, in this process: the highest and median step spikes (MiB) and the seconds."""
    import duckdb
    import pyarrow as pa

    path = Path(tempfile.mkdtemp(prefix="ckpt-")) / "ckpt.duckdb"
    con = duckdb.connect(str(path))
    con.execute("CREATE TABLE t (id VARCHAR, image_id BIGINT, messages JSON)")
    con.close()
    spikes: list[int] = []
    started = time.perf_counter()
    for step in range(steps):
        ids = [hashlib.sha256(f"{step}-{i}".encode()).hexdigest()[:32] for i in range(ROWS)]
        rows = pa.table({"id": ids, "image_id": range(step * ROWS, (step + 1) * ROWS),
                         "messages": [f'[{{"role": "user", "content": "image {i}: {"x" * 700}"}}]' for i in ids]})
        con = duckdb.connect(str(path))
        con.execute(f"SET memory_limit = '{cap}'")
        con.register("rows", rows)
        with open("/proc/self/clear_refs", "w") as refs:  # "5": VmHWM back to the current RSS (Linux)
            refs.write("5")
        before = _status_mib("VmRSS")
        con.execute("BEGIN")  # the store's insert: new keys only, then commit
        con.execute("INSERT INTO t SELECT r.* FROM rows r ANTI JOIN (SELECT id FROM t SEMI JOIN rows USING (id)) "
                    "USING (id)")
        con.execute("COMMIT")
        con.close()
        spikes.append(_status_mib("VmHWM") - before)
    ordered = sorted(spikes)
    return {"cap": cap, "rows": steps * ROWS, "seconds": round(time.perf_counter() - started, 1),
            "highest_spike_mib": ordered[-1], "median_spike_mib": ordered[len(ordered) // 2]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--caps", nargs="+", default=["128MB", "256MB", "512MB"])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.steps < 1:
        parser.error(f"--steps must be at least 1, got {args.steps}")
    if args.child:
        print(json.dumps(run_cap(args.child, args.steps)))
        return
    print(f"{'cap':>6} {'rows':>9} {'seconds':>8} {'highest step spike':>19} {'median':>7}")
    for cap in args.caps:
        done = subprocess.run([sys.executable, __file__, "--steps", str(args.steps), "--child", cap],
                              capture_output=True, text=True)
        if done.returncode:  # e.g. a cap DuckDB does not read: its own message, in one line
            last = (done.stderr.strip().splitlines() or ["no output"])[-1]
            sys.exit(f"cap {cap!r}: {last}")
        row = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"{cap:>6} {row['rows']:>9,} {row['seconds']:>8.1f} {row['highest_spike_mib']:>15} MiB "
              f"{row['median_spike_mib']:>3} MiB", flush=True)


if __name__ == "__main__":
    main()
