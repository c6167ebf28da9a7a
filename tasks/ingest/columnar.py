"""COCO ingest's columnar path: typed decoding, vectorised checks, whole-column inserts.

`tasks.ingest.coco.ingest` tries this path first. It decodes each annotation file straight into small
typed records (msgspec: no dict per record, and the fields ingest does not read, such as segmentation
polygons, are skipped while decoding), checks every rule over whole columns (numpy), and returns the
rows as columns for `store.insert_columns`. It only ever *accepts* files: the moment any record would be
skipped or repaired under one of `coco.py`'s rules (a wrong type, a missing key, a duplicate id, a bad
box, an empty caption, an `<image>` placeholder, an image without captions, ...), or a check here cannot
vouch for a record, it returns None and `coco.py`'s record-by-record path ingests the split instead, with
the same reason codes and messages as always. So the rules have one definition (coco.py) and this path is
a faster way to establish that none of them fires, producing the same rows.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import numpy as np

from tasks.ingest.coco import (
    _DRIVE,
    BOX_DECIMALS,
    BOX_TOLERANCE_PX,
    ID_MAX,
    ID_MIN,
    SIZE_MAX,
    path_problem,
)

# A box edge within this of a rounding tie (in units of the last kept decimal) is rounded by Python's
# `round` itself, as `coco.normalise_box` does; elsewhere numpy's rint gives the same float (see `_rounded`).
_TIE_MARGIN = 1e-6


class _Image(msgspec.Struct, gc=False):
    id: int
    file_name: str
    width: int
    height: int


class _Caption(msgspec.Struct, gc=False):
    id: int
    image_id: int
    caption: str


class _Annotation(msgspec.Struct, gc=False):
    id: int
    image_id: int
    category_id: int
    bbox: tuple[float, float, float, float]
    area: float | None = None  # coco.py: w * h when absent
    iscrowd: int = 0


class _Category(msgspec.Struct, gc=False):
    id: int
    name: str


class _CaptionsFile(msgspec.Struct, gc=False):
    images: list[_Image]
    annotations: list[_Caption]


class _InstancesFile(msgspec.Struct, gc=False):
    images: list[_Image]
    annotations: list[msgspec.Raw]  # decoded a batch at a time (`_annotation_columns`): the largest list by far
    categories: list[_Category]


# Instances decoded at once: their typed records (~300 B each) live only while their batch is turned into columns.
ANNOTATION_BATCH = 100_000


def _annotation_columns(raws: list[msgspec.Raw]) -> dict[str, np.ndarray] | None:
    """ids, image ids, category ids, boxes (n x 4), areas (NaN: not given) and iscrowd of the instances."""
    parts: dict[str, list[np.ndarray]] = {name: [] for name in ("id", "image_id", "category_id", "bbox", "area",
                                                                 "iscrowd")}
    for start in range(0, len(raws), ANNOTATION_BATCH):
        text = b"[" + b",".join(raws[start : start + ANNOTATION_BATCH]) + b"]"
        try:
            batch = msgspec.json.decode(text, type=list[_Annotation])
        except (msgspec.MsgspecError, RecursionError):
            return None
        for name in ("id", "image_id", "category_id"):
            ids = _ids([getattr(a, name) for a in batch])
            if ids is None:
                return None
            parts[name].append(ids)
        parts["bbox"].append(np.array([a.bbox for a in batch], dtype=np.float64).reshape(len(batch), 4))
        parts["area"].append(np.array([np.nan if a.area is None else a.area for a in batch], dtype=np.float64))
        parts["iscrowd"].append(np.fromiter((a.iscrowd for a in batch), dtype=np.int64, count=len(batch)))
    if not raws:
        return {"id": np.zeros(0, np.int64), "image_id": np.zeros(0, np.int64), "category_id": np.zeros(0, np.int64),
                "bbox": np.zeros((0, 4)), "area": np.zeros(0), "iscrowd": np.zeros(0, np.int64)}
    return {name: np.concatenate(arrays) for name, arrays in parts.items()}


@dataclass
class Columns:
    """The rows of one split as columns (`store.insert_columns`), and what was read per table."""

    images: dict[str, Any] = field(default_factory=dict)  # column -> list or numpy array
    captions: dict[str, Any] = field(default_factory=dict)
    objects: dict[str, Any] = field(default_factory=dict)
    categories: int = 0
    read: dict[str, int] = field(default_factory=dict)


def _decode(path: Path, kind: type[Any]) -> Any | None:
    try:
        data = path.read_bytes()
    except OSError:
        return None  # coco.py names the file and the problem
    try:
        return msgspec.json.decode(data, type=kind)
    except (msgspec.MsgspecError, RecursionError):  # any shape or type a rule would report
        return None


def _ids(values: list[int]) -> np.ndarray | None:
    # msgspec's int also takes unsigned 64-bit values; coco.py's `bad_id` refuses what the store cannot keep.
    if values and (max(values) > ID_MAX or min(values) < ID_MIN):
        return None
    return np.fromiter(values, dtype=np.int64, count=len(values))


def _unique(ids: np.ndarray) -> bool:
    ordered = np.sort(ids)  # sorting beats np.unique's hashing here by far
    return not (ordered[1:] == ordered[:-1]).any()


def _all_in(values: np.ndarray, allowed: np.ndarray) -> bool:
    """Whether every value is one of `allowed` (np.isin, by binary search on the sorted allowed ids)."""
    if not len(values):
        return True
    if not len(allowed):
        return False
    ordered = np.sort(allowed)
    at = np.minimum(np.searchsorted(ordered, values), len(ordered) - 1)
    return bool((ordered[at] == values).all())


def _clean_texts(texts: list[str]) -> bool:
    """No NUL and no lone surrogate in any of `texts` (coco.py's `text_problem`), checked on them all at once."""
    joined = "\n".join(texts)
    if "\x00" in joined:
        return False
    try:
        joined.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _plain_path(file_name: str) -> bool:
    # A quick pass for the usual `000000391895.jpg`; anything that might be odd is judged by `path_problem`.
    if file_name.strip() and "\\" not in file_name and ".." not in file_name and not file_name.startswith("/") \
            and not _DRIVE.match(file_name):
        return True
    return path_problem(file_name) is None


def _rounded(values: np.ndarray) -> np.ndarray:
    """`round(v, BOX_DECIMALS)` for every value, the same floats as Python's `round`.

    Python rounds the exact binary value to the nearest multiple of 10**-3 and returns the float nearest
    to that decimal. `rint(v * 1000)` picks the same multiple unless `v * 1000` lies within its own
    rounding error of a tie, and `k / 1000` (an exact integer over 1000, correctly rounded) is the float
    nearest to it. Values near a tie, and negative zeros, are rounded by Python.
    """
    scale = 10.0**BOX_DECIMALS
    scaled = values * scale
    out = np.rint(scaled) / scale
    fraction = scaled - np.floor(scaled)
    by_python = np.flatnonzero((np.abs(fraction - 0.5) < _TIE_MARGIN) | np.signbit(values))
    for i in by_python:
        out[i] = round(float(values[i]), BOX_DECIMALS)
    return out


def parse(
    captions_path: Path, instances_path: Path, coco_root: Path, split: str, max_caption_chars: int,
    image_problem: Callable[[str, int, int], tuple[str, str] | None] | None,
    clean_caption: Callable[[str], tuple[str, int]],
) -> Columns | None:
    """The split's rows as columns when no record breaks a rule, else None (then coco.py's path runs).

    `image_problem(file_name, width, height)` checks an image file (None: images not checked);
    `clean_caption` is coco.py's.
    """
    captions_file = _decode(captions_path, _CaptionsFile)
    if captions_file is None:
        return None
    caption_images = captions_file.images
    caption_ids = _ids([c.id for c in captions_file.annotations])
    caption_image_ids = _ids([c.image_id for c in captions_file.annotations])
    raw_captions = [c.caption for c in captions_file.annotations]
    del captions_file
    if caption_ids is None or caption_image_ids is None or not _unique(caption_ids):
        return None
    texts: list[str] = []
    for text in raw_captions:
        cleaned, removed = clean_caption(text) if "<" in text else (" ".join(text.split()), 0)
        if removed or not cleaned or len(cleaned) > max_caption_chars:  # a fix or a skip: coco.py reports it
            return None
        texts.append(cleaned)
    if not _clean_texts(raw_captions):
        return None
    del raw_captions

    instances_file = _decode(instances_path, _InstancesFile)
    if instances_file is None:
        return None
    # Images: the captions file's, then the instances file's; an id listed twice must agree.
    images: dict[int, tuple[str, int, int]] = {}
    for image in (*caption_images, *instances_file.images):
        row = (image.file_name, image.width, image.height)
        if images.setdefault(image.id, row) != row:
            return None
    if _ids(list(images)) is None or not _clean_texts([row[0] for row in images.values()]):
        return None
    for file_name, width, height in images.values():
        if not (0 < width <= SIZE_MAX and 0 < height <= SIZE_MAX and _plain_path(file_name)):
            return None
    image_ids = np.fromiter(images, dtype=np.int64, count=len(images))
    if not _all_in(caption_image_ids, image_ids) or not _all_in(image_ids, caption_image_ids):
        return None  # a caption of an unknown image, or an image without captions
    if image_problem is not None and any(image_problem(*row) for row in images.values()):
        return None

    categories = {c.id: c.name for c in instances_file.categories}
    if len(categories) != len(instances_file.categories) or _ids(list(categories)) is None:
        return None
    names = list(categories.values())
    if not all(name.strip() for name in names) or not _clean_texts(names):
        return None

    annotations = _annotation_columns(instances_file.annotations)
    del instances_file
    if annotations is None:
        return None
    object_ids, object_image_ids = annotations["id"], annotations["image_id"]
    category_ids, boxes, crowd = annotations["category_id"], annotations["bbox"], annotations["iscrowd"]
    n = len(object_ids)
    if not _unique(object_ids):
        return None
    if not _all_in(object_image_ids, image_ids):
        return None
    category_keys = np.fromiter(categories, dtype=np.int64, count=len(categories))
    if not _all_in(category_ids, category_keys):
        return None
    x, y, w, h = boxes.T
    order = np.argsort(image_ids)
    at = order[np.searchsorted(image_ids, object_image_ids, sorter=order)]
    sizes = np.array([(row[1], row[2]) for row in images.values()], dtype=np.float64).reshape(-1, 2)
    width, height = sizes[at, 0], sizes[at, 1]
    tol = BOX_TOLERANCE_PX
    with np.errstate(invalid="ignore", over="ignore"):
        good = (np.isfinite(boxes).all(axis=1) & (w > 0) & (h > 0) & (x >= -tol) & (y >= -tol)
                & (x + w <= width + tol) & (y + h <= height + tol))
    if not good.all() or not ((crowd == 0) | (crowd == 1)).all():
        return None
    area = np.where(np.isnan(annotations["area"]), w * h, annotations["area"])  # coco.py: w * h when not given
    if not (np.isfinite(area).all() and (area >= 0).all()):
        return None

    def clip(values: np.ndarray) -> np.ndarray:
        return _rounded(np.minimum(np.maximum(values, 0.0), 1.0))

    x1, y1, x2, y2 = clip(x / width), clip(y / height), clip((x + w) / width), clip((y + h) / height)
    root = str(coco_root)
    return Columns(
        images={"image_id": list(images), "split": [split] * len(images),
                "file_name": [row[0] for row in images.values()], "width": [row[1] for row in images.values()],
                "height": [row[2] for row in images.values()], "coco_root": [root] * len(images)},
        captions={"caption_id": caption_ids, "image_id": caption_image_ids, "caption": texts},
        objects={"object_id": object_ids, "image_id": object_image_ids,
                 "category": [categories[c] for c in category_ids.tolist()],
                 "x1": x1, "y1": y1, "x2": x2, "y2": y2, "area": area, "iscrowd": crowd == 1},
        categories=len(categories),
        read={"images": len(images), "captions": len(texts), "objects": n, "categories": len(categories)},
    )
