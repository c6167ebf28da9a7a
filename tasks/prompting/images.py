"""The image of an image-grounded prompt: a small stored reference, materialised as a data URL at send time.

A prompt set whose type reads the `image` context field (docs/PROMPTS.md) ends its last user message with
an image part. `requests.messages` stores a *reference* (`image_ref`): the image id, the file's path, the
SHA-256 of the file's bytes, the detail, the size it is sent at and the encoding, about 300 bytes. The
request id hashes it, so it changes when the image's bytes (or detail, or encoding) change. The engine turns
the reference into OpenAI's part, `{"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,…",
"detail": …}}`, just before sending, through the hook this module registers with `tasks.llm.client`
(`register_part`): the engine stays domain-free, and the database does not hold a 25-90 KB base64 copy of
every image once per sample type (measured on coco-mini, see docs/PROMPTS.md).

The picture is resized with Pillow to the provider's limits for its detail (`tasks.llm.pricing.image_size`:
low fits 512x512; high fits 2048x2048 with the shortest side at most 768) and encoded as JPEG.
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
from functools import lru_cache
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from tasks.llm import client as llm_client
from tasks.llm import pricing

IMAGE_REF = "image_ref"  # the stored part's type; never sent (the engine materialises it)
JPEG_QUALITY = 85
# What the pixels are sent as; part of every reference, so a change of encoder settings makes new request ids.
ENCODING = f"jpeg-q{JPEG_QUALITY}-lanczos"
DATA_URL_PREFIX = "data:image/jpeg;base64,"


class ImageUnavailable(ValueError):
    """An image file is missing, unreadable or changed since planning; the message names the image and path."""


def _unavailable(image_id: int, path: Path | str, why: str) -> ImageUnavailable:
    return ImageUnavailable(f"image {image_id}: {why} ({path})")


@lru_cache(maxsize=4096)
def _file_facts(path: str, size: int, mtime_ns: int, inode: int) -> tuple[str, int, int]:
    # Keyed by size, mtime and inode too, so a replaced or edited file is read again; the sample types of an
    # image share one read.
    data = Path(path).read_bytes()
    with Image.open(io.BytesIO(data)) as im:  # the header only: no pixels decoded
        width, height = im.size
    return hashlib.sha256(data).hexdigest(), width, height


def image_facts(image_id: int, path: Path | str) -> tuple[str, int, int]:
    """`(sha256 of the file's bytes, width, height)` of an image file; raises `ImageUnavailable`."""
    try:
        stat = os.stat(path)
        return _file_facts(str(path), stat.st_size, stat.st_mtime_ns, stat.st_ino)
    except FileNotFoundError:
        raise _unavailable(image_id, path, "image file not found") from None
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise _unavailable(image_id, path, f"image file unreadable: {type(exc).__name__}: {exc}") from None


def image_ref(image_id: int, path: Path | str, detail: str) -> dict[str, Any]:
    """The stored content part for an image: id, path, content hash, detail, sent size, encoding."""
    sha256, width, height = image_facts(image_id, path)
    sent_w, sent_h = pricing.image_size(width, height, detail)
    return {"type": IMAGE_REF, IMAGE_REF: {
        "image_id": image_id, "path": str(path), "sha256": sha256, "detail": detail,
        "width": sent_w, "height": sent_h, "encoding": ENCODING,
    }}


def encode_image(data: bytes, size: tuple[int, int]) -> bytes:
    """The picture in `data` resized to `size` (when it differs) and encoded as RGB JPEG."""
    with Image.open(io.BytesIO(data)) as im:
        im = im.convert("RGB")  # grey, CMYK, palette or alpha images: JPEG wants RGB
        if im.size != size:
            im = im.resize(size, Image.Resampling.LANCZOS)
        out = io.BytesIO()
        im.save(out, "JPEG", quality=JPEG_QUALITY)
    return out.getvalue()


@lru_cache(maxsize=32)  # the types of one image are often sent close together: encode once
def _data_url(path: str, sha256: str, width: int, height: int, image_id: int) -> str:
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise _unavailable(image_id, path, "image file not found") from None
    except OSError as exc:
        raise _unavailable(image_id, path, f"image file unreadable: {exc}") from None
    found = hashlib.sha256(data).hexdigest()
    if found != sha256:
        raise _unavailable(image_id, path, f"image file changed since planning (sha256 {found[:12]}, planned "
                                           f"{sha256[:12]}): re-plan (`vistune generate` plans it again)")
    try:
        jpeg = encode_image(data, (width, height))
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise _unavailable(image_id, path, f"image file unreadable: {type(exc).__name__}: {exc}") from None
    return DATA_URL_PREFIX + base64.b64encode(jpeg).decode("ascii")


def materialize(part: dict[str, Any]) -> dict[str, Any]:
    """The OpenAI image part for a stored reference: the resized JPEG as a base64 data URL, with its detail.

    Raises `ImageUnavailable` when the file is gone, unreadable or no longer has the planned hash.
    """
    ref = part[IMAGE_REF]
    url = _data_url(ref["path"], ref["sha256"], int(ref["width"]), int(ref["height"]), int(ref["image_id"]))
    return {"type": "image_url", "image_url": {"url": url, "detail": ref["detail"]}}


def part_size(part: dict[str, Any]) -> tuple[int, int, str] | None:
    """`(width, height, detail)` of an image part as sent (a reference or a data URL); None: not an image.

    An `image_url` that is not a data URL has an unknown size: it is reported as 768x2048 (8 high-detail
    tiles, the most a 768-short-side image can have at 2048 long), an upper bound.
    """
    kind = part.get("type")
    if kind == IMAGE_REF:
        ref = part[IMAGE_REF]
        return int(ref["width"]), int(ref["height"]), ref.get("detail", "auto")
    if kind != "image_url":
        return None
    image_url = part.get("image_url") or {}
    url, detail = image_url.get("url"), image_url.get("detail") or "auto"
    if not url:  # no picture in it (the API would refuse it): nothing to count
        return None
    if url.startswith("data:") and ";base64," in url:
        try:
            with Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))) as im:
                return im.size[0], im.size[1], detail
        except (OSError, UnidentifiedImageError, ValueError):
            pass
    return pricing.HIGH_SHORT_SIDE, pricing.MAX_SIDE, detail


def abbreviate(part: dict[str, Any], keep: int = 24) -> dict[str, Any]:
    """An image part with its base64 cut to `keep` characters and its length (for `vistune prompts show`)."""
    if part.get("type") != "image_url":
        return part
    url = part["image_url"]["url"]
    head, sep, data = url.partition(",")
    if not sep or len(data) <= keep:
        return part
    short = f"{head},{data[:keep]}…[{len(data):,} base64 chars]"
    return {**part, "image_url": {**part["image_url"], "url": short}}


llm_client.register_part(IMAGE_REF, materialize)
