"""Preflight throughput on synthetic LLaVA-665K-shaped data (issue 19, item 1): records/s with 1 and 2+ workers.

    python bench/train_preflight.py [--records 665000] [--workers 1,2] [--images header|decode] [--baseline]

`--baseline` also times, before each current run, the hot path as it was before the speed-up (kept here only:
offsets through `np.asarray`, a stat before each image open, image paths through pathlib with `image_root` resolved
per record), same data.

Records look like LLaVA-1.5's 665K mix: 1-6 question/answer pairs of 4-40 words, about 6% text-only. Each image
record names its own path; the paths are hardlinks to `--unique-images` small JPEGs (distinct paths, so no
per-path cache helps, but the files sit in the page cache: this measures a warm disk, not a cold one).
The tokenizer is the tiny byte-level BPE of `training/tiny.py` (512 merges: more tokens per word than
Vicuna's 32K vocabulary, so tokenization here costs more, not less).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from unittest import mock

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
from PIL import Image

from training import data as data_module
from training import preflight as preflight_module
from training.config import load_config
from training.data import IGNORE_INDEX, TokenizationMismatch
from training.model import processor_for_stage
from training.preflight import check_records
from training.tiny import build_tiny_base_models

_VOCABULARY = ("a man woman dog cat red blue car street table food plate sitting standing next to the of on in with "
               "what is color how many people are there why might this be image photo shows picture left right")
WORDS = _VOCABULARY.split()


def make_data(root: Path, records: int, unique_images: int, seed: int = 0) -> list[dict]:
    """Write `unique_images` JPEGs and one hardlink per image record; return the records."""
    rng = random.Random(seed)
    source = root / "source"
    source.mkdir(parents=True, exist_ok=True)
    for i in range(unique_images):
        size = (rng.randint(48, 96), rng.randint(48, 96))
        Image.new("RGB", size, (rng.randrange(256), rng.randrange(256), rng.randrange(256))).save(
            source / f"{i}.jpg", quality=80)
    out = []
    for i in range(records):
        def sentence() -> str:
            return " ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 40))) + "."

        turns = []
        for _ in range(rng.randint(1, 6)):
            turns += [{"from": "human", "value": sentence()}, {"from": "gpt", "value": sentence()}]
        record = {"id": f"syn-{i}", "conversations": turns}
        if rng.random() >= 0.06:
            name = f"images/{i // 1000:04d}/{i}.jpg"
            target = root / name
            target.parent.mkdir(parents=True, exist_ok=True)
            if not target.exists():
                os.link(source / f"{i % unique_images}.jpg", target)
            record["image"] = name
            turns[0]["value"] = "<image>\n" + turns[0]["value"]
        out.append(record)
    return out


def _baseline_tokenize_segments(segments, tokenizer, sample_id: str) -> tuple[list[int], list[int]]:
    """`data.tokenize_segments` before the speed-up (offsets converted with `np.asarray`)."""
    text = "".join(segment.text for segment in segments)
    target_at = bytearray().join(bytes([segment.target]) * len(segment.text) for segment in segments)
    encoding = tokenizer.backend_tokenizer.encode(text, add_special_tokens=True)
    ids, offsets = list(encoding.ids), encoding.offsets
    spans = np.asarray(offsets, dtype=np.int64).reshape(-1, 2)
    inside_before = np.concatenate(([0], np.cumsum(np.frombuffer(bytes(target_at), dtype=np.uint8), dtype=np.int64)))
    inside = inside_before[spans[:, 1]] - inside_before[spans[:, 0]]
    width = spans[:, 1] - spans[:, 0]
    if np.flatnonzero((inside != 0) & (inside != width)).size:
        raise TokenizationMismatch(f"sample {sample_id}: straddling token")
    return ids, np.where(inside > 0, np.asarray(ids, dtype=np.int64), IGNORE_INDEX).tolist()


def _baseline_check_image(path: Path, images: str) -> tuple[str, str] | None:
    """`preflight.check_image` before the speed-up: a stat, then the open."""
    if not path.is_file():
        return "image_missing", f"image {path} not found"
    return _current_check_image(path, images)


def _baseline_resolve_image(image_root: Path, image: str, sample_id: str, **_: object) -> Path:
    """`data.resolve_image` before the speed-up: pathlib, and `image_root` resolved on every call."""
    root = Path(image_root).resolve()
    relative = PurePosixPath(image)
    if "\\" in image or relative.is_absolute() or ".." in relative.parts:
        raise data_module.ImagePathError(f"sample {sample_id}: image path {image!r:.200} leaves image_root")
    target = Path(os.path.normpath(root / image))
    if not target.is_relative_to(root):
        raise data_module.ImagePathError(f"sample {sample_id}: image path {image!r:.200} leaves image_root")
    return target


_current_check_image = preflight_module.check_image


@contextlib.contextmanager
def baseline_path() -> Iterator[None]:
    """Swap the pre-speed-up hot path in (forked workers inherit the patches)."""
    with (mock.patch.object(data_module, "tokenize_segments", _baseline_tokenize_segments),
          mock.patch.object(preflight_module, "check_image", _baseline_check_image),
          mock.patch.object(preflight_module, "resolve_image", _baseline_resolve_image)):
        yield


def main() -> None:
    """Generate the data once, then time `check_records` with each worker count."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--records", type=int, default=665_000)
    parser.add_argument("--unique-images", type=int, default=20_000)
    parser.add_argument("--workers", default="1,2", help="comma-separated worker counts to time")
    parser.add_argument("--images", choices=["header", "decode"], default="header")
    parser.add_argument("--dir", type=Path, help="where to build the data (default: a temp dir, kept)")
    parser.add_argument("--baseline", action="store_true", help="also time the pre-speed-up path, same data")
    args = parser.parse_args()
    root = args.dir or Path(tempfile.mkdtemp(prefix="vistune-preflight-bench-"))
    start = time.perf_counter()
    build_tiny_base_models(root / "models")
    records = make_data(root / "data", args.records, min(args.unique_images, args.records))
    print(f"built {len(records)} records under {root} in {time.perf_counter() - start:.1f} s", flush=True)
    cfg = load_config(root / "models" / "tiny.yaml", [f"image_root={root / 'data'}", "model_max_length=2048"])
    processor = processor_for_stage(cfg, cfg.stage("stage2"))
    rows = []
    paths = [("baseline", baseline_path), ("current", contextlib.nullcontext)] if args.baseline else [
        ("current", contextlib.nullcontext)]
    for workers in (int(w) for w in args.workers.split(",")):
        for name, context in paths:
            with context():
                report = check_records(records, root / "data", processor, "vicuna_v1", cfg.model_max_length,
                                       images=args.images, workers=workers)
            assert report.ok, report.summary()
            rows.append({"path": name, "records": len(records), "workers": workers, "images": args.images,
                         "seconds": round(report.seconds, 1), "records_per_s": round(len(records) / report.seconds),
                         "cpus": os.cpu_count(), "load_avg_1m": round(os.getloadavg()[0], 1)})
            print(json.dumps(rows[-1]), flush=True)
    print(report.summary())


if __name__ == "__main__":
    main()
