"""Prompt building: what the LLM reads for one image and one sample type.

A sample type's prompt is data in `tasks/prompting/templates/<sample_type>/`:

- `system.md`: the task, written for a model that never sees the image, only its text context.
- `format_structured.md`, `format_llava-text.md`: how to shape the answer; appended to the system text.
- `examples.json`: few-shot pairs `{"context": {...}, "output": {...}}`; the context is rendered
  exactly like a real image's, the output is the sample type's pydantic model, rendered in the
  requested format with `tasks.prompting.formats.render`.

The `prompt_version` hashes those files and `RENDER_VERSION`, the version of the code that turns
them and an image into messages, so editing a file or the rendering makes new requests (and leaves
old samples attributable to the prompt that made them).

Messages are `[system, (user example, assistant example)…, user query]`: everything but the
last message is identical for every image of a type and format, so provider prompt caching
(a shared prefix) applies.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, NamedTuple

import duckdb
import pyarrow as pa
from pydantic import ValidationError

from schemas.samples import SampleOutput, sample_type
from tasks.prompting.formats import OUTPUT_FORMATS, check_format, render

PROMPTS_DIR = Path(__file__).resolve().parent / "templates"
# The version of the code that renders messages: `render_context`, `format_number`/`format_object`,
# `PromptTemplate.system_text`, the message order in `_static_messages`/`build_messages`, and
# `tasks.prompting.formats.render`. It is hashed into every `prompt_version`, because the prompt files
# alone miss a rendering change. Bump it whenever the messages rendered from the same files change;
# tests/test_prompts.py::test_golden_prompt_of_a_sample_image fails until you do (see docs/PROMPTS.md).
RENDER_VERSION = 1
BOX_DECIMALS = 3
_IDS_VIEW = "_vistune_context_ids"
CROWD_MARK = " (crowd)"  # appended to the category of an `iscrowd` region; system prompts explain it

Box = tuple[float, float, float, float]
Message = dict[str, str]


class ObjectBox(NamedTuple):
    """One annotated object: COCO category name and its box `(x1, y1, x2, y2)` normalised to [0, 1].

    `crowd` marks a COCO `iscrowd` region: one box around a group of many objects of the category.
    """

    category: str
    box: Box
    crowd: bool = False


@dataclass(frozen=True)
class ImageContext:
    """Everything the LLM is told about one image: its captions and, for some types, its objects.

    `captions` are in COCO caption-id order; `objects` in annotation-id order.
    """

    image_id: int
    width: int
    height: int
    captions: tuple[str, ...]
    objects: tuple[ObjectBox, ...] = ()


class PromptExample(NamedTuple):
    """One few-shot pair `(context, output)`: an invented image context and the ideal answer for it."""

    context: ImageContext
    output: SampleOutput


@dataclass(frozen=True)
class PromptTemplate:
    """A sample type's prompt files, loaded and checked."""

    sample_type: str
    system: str
    formats: dict[str, str]  # output format -> instructions appended to the system text
    examples: tuple[PromptExample, ...]
    version: str
    files: tuple[str, ...] = field(default=())

    def system_text(self, output_format: str) -> str:
        """The system message for one output format: the task, then how to format the answer."""
        return f"{self.system}\n\n{self.formats[check_format(output_format)]}"


class PromptFileError(ValueError):
    """A prompt file is missing or does not match what the sample type expects."""


# ---------------------------------------------------------------- context
def format_number(value: float) -> str:
    """A box coordinate as LLaVA writes it: rounded to 3 decimals, Python's float repr (0.0, 0.5, 0.681)."""
    return repr(round(float(value), BOX_DECIMALS) + 0.0)  # + 0.0 turns -0.0 into 0.0


def format_object(obj: ObjectBox) -> str:
    """One object line, e.g. `person: [0.681, 0.242, 0.774, 0.694]` or `person (crowd): [0.0, 0.5, 1.0, 1.0]`."""
    coords = ", ".join(format_number(v) for v in obj.box)
    return f"{obj.category}{CROWD_MARK if obj.crowd else ''}: [{coords}]"


def _clean(caption: str) -> str:
    # COCO captions carry stray newlines and double spaces; one caption must stay one line.
    return " ".join(caption.split())


def render_context(ctx: ImageContext, sample_type_name: str) -> str:
    """The user message for an image: captions one per line; for box-seeing types, a blank line and the boxes."""
    captions = [c for c in (_clean(c) for c in ctx.captions) if c]
    if not captions:
        raise ValueError(f"image {ctx.image_id} has no captions: nothing to prompt with (re-run `vistune ingest`)")
    text = "\n".join(captions)
    if sample_type(sample_type_name).sees_boxes and ctx.objects:
        text += "\n\n" + "\n".join(format_object(o) for o in ctx.objects)
    return text


def load_contexts(con: duckdb.DuckDBPyConnection, image_ids: Sequence[int] | None = None) -> dict[int, ImageContext]:
    """Contexts of the given images (all ingested images when `None`), in three queries in total.

    Images that are not in the store are missing from the result; the caller decides whether
    that is an error. Works on read-only connections.
    """
    if image_ids is None:
        return _load_contexts(con, "")
    if len(image_ids) == 0:
        return {}
    # A registered arrow table joins faster than a long list parameter, and keeps the SQL short.
    con.register(_IDS_VIEW, pa.table({"image_id": pa.array(list(map(int, image_ids)), type=pa.int64())}))
    try:
        return _load_contexts(con, f"WHERE image_id IN (SELECT image_id FROM {_IDS_VIEW})")
    finally:
        con.unregister(_IDS_VIEW)


