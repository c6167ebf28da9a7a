"""COCO ingestion: real coco-mini counts, idempotence, box format, and one test per bad-input class."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from flows.cli import get_app
from tasks import store
from tasks.ingest.coco import IngestError, ingest, normalise_box

SPLIT = "train2017"


def test_coco_mini_both_splits_counts_and_idempotence(coco_mini: Path, db_path: Path) -> None:
    first = [ingest(coco_mini, split, db_path) for split in ("train2017", "val2017")]
    assert [s.issues for s in first] == [[], []]
    counts = store.table_counts(db_path)
    assert counts["images"] == 159
    assert counts["captions"] == 795
    assert counts["objects"] == 1363
    per_image = store.query("SELECT min(n) lo, max(n) hi FROM (SELECT count(*) n FROM captions GROUP BY image_id)",
                            path=db_path)
    assert per_image == [{"lo": 5, "hi": 5}]
    crowd = store.query(
        "SELECT i.split, count(*) n FROM objects o JOIN images i USING (image_id) "
        "WHERE o.iscrowd GROUP BY 1 ORDER BY 1",
        path=db_path)
    assert crowd == [{"split": "train2017", "n": 8}, {"split": "val2017", "n": 5}]
    # grayscale photos are ingested like any other (113488's pixels are gray, R == G == B); the
    # mode-"L" file val2017/000000431848.jpg is listed in no annotation file, so it has nothing to ingest
    assert store.query("SELECT file_name, width, height FROM images WHERE image_id = 113488", path=db_path) == [
        {"file_name": "000000113488.jpg", "width": 640, "height": 361}]

    again = [ingest(coco_mini, split, db_path) for split in ("train2017", "val2017")]
    assert [s.added for s in again] == [{"images": 0, "captions": 0, "objects": 0}] * 2
    assert {k: v for k, v in store.table_counts(db_path).items() if k != "runs"} == {
        k: v for k, v in counts.items() if k != "runs"}


def test_boxes_are_normalised_corner_boxes_with_three_decimals(sample_coco: Path, db_path: Path) -> None:
    ingest(sample_coco, SPLIT, db_path)
    rows = store.query("SELECT category, x1, y1, x2, y2, iscrowd FROM objects ORDER BY object_id", path=db_path)
    table = next(r for r in rows if r["category"] == "dining table")
    # 500x375 image, bbox [0, 150, 500, 225] -> LLaVA writes it as [0.0, 0.4, 1.0, 1.0]
    assert (table["x1"], table["y1"], table["x2"], table["y2"]) == (0.0, 0.4, 1.0, 1.0)
    for r in rows:
        for v in (r["x1"], r["y1"], r["x2"], r["y2"]):
            assert 0.0 <= v <= 1.0 and round(v, 3) == v
        assert r["x1"] < r["x2"] and r["y1"] < r["y2"]
    assert sum(r["iscrowd"] for r in rows) == 1


def test_normalise_box_rounds_and_clips_sub_pixel_overshoot() -> None:
    assert normalise_box([435.84, 116.16, 59.5, 172.8], 640, 480) == (0.681, 0.242, 0.774, 0.602)
    assert normalise_box([0.0, 0.0, 640.3, 480.0], 640, 480) == (0.0, 0.0, 1.0, 1.0)


# ----------------------------------------------------------------- bad input, one test per class
@pytest.fixture
def broken_coco(tmp_path: Path, sample_coco: Path) -> Callable[..., Path]:
    """A writable copy of the sample whose json can be edited per test."""
    root = tmp_path / "coco"
    shutil.copytree(sample_coco, root)

    def edit(kind: str, change: Callable[[dict[str, Any]], None]) -> Path:
        path = root / "annotations" / f"{kind}_{SPLIT}.json"
        data = json.loads(path.read_text())
        change(data)
        path.write_text(json.dumps(data))
        return root

    return edit


def _good_rows_landed(db_path: Path, images: int) -> None:
    counts = store.table_counts(db_path)
    assert counts["images"] == images
    assert counts["captions"] == images * 5
    assert counts["objects"] >= 1


def _one_issue(stats: Any, reason: str, *fragments: str) -> str:
    assert [i.reason for i in stats.issues] == [reason]
    message = stats.issues[0].message()
    for fragment in fragments:
        assert fragment in message, message
    return message


def test_malformed_json_names_file_and_position(broken_coco: Callable[..., Path], db_path: Path) -> None:
    root = broken_coco("captions", lambda d: None)
    path = root / "annotations" / f"captions_{SPLIT}.json"
    path.write_text(path.read_text()[:-20])
    with pytest.raises(IngestError, match=r"captions_train2017\.json: malformed json at line \d+, column \d+"):
        ingest(root, SPLIT, db_path)


def test_missing_top_level_key_fails(broken_coco: Callable[..., Path], db_path: Path) -> None:
    root = broken_coco("instances", lambda d: d.pop("categories"))
    with pytest.raises(IngestError, match=r"instances_train2017\.json: missing top-level key\(s\) categories"):
        ingest(root, SPLIT, db_path)


def test_record_missing_key_is_skipped(broken_coco: Callable[..., Path], db_path: Path) -> None:
    root = broken_coco("instances", lambda d: d["annotations"][0].pop("bbox"))
    stats = ingest(root, SPLIT, db_path)
    _one_issue(stats, "missing_key", "instances_train2017.json", "annotation 990000001001", "lacks bbox")
    _good_rows_landed(db_path, 4)
    assert store.table_counts(db_path)["objects"] == 8


def test_caption_for_unknown_image(broken_coco: Callable[..., Path], db_path: Path) -> None:
    root = broken_coco("captions", lambda d: d["annotations"].append({"id": 7, "image_id": 123, "caption": "x y z"}))
    stats = ingest(root, SPLIT, db_path)
    _one_issue(stats, "unknown_image", "caption 7", "image 123")
    _good_rows_landed(db_path, 4)


@pytest.mark.parametrize(
    ("bbox", "fragment"),
    [([600.0, 10.0, 100.0, 20.0], "outside the 640x480 image"), ([10.0, 10.0, 0.0, 20.0], "zero area")],
)
def test_bad_box(broken_coco: Callable[..., Path], db_path: Path, bbox: list[float], fragment: str) -> None:
    def change(d: dict[str, Any]) -> None:
        d["annotations"][0]["bbox"] = bbox

    stats = ingest(broken_coco("instances", change), SPLIT, db_path)
    _one_issue(stats, "bad_box", "annotation 990000001001 (image 990000000001)", fragment)
    _good_rows_landed(db_path, 4)
    stored = store.query("SELECT reason, record FROM ingest_errors", path=db_path)
    assert stored == [{"reason": "bad_box", "record": "annotation 990000001001 (image 990000000001)"}]


def test_image_without_captions_is_skipped_with_its_objects(broken_coco: Callable[..., Path], db_path: Path) -> None:
    def change(d: dict[str, Any]) -> None:
        d["annotations"] = [a for a in d["annotations"] if a["image_id"] != 990000000002]

    stats = ingest(broken_coco("captions", change), SPLIT, db_path)
    _one_issue(stats, "no_captions", "image 990000000002", "no captions")
    _good_rows_landed(db_path, 3)
    assert store.query("SELECT count(*) n FROM objects WHERE image_id = 990000000002", path=db_path) == [{"n": 0}]


def test_missing_image_file(broken_coco: Callable[..., Path], db_path: Path) -> None:
    root = broken_coco("captions", lambda d: None)
    (root / SPLIT / "990000000003.jpg").unlink()
    stats = ingest(root, SPLIT, db_path)
    _one_issue(stats, "missing_image", "image 990000000003", "not found")
    _good_rows_landed(db_path, 3)


def test_unreadable_image_file(broken_coco: Callable[..., Path], db_path: Path) -> None:
    root = broken_coco("captions", lambda d: None)
    (root / SPLIT / "990000000004.jpg").write_bytes(b"this is not a jpeg")
    stats = ingest(root, SPLIT, db_path)
    _one_issue(stats, "unreadable_image", "image 990000000004", "cannot be read")
    _good_rows_landed(db_path, 3)


def test_strict_mode_fails_on_first_bad_record_and_writes_nothing(
    broken_coco: Callable[..., Path], db_path: Path
) -> None:
    def change(d: dict[str, Any]) -> None:
        d["annotations"][0]["bbox"] = [10.0, 10.0, 0.0, 20.0]

    root = broken_coco("instances", change)
    with pytest.raises(IngestError, match=r"annotation 990000001001.*zero area.*without --strict"):
        ingest(root, SPLIT, db_path, strict=True)
    assert not db_path.exists() or store.table_counts(db_path)["images"] == 0


def test_cli_ingest_reports_skips_and_strict_exit_code(broken_coco: Callable[..., Path], db_path: Path) -> None:
    def change(d: dict[str, Any]) -> None:
        d["annotations"][0]["bbox"] = [600.0, 10.0, 100.0, 20.0]

    root = broken_coco("instances", change)
    runner = CliRunner()
    ok = runner.invoke(get_app(), ["ingest", "--coco", str(root), "--split", SPLIT, "--db", str(db_path)])
    assert ok.exit_code == 0, ok.output
    assert "bad_box=1" in ok.output
    strict = runner.invoke(get_app(), ["ingest", "--coco", str(root), "--split", SPLIT, "--strict",
                                       "--db", str(db_path)])
    assert strict.exit_code == 1
    assert "outside the 640x480 image" in strict.output


def test_image_placeholder_in_a_caption_is_removed_and_counted(broken_coco: Callable[..., Path],
                                                               db_path: Path) -> None:
    def change(d: dict[str, Any]) -> None:
        d["annotations"][0]["caption"] = "A man <image> riding a <Image> horse."
        d["annotations"][1]["caption"] = " <image> "

    stats = ingest(broken_coco("captions", change), SPLIT, db_path)
    fixed_id, empty_id = (change_id for change_id in _caption_ids(broken_coco)[:2])
    assert stats.fixed == {"fixed_image_placeholder": 1}
    assert [i.reason for i in stats.issues] == ["empty_caption"] and f"caption {empty_id}" in stats.issues[0].record
    assert store.query(f"SELECT caption FROM captions WHERE caption_id = {fixed_id}", path=db_path) == [
        {"caption": "A man riding a horse."}]
    assert store.query("SELECT count(*) n FROM captions WHERE caption LIKE '%<image>%'", path=db_path) == [{"n": 0}]
    assert store.query("SELECT reason FROM ingest_errors ORDER BY reason", path=db_path) == [
        {"reason": "empty_caption"}, {"reason": "fixed_image_placeholder"}]
    runs = store.query("SELECT stats FROM runs WHERE kind = 'ingest'", path=db_path)
    assert '"fixed": {"fixed_image_placeholder": 1}' in str(runs[0]["stats"]).replace("'", '"')


def _caption_ids(broken_coco: Callable[..., Path]) -> list[int]:
    ids: list[int] = []
    broken_coco("captions", lambda d: ids.extend(a["id"] for a in d["annotations"]))
    return ids


# ------------------------------------------- hostile or malformed records (issue 13, items 4 and 5)
def _reconciles(stats: Any) -> None:
    skipped = stats.skipped_by_table()
    for table, read in stats.read.items():
        assert read == stats.kept()[table] + skipped[table], (table, stats.read, stats.kept(), skipped)


@pytest.mark.parametrize("file_name", ["../../../../etc/passwd", "/etc/passwd", "sub/../../x.jpg",
                                       "..\\..\\x.jpg", "C:/Windows/x.jpg", ""])
def test_an_image_path_outside_the_root_is_bad_path(broken_coco: Callable[..., Path], db_path: Path,
                                                     file_name: str) -> None:
    def change(d: dict[str, Any]) -> None:
        d["images"][0]["file_name"] = file_name

    root = broken_coco("captions", change)
    broken_coco("instances", change)  # both files agree on the hostile path: no duplicate_id
    stats = ingest(root, SPLIT, db_path)
    _one_issue(stats, "bad_path", "captions_train2017.json", "image 990000000001", "file_name")
    _reconciles(stats)
    assert store.query("SELECT count(*) n FROM images WHERE image_id = 990000000001", path=db_path) == [{"n": 0}]
    with pytest.raises(IngestError, match=r"file_name"):
        ingest(root, SPLIT, db_path, strict=True)


@pytest.mark.parametrize(("kind", "change", "reason", "fragment"), [
    ("instances", lambda d: d["annotations"][0].update(bbox=[float("nan"), 10.0, 5.0, 5.0]), "bad_box", "finite"),
    ("instances", lambda d: d["annotations"][0].update(bbox=[1.0, 1.0, float("inf"), 5.0]), "bad_box", "finite"),
    ("instances", lambda d: d["annotations"][0].update(bbox=[1, 1, True, 5]), "bad_box", "finite"),
    ("captions", lambda d: d["annotations"].insert(0, "not an object"), "bad_record", "json object"),
    ("instances", lambda d: d["annotations"].insert(0, [1, 2]), "bad_record", "json object"),
    ("captions", lambda d: d["annotations"][0].update(id=[1]), "bad_id", "must be an integer"),
    ("captions", lambda d: d["annotations"][0].update(id={"a": 1}), "bad_id", "must be an integer"),
    ("instances", lambda d: d["annotations"][0].update(id="990000001001"), "bad_id", "must be an integer"),
    ("instances", lambda d: d["annotations"][0].update(id=2**64), "bad_id", "64-bit"),
    ("captions", lambda d: d["annotations"][0].update(image_id=[990000000001]), "bad_id", "image_id"),
    ("instances", lambda d: d["annotations"][0].update(category_id={"x": 1}), "bad_id", "category_id"),
    ("captions", lambda d: d["annotations"][0].update(caption="a cat \ud800 on a mat"), "bad_text", "surrogate"),
    ("captions", lambda d: d["annotations"][0].update(caption=["a", "list"]), "bad_text", "must be a string"),
    ("captions", lambda d: d["annotations"][0].update(caption="word " * 10_000), "caption_too_long",
     "max_caption_chars=1,000"),
    ("instances", lambda d: d["annotations"][0].update(area="big"), "bad_record", "area"),
    ("instances", lambda d: d["annotations"][0].update(iscrowd=[1]), "bad_record", "iscrowd"),
])
def test_malformed_record_is_a_named_counted_error(broken_coco: Callable[..., Path], db_path: Path, kind: str,
                                                   change: Callable[[dict[str, Any]], None], reason: str,
                                                   fragment: str) -> None:
    root = broken_coco(kind, change)
    before_strict = store.table_counts(db_path) if db_path.exists() else None
    with pytest.raises(IngestError, match="without --strict") as info:
        ingest(root, SPLIT, db_path, strict=True)
    assert f"{kind}_train2017.json" in str(info.value) and fragment in str(info.value)
    assert (store.table_counts(db_path) if db_path.exists() else None) == before_strict  # nothing written
    stats = ingest(root, SPLIT, db_path)
    assert [i.reason for i in stats.issues] == [reason], stats.issues
    assert fragment in stats.issues[0].message() and f"{kind}_train2017.json" in stats.issues[0].message()
    assert len(stats.issues[0].message()) < 700  # a 50 KB caption is not quoted whole
    _reconciles(stats)
    assert store.query("SELECT reason FROM ingest_errors", path=db_path) == [{"reason": reason}]
    assert store.table_counts(db_path)["images"] == 4


@pytest.mark.parametrize(("kind", "index", "key", "value"), [
    ("captions", 0, "caption", "a different caption"),
    ("instances", 0, "bbox", [1.0, 1.0, 2.0, 2.0]),
])
def test_a_duplicate_id_with_other_content_is_skipped_and_strict_fails(
    broken_coco: Callable[..., Path], db_path: Path, kind: str, index: int, key: str, value: Any
) -> None:
    def change(d: dict[str, Any]) -> None:
        d["annotations"].append({**d["annotations"][index], key: value})

    root = broken_coco(kind, change)
    record_id = json.loads((root / "annotations" / f"{kind}_{SPLIT}.json").read_text())["annotations"][index]["id"]
    with pytest.raises(IngestError, match=rf"{record_id} is listed 2 times"):
        ingest(root, SPLIT, db_path, strict=True)
    stats = ingest(root, SPLIT, db_path)
    _one_issue(stats, "duplicate_id", f"{kind}_train2017.json", str(record_id), "different")
    _reconciles(stats)


def test_an_identical_duplicate_and_an_image_in_both_files_are_one_record(
    broken_coco: Callable[..., Path], db_path: Path
) -> None:
    root = broken_coco("captions", lambda d: d["annotations"].append(dict(d["annotations"][0])))
    stats = ingest(root, SPLIT, db_path, strict=True)
    assert stats.issues == [] and stats.read["images"] == 4 and stats.read["captions"] == 20
    _reconciles(stats)


def test_an_image_whose_files_disagree_is_a_duplicate_id(broken_coco: Callable[..., Path], db_path: Path) -> None:
    root = broken_coco("instances", lambda d: d["images"][0].update(width=641))
    stats = ingest(root, SPLIT, db_path)
    _one_issue(stats, "duplicate_id", "image 990000000001", "captions_train2017.json, instances_train2017.json")
    assert stats.dropped["captions"] == 5  # its captions and objects go with it, counted
    _reconciles(stats)


def test_caption_limit_is_a_setting(broken_coco: Callable[..., Path], db_path: Path,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    root = broken_coco("captions", lambda d: None)
    monkeypatch.setenv("VISTUNE_MAX_CAPTION_CHARS", "20")
    stats = ingest(root, SPLIT, db_path)
    too_long = [i for i in stats.issues if i.reason == "caption_too_long"]
    assert too_long and all("max_caption_chars=20" in i.detail for i in too_long)
    assert set(stats.skipped) <= {"caption_too_long", "no_captions"}  # an image left without captions
    _reconciles(stats)


def test_a_hostile_split_name_is_refused(sample_coco: Path, db_path: Path) -> None:
    with pytest.raises(IngestError, match="not a folder name"):
        ingest(sample_coco, "../train2017", db_path)
