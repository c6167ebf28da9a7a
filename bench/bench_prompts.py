"""Prompt building at LLaVA scale: load contexts, build messages and count tokens for N images.

Fills a temporary database with N synthetic images shaped like COCO (5 captions, about 7
objects each, some crowd boxes), then times, in one run:

- `load_contexts` in bulk (3 queries per chunk of images) against one-image-at-a-time loading
  (3 queries per image) on the same subset, side by side;
- `build_messages` for every image and the three sample types;
- token counting per request: counting every message against counting the shared prefix once
  and only the image's message per request (what `tasks/prompting/plan.py` does).

    python bench/bench_prompts.py --images 53000
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from schemas.samples import SAMPLE_TYPES
from schemas.tables import CaptionRow, ImageRow, ObjectRow
from tasks import store
from tasks.prompting.prompts import build_messages, load_contexts
from tasks.prompting.tokens import REPLY_PRIMING, count_message_tokens

WORDS = ("a", "man", "woman", "dog", "cat", "bus", "street", "table", "kitchen", "red", "large", "small", "two",
         "sitting", "standing", "next", "to", "on", "the", "of", "with", "near", "beach", "park", "holding")
T = TypeVar("T")
CATEGORIES = ("person", "car", "dog", "chair", "cup", "dining table", "bus", "bicycle", "kite", "umbrella")


def fill(db: Path, n: int, seed: int = 0) -> None:
    """Write n synthetic images with captions and objects."""
    rng = random.Random(seed)
    images, captions, objects = [], [], []
    for i in range(n):
        images.append({"image_id": i, "split": "train2017", "file_name": f"{i:012d}.jpg", "width": 640,
                       "height": 480, "coco_root": "/bench"})
        for k in range(5):
            text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 14))).capitalize() + "."
            captions.append({"caption_id": i * 10 + k, "image_id": i, "caption": text})
        for k in range(min(40, int(rng.expovariate(1 / 7)) + 1)):
            x1, y1 = round(rng.random() * 0.8, 3), round(rng.random() * 0.8, 3)
            objects.append({"object_id": i * 100 + k, "image_id": i, "category": rng.choice(CATEGORIES),
                            "x1": x1, "y1": y1, "x2": round(x1 + 0.1 + rng.random() * 0.1, 3),
                            "y2": round(y1 + 0.1 + rng.random() * 0.1, 3), "area": 100.0,
                            "iscrowd": rng.random() < 0.01})
    with store.write(db) as con:
        store.insert_rows(con, ImageRow, images)
        store.insert_rows(con, CaptionRow, captions)
        store.insert_rows(con, ObjectRow, objects)


def timed(fn: Callable[[], T]) -> tuple[T, float]:
    """Run fn and return (its result, wall seconds)."""
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def main() -> None:
    """Run the benchmark and print a markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=53_000)
    parser.add_argument("--subset", type=int, default=2_000, help="images for the side-by-side comparisons")
    parser.add_argument("--chunk", type=int, default=5_000, help="images per bulk load_contexts call")
    parser.add_argument("--model", default="gpt-4o")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "bench.duckdb"
        _, fill_s = timed(lambda: fill(db, args.images))
        ids = list(range(args.images))
        subset = ids[: args.subset]
        rows = []
        with store.read(db) as con:
            contexts, bulk_all_s = timed(lambda: {
                k: v for i in range(0, len(ids), args.chunk)
                for k, v in load_contexts(con, ids[i:i + args.chunk]).items()
            })
            _, bulk_sub_s = timed(lambda: load_contexts(con, subset))
            _, single_sub_s = timed(lambda: [load_contexts(con, [i]) for i in subset])
        rows.append((f"load_contexts, all {args.images:,} images (chunks of {args.chunk:,})", bulk_all_s, ""))
        rows.append((f"load_contexts, {args.subset:,} images in one call", bulk_sub_s, ""))
        rows.append((f"load_contexts, {args.subset:,} images one call each", single_sub_s,
                     f"{single_sub_s / bulk_sub_s:.0f}x slower than bulk"))

        def build_all() -> list[list[dict[str, str]]]:
            return [build_messages(ctx, t, "structured")[0] for ctx in contexts.values() for t in SAMPLE_TYPES]

        built, build_s = timed(build_all)
        rows.append((f"build_messages, {len(built):,} requests ({args.images:,} images x 3 types)", build_s,
                     f"{build_s / len(built) * 1e6:.1f} µs/request"))

        sample = built[: args.subset * 3]
        full, full_s = timed(lambda: [count_message_tokens(m, args.model) for m in sample])
        prefix: dict[str, int] = {}

        def with_prefix() -> list[int]:
            out = []
            for m in sample:
                key = m[0]["content"]
                if key not in prefix:
                    prefix[key] = count_message_tokens(m[:-1], args.model) - REPLY_PRIMING
                out.append(prefix[key] + count_message_tokens(m[-1:], args.model))
            return out

        cached, cached_s = timed(with_prefix)
        assert cached == full, "prefix-cached counts must equal full counts"
        rows.append((f"count_message_tokens, {len(sample):,} requests, every message", full_s, ""))
        rows.append(("same, shared prefix counted once per type", cached_s, f"{full_s / cached_s:.0f}x faster"))
        per_image = sorted(count_message_tokens(m[-1:], args.model) - REPLY_PRIMING for m in sample)

    print(f"synthetic database: {args.images:,} images, filled in {fill_s:.1f} s\n")
    print("| step | seconds | note |\n|---|---:|---|")
    for name, seconds, note in rows:
        print(f"| {name} | {seconds:.2f} | {note} |")
    print(f"\nimage message tokens: median {per_image[len(per_image) // 2]}, max {per_image[-1]}")


if __name__ == "__main__":
    main()
