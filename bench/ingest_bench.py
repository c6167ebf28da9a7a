"""Ingest a synthetic COCO split of full train2017 size: wall time and peak RSS, old and new path side by side.

    python -m bench.ingest_bench [--images 118287] [--sides before after]

The annotation files are generated with COCO 2017's proportions (5 captions and ~7.3 instances
per image); image files are not checked (`check_images=False`), so this measures json loading,
validation and the DuckDB inserts. Each side ingests into a fresh database in its own process (so
its peak RSS is its own), then ingests the same files again (adds 0 rows):
- `before`: the record-by-record path (`coco.COLUMNAR = False`: json, a pydantic row per record);
- `after`: the columnar path (`tasks/ingest/columnar.py`), which takes a split without a bad record.
The two databases must hold the same rows (checked).
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tasks import store
from tasks.ingest import coco
from tasks.ingest.coco import ingest


def write_synthetic_coco(root: Path, n_images: int, seed: int = 0) -> None:
    """COCO-format captions and instances json for `n_images` images."""
    rng = random.Random(seed)
    (root / "annotations").mkdir(parents=True)
    images = [{"id": i, "file_name": f"{i:012d}.jpg", "width": 640, "height": 480} for i in range(1, n_images + 1)]
    words = [
        "a",
        "man",
        "woman",
        "dog",
        "cat",
        "bus",
        "street",
        "table",
        "plate",
        "red",
        "blue",
        "small",
        "large",
        "near",
        "on",
        "with",
        "of",
    ]
    captions = [
        {"id": n, "image_id": img["id"], "caption": " ".join(rng.choices(words, k=10))}
        for n, img in enumerate((img for img in images for _ in range(5)), start=1)
    ]
    categories = [{"id": c, "name": f"category {c}"} for c in range(1, 81)]
    anns = []
    for img in images:
        for _ in range(rng.randint(3, 12)):
            w, h = rng.uniform(5, 300), rng.uniform(5, 200)
            x, y = rng.uniform(0, 640 - w), rng.uniform(0, 480 - h)
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": img["id"],
                    "category_id": rng.randint(1, 80),
                    "bbox": [x, y, w, h],
                    "area": w * h,
                    "iscrowd": int(rng.random() < 0.01),
                }
            )
    (root / "annotations" / "captions_train2017.json").write_text(
        json.dumps({"images": images, "annotations": captions})
    )
    (root / "annotations" / "instances_train2017.json").write_text(
        json.dumps({"images": images, "annotations": anns, "categories": categories})
    )


def run_side(side: str, root: Path, db: Path) -> dict[str, float]:
    """One side in this process: first ingest, re-ingest, peak RSS."""
    coco.COLUMNAR = side == "after"
    started = time.perf_counter()
    stats = ingest(root, "train2017", db, check_images=False)
    first = time.perf_counter() - started
    started = time.perf_counter()
    again = ingest(root, "train2017", db, check_images=False)
    second = time.perf_counter() - started
    assert stats.issues == [] and sum(again.added.values()) == 0
    return {"first_s": round(first, 2), "again_s": round(second, 2), "peak_rss_mib": peak_rss_mib()}


def peak_rss_mib() -> int:
    """This process's peak RSS since it started its program: VmHWM (ru_maxrss would carry the parent's peak
    across fork and exec, and the parent held the generated annotations)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=118_287)
    parser.add_argument("--sides", nargs="+", choices=("before", "after"), default=["before", "after"])
    parser.add_argument("--side", choices=("before", "after"), help=argparse.SUPPRESS)  # one side, in a child
    parser.add_argument("--root", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--db", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if args.side:
        print(json.dumps(run_side(args.side, args.root, args.db)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "coco"
        write_synthetic_coco(root, args.images)
        results: dict[str, dict[str, float]] = {}
        for side in args.sides:
            db = Path(tmp) / f"{side}.duckdb"
            out = subprocess.run([sys.executable, "-m", "bench.ingest_bench", "--side", side, "--root", str(root),
                                  "--db", str(db)], check=True, capture_output=True, text=True)
            results[side] = json.loads(out.stdout.strip().splitlines()[-1])
        counts = store.table_counts(Path(tmp) / f"{args.sides[-1]}.duckdb")
        if len(args.sides) == 2:
            tables = {}
            for side in args.sides:
                with store.read(Path(tmp) / f"{side}.duckdb") as con:
                    tables[side] = [con.execute(f"SELECT * FROM {table} ORDER BY 1").fetchall()
                                    for table in ("images", "captions", "objects")]
            assert tables["before"] == tables["after"], "the two paths stored different rows"
    print("| side | images | captions | objects | first ingest s | re-ingest s | peak RSS MiB |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for side, got in results.items():
        print(f"| {side} | {counts['images']:,} | {counts['captions']:,} | {counts['objects']:,} | "
              f"{got['first_s']:.1f} | {got['again_s']:.1f} | {got['peak_rss_mib']:,} |")
    if args.json:
        args.json.write_text(json.dumps({"images": args.images, **results}, indent=1))


if __name__ == "__main__":
    main()
