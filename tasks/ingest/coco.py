"""COCO ingestion: captions + instances json (pycocotools) -> `images`, `captions`, `objects`.

Bad records are skipped and counted by reason (stored in `ingest_errors`), or fail the run
with `strict=True`. Problems with a whole file (missing, malformed json, missing top-level
keys) always fail: there is nothing sensible to skip to.

Records that can be repaired are kept and the repair is counted (`IngestStats.fixed`, the run's
`stats.fixed`, and one `ingest_errors` row each with reason `fixed_image_placeholder`): a caption
containing LLaVA's `<image>` placeholder has it removed, since the trainer would read it as the
image token (and export would write an invalid record).
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import uuid
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError
from pycocotools.coco import COCO

from schemas.tables import CaptionRow, ImageRow, IngestErrorRow, ObjectRow, RunRow
from tasks import store

# COCO boxes are floats from annotation tools: they overshoot the border by a fraction of a
# pixel in real data (e.g. x + w = 640.01). Beyond this, a box is wrong.
BOX_TOLERANCE_PX = 1.0
BOX_DECIMALS = 3
# LLaVA's image token (schemas.llava.IMAGE_PLACEHOLDER), also with stray spaces or capitals.
_IMAGE_PLACEHOLDER = re.compile(r"<\s*image\s*>", re.IGNORECASE)
FIXED_PLACEHOLDER = "fixed_image_placeholder"


class IngestError(ValueError):
    """A COCO input problem that stops ingestion (always for whole files, per record with --strict)."""


@dataclass(frozen=True)
class IngestIssue:
    """One skipped record: where it is, why, and what is wrong."""

    source_file: str
    record: str
    reason: str
    detail: str

    def message(self) -> str:
        """The error text shown to a user."""
        return f"{self.source_file}: {self.record}: {self.detail}"


@dataclass
class IngestStats:
    """What one ingest run read, added and skipped."""

    run_id: str
    split: str
    images: int = 0
    captions: int = 0
    objects: int = 0
    added: dict[str, int] = field(default_factory=dict)
    issues: list[IngestIssue] = field(default_factory=list)
    fixes: list[IngestIssue] = field(default_factory=list)  # records kept after a repair

    @property
    def skipped(self) -> Counter[str]:
        """Skipped records by reason."""
        return Counter(i.reason for i in self.issues)

    @property
    def fixed(self) -> Counter[str]:
        """Repaired (and kept) records by reason."""
        return Counter(i.reason for i in self.fixes)


@dataclass
class _Parsed:
    images: dict[int, ImageRow] = field(default_factory=dict)
    captions: list[CaptionRow] = field(default_factory=list)
    objects: list[ObjectRow] = field(default_factory=list)
    issues: list[IngestIssue] = field(default_factory=list)
    fixes: list[IngestIssue] = field(default_factory=list)


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


def _missing(record: dict[str, Any], keys: Iterable[str]) -> list[str]:
    return [k for k in keys if k not in record]


def _parse(captions_path: Path, instances_path: Path, image_dir: Path, coco_root: Path, split: str,
           check_images: bool) -> _Parsed:
    captions_data = read_annotation_file(captions_path, ("images", "annotations"))
    instances_data = read_annotation_file(instances_path, ("images", "annotations", "categories"))
    out = _Parsed()
    cap_name, inst_name = captions_path.name, instances_path.name

    def skip(source: str, record: str, reason: str, detail: str) -> None:
        out.issues.append(IngestIssue(source, record, reason, detail))

    # Images: the captions file defines the set; the instances file must agree on sizes.
    for source, records in ((cap_name, captions_data["images"]), (inst_name, instances_data["images"])):
        for rec in records:
            label = f"image {rec.get('id', '?')}"
            if missing := _missing(rec, ("id", "file_name", "width", "height")):
                skip(source, label, "missing_key", f"image record lacks {', '.join(missing)}")
                continue
            if not (isinstance(rec["width"], int) and isinstance(rec["height"], int)
                    and rec["width"] > 0 and rec["height"] > 0):
                skip(source, label, "bad_image_record",
                     f"width/height must be positive integers, got {rec['width']!r} x {rec['height']!r}")
                continue
            if rec["id"] not in out.images:
                out.images[rec["id"]] = ImageRow(image_id=rec["id"], split=split, file_name=rec["file_name"],
                                                 width=rec["width"], height=rec["height"], coco_root=str(coco_root))

    for rec in captions_data["annotations"]:
        label = f"caption {rec.get('id', '?')}"
        if missing := _missing(rec, ("id", "image_id", "caption")):
            skip(cap_name, label, "missing_key", f"caption record lacks {', '.join(missing)}")
        elif rec["image_id"] not in out.images:
            skip(cap_name, label, "unknown_image", f"caption refers to image {rec['image_id']}, which is not listed")
        elif not isinstance(rec["caption"], str) or not rec["caption"].strip():
            skip(cap_name, label, "empty_caption", "caption text is empty")
        elif not (caption := clean_caption(rec["caption"]))[0]:
            skip(cap_name, label, "empty_caption", f"caption is only {rec['caption'].strip()!r}")
        else:
            text, removed = caption
            if removed:
                out.fixes.append(IngestIssue(cap_name, label, FIXED_PLACEHOLDER,
                                             f"removed {removed} <image> placeholder(s), kept {text!r}"))
            out.captions.append(CaptionRow(caption_id=rec["id"], image_id=rec["image_id"], caption=text))

    # pycocotools indexes the (already shape-checked) instances: categories and per-image anns.
    good_anns = []
    for rec in instances_data["annotations"]:
        label = f"annotation {rec.get('id', '?')}"
        if missing := _missing(rec, ("id", "image_id", "category_id", "bbox")):
            skip(inst_name, label, "missing_key", f"instance record lacks {', '.join(missing)}")
        elif rec["image_id"] not in out.images:
            skip(inst_name, label, "unknown_image", f"instance refers to image {rec['image_id']}, which is not listed")
        else:
            good_anns.append(rec)
    coco = COCO()
    coco.dataset = {"images": [{"id": i} for i in out.images], "annotations": good_anns,
                    "categories": instances_data["categories"]}
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress lines
        coco.createIndex()
    for ann in good_anns:
        label = f"annotation {ann['id']} (image {ann['image_id']})"
        image = out.images[ann["image_id"]]
        if ann["category_id"] not in coco.cats:
            skip(inst_name, label, "unknown_category", f"category_id {ann['category_id']} is not in 'categories'")
            continue
        bbox = ann["bbox"]
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(isinstance(v, int | float) for v in bbox)):
            skip(inst_name, label, "bad_box", f"bbox must be 4 numbers [x, y, w, h], got {bbox!r}")
            continue
        x, y, w, h = bbox
        if w <= 0 or h <= 0:
            skip(inst_name, label, "bad_box", f"bbox {bbox} has zero area (w={w}, h={h})")
            continue
        tol = BOX_TOLERANCE_PX
        if x < -tol or y < -tol or x + w > image.width + tol or y + h > image.height + tol:
            skip(inst_name, label, "bad_box",
                 f"bbox {bbox} lies outside the {image.width}x{image.height} image")
            continue
        out.objects.append(ObjectRow(
            object_id=ann["id"], image_id=ann["image_id"], category=coco.cats[ann["category_id"]]["name"],
            **dict(zip(("x1", "y1", "x2", "y2"), normalise_box(bbox, image.width, image.height), strict=True)),
            area=float(ann.get("area", w * h)), iscrowd=bool(ann.get("iscrowd", 0)),
        ))

    # Drop images that cannot be used, and everything that hangs off them.
    captioned = {c.image_id for c in out.captions}
    for image_id, image in list(out.images.items()):
        label = f"image {image_id} ({image.file_name})"
        problem = None
        if image_id not in captioned:
            problem = ("no_captions", "image has no captions")
        elif check_images:
            problem = _image_file_problem(image_dir / image.file_name, image)
        if problem:
            skip(cap_name, label, *problem)
            del out.images[image_id]
    out.captions = [c for c in out.captions if c.image_id in out.images]
    out.objects = [o for o in out.objects if o.image_id in out.images]
    return out


def _image_file_problem(path: Path, image: ImageRow) -> tuple[str, str] | None:
    if not path.is_file():
        return "missing_image", f"image file {path} not found"
    try:
        with Image.open(path) as im:  # reads the header only: cheap even for all of COCO
            size = im.size
    except (UnidentifiedImageError, OSError) as exc:
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
) -> IngestStats:
    """Ingest one COCO split into the store. Idempotent: re-ingesting adds no rows.

    With `strict=True` the first bad record raises `IngestError`; otherwise bad records are
    skipped, counted by reason and stored in `ingest_errors`.
    """
    coco_root = Path(coco_dir).resolve()
    captions_path, instances_path, image_dir = annotation_paths(coco_root, split)
    if check_images and not image_dir.is_dir():
        raise IngestError(f"{image_dir}: image folder for split {split!r} not found")
    run_id = uuid.uuid4().hex[:12]
    started = store.utcnow()
    parsed = _parse(captions_path, instances_path, image_dir, coco_root, split, check_images)
    if strict and parsed.issues:
        first = parsed.issues[0]
        more = f" (and {len(parsed.issues) - 1} more problem(s))" if len(parsed.issues) > 1 else ""
        raise IngestError(f"{first.message()}{more}; fix the record or run without --strict to skip it")
    kept = {f"caption {c.caption_id}" for c in parsed.captions}  # a fixed caption of a dropped image is gone
    stats = IngestStats(run_id=run_id, split=split, images=len(parsed.images), captions=len(parsed.captions),
                        objects=len(parsed.objects), issues=parsed.issues,
                        fixes=[f for f in parsed.fixes if f.record in kept])
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
        store.insert_rows(con, RunRow, [RunRow(
            run_id=run_id, kind="ingest", started_at=started, finished_at=store.utcnow(), status="completed",
            params={"coco_dir": str(coco_root), "split": split, "strict": strict, "check_images": check_images},
            stats={"images": stats.images, "captions": stats.captions, "objects": stats.objects,
                   "added": stats.added, "skipped": dict(stats.skipped), "fixed": dict(stats.fixed)},
        )])
    return stats
