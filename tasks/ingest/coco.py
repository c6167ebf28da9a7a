"""COCO ingestion: captions + instances json (pycocotools) -> `images`, `captions`, `objects`.

Bad records are skipped and counted by reason (stored in `ingest_errors`), or fail the run
with `strict=True`, which then writes nothing. Problems with a whole file (missing, malformed
json, missing top-level keys) always fail: there is nothing sensible to skip to.

Reason codes: `bad_record` (not a json object, or a bad area / iscrowd / category name),
`missing_key`, `bad_id` (not an integer, or wider than 64 bits), `duplicate_id` (one id listed
again with other content: every copy is skipped), `bad_image_record` (width/height), `bad_path`
(a `file_name` that is absolute or climbs out with `..`: it could name any file on the machine),
`bad_box` (not 4 finite numbers, zero area, outside the image), `bad_text` (a lone surrogate, a
NUL, not a string), `empty_caption`, `caption_too_long` (the `max_caption_chars` setting),
`unknown_image`, `unknown_category`, `no_captions`, `missing_image`, `unreadable_image`,
`size_mismatch`. Every record read is kept or skipped (`IngestStats.read` reconciles per table).

Records that can be repaired are kept and the repair is counted (`IngestStats.fixed`, the run's
`stats.fixed`, and one `ingest_errors` row each with reason `fixed_image_placeholder`): a caption
containing LLaVA's `<image>` placeholder has it removed, since the trainer would read it as the
image token (and export would write an invalid record).

Two paths, one set of rules: a split is first offered to `tasks/ingest/columnar.py` (typed decoding, checks over
whole columns, bulk inserts; train2017's size in seconds and well under 1 GiB), which takes it only when no rule
here fires for any record; otherwise `_parse` below walks it record by record and reports every problem.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import re
import uuid
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, NamedTuple

from PIL import Image, UnidentifiedImageError
from pycocotools.coco import COCO

from schemas.settings import get_settings
from schemas.tables import CaptionRow, ImageRow, IngestErrorRow, ObjectRow, RunRow
from tasks import store

# COCO boxes are floats from annotation tools: they overshoot the border by a fraction of a
# pixel in real data (e.g. x + w = 640.01). Beyond this, a box is wrong.
BOX_TOLERANCE_PX = 1.0
BOX_DECIMALS = 3
# LLaVA's image token (schemas.llava.IMAGE_PLACEHOLDER), also with stray spaces or capitals.
_IMAGE_PLACEHOLDER = re.compile(r"<\s*image\s*>", re.IGNORECASE)
FIXED_PLACEHOLDER = "fixed_image_placeholder"
# The store keeps ids as BIGINT and sizes as INTEGER: anything wider would fail the insert.
ID_MIN, ID_MAX = -(2**63), 2**63 - 1
SIZE_MAX = 2**31 - 1
_DRIVE = re.compile(r"^[A-Za-z]:")
TABLES = ("images", "captions", "objects", "categories")
# Try the columnar path first (`tasks/ingest/columnar.py`: the same rows, much faster and leaner, for splits in
# which no record is skipped or repaired). False: always the record-by-record path (tests, the benchmark's
# "before" side).
COLUMNAR = True


class IngestError(ValueError):
    """A COCO input problem that stops ingestion (always for whole files, per record with --strict)."""


@dataclass(frozen=True)
class IngestIssue:
    """One skipped record: where it is, why, and what is wrong."""

    source_file: str
    record: str
    reason: str
    detail: str
    table: str = ""  # the table (or "categories") whose records it was counted against

    def message(self) -> str:
        """The error text shown to a user."""
        return f"{self.source_file}: {self.record}: {self.detail}"


@dataclass
class IngestStats:
    """What one ingest run read, added and skipped.

    Per table (`images`, `captions`, `objects`, and `categories`, which feed `objects.category`), every
    record read is either kept or skipped: `read[t] == kept()[t] + skipped_by_table()[t]`. A record is one
    id (the same record listed twice with the same content, e.g. an image in both files, counts once) or
    one entry without a usable id. Good records of an image that is skipped are counted in `dropped`.
    """

    run_id: str
    split: str
    images: int = 0
    captions: int = 0
    objects: int = 0
    categories: int = 0
    added: dict[str, int] = field(default_factory=dict)
    issues: list[IngestIssue] = field(default_factory=list)
    fixes: list[IngestIssue] = field(default_factory=list)  # records kept after a repair
    read: dict[str, int] = field(default_factory=dict)
    dropped: dict[str, int] = field(default_factory=dict)  # good captions/objects of a skipped image

    @property
    def skipped(self) -> Counter[str]:
        """Skipped records by reason."""
        return Counter(i.reason for i in self.issues)

    @property
    def fixed(self) -> Counter[str]:
        """Repaired (and kept) records by reason."""
        return Counter(i.reason for i in self.fixes)

    def kept(self) -> dict[str, int]:
        """Records kept per table."""
        return {"images": self.images, "captions": self.captions, "objects": self.objects,
                "categories": self.categories}

    def skipped_by_table(self) -> dict[str, int]:
        """Records skipped per table: their own issues plus those dropped with their image."""
        out = dict.fromkeys(TABLES, 0)
        for issue in self.issues:
            out[issue.table] = out.get(issue.table, 0) + 1
        for table, n in self.dropped.items():
            out[table] = out.get(table, 0) + n
        return out


@dataclass
class _Parsed:
    images: dict[int, ImageRow] = field(default_factory=dict)
    captions: list[CaptionRow] = field(default_factory=list)
    objects: list[ObjectRow] = field(default_factory=list)
    categories: int = 0
    issues: list[IngestIssue] = field(default_factory=list)
    fixes: list[IngestIssue] = field(default_factory=list)
    read: Counter[str] = field(default_factory=Counter)
    dropped: Counter[str] = field(default_factory=Counter)


def clean_caption(text: str) -> tuple[str, int]:
    """A caption with whitespace collapsed and `<image>` placeholders removed; returns (text, placeholders)."""
    cleaned, removed = _IMAGE_PLACEHOLDER.subn(" ", text)
    return " ".join(cleaned.split()), removed


def annotation_paths(coco_dir: Path, split: str) -> tuple[Path, Path, Path]:
    """`(captions json, instances json, image folder)` for a split, in COCO 2014/2017 naming."""
    ann = coco_dir / "annotations"
    return ann / f"captions_{split}.json", ann / f"instances_{split}.json", coco_dir / split


def read_annotation_file(path: Path, required_keys: Iterable[str]) -> dict[str, Any]:
    """Load a COCO json file, failing with the file name and the exact problem."""
    if not path.is_file():
        raise IngestError(f"{path}: file not found (expected COCO layout DIR/annotations/<kind>_<split>.json)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise IngestError(f"{path}: malformed json at line {exc.lineno}, column {exc.colno}: {exc.msg}") from None
    except UnicodeDecodeError as exc:
        raise IngestError(f"{path}: not UTF-8 text ({exc.reason})") from None
    except RecursionError:  # json nested thousands deep
        raise IngestError(f"{path}: json nested too deeply to read") from None
    if not isinstance(data, dict):
        raise IngestError(f"{path}: expected a json object at the top level, found {type(data).__name__}")
    missing = [k for k in required_keys if k not in data]
    if missing:
        raise IngestError(f"{path}: missing top-level key(s) {', '.join(missing)}")
    for key in required_keys:
        if not isinstance(data[key], list):
            raise IngestError(f"{path}: '{key}' must be a list, found {type(data[key]).__name__}")
    return data


def normalise_box(bbox: list[float], width: int, height: int) -> tuple[float, float, float, float]:
    """COCO `[x, y, w, h]` in pixels -> `[x1, y1, x2, y2]` in [0, 1], rounded as LLaVA writes boxes."""
    x, y, w, h = bbox

    def clip(value: float) -> float:
        return round(min(max(value, 0.0), 1.0), BOX_DECIMALS)

    return clip(x / width), clip(y / height), clip((x + w) / width), clip((y + h) / height)


def _short(value: object, limit: int = 60) -> str:
    """`repr(value)`, cut to `limit` characters: messages quote the data, which may be 50 KB long."""
    try:
        text = repr(value)
    except ValueError:  # an int too long to print
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else f"{text[:limit - 3]}..."


def id_problem(value: object) -> str | None:
    """Why `value` cannot be a COCO id (a 64-bit integer, as the store keeps it), or None."""
    if isinstance(value, bool) or not isinstance(value, int):
        return f"must be an integer, got {type(value).__name__} {_short(value)}"
    if not ID_MIN <= value <= ID_MAX:
        return f"{_short(value, 30)} does not fit in a 64-bit integer"
    return None


def text_problem(text: str) -> str | None:
    """Why `text` cannot be stored (a NUL, a lone surrogate from a `\\ud800` escape), or None."""
    if "\x00" in text:
        return f"holds a NUL character at position {text.index(chr(0))}"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return f"is not valid Unicode: lone surrogate {text[exc.start]!r} at position {exc.start}"
    return None


def path_problem(file_name: object) -> str | None:
    """Why `file_name` cannot be an image path inside its split folder, or None.

    Only plain relative paths pass: no absolute path, drive letter, backslash or `..` part, so that
    `<image root>/<split>/<file_name>` can never name a file outside the image root.
    """
    if not isinstance(file_name, str) or not file_name.strip():
        return f"file_name must be a non-empty string, got {_short(file_name)}"
    if problem := text_problem(file_name):
        return f"file_name {problem}"
    if "\\" in file_name or _DRIVE.match(file_name):
        return f"file_name {_short(file_name)} is a Windows path; use a relative path with /"
    path = PurePosixPath(file_name)
    if path.is_absolute():
        return f"file_name {_short(file_name)} is absolute; it must be relative to the split folder"
    if ".." in path.parts:
        return f"file_name {_short(file_name)} climbs out of the split folder with '..'"
    return None


def _number_problem(value: object) -> bool:
    return isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value)


def _missing(record: dict[str, Any], keys: Iterable[str]) -> list[str]:
    return [k for k in keys if k not in record]


# What a record of each list holds that ingest uses: two records of one id differing here conflict.
_CONTENT = {
    "images": ("file_name", "width", "height"),
    "captions": ("image_id", "caption"),
    "objects": ("image_id", "category_id", "bbox", "area", "iscrowd"),
    "categories": ("name",),
}
_NOUN = {"images": "image", "captions": "caption", "objects": "annotation", "categories": "category"}


class _Reader:
    """Collects issues and counts records read per table while `_parse` walks the files."""

    def __init__(self, out: _Parsed) -> None:
        self.out = out
        self.skipped_images: set[int] = set()  # their captions and objects are dropped, not each an issue

    def skip(self, table: str, source: str, record: str, reason: str, detail: str) -> None:
        self.out.issues.append(IngestIssue(source, record, reason, detail, table))

    def links_to_kept_image(self, table: str, source: str, label: str, rec: dict[str, Any],
                            keys: tuple[str, ...]) -> bool:
        """Whether a caption or instance has `keys` and belongs to a kept image; skips or drops it otherwise."""
        kind = "caption" if table == "captions" else "instance"
        if missing := _missing(rec, keys):
            self.skip(table, source, label, "missing_key", f"{kind} record lacks {', '.join(missing)}")
        elif problem := id_problem(rec["image_id"]):
            self.skip(table, source, label, "bad_id", f"{kind} image_id {problem}")
        elif rec["image_id"] in self.skipped_images:
            self.out.dropped[table] += 1  # its image was skipped: one issue, not one per caption or box
        elif rec["image_id"] not in self.out.images:
            self.skip(table, source, label, "unknown_image",
                      f"{kind} refers to image {rec['image_id']}, which is not listed")
        else:
            return True
        return False

    def by_id(self, table: str, sources: Iterable[tuple[str, list[Any]]]) -> list[tuple[str, dict[str, Any]]]:
        """Records of `table` grouped by id, one `(source file, record)` per id, in file order.

        An entry that is not an object or has no usable id is skipped (`bad_record`, `missing_key`,
        `bad_id`); an id listed again with other content is skipped with all its copies (`duplicate_id`):
        there is no telling which copy is right. An identical copy is the same record.
        """
        noun = _NOUN[table]
        groups: dict[int, list[tuple[str, dict[str, Any]]]] = {}
        for source, records in sources:
            for index, rec in enumerate(records):
                where = f"{noun} #{index}"
                if not isinstance(rec, dict):
                    self.out.read[table] += 1
                    self.skip(table, source, where, "bad_record",
                              f"{noun} record must be a json object, got {type(rec).__name__} {_short(rec)}")
                elif "id" not in rec:
                    self.out.read[table] += 1
                    self.skip(table, source, where, "missing_key", f"{noun} record lacks id")
                elif problem := id_problem(rec["id"]):
                    self.out.read[table] += 1
                    self.skip(table, source, where, "bad_id", f"{noun} id {problem}")
                else:
                    groups.setdefault(rec["id"], []).append((source, rec))
        kept: list[tuple[str, dict[str, Any]]] = []
        for record_id, copies in groups.items():
            self.out.read[table] += 1
            contents = {_short([c.get(k) for k in _CONTENT[table]], 200) for _, c in copies}
            if len(contents) > 1:
                files = sorted({source for source, _ in copies})
                if table == "images":
                    self.skipped_images.add(record_id)
                self.skip(table, copies[0][0], f"{noun} {record_id}", "duplicate_id",
                          f"{noun} id {record_id} is listed {len(copies)} times (in {', '.join(files)}) with "
                          f"different {'/'.join(_CONTENT[table])}: {' vs '.join(sorted(contents))}"[:600])
            else:
                kept.append(copies[0])
        return kept


def _parse(captions_path: Path, instances_path: Path, image_dir: Path, coco_root: Path, split: str,
           check_images: bool, max_caption_chars: int) -> _Parsed:
    captions_data = read_annotation_file(captions_path, ("images", "annotations"))
    instances_data = read_annotation_file(instances_path, ("images", "annotations", "categories"))
    out = _Parsed()
    reader = _Reader(out)
    skip = reader.skip
    cap_name, inst_name = captions_path.name, instances_path.name

    # Images: the captions file defines the set; the instances file must agree on them.
    for source, rec in reader.by_id("images", ((cap_name, captions_data["images"]),
                                               (inst_name, instances_data["images"]))):
        label = f"image {rec['id']}"
        reader.skipped_images.add(rec["id"])  # until it is kept below
        if missing := _missing(rec, ("file_name", "width", "height")):
            skip("images", source, label, "missing_key", f"image record lacks {', '.join(missing)}")
        elif not all(isinstance(rec[k], int) and not isinstance(rec[k], bool) and 0 < rec[k] <= SIZE_MAX
                     for k in ("width", "height")):
            skip("images", source, label, "bad_image_record",
                 f"width/height must be positive integers, got {_short(rec['width'])} x {_short(rec['height'])}")
        elif problem := path_problem(rec["file_name"]):
            skip("images", source, label, "bad_path", problem)
        else:
            reader.skipped_images.discard(rec["id"])
            out.images[rec["id"]] = ImageRow(image_id=rec["id"], split=split, file_name=rec["file_name"],
                                             width=rec["width"], height=rec["height"], coco_root=str(coco_root))

    for source, rec in reader.by_id("captions", ((cap_name, captions_data["annotations"]),)):
        label = f"caption {rec['id']}"
        if not reader.links_to_kept_image("captions", source, label, rec, ("image_id", "caption")):
            pass
        elif rec["caption"] is None or (isinstance(rec["caption"], str) and not rec["caption"].strip()):
            skip("captions", source, label, "empty_caption", "caption text is empty")
        elif not isinstance(rec["caption"], str):
            skip("captions", source, label, "bad_text",
                 f"caption must be a string, got {type(rec['caption']).__name__} {_short(rec['caption'])}")
        elif problem := text_problem(rec["caption"]):
            skip("captions", source, label, "bad_text", f"caption {problem}")
        elif not (caption := clean_caption(rec["caption"]))[0]:
            skip("captions", source, label, "empty_caption", f"caption is only {_short(rec['caption'].strip())}")
        elif len(caption[0]) > max_caption_chars:
            skip("captions", source, label, "caption_too_long",
                 f"caption has {len(caption[0]):,} characters, more than max_caption_chars={max_caption_chars:,} "
                 f"(starts {_short(caption[0][:40])})")
        else:
            text, removed = caption
            if removed:
                out.fixes.append(IngestIssue(source, label, FIXED_PLACEHOLDER,
                                             f"removed {removed} <image> placeholder(s), kept {_short(text, 200)}",
                                             "captions"))
            out.captions.append(CaptionRow(caption_id=rec["id"], image_id=rec["image_id"], caption=text))

    categories: dict[int, str] = {}
    for source, rec in reader.by_id("categories", ((inst_name, instances_data["categories"]),)):
        label = f"category {rec['id']}"
        name = rec.get("name")
        if not isinstance(name, str) or not name.strip():
            skip("categories", source, label, "bad_record", f"category name must be a non-empty string, "
                                                            f"got {_short(name)}")
        elif problem := text_problem(name):
            skip("categories", source, label, "bad_text", f"category name {problem}")
        else:
            categories[rec["id"]] = name
    out.categories = len(categories)

    # pycocotools indexes the (already shape-checked) instances: categories and per-image anns.
    good_anns = []
    for source, rec in reader.by_id("objects", ((inst_name, instances_data["annotations"]),)):
        label = f"annotation {rec['id']}"
        if not reader.links_to_kept_image("objects", source, label, rec, ("image_id", "category_id", "bbox")):
            pass
        elif problem := id_problem(rec["category_id"]):
            skip("objects", source, label, "bad_id", f"instance category_id {problem}")
        else:
            good_anns.append(rec)
    coco = COCO()
    coco.dataset = {"images": [{"id": i} for i in out.images], "annotations": good_anns,
                    "categories": [{"id": i, "name": n} for i, n in categories.items()]}
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress lines
        coco.createIndex()
    for ann in good_anns:
        label = f"annotation {ann['id']} (image {ann['image_id']})"
        image = out.images[ann["image_id"]]
        if ann["category_id"] not in coco.cats:
            skip("objects", inst_name, label, "unknown_category",
                 f"category_id {ann['category_id']} is not in 'categories'")
            continue
        bbox = ann["bbox"]
        if not (isinstance(bbox, list) and len(bbox) == 4 and not any(_number_problem(v) for v in bbox)):
            # NaN and inf pass every comparison below unnoticed and print as `[nan, ...]` in prompts
            skip("objects", inst_name, label, "bad_box", f"bbox must be 4 finite numbers [x, y, w, h], "
                                                         f"got {_short(bbox)}")
            continue
        x, y, w, h = bbox
        if w <= 0 or h <= 0:
            skip("objects", inst_name, label, "bad_box", f"bbox {bbox} has zero area (w={w}, h={h})")
            continue
        tol = BOX_TOLERANCE_PX
        if x < -tol or y < -tol or x + w > image.width + tol or y + h > image.height + tol:
            skip("objects", inst_name, label, "bad_box",
                 f"bbox {bbox} lies outside the {image.width}x{image.height} image")
            continue
        area, iscrowd = ann.get("area", w * h), ann.get("iscrowd", 0)
        if _number_problem(area) or area < 0:
            skip("objects", inst_name, label, "bad_record", f"area must be a finite number >= 0, got {_short(area)}")
            continue
        if iscrowd not in (0, 1) or not isinstance(iscrowd, int):  # True/False are ints too
            skip("objects", inst_name, label, "bad_record", f"iscrowd must be 0 or 1, got {_short(iscrowd)}")
            continue
        out.objects.append(ObjectRow(
            object_id=ann["id"], image_id=ann["image_id"], category=coco.cats[ann["category_id"]]["name"],
            **dict(zip(("x1", "y1", "x2", "y2"), normalise_box(bbox, image.width, image.height), strict=True)),
            area=float(area), iscrowd=bool(iscrowd),
        ))

    # Drop images that cannot be used, and everything that hangs off them.
    captioned = {c.image_id for c in out.captions}
    for image_id, image in list(out.images.items()):
        label = f"image {image_id} ({_short(image.file_name, 80)})"
        problem = None
        if image_id not in captioned:
            problem = ("no_captions", "image has no captions")
        elif check_images:
            problem = _image_file_problem(image_dir / image.file_name, image)
        if problem:
            skip("images", cap_name, label, *problem)
            del out.images[image_id]
    kept_captions = [c for c in out.captions if c.image_id in out.images]
    kept_objects = [o for o in out.objects if o.image_id in out.images]
    out.dropped.update(captions=len(out.captions) - len(kept_captions), objects=len(out.objects) - len(kept_objects))
    out.captions, out.objects = kept_captions, kept_objects
    return out


class _Size(NamedTuple):
    width: int
    height: int


def _image_file_problem(path: Path, image: ImageRow | _Size) -> tuple[str, str] | None:
    try:
        if not path.is_file():
            return "missing_image", f"image file {path} not found"
        with Image.open(path) as im:  # reads the header only: cheap even for all of COCO
            size = im.size
    except (UnidentifiedImageError, OSError, ValueError) as exc:  # OSError: also a name too long for the OS
        return "unreadable_image", f"image file {path} cannot be read: {exc}"
    if size != (image.width, image.height):
        return "size_mismatch", (f"image file {path} is {size[0]}x{size[1]}, "
                                 f"annotations say {image.width}x{image.height}")
    return None


def ingest(
    coco_dir: str | Path,
    split: str = "train2017",
    db_path: str | Path | None = None,
    *,
    strict: bool = False,
    check_images: bool = True,
    max_caption_chars: int | None = None,
) -> IngestStats:
    """Ingest one COCO split into the store. Idempotent: re-ingesting adds no rows.

    With `strict=True` any bad record raises `IngestError` naming the first one, and nothing is
    written; otherwise bad records are skipped, counted by reason and stored in `ingest_errors`.
    `max_caption_chars` defaults to the `max_caption_chars` setting.
    """
    if (problem := path_problem(split)) or "/" in split:
        raise IngestError(f"split {split!r}: not a folder name ({problem or 'holds a /'})")
    if max_caption_chars is None:
        max_caption_chars = get_settings().max_caption_chars
    coco_root = Path(coco_dir).resolve()
    captions_path, instances_path, image_dir = annotation_paths(coco_root, split)
    if check_images and not image_dir.is_dir():
        raise IngestError(f"{image_dir}: image folder for split {split!r} not found")
    run_id = uuid.uuid4().hex[:12]
    started = store.utcnow()
    params = {"coco_dir": str(coco_root), "split": split, "strict": strict, "check_images": check_images,
              "max_caption_chars": max_caption_chars}
    if COLUMNAR:  # the fast path accepts a split only when no rule below fires; else the record-by-record path
        from tasks.ingest import columnar

        def image_problem(file_name: str, width: int, height: int) -> tuple[str, str] | None:
            return _image_file_problem(image_dir / file_name, _Size(width, height))

        columns = columnar.parse(captions_path, instances_path, coco_root, split, max_caption_chars,
                                 image_problem if check_images else None, clean_caption)
        if columns is not None:
            return _store_columns(columns, db_path, run_id, started, split, params)
    parsed = _parse(captions_path, instances_path, image_dir, coco_root, split, check_images, max_caption_chars)
    if strict and parsed.issues:
        first = parsed.issues[0]
        more = f" (and {len(parsed.issues) - 1} more problem(s))" if len(parsed.issues) > 1 else ""
        raise IngestError(f"{first.message()}{more}; fix the record or run without --strict to skip it")
    kept = {f"caption {c.caption_id}" for c in parsed.captions}  # a fixed caption of a dropped image is gone
    stats = IngestStats(run_id=run_id, split=split, images=len(parsed.images), captions=len(parsed.captions),
                        objects=len(parsed.objects), categories=parsed.categories, issues=parsed.issues,
                        fixes=[f for f in parsed.fixes if f.record in kept],
                        read={t: parsed.read[t] for t in TABLES}, dropped={t: parsed.dropped[t] for t in TABLES})
    with store.write(db_path) as con:
        stats.added = {
            "images": store.insert_rows(con, ImageRow, parsed.images.values()),
            "captions": store.insert_rows(con, CaptionRow, parsed.captions),
            "objects": store.insert_rows(con, ObjectRow, parsed.objects),
        }
        store.insert_rows(con, IngestErrorRow, [
            IngestErrorRow(run_id=run_id, source_file=i.source_file, record=i.record, reason=i.reason, detail=i.detail)
            for i in [*parsed.issues, *stats.fixes]
        ])
        store.insert_rows(con, RunRow, [_run_row(stats, started, params)])
    return stats


def _run_row(stats: IngestStats, started: Any, params: dict[str, Any]) -> RunRow:
    return RunRow(
        run_id=stats.run_id, kind="ingest", started_at=started, finished_at=store.utcnow(), status="completed",
        params=params,
        stats={"images": stats.images, "captions": stats.captions, "objects": stats.objects,
               "added": stats.added, "skipped": dict(stats.skipped), "fixed": dict(stats.fixed),
               "read": stats.read, "skipped_by_table": stats.skipped_by_table()},
    )


def _store_columns(columns: Any, db_path: str | Path | None, run_id: str, started: Any, split: str,
                   params: dict[str, Any]) -> IngestStats:
    """Write the columnar path's rows and its run: what `ingest` writes for a split without a bad record."""
    stats = IngestStats(run_id=run_id, split=split, images=len(columns.images["image_id"]),
                        captions=len(columns.captions["caption_id"]), objects=len(columns.objects["object_id"]),
                        categories=columns.categories, read=dict(columns.read), dropped=dict.fromkeys(TABLES, 0))
    with store.write(db_path) as con:
        stats.added = {
            # the columnar path refused any split with a repeated id
            "images": store.insert_columns(con, ImageRow, columns.images, keys_unique=True),
            "captions": store.insert_columns(con, CaptionRow, columns.captions, keys_unique=True),
            "objects": store.insert_columns(con, ObjectRow, columns.objects, keys_unique=True),
        }
        store.insert_rows(con, RunRow, [_run_row(stats, started, params)])
    return stats
