"""LLaVA json -> model inputs: token ids, labels (assistant replies only), pixel values.

Labels come from character offsets: each token is labelled iff it lies inside a target segment of the
template. A token that straddles a target boundary means the tokenizer and template disagree; LLaVA
then silently masks the whole sample, we raise `TokenizationMismatch` naming the sample.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from itertools import chain
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from transformers import LlavaProcessor

from schemas.llava import IMAGE_PLACEHOLDER
from training.model import num_image_tokens
from training.templates import TEMPLATES, Segment

IGNORE_INDEX = -100
MAX_REPLACEMENTS = 16  # consecutive failing records before the data counts as broken, not a few bad samples
log = logging.getLogger(__name__)


class TokenizationMismatch(ValueError):
    """The tokenizer merged text across a template boundary, so labels cannot be placed exactly."""


class ImageTokensTooLong(ValueError):
    """A sample's image tokens do not fit within `model_max_length` (text is cut, image tokens never are)."""


class ImagePathError(ValueError):
    """A record's `image` names a file outside `image_root` (absolute, or climbing out with `..`)."""


_DRIVE = re.compile(r"^[A-Za-z]:")


def resolve_image(image_root: Path, image: object, sample_id: str, *, root_resolved: bool = False) -> Path:
    """`image_root / image`, refusing any path that leaves the root (the json may come from anywhere).

    The check is lexical on the resolved root: `..` parts, absolute paths and Windows paths are refused;
    symlinks inside the root are the root owner's and are followed as they are. `root_resolved`: the caller
    already resolved `image_root` (preflight, per record: resolving costs a syscall per path part).
    """
    if not isinstance(image, str) or not image.strip():
        raise ImagePathError(f"sample {sample_id}: 'image' must be a non-empty path string, got {image!r:.80}")
    root = str(image_root) if root_resolved else str(Path(image_root).resolve())
    # String operations, not pathlib (preflight calls this per record): an absolute path starts with "/", and
    # splitting on "/" keeps every ".." part, as PurePosixPath(image).is_absolute() / .parts would.
    if "\\" in image or _DRIVE.match(image) or image.startswith("/") or ".." in image.split("/"):
        raise ImagePathError(f"sample {sample_id}: image path {image!r:.200} leaves image_root {root}; "
                             "image paths must be relative to image_root, without '..'")
    target = os.path.normpath(os.path.join(root, image))
    if target != root and not target.startswith(root.rstrip(os.sep) + os.sep):  # Path.is_relative_to, on strings
        raise ImagePathError(f"sample {sample_id}: image path {image!r:.200} leaves image_root {root}")
    return Path(target)


def load_records(path: Path) -> list[dict]:
    """Read a LLaVA-format json list (`id`, optional `image`, `conversations`)."""
    records = json.loads(Path(path).read_text())
    if not isinstance(records, list):
        raise ValueError(f"{path}: expected a json list of LLaVA records")
    for index, record in enumerate(records):
        if not isinstance(record, dict):
            raise ValueError(f"{path}: record {index} is a {type(record).__name__}, not a json object")
        if "conversations" not in record:
            raise ValueError(f"{path}: record {index} (id={record.get('id')!r}) has no 'conversations'")
    return records


def load_rgb(path: Path) -> Image.Image:
    """Open an image as RGB (grayscale, palette, CMYK and RGBA files included)."""
    if not path.exists():
        raise FileNotFoundError(f"image {path} not found; check image_root in the training config")
    with Image.open(path) as image:
        return image.convert("RGB")


def with_image_placeholder(conversations: list[dict], has_image: bool, sample_id: str) -> list[dict]:
    """With an image: the first human turn starts with `<image>\n` (LLaVA moves it there too). Without: none."""
    count = sum(str(turn.get("value", "")).count(IMAGE_PLACEHOLDER) for turn in conversations)
    if not has_image:
        if count:
            raise ValueError(f"sample {sample_id}: text has {IMAGE_PLACEHOLDER} but the record has no 'image'")
        return conversations
    first = dict(conversations[0])
    value = str(first.get("value", ""))
    if count > 1 or count != value.count(IMAGE_PLACEHOLDER):
        raise ValueError(
            f"sample {sample_id}: {count} {IMAGE_PLACEHOLDER} placeholders; one image per sample is supported and "
            "its placeholder must be in the first human turn"
        )
    first["value"] = f"{IMAGE_PLACEHOLDER}\n{value.replace(IMAGE_PLACEHOLDER, '').strip()}"
    return [first, *conversations[1:]]