def _load_contexts(con: duckdb.DuckDBPyConnection, where: str) -> dict[int, ImageContext]:
    images = con.execute(f"SELECT image_id, width, height FROM images {where}").fetchall()
    # Flat ordered rows grouped here: several times faster than list()/struct aggregates in SQL,
    # whose conversion to Python objects dominates at 50K+ images.
    captions: dict[int, list[str]] = {}
    for image_id, caption in con.execute(
        f"SELECT image_id, caption FROM captions {where} ORDER BY image_id, caption_id"
    ).fetchall():
        captions.setdefault(image_id, []).append(caption)
    objects: dict[int, list[ObjectBox]] = {}
    for image_id, category, x1, y1, x2, y2, crowd in con.execute(
        f"SELECT image_id, category, x1, y1, x2, y2, iscrowd FROM objects {where} ORDER BY image_id, object_id"
    ).fetchall():
        objects.setdefault(image_id, []).append(ObjectBox(category, (x1, y1, x2, y2), bool(crowd)))
    return {
        image_id: ImageContext(
            image_id=image_id,
            width=width,
            height=height,
            captions=tuple(captions.get(image_id, ())),
            objects=tuple(objects.get(image_id, ())),
        )
        for image_id, width, height in images
    }


# ---------------------------------------------------------------- templates
def _read(path: Path) -> str:
    if not path.is_file():
        raise PromptFileError(f"prompt file {path} is missing: every sample type needs it (see docs/PROMPTS.md)")
    return path.read_text(encoding="utf-8").strip()


def _example_context(raw: dict[str, Any], where: str) -> ImageContext:
    try:
        objects = tuple(
            ObjectBox(o["category"], tuple(float(v) for v in o["box"]), bool(o.get("crowd", False)))
            for o in raw.get("objects", [])
        )
        if any(len(o.box) != 4 for o in objects):
            raise ValueError("every box needs 4 numbers [x1, y1, x2, y2]")
        return ImageContext(
            image_id=int(raw.get("image_id", 0)),
            width=int(raw["width"]),
            height=int(raw["height"]),
            captions=tuple(raw["captions"]),
            objects=objects,
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise PromptFileError(f"{where}: bad context ({type(exc).__name__}: {exc}); "
                              "expected width, height, captions and objects [{category, box, crowd}]") from None


def prompt_files(sample_type_name: str) -> list[Path]:
    """The files that make up a sample type's prompt (hashed into its version with `RENDER_VERSION`)."""
    folder = PROMPTS_DIR / sample_type_name
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in (".md", ".json"))


@cache
def load_template(sample_type_name: str) -> PromptTemplate:
    """Load and check a sample type's prompt files (cached per process)."""
    st = sample_type(sample_type_name)
    folder = PROMPTS_DIR / st.name
    system = _read(folder / "system.md")
    formats = {fmt: _read(folder / f"format_{fmt}.md") for fmt in OUTPUT_FORMATS}
    examples_path = folder / "examples.json"
    try:
        raw_examples = json.loads(_read(examples_path))
    except json.JSONDecodeError as exc:
        raise PromptFileError(f"{examples_path}: not valid JSON ({exc})") from None
    if not isinstance(raw_examples, list) or not raw_examples:
        raise PromptFileError(f"{examples_path}: expected a non-empty JSON list of {{context, output}} objects")
    examples = []
    for i, raw in enumerate(raw_examples):
        where = f"{examples_path} example {i}"
        if not isinstance(raw, dict) or "context" not in raw or "output" not in raw:
            raise PromptFileError(f"{where}: expected an object with 'context' and 'output'")
        try:
            output = st.output_model.model_validate(raw["output"])
        except ValidationError as exc:
            raise PromptFileError(f"{where}: output is not a valid {st.name}: {exc.errors()[0]['msg']} "
                                  f"at {'.'.join(map(str, exc.errors()[0]['loc']))}") from None
        examples.append(PromptExample(_example_context(raw["context"], where), output))
    files = prompt_files(st.name)
    digest = hashlib.sha256(f"render {RENDER_VERSION}\0".encode())
    for path in files:
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return PromptTemplate(
        sample_type=st.name,
        system=system,
        formats=formats,
        examples=tuple(examples),
        version=digest.hexdigest()[:12],
        files=tuple(p.name for p in files),
    )


@cache
def _static_messages(sample_type_name: str, output_format: str) -> tuple[tuple[tuple[str, str], ...], str]:
    template = load_template(sample_type_name)
    messages = [("system", template.system_text(output_format))]
    for example in template.examples:
        messages.append(("user", render_context(example.context, sample_type_name)))
        messages.append(("assistant", render(example.output, output_format)))
    return tuple(messages), template.version


def build_messages(ctx: ImageContext, sample_type_name: str, output_format: str) -> tuple[list[Message], str]:
    """The chat messages for one image and `(messages, prompt_version)`.

    Order: system, then each few-shot (user, assistant) pair, then the image's own context,
    so every request of a type and format shares the same prefix. Returns fresh dicts.
    """
    static, version = _static_messages(sample_type(sample_type_name).name, check_format(output_format))
    messages = [{"role": role, "content": content} for role, content in static]
    messages.append({"role": "user", "content": render_context(ctx, sample_type_name)})
    return messages, version


def prompt_versions() -> dict[str, str]:
    """The current `prompt_version` of every sample type."""
    from schemas.samples import SAMPLE_TYPES

    return {name: load_template(name).version for name in SAMPLE_TYPES}
