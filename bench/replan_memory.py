"""A re-plan of an answered store: wall time and peak RSS, the slot states read per step or all at once.

Every generate round plans again, and so does every nightly run, so on a large store most slots are
answered. One side per process (the peak RSS is the process's), on a copy of `--db`:
- before: every answered slot's state read in one query and held for the whole plan, as it was;
- after:  each step of images reads only its own slots (`slot_states` with an image range).

    python -m bench.replan_memory --db /tmp/scale/scale.duckdb --rounds 2
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

SIDES = ("before", "after")


def replan(db: Path, side: str, sample_type: str, model: str) -> dict[str, Any]:
    """Plan once in this process as `side` does; returns seconds, counts and this process's peak RSS."""
    from tasks.prompting import plan as plan_module
    from tasks.store import queries

    if side == "before":
        every_state: dict[str, Any] = {}

        def all_at_once(con: Any, model: str, image_range: tuple[int, int] | None = None) -> Any:
            if model not in every_state:
                every_state[model] = queries.slot_states(con, model)
            return every_state[model]

        plan_module.slot_states = all_at_once  # type: ignore[assignment]
    started = time.perf_counter()
    result = plan_module.plan_requests(db, sample_types=[sample_type], model=model)
    return {"side": side, "seconds": round(time.perf_counter() - started, 1), "already_ok": result.already_ok,
            "pending": result.pending, "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--db", type=Path, required=True, help="a planned and answered store (copied, not changed)")
    parser.add_argument("--type", default="complex_reasoning")
    parser.add_argument("--model", default="gpt-4o-mini")
    parser.add_argument("--rounds", type=int, default=1, help="both sides per round, every other round reversed")
    parser.add_argument("--side", choices=SIDES, help=argparse.SUPPRESS)  # one side, in a child process
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if not args.db.is_file():
        parser.error(f"--db {args.db}: no such database (bench/gen_scale.py leaves one: WORKDIR/scale.duckdb)")
    if args.side:
        print(json.dumps(replan(args.db, args.side, args.type, args.model)))
        return
    results = []
    with tempfile.TemporaryDirectory(prefix="vistune-replan-") as tmp:
        for round_no in range(args.rounds):
            for side in SIDES if round_no % 2 == 0 else reversed(SIDES):
                copy = Path(tmp) / "replan.duckdb"
                shutil.copy(args.db, copy)
                out = subprocess.run([sys.executable, "-m", "bench.replan_memory", "--db", str(copy), "--side", side,
                                      "--type", args.type, "--model", args.model],
                                     capture_output=True, text=True, check=True)
                results.append(json.loads(out.stdout.strip().splitlines()[-1]))
                print(json.dumps(results[-1]), flush=True)
                copy.unlink()
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