def tokenize_segments(segments: list[Segment], tokenizer, sample_id: str) -> tuple[list[int], list[int]]:
    """Token ids and labels for rendered segments; raises `TokenizationMismatch` on a straddling token."""
    text = "".join(segment.text for segment in segments)
    # One byte per character, 1 inside a target segment: a token's span is all-target or all-not iff the
    # count of ones in it is its length or zero.
    target_at = bytearray().join(bytes([segment.target]) * len(segment.text) for segment in segments)
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:  # the fast tokenizer's own encoding: the same ids and offsets, without the wrapper
        encoding = backend.encode(text, add_special_tokens=True)
        ids, offsets = encoding.ids, encoding.offsets
    else:
        encoded = tokenizer(text, add_special_tokens=True, return_offsets_mapping=True)
        ids, offsets = list(encoded["input_ids"]), encoded["offset_mapping"]
    # Vectorised over tokens: characters inside target segments per token span, from a prefix sum.
    # fromiter over the flattened pairs is ~2x faster than np.asarray on a list of tuples (preflight's hot path).
    spans = np.fromiter(chain.from_iterable(offsets), dtype=np.int64, count=2 * len(offsets)).reshape(-1, 2)
    inside_before = np.concatenate(([0], np.cumsum(np.frombuffer(bytes(target_at), dtype=np.uint8), dtype=np.int64)))
    inside = inside_before[spans[:, 1]] - inside_before[spans[:, 0]]
    width = spans[:, 1] - spans[:, 0]  # 0 for tokens the tokenizer added (bos): never targets
    straddling = np.flatnonzero((inside != 0) & (inside != width))
    if straddling.size:
        index = int(straddling[0])
        start, end = int(spans[index, 0]), int(spans[index, 1])
        raise TokenizationMismatch(
            f"sample {sample_id}: token {tokenizer.convert_ids_to_tokens(ids[index])!r} spans "
            f"{text[start:end]!r} across a reply boundary; fix the text or use a tokenizer/template that "
            "splits there (LLaVA would silently drop this sample's labels)"
        )
    labels = np.where(inside > 0, np.asarray(ids, dtype=np.int64), IGNORE_INDEX).tolist()
    return ids, labels


def expand_and_truncate(
    ids: list[int], labels: list[int], image_token_id: int, image_tokens: int, max_length: int, sample_id: str
) -> tuple[list[int], list[int]]:
    """Repeat the image token once per vision feature, then cut text (never image tokens) at `max_length`."""
    out_ids: list[int] = []
    out_labels: list[int] = []
    image_end = 0
    start = 0
    while image_token_id in ids[start:]:  # slices, not a per-token loop: most samples have one image or none
        position = ids.index(image_token_id, start)
        out_ids += ids[start:position] + [image_token_id] * image_tokens
        out_labels += labels[start:position] + [IGNORE_INDEX] * image_tokens
        image_end = len(out_ids)
        start = position + 1
    out_ids += ids[start:]
    out_labels += labels[start:]
    if image_end > max_length:
        raise ImageTokensTooLong(
            f"sample {sample_id}: its {image_tokens} image tokens end at position {image_end} > model_max_length "
            f"{max_length}; raise model_max_length"
        )
    return out_ids[:max_length], out_labels[:max_length]


def encode_conversation(
    record: dict,
    sample_id: str,
    render: Callable[[list[dict], str, str], list[Segment]],
    tokenizer,
    image_token_id: int,
    image_tokens: int,
    max_length: int,
) -> tuple[list[int], list[int], int]:
    """A record's conversation rendered, tokenised, image tokens expanded and truncated at `max_length`.

    Returns (ids, labels, untruncated length). The one path from text to tokens: training and preflight share it.
    """
    conversations = with_image_placeholder(record["conversations"], bool(record.get("image")), sample_id)
    segments = render(conversations, sample_id, tokenizer.eos_token)
    ids, labels = tokenize_segments(segments, tokenizer, sample_id)
    full_length = len(ids) + (image_tokens - 1) * ids.count(image_token_id)
    ids, labels = expand_and_truncate(ids, labels, image_token_id, image_tokens, max_length, sample_id)
    return ids, labels, full_length


@dataclass
class Example:
    """One tokenised sample, before batching."""

    id: str
    input_ids: list[int]
    labels: list[int]
    pixel_values: torch.Tensor | None
    failed_ids: tuple[str, ...] = ()


