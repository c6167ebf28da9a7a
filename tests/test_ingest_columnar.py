"""The columnar ingest path (tasks/ingest/columnar.py) stores exactly what the record-by-record path stores.

It may only accept a split in which no rule fires; anything else goes to coco.py's rules (whose reasons and
messages tests/test_ingest.py and tests/test_ingest_fuzz.py check).
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bench.ingest_bench import write_synthetic_coco
from tasks import store
from tasks.ingest import coco, columnar
from tasks.ingest.coco import ingest

TABLE_KEYS = {"images": "image_id", "captions": "caption_id", "objects": "object_id"}


def _tables(db: Path) -> dict[str, list[tuple[Any, ...]]]:
    with store.read(db) as con:
        return {table: con.execute(f"SELECT * EXCLUDE (coco_root) FROM {table} ORDER BY {key}").fetchall()
                if table == "images" else con.execute(f"SELECT * FROM {table} ORDER BY {key}").fetchall()
                for table, key in TABLE_KEYS.items()}


def _ingest_both(root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **options: Any
                 ) -> tuple[coco.IngestStats, coco.IngestStats, Path, Path]:
    """Ingest `root` by each path into its own database; the columnar one must not fall back."""
    fast_db, slow_db = tmp_path / "fast.duckdb", tmp_path / "slow.duckdb"

    def no_fallback(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the columnar path fell back to the record-by-record one")

    with monkeypatch.context() as patch:
        patch.setattr(coco, "_parse", no_fallback)
        fast = ingest(root, "train2017", fast_db, **options)
    with monkeypatch.context() as patch:
        patch.setattr(coco, "COLUMNAR", False)
        slow = ingest(root, "train2017", slow_db, **options)
    return fast, slow, fast_db, slow_db


def _same_stats(fast: coco.IngestStats, slow: coco.IngestStats) -> None:
    for name in ("images", "captions", "objects", "categories", "added", "read", "dropped"):
        assert getattr(fast, name) == getattr(slow, name), name
    assert fast.issues == slow.issues == [] and fast.fixes == slow.fixes == []


def test_the_sample_split_stores_the_same_rows_by_both_paths(
    sample_coco: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fast, slow, fast_db, slow_db = _ingest_both(sample_coco, tmp_path, monkeypatch, check_images=True)
    _same_stats(fast, slow)
    assert fast.images > 0 and fast.objects > 0
    assert _tables(fast_db) == _tables(slow_db)
    runs = store.query("SELECT stats FROM runs WHERE kind = 'ingest'", path=fast_db)
    assert json.loads(runs[0]["stats"])["read"] == slow.read


def test_a_synthetic_split_stores_the_same_floats_by_both_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                                 ) -> None:
    root = tmp_path / "coco"
    write_synthetic_coco(root, 400, seed=3)
    # Boxes on the border, integer boxes, boxes whose edges round at a tie, a missing area, whitespace to clean
    path = root / "annotations" / "instances_train2017.json"
    data = json.loads(path.read_text())
    data["annotations"][0]["bbox"] = [0, 0, 640, 480]
    data["annotations"][1]["bbox"] = [0.32, 0.24, 63.68, 47.76]  # x / 640 = 0.0005: a tie at the third decimal
    data["annotations"][2]["bbox"] = [639.0, 479.0, 1.9, 1.9]  # over the border, within the tolerance
    del data["annotations"][3]["area"]
    path.write_text(json.dumps(data))
    captions = root / "annotations" / "captions_train2017.json"
    data = json.loads(captions.read_text())
    data["annotations"][0]["caption"] = "  A dog\non a\tmat.  "
    captions.write_text(json.dumps(data))
    fast, slow, fast_db, slow_db = _ingest_both(root, tmp_path, monkeypatch, check_images=False)
    _same_stats(fast, slow)
    assert _tables(fast_db) == _tables(slow_db)
    again = ingest(root, "train2017", fast_db, check_images=False)  # idempotent on this path too
    assert again.added == {"images": 0, "captions": 0, "objects": 0}


def test_box_rounding_gives_pythons_floats() -> None:
    rng = random.Random(0)
    values = [rng.random() for _ in range(20_000)]
    values += [k / 1000 + 0.0005 for k in range(1000)] + [k / 2000 for k in range(2001)] + [-0.0, 0.0, 1.0]
    got = columnar._rounded(np.array(values))
    want = [round(v, coco.BOX_DECIMALS) for v in values]
    assert [float(g).hex() for g in got] == [w.hex() for w in want]


@pytest.mark.parametrize("change", [
    lambda d: d["annotations"][0].update(bbox=[10, 10, 0, 5]),  # zero area
    lambda d: d["annotations"][0].update(iscrowd=2),  # not 0 or 1
    lambda d: d["annotations"].append({**d["annotations"][0], "area": 1.0}),  # one id, two contents
    lambda d: d["annotations"][0].update(category_id=999),  # unknown category
    lambda d: d["images"][0].update(width=641),  # disagrees with the captions file's copy
    lambda d: d["annotations"][0].update(id=2**63),  # wider than the store's ids
])
def test_a_split_with_a_bad_record_takes_the_record_path(tmp_path: Path, change: Any) -> None:
    root = tmp_path / "coco"
    write_synthetic_coco(root, 20, seed=1)
    path = root / "annotations" / "instances_train2017.json"
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))
    captions, instances, _ = coco.annotation_paths(root, "train2017")
    assert columnar.parse(captions, instances, root, "train2017", 1000, None, coco.clean_caption) is None
    stats = ingest(root, "train2017", tmp_path / "db.duckdb", check_images=False)
    assert stats.issues, "the record-by-record path names the bad record"
