"""Planning at scale: `plan_requests` on N synthetic images, several paths side by side in one run.

Per size, each side plans in a fresh database (one `complex_reasoning` request per image, vistune's
own prompt set, structured). Sides (`--sides`, default `before after`):

- `before`: the planning path of commit 874f880 (`bench/plan_before.py`: a row model per request,
  one tiktoken call per message, chunks of 2,000 images), schema 4;
- `after`: the current `plan_requests` (columns built directly, one batched token count per chunk,
  chunks of `plan.IMAGE_CHUNK` images), schema 4; its ids must equal `before`'s (checked);
- `schema-3`: the current code with every `requests` row holding its full messages (`plan.SHARE_PREFIXES =
  False`: the schema-3 rows and ids, `store.stable_hash` over the full messages per request);
- `pk-indexed`: schema 3 with a PRIMARY KEY index on every table (schema 2);
- `steps-by-size`: the current code with its own step policy (steps of N/32 images, 10,000 to 50,000) even
  when `--step N` gives the other sides fixed steps of N images.

Figures: the wall time of `plan_requests` alone (context loading, messages, token counts, hashing,
inserts), the process's highest RSS while it plans (VmHWM, reset before it; the process holds the synthetic
database's build before, so compare sides, not absolute values across sizes), the file's growth by
planning per request (what the requests cost on disk), and the whole file (images, captions and objects
included) per request.

    python bench/plan_scale.py --requests 40000 158000
    python bench/plan_scale.py --requests 1580000 --sides after --json plan.json
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bench.gen_scale import synthetic_images
from bench.plan_before import plan_requests_before
from schemas.tables import ALL_TABLES
from tasks.prompting import plan as plan_module
from tasks.prompting.plan import plan_requests

SIDES = ("before", "after", "schema-3", "pk-indexed", "steps-by-size")


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


@contextmanager
def store_side(side: str, fixed_step: int | None = None) -> Iterator[None]:
    """Plan as `side` does: before/after share prefixes (schema 4); schema-3 and pk-indexed store full messages."""
    plan_module.SHARE_PREFIXES = side in ("before", "after", "steps-by-size")
    steps = plan_module.IMAGE_CHUNK, plan_module.MAX_IMAGE_CHUNK
    if fixed_step and side != "steps-by-size":  # `--step`: every step that many images
        plan_module.IMAGE_CHUNK = plan_module.MAX_IMAGE_CHUNK = fixed_step
    try:
        with indexed_store(side == "pk-indexed"):
            yield
    finally:
        plan_module.SHARE_PREFIXES = True
        plan_module.IMAGE_CHUNK, plan_module.MAX_IMAGE_CHUNK = steps


def _status_mib(field: str) -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) // 1024 for line in status if line.startswith(field + ":"))


def plan_once(n: int, side: str, fixed_step: int | None = None) -> tuple[dict[str, float], list[str]]:
    """Seconds to plan n requests in a fresh database, what the file holds before and after, and the ids."""
    planner = plan_requests_before if side == "before" else plan_requests
    with tempfile.TemporaryDirectory(dir=os.environ.get("VISTUNE_BENCH_TMP")) as tmp, store_side(side, fixed_step):
        db = Path(tmp) / "plan.duckdb"
        synthetic_images(db, n)
        before = db.stat().st_size
        with open("/proc/self/clear_refs", "w") as refs:  # "5": reset VmHWM to the current RSS (Linux)
            refs.write("5")
        rss_before = _status_mib("VmRSS")
        start = time.perf_counter()
        plan = planner(db, sample_types=["complex_reasoning"], model="gpt-4o-mini")
        seconds = time.perf_counter() - start
        peak = _status_mib("VmHWM")
        assert plan.pending == n, plan.pending
        after = db.stat().st_size
        return {"seconds": seconds, "bytes_before": before, "bytes_after": after, "rss_before_mib": rss_before,
                "peak_rss_mib": peak}, plan.request_ids


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, nargs="+", default=[40_000, 158_000])
    parser.add_argument("--sides", nargs="+", choices=SIDES, default=["before", "after"])
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--step", type=int, default=None,
                        help="fixed steps of this many images for every side but steps-by-size "
                             "(default: the current policy, N/32 images, 10,000 to 50,000)")
    args = parser.parse_args()
    sides = args.sides
    rows = []
    print(f"{'requests':>9} {'store':>13} {'seconds':>8} {'s per 1K':>9} {'RSS MiB':>15} {'plan B/req':>10} "
          f"{'file B/req':>10} {'file MiB':>8}")
    for n in args.requests:
        ids_of: dict[str, list[str]] = {}
        for side in sides:
            got, ids_of[side] = plan_once(n, side, args.step)
            row = {"requests": n, "store": side, "seconds": round(got["seconds"], 2),
                   "s_per_1k": round(got["seconds"] / n * 1000, 3),
                   "plan_bytes_per_request": round((got["bytes_after"] - got["bytes_before"]) / n),
                   "file_bytes_per_request": round(got["bytes_after"] / n),
                   "file_mib": round(got["bytes_after"] / 2**20, 1), "rss_before_mib": got["rss_before_mib"],
                   "peak_rss_mib": got["peak_rss_mib"]}
            rows.append(row)
            rss = f"{got['rss_before_mib']:,} -> {got['peak_rss_mib']:,}"
            print(f"{n:>9,} {side:>13} {row['seconds']:>8.1f} {row['s_per_1k']:>9.3f} {rss:>15} "
                  f"{row['plan_bytes_per_request']:>10,} {row['file_bytes_per_request']:>10,} {row['file_mib']:>8.1f}",
                  flush=True)
        if "before" in ids_of and "after" in ids_of:
            assert ids_of["before"] == ids_of["after"], "the current path planned other ids than the old one"
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