class LlavaJsonDataset(Dataset):
    """LLaVA-format records rendered with a template and tokenised on access.

    With `replace_bad`, a record that fails is replaced by the next one that does not; the example carries the
    failed ids (`failed_ids`) so the training loop can log and count them.
    """

    def __init__(
        self,
        records: list[dict],
        image_root: Path,
        processor: LlavaProcessor,
        template: str,
        max_length: int,
        replace_bad: bool = False,
    ) -> None:
        if template not in TEMPLATES:
            raise ValueError(f"unknown template {template!r}; choose one of {sorted(TEMPLATES)}")
        self.records = records
        self.image_root = Path(image_root)
        self.processor = processor
        self.render = TEMPLATES[template]
        self.max_length = max_length
        self.image_tokens = num_image_tokens(processor)
        self.image_token_id = processor.tokenizer.convert_tokens_to_ids(IMAGE_PLACEHOLDER)
        self.replace_bad = replace_bad
        self._check_image_paths()

    def _check_image_paths(self) -> None:
        """Fail before training starts when any record's image lies outside `image_root` (cheap: no file opened)."""
        bad: list[str] = []
        for index, record in enumerate(self.records):
            if record.get("image"):
                try:
                    resolve_image(self.image_root, record["image"], str(record.get("id", index)))
                except ImagePathError as exc:
                    bad.append(str(exc))
        if bad:
            more = f" (and {len(bad) - 1} more record(s) like it)" if len(bad) > 1 else ""
            raise ImagePathError(f"{bad[0]}{more}")

    def __len__(self) -> int:
        return len(self.records)

    def modality_lengths(self) -> list[int]:
        """LLaVA's cheap length estimate: words (+ image tokens), negative for text-only samples."""
        lengths = []
        for record in self.records:
            words = sum(len(str(turn.get("value", "")).split()) for turn in record["conversations"])
            lengths.append(words + self.image_tokens if record.get("image") else -words)
        return lengths

    def encode(self, index: int) -> tuple[list[int], list[int], int]:
        """Token ids and labels of record `index` (image tokens expanded, truncated), and its untruncated length."""
        record = self.records[index]
        return encode_conversation(
            record, str(record.get("id", index)), self.render, self.processor.tokenizer, self.image_token_id,
            self.image_tokens, self.max_length,
        )

    def example(self, index: int) -> Example:
        """Record `index` tokenised, with its image's pixels; raises on any problem with the record."""
        record = self.records[index]
        sample_id = str(record.get("id", index))
        ids, labels, _ = self.encode(index)
        if all(label == IGNORE_INDEX for label in labels):
            log.warning("sample %s: no reply tokens left within model_max_length %d", sample_id, self.max_length)
        pixels = None
        if record.get("image"):
            image = load_rgb(resolve_image(self.image_root, record["image"], sample_id))
            pixels = self.processor.image_processor(images=image, return_tensors="pt")["pixel_values"][0]
        return Example(sample_id, ids, labels, pixels)

    def __getitem__(self, index: int) -> Example:
        if not self.replace_bad:
            return self.example(index)
        # A record that passed preflight can still fail (an image replaced or corrupted since): train on the
        # next record instead and report the failed id, so the loop can count it against max_bad_fraction.
        failed: list[str] = []
        for offset in range(min(len(self.records), MAX_REPLACEMENTS + 1)):
            candidate = (index + offset) % len(self.records)
            try:
                example = self.example(candidate)
            except Exception as exc:  # any failure of one record must not end the run
                sample_id = str(self.records[candidate].get("id", candidate))
                log.warning("sample %s failed at training time (%s: %s); replaced by another sample",
                            sample_id, type(exc).__name__, exc)
                failed.append(sample_id)
                continue
            example.failed_ids = tuple(failed)
            return example
        raise RuntimeError(f"samples {', '.join(failed)} all failed in a row; the data is broken, run "
                           "`python -m training check` to see why")


class Collator:
    """Right-pads a list of examples into a batch the Llava model accepts."""

    def __init__(self, pad_token_id: int) -> None:
        self.pad_token_id = pad_token_id

    def __call__(self, examples: list[Example]) -> dict:
        width = max(len(example.input_ids) for example in examples)
        input_ids = torch.full((len(examples), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((len(examples), width), dtype=torch.long)
        for row, example in enumerate(examples):
            length = len(example.input_ids)
            input_ids[row, :length] = torch.tensor(example.input_ids)
            labels[row, :length] = torch.tensor(example.labels)
            attention_mask[row, :length] = 1
        batch: dict = {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask}
        # Not model inputs: the loop pops them (which samples trained, which failed and were replaced).
        batch["sample_ids"] = [example.id for example in examples]
        batch["failed_ids"] = [sample_id for example in examples for sample_id in example.failed_ids]
        pixels = [example.pixel_values for example in examples if example.pixel_values is not None]
        if pixels:
            batch["pixel_values"] = torch.stack(pixels)
        return batch
