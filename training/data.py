"""LLaVA json -> model inputs: token ids, labels (assistant replies only), pixel values.

Labels come from character offsets: each token is labelled iff it lies inside a target segment of the
template. A token that straddles a target boundary means the tokenizer and template disagree; LLaVA
then silently masks the whole sample, we raise `TokenizationMismatch` naming the sample.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import Dataset
from transformers import LlavaProcessor

from schemas.llava import IMAGE_PLACEHOLDER
from training.model import num_image_tokens
from training.templates import TEMPLATES, Segment

IGNORE_INDEX = -100
log = logging.getLogger(__name__)


class TokenizationMismatch(ValueError):
    """The tokenizer merged text across a template boundary, so labels cannot be placed exactly."""


def load_records(path: Path) -> list[dict]:
    """Read a LLaVA-format json list (`id`, optional `image`, `conversations`)."""
    records = json.loads(Path(path).read_text())
    if not isinstance(records, list):
        raise ValueError(f"{path}: expected a json list of LLaVA records")
    for index, record in enumerate(records):
        if "conversations" not in record:
            raise ValueError(f"{path}: record {index} (id={record.get('id')!r}) has no 'conversations'")
    return records


def load_rgb(path: Path) -> Image.Image:
    """Open an image as RGB (grayscale, palette, CMYK and RGBA files included)."""
    if not path.exists():
        raise FileNotFoundError(f"image {path} not found; check image_root in the training config")
    with Image.open(path) as image:
        return image.convert("RGB")


def _with_image_placeholder(conversations: list[dict], has_image: bool, sample_id: str) -> list[dict]:
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
    target_at = []  # per character: inside a target segment?
    for segment in segments:
        target_at.extend([segment.target] * len(segment.text))
    encoded = tokenizer(text, add_special_tokens=True, return_offsets_mapping=True)
    ids, labels = list(encoded["input_ids"]), []
    for token_id, (start, end) in zip(ids, encoded["offset_mapping"], strict=True):
        if start == end:  # tokens the tokenizer added (bos): never targets
            labels.append(IGNORE_INDEX)
            continue
        flags = set(target_at[start:end])
        if len(flags) != 1:
            raise TokenizationMismatch(
                f"sample {sample_id}: token {tokenizer.convert_ids_to_tokens(token_id)!r} spans "
                f"{text[start:end]!r} across a reply boundary; fix the text or use a tokenizer/template that "
                "splits there (LLaVA would silently drop this sample's labels)"
            )
        labels.append(token_id if flags.pop() else IGNORE_INDEX)
    return ids, labels


def expand_and_truncate(
    ids: list[int], labels: list[int], image_token_id: int, image_tokens: int, max_length: int, sample_id: str
) -> tuple[list[int], list[int]]:
    """Repeat the image token once per vision feature, then cut text (never image tokens) at `max_length`."""
    out_ids: list[int] = []
    out_labels: list[int] = []
    image_end = 0
    for token_id, label in zip(ids, labels, strict=True):
        if token_id == image_token_id:
            out_ids.extend([image_token_id] * image_tokens)
            out_labels.extend([IGNORE_INDEX] * image_tokens)
            image_end = len(out_ids)
        else:
            out_ids.append(token_id)
            out_labels.append(label)
    if image_end > max_length:
        raise ValueError(
            f"sample {sample_id}: its {image_tokens} image tokens end at position {image_end} > model_max_length "
            f"{max_length}; raise model_max_length"
        )
    return out_ids[:max_length], out_labels[:max_length]


@dataclass
class Example:
    """One tokenised sample, before batching."""

    id: str
    input_ids: list[int]
    labels: list[int]
    pixel_values: torch.Tensor | None


class LlavaJsonDataset(Dataset):
    """LLaVA-format records rendered with a template and tokenised on access."""

    def __init__(
        self, records: list[dict], image_root: Path, processor: LlavaProcessor, template: str, max_length: int
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

    def __len__(self) -> int:
        return len(self.records)

    def modality_lengths(self) -> list[int]:
        """LLaVA's cheap length estimate: words (+ image tokens), negative for text-only samples."""
        lengths = []
        for record in self.records:
            words = sum(len(str(turn.get("value", "")).split()) for turn in record["conversations"])
            lengths.append(words + self.image_tokens if record.get("image") else -words)
        return lengths

    def __getitem__(self, index: int) -> Example:
        record = self.records[index]
        sample_id = str(record.get("id", index))
        has_image = bool(record.get("image"))
        conversations = _with_image_placeholder(record["conversations"], has_image, sample_id)
        segments = self.render(conversations, sample_id, self.processor.tokenizer.eos_token)
        ids, labels = tokenize_segments(segments, self.processor.tokenizer, sample_id)
        ids, labels = expand_and_truncate(
            ids, labels, self.image_token_id, self.image_tokens, self.max_length, sample_id
        )
        if all(label == IGNORE_INDEX for label in labels):
            log.warning("sample %s: no reply tokens left within model_max_length %d", sample_id, self.max_length)
        pixels = None
        if has_image:
            image = load_rgb(self.image_root / record["image"])
            pixels = self.processor.image_processor(images=image, return_tensors="pt")["pixel_values"][0]
        return Example(sample_id, ids, labels, pixels)


class Collator:
    """Right-pads a list of examples into a batch the Llava model accepts."""

    def __init__(self, pad_token_id: int) -> None:
        self.pad_token_id = pad_token_id

    def __call__(self, examples: list[Example]) -> dict[str, torch.Tensor]:
        width = max(len(example.input_ids) for example in examples)
        input_ids = torch.full((len(examples), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((len(examples), width), dtype=torch.long)
        for row, example in enumerate(examples):
            length = len(example.input_ids)
            input_ids[row, :length] = torch.tensor(example.input_ids)
            labels[row, :length] = torch.tensor(example.labels)
            attention_mask[row, :length] = 1
        batch = {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask}
        pixels = [example.pixel_values for example in examples if example.pixel_values is not None]
        if pixels:
            batch["pixel_values"] = torch.stack(pixels)
        return batch
