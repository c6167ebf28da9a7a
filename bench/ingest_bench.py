"""Ingest a synthetic COCO split of full train2017 size and report wall time and peak RSS.

    python -m bench.ingest_bench [--images 118287]

The annotation files are generated with COCO 2017's proportions (5 captions and ~7.3 instances
per image); image files are not checked (`check_images=False`), so this measures json loading,
validation, pycocotools indexing and the DuckDB insert.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import tempfile
import time
from pathlib import Path

from tasks import store
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=118_287)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "coco"
        write_synthetic_coco(root, args.images)
        db = Path(tmp) / "bench.duckdb"
        started = time.perf_counter()
        stats = ingest(root, "train2017", db, check_images=False)
        first = time.perf_counter() - started
        started = time.perf_counter()
        again = ingest(root, "train2017", db, check_images=False)
        second = time.perf_counter() - started
        counts = store.table_counts(db)
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"| images | captions | objects | first ingest s | re-ingest s (adds {sum(again.added.values())}) "
        f"| peak RSS MiB |"
    )
    print("|---|---|---|---|---|---|")
    print(
        f"| {counts['images']:,} | {counts['captions']:,} | {counts['objects']:,} | {first:.1f} | {second:.1f} "
        f"| {peak_mib:,.0f} |"
    )
    assert stats.issues == []


if __name__ == "__main__":
    main()
