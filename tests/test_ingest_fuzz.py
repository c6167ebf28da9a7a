"""Property-based ingest (issue 13, item 5): real COCO records, mutated by hypothesis.

Whatever one record becomes (another type, a hostile value under any key, a duplicate with other
content, a lone surrogate, a 50 KB string, NaN), ingest must:
- never raise anything but `IngestError`, and that only with `strict=True`;
- account for every record: per table, records read = kept + skipped;
- leave the database exactly as it was when `strict=True` fails;
- name the file and the record in every issue.
"""

from __future__ import annotations

import copy
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tasks import store
from tasks.ingest.coco import TABLES, IngestError, ingest

SPLIT = "train2017"
KINDS = ("captions", "instances")
LISTS = {"captions": ("images", "annotations"), "instances": ("images", "annotations", "categories")}
DATA_TABLES = ("images", "captions", "objects", "ingest_errors", "runs")

NASTY_TEXT = ["", " ", "\ud800", "a\udc80b", "x\x00y", "../../../../etc/passwd", "/etc/passwd", "C:\\x.jpg",
              "<image>", "[nan, 0.1]", "é" * 3, "w " * 25_000]
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([0, -1, 2**63, 2**63 - 1, -(2**63) - 1]),
    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from(NASTY_TEXT), st.text(max_size=20),
)
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=5),
                                                       st.dictionaries(st.text(max_size=5), inner, max_size=3)),
                      max_leaves=8)
KEYS = ["id", "image_id", "category_id", "file_name", "width", "height", "caption", "bbox", "area", "iscrowd",
        "name"]


@st.composite
def mutation(draw: st.DrawFn) -> tuple[str, str, int, str, str, Any]:
    """(file kind, list, index, what, key, value): one change to one real record."""
    kind = draw(st.sampled_from(KINDS))
    name = draw(st.sampled_from(LISTS[kind]))
    index = draw(st.integers(min_value=0, max_value=50))
    what = draw(st.sampled_from(["set", "delete", "replace", "duplicate", "duplicate_changed", "nan_box"]))
    return kind, name, index, what, draw(st.sampled_from(KEYS)), draw(values)


def apply(data: dict[str, Any], name: str, index: int, what: str, key: str, value: Any) -> None:
    """Change one record of `data[name]` in place."""
    records = data[name]
    i = index % len(records)
    rec = records[i]
    if not isinstance(rec, dict):  # an earlier mutation replaced it: replace it again
        what = "replace"
    if what == "set":
        rec[key] = value
    elif what == "delete":
        rec.pop(key, None)
    elif what == "replace":
        records[i] = value
    elif what == "duplicate":
        records.append(copy.deepcopy(rec))
    elif what == "duplicate_changed":
        records.append({**copy.deepcopy(rec), key: value})
    elif what == "nan_box" and "bbox" in rec:
        rec["bbox"][i % 4] = float("nan")


def snapshot(db: Path) -> dict[str, Any]:
    """Every row of the data tables, to compare before and after a failed strict run."""
    with store.read(db) as con:
        return {t: sorted(map(repr, con.execute(f"SELECT * FROM {t}").fetchall())) for t in DATA_TABLES}


def check_mutated(source: Path, baseline_db: Path, mutations: list[tuple[str, str, int, str, str, Any]],
                  check_images: bool) -> None:
    """Write the mutated copy, run strict then lenient ingest, and check the properties."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "coco"
        (root / "annotations").mkdir(parents=True)
        if check_images:
            (root / SPLIT).symlink_to(source / SPLIT)
        data = {kind: json.loads((source / "annotations" / f"{kind}_{SPLIT}.json").read_text()) for kind in KINDS}
        for kind, name, index, what, key, value in mutations:
            apply(data[kind], name, index, what, key, value)
        for kind in KINDS:
            (root / "annotations" / f"{kind}_{SPLIT}.json").write_text(json.dumps(data[kind]))

        db = Path(tmp) / "strict.duckdb"
        shutil.copy(baseline_db, db)
        before = snapshot(db)
        try:
            ingest(root, SPLIT, db, strict=True, check_images=check_images)
            strict_failed = False
        except IngestError as exc:
            strict_failed = True
            assert "without --strict" in str(exc)
            assert snapshot(db) == before  # nothing written

        fresh = Path(tmp) / "fresh.duckdb"
        stats = ingest(root, SPLIT, fresh, check_images=check_images)  # anything but IngestError fails the test
        assert strict_failed == bool(stats.issues)
        skipped = stats.skipped_by_table()
        for table in TABLES:
            assert stats.read[table] == stats.kept()[table] + skipped[table], (table, stats)
        counts = store.table_counts(fresh)
        assert (counts["images"], counts["captions"], counts["objects"]) == (stats.images, stats.captions,
                                                                             stats.objects)
        assert counts["ingest_errors"] == len(stats.issues) + len(stats.fixes)  # one row each, none lost
        for issue in stats.issues:
            assert issue.source_file in {f"{kind}_{SPLIT}.json" for kind in KINDS}
            assert issue.record and issue.reason and len(issue.message()) < 1000
        objects = store.query("SELECT x1, y1, x2, y2, area FROM objects", path=fresh)
        assert all(0.0 <= r[k] <= 1.0 for r in objects for k in ("x1", "y1", "x2", "y2"))  # never NaN
        assert all(r["area"] == r["area"] for r in objects)


@pytest.fixture(scope="module")
def baseline_db(tmp_path_factory: pytest.TempPathFactory, sample_coco: Path) -> Path:
    """A database that already holds the pristine sample: a failed strict run must leave it as it is."""
    db = tmp_path_factory.mktemp("baseline") / "vistune.duckdb"
    ingest(sample_coco, SPLIT, db)
    return db


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(mutations=st.lists(mutation(), min_size=1, max_size=3))
def test_mutated_sample_records_never_crash_and_always_reconcile(
    sample_coco: Path, baseline_db: Path, mutations: list[tuple[str, str, int, str, str, Any]]
) -> None:
    check_mutated(sample_coco, baseline_db, mutations, check_images=True)


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(mutations=st.lists(mutation(), min_size=1, max_size=4))
def test_mutated_coco_mini_records_never_crash_and_always_reconcile(
    coco_mini: Path, baseline_db: Path, mutations: list[tuple[str, str, int, str, str, Any]]
) -> None:
    # real COCO 2017 records; image files are not opened (159 of them per example would be slow)
    check_mutated(coco_mini, baseline_db, mutations, check_images=False)
