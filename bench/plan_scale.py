"""Planning at scale: `plan_requests` on N synthetic images, old and new store side by side in one run.

Per size, each side plans in a fresh database (one `complex_reasoning` request per image, vistune's
own prompt set, structured):

- `schema-3`: every `requests` row holds its full messages (`plan.SHARE_PREFIXES = False`: the
  schema-3 rows and ids, `store.stable_hash` over the full messages per request);
- `schema-4`: the current store, each shared prompt prefix once in `prompt_prefixes` and only the
  image's own message per row (ids the same bytes: the test suite checks);
- `pk-indexed` (with `--pk-indexed`): schema 3 with a PRIMARY KEY index on every table (schema 2).

Figures: the wall time of `plan_requests` alone (context loading, messages, token counts, hashing,
inserts), the file's growth by planning per request (what the requests cost on disk), and the whole
file (images, captions and objects included) per request.

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
from tasks.prompting import plan as plan_module
from tasks.prompting.plan import plan_requests

SIDES = ("schema-3", "schema-4")


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
def store_side(side: str) -> Iterator[None]:
    """Plan as `side` does: schema-4 shares prefixes; schema-3 and pk-indexed store full messages per row."""
    plan_module.SHARE_PREFIXES = side == "schema-4"
    try:
        with indexed_store(side == "pk-indexed"):
            yield
    finally:
        plan_module.SHARE_PREFIXES = True


def plan_once(n: int, side: str) -> dict[str, float]:
    """Seconds to plan n requests in a fresh database, and what the file holds before and after."""
    with tempfile.TemporaryDirectory() as tmp, store_side(side):
        db = Path(tmp) / "plan.duckdb"
        synthetic_images(db, n)
        before = db.stat().st_size
        start = time.perf_counter()
        plan = plan_requests(db, sample_types=["complex_reasoning"], model="gpt-4o-mini")
        seconds = time.perf_counter() - start
        assert plan.pending == n, plan.pending
        after = db.stat().st_size
        return {"seconds": seconds, "bytes_before": before, "bytes_after": after}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, nargs="+", default=[20_000, 60_000])
    parser.add_argument("--pk-indexed", action="store_true", help="also the schema-2 store (PK index everywhere)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    sides = (("pk-indexed",) if args.pk_indexed else ()) + SIDES
    rows = []
    print(f"{'requests':>9} {'store':>10} {'seconds':>8} {'s per 1K':>9} {'plan B/req':>10} {'file B/req':>10} "
          f"{'file MiB':>8}")
    for n in args.requests:
        for side in sides:
            got = plan_once(n, side)
            row = {"requests": n, "store": side, "seconds": round(got["seconds"], 2),
                   "s_per_1k": round(got["seconds"] / n * 1000, 3),
                   "plan_bytes_per_request": round((got["bytes_after"] - got["bytes_before"]) / n),
                   "file_bytes_per_request": round(got["bytes_after"] / n),
                   "file_mib": round(got["bytes_after"] / 2**20, 1)}
            rows.append(row)
            print(f"{n:>9,} {side:>10} {row['seconds']:>8.1f} {row['s_per_1k']:>9.3f} "
                  f"{row['plan_bytes_per_request']:>10,} {row['file_bytes_per_request']:>10,} {row['file_mib']:>8.1f}",
                  flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
