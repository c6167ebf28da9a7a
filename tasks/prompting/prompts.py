"""Prompt building: what the LLM reads for one image and one sample type, from a *prompt set*.

A prompt set is a folder with one sub-folder per sample type and an optional manifest
`prompt_set.toml` (its name, output formats, which context fields each type reads, crowd marks).
Two layouts of a type folder are read:

- vistune's (`tasks/prompting/templates/`, the default set): `system.md` (the task),
  `format_structured.md` / `format_llava-text.md` (appended to the system text) and `examples.json`,
  few-shot pairs `{"context": {...}, "output": {...}}`. The example context is rendered exactly like a
  real image's, the output (the type's pydantic model) in the requested format with
  `tasks.prompting.formats.render`.
- LLaVA's released one (`playground/data/prompts/<type>/`): `system_message.txt` and few-shot pairs
  `000_caps.txt` (context) + `000_conv.txt` (answer in llava-text), `001_…`. Their text is sent as is,
  so a user with LLaVA's files gets its prompts byte for byte; the image's context is written the way
  LLaVA wrote it (captions one per line, then `category: [x1, y1, x2, y2]`, no crowd marks).

The `prompt_version` hashes the files a type reads, its resolved settings (layout, context fields,
output formats, crowd marks) and `RENDER_VERSION`, the version of the code that turns them and an image
into messages: editing a file, a setting or the rendering makes new requests (and leaves old samples
attributable to the prompt that made them), and two sets never share a version unless their prompts match.

Messages are `[system, (user example, assistant example)…, user query]`: everything but the
last message is identical for every image of a type and format, so provider prompt caching
(a shared prefix) applies. A type whose context has `image` ends the last message with the picture as an
image part, stored as a reference and sent as a data URL (`tasks/prompting/images.py`).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, Literal, NamedTuple

import duckdb
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from schemas.samples import SAMPLE_TYPES, SampleOutput, sample_type
from tasks.prompting.formats import OUTPUT_FORMATS, OutputFormatError, check_format, parse, render
from tasks.prompting.images import ImageUnavailable, image_ref

PROMPTS_DIR = Path(__file__).resolve().parent / "templates"  # vistune's own prompt set
MANIFEST = "prompt_set.toml"
# The version of the code that renders messages: `render_context`, `format_number`/`format_object`,
# `PromptTemplate.system_text`, how each layout's files become messages (`_static_messages`, `build_messages`)
# and `tasks.prompting.formats.render`. It is hashed into every `prompt_version`, because the prompt files
# alone miss a rendering change. Bump it whenever the messages rendered from the same files change;
# tests/test_prompts.py::test_golden_prompt_of_a_sample_image fails until you do (see docs/PROMPTS.md).
RENDER_VERSION = 1
BOX_DECIMALS = 3
_IDS_VIEW = "_vistune_context_ids"
CROWD_MARK = " (crowd)"  # appended to the category of an `iscrowd` region; system prompts explain it
_LLAVA_SHOT = re.compile(r"^(\d+)_(caps|conv)\.txt$")

Box = tuple[float, float, float, float]
Message = dict[str, Any]  # content: a string, or (image-grounded) a list of text and image parts
ContextField = Literal["captions", "boxes", "image"]
ImageDetail = Literal["low", "high", "auto"]
Layout = Literal["vistune", "llava"]


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
    file: str | None = None  # the picture (`coco_root/split/file_name`), read only by image-grounded sets


@dataclass(frozen=True)
class ContextSpec:
    """How a prompt set writes an image's context: which fields, whether crowd boxes are marked, image detail."""

    fields: tuple[ContextField, ...] = ("captions",)
    mark_crowds: bool = True
    detail: ImageDetail = "low"  # the image part's `detail`, when `fields` has "image"

    @classmethod
    def default(cls, sample_type_name: str) -> ContextSpec:
        """The paper's choice: captions for every type, boxes for the types that see them (`SampleType.sees_boxes`)."""
        boxes = sample_type(sample_type_name).sees_boxes
        return cls(("captions", "boxes") if boxes else ("captions",))


class PromptExample(NamedTuple):
    """One few-shot pair: an invented image context and the ideal answer for it.

    In LLaVA's layout both are text read from the set's files and sent as is: `context` is a string
    and `answer_text` the answer in llava-text (`output` is that answer parsed, for checks).
    """

    context: ImageContext | str
    output: SampleOutput
    answer_text: str | None = None


@dataclass(frozen=True)
class PromptTemplate:
    """A sample type's prompt, loaded from a prompt set and checked."""

    sample_type: str
    system: str
    formats: dict[str, str]  # output format -> instructions appended to the system text ("" : nothing)
    examples: tuple[PromptExample, ...]
    version: str
    files: tuple[str, ...] = field(default=())
    context: ContextSpec = field(default_factory=ContextSpec)
    layout: Layout = "vistune"
    prompt_set: str = "vistune"  # the set's name (its manifest's, else its folder's)
    folder: Path | None = None

    @property
    def output_formats(self) -> tuple[str, ...]:
        """The formats this prompt can ask for, the first being its default."""
        return tuple(self.formats)

    def system_text(self, output_format: str) -> str:
        """The system message for one output format: the task, then how to format the answer."""
        check_format(output_format)
        if output_format not in self.formats:
            raise PromptFileError(
                f"prompt set {self.prompt_set!r} ({self.folder}) answers {self.sample_type} in "
                f"{', '.join(self.formats)} only, not {output_format}: pass --format {self.output_formats[0]}")
        instructions = self.formats[output_format]
        return f"{self.system}\n\n{instructions}" if instructions else self.system


class PromptFileError(ValueError):
    """A prompt file is missing or does not match what the sample type expects."""


class ContextTable(BaseModel):
    """`[context.<type>]` as a table: each field on or off, and the image's detail."""

    model_config = ConfigDict(extra="forbid")
    captions: bool = True
    boxes: bool | None = None  # None: the paper's choice for the type (`SampleType.sees_boxes`)
    image: bool = False
    detail: ImageDetail | None = None  # default "low"; only with image = true


class PromptSetManifest(BaseModel):
    """`prompt_set.toml`: what a prompt set is called, what it answers in and which context each type reads."""

    model_config = ConfigDict(extra="forbid")
    name: str | None = None  # default: the folder's name
    # The formats its answers may be asked in, the first being the default. LLaVA-layout few-shots are text:
    # only llava-text. Default: both for vistune's layout, llava-text for LLaVA's.
    output_formats: list[Literal["structured", "llava-text"]] | None = Field(default=None, min_length=1)
    # sample type -> context fields, as a list (`["captions", "image"]`) or a table (`[context.<type>]` with
    # captions/boxes/image booleans and detail); a type not listed reads the paper's (captions; boxes where
    # `sees_boxes`)
    context: dict[str, list[ContextField] | ContextTable] = Field(default_factory=dict)
    # Mark `iscrowd` boxes as `category (crowd)` (the system text must explain it). Default: on for vistune's
    # layout, off for LLaVA's, whose prompts do not know the mark.
    mark_crowds: bool | None = None


@dataclass(frozen=True)
class PromptSet:
    """A prompt set folder and its manifest (defaults when it has none)."""

    path: Path
    name: str
    manifest: PromptSetManifest

    @property
    def sample_types(self) -> list[str]:
        """The sample types the set has a folder for, in registry order."""
        return [name for name in SAMPLE_TYPES if (self.path / name).is_dir()]


# ---------------------------------------------------------------- context
def format_number(value: float) -> str:
    """A box coordinate as LLaVA writes it: rounded to 3 decimals, Python's float repr (0.0, 0.5, 0.681)."""
    return repr(round(float(value), BOX_DECIMALS) + 0.0)  # + 0.0 turns -0.0 into 0.0


def format_object(obj: ObjectBox, mark_crowd: bool = True) -> str:
    """One object line, e.g. `person: [0.681, 0.242, 0.774, 0.694]` or `person (crowd): [0.0, 0.5, 1.0, 1.0]`."""
    coords = ", ".join(format_number(v) for v in obj.box)
    return f"{obj.category}{CROWD_MARK if obj.crowd and mark_crowd else ''}: [{coords}]"


def _clean(caption: str) -> str:
    # COCO captions carry stray newlines and double spaces; one caption must stay one line.
    return " ".join(caption.split())


def render_context(ctx: ImageContext, sample_type_name: str, spec: ContextSpec | None = None) -> str:
    """The user message for an image: captions one per line; with boxes, a blank line and one object per line.

    `spec` is the prompt set's choice of fields (default: the paper's for the type, crowds marked).
    """
    spec = spec or ContextSpec.default(sample_type_name)
    blocks = []
    if "captions" in spec.fields:
        captions = [c for c in (_clean(c) for c in ctx.captions) if c]
        if not captions:
            raise ValueError(f"image {ctx.image_id} has no captions: nothing to prompt with (re-run `vistune ingest`)")
        blocks.append("\n".join(captions))
    if "boxes" in spec.fields and ctx.objects:
        blocks.append("\n".join(format_object(o, spec.mark_crowds) for o in ctx.objects))
    return "\n\n".join(blocks)


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
    ids = list(map(int, image_ids))
    con.register(_IDS_VIEW, pa.table({"image_id": pa.array(ids, type=pa.int64())}))
    # The range lets DuckDB skip row groups outside it (stored in image order, as ingest writes them), so a
    # plan's step reads its own images' captions and objects instead of scanning both tables every step.
    try:
        return _load_contexts(con, f"WHERE image_id BETWEEN {min(ids)} AND {max(ids)} "
                                   f"AND image_id IN (SELECT image_id FROM {_IDS_VIEW})")
    finally:
        con.unregister(_IDS_VIEW)


def _load_contexts(con: duckdb.DuckDBPyConnection, where: str) -> dict[int, ImageContext]:
    images = con.execute(f"SELECT image_id, width, height, coco_root, split, file_name FROM images {where}").fetchall()
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
            # a plain join (not Path): this runs for every image of a plan, and most sets never read it
            file=os.path.join(root, split, file_name) if root and file_name else None,
        )
        for image_id, width, height, root, split, file_name in images
    }


# ---------------------------------------------------------------- prompt sets
def _set_path(prompt_set: str | Path | None) -> Path:
    # Read at call time, so a test may point PROMPTS_DIR elsewhere; an explicit folder is resolved once.
    return PROMPTS_DIR if prompt_set is None else _resolved(Path(prompt_set))


@cache
def _resolved(path: Path) -> Path:
    return path.expanduser().resolve()


def load_prompt_set(prompt_set: str | Path | None = None) -> PromptSet:
    """Read a prompt set folder and its manifest (`None`: vistune's own set); raises `PromptFileError`."""
    return _load_prompt_set(_set_path(prompt_set))


@cache
def _load_prompt_set(path: Path) -> PromptSet:
    if not path.is_dir():
        raise PromptFileError(f"prompt set {path} is not a folder: expected one sub-folder per sample type "
                              f"({', '.join(SAMPLE_TYPES)}), in vistune's layout or LLaVA's")
    manifest = PromptSetManifest()
    manifest_path = path / MANIFEST
    if manifest_path.is_file():
        try:
            raw = tomllib.loads(manifest_path.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise PromptFileError(f"{manifest_path}: not valid TOML ({exc})") from None
        try:
            manifest = PromptSetManifest.model_validate(raw)
        except ValidationError as exc:
            # `[context.<type>]` is a list or a table: report the branch the input took, not "should be a list"
            errs = exc.errors()
            err = next((e for e in errs if e["type"] not in ("list_type", "model_type")), errs[0])
            loc = ".".join(str(p) for p in err["loc"] if not (isinstance(p, str) and ("[" in p or p == "ContextTable")))
            raise PromptFileError(f"{manifest_path}: {loc or '(root)'}: {err['msg']}"
                                  f" (keys: name, output_formats, mark_crowds, [context])") from None
        for type_name, fields in manifest.context.items():
            where = f"{manifest_path}: context.{type_name}"
            if type_name not in SAMPLE_TYPES:
                raise PromptFileError(f"{where}: unknown sample type; expected one of {', '.join(SAMPLE_TYPES)}")
            if isinstance(fields, ContextTable):
                if not fields.captions:
                    raise PromptFileError(f"{where}: captions = false; every context starts with them")
                if fields.detail is not None and not fields.image:
                    raise PromptFileError(f"{where}: detail = {fields.detail!r} needs image = true")
            elif "captions" not in fields:
                raise PromptFileError(f"{where}: {fields} has no 'captions'; every context starts with them")
    pset = PromptSet(path, manifest.name or path.name, manifest)
    if not pset.sample_types:
        raise PromptFileError(f"prompt set {path} has no sample-type folder: expected "
                              f"{', '.join(t + '/' for t in SAMPLE_TYPES)} (see docs/PROMPTS.md)")
    return pset


def _read(path: Path) -> str:
    if not path.is_file():
        raise PromptFileError(f"prompt file {path} is missing: every sample type needs it (see docs/PROMPTS.md)")
    return path.read_text(encoding="utf-8").strip()


def _read_verbatim(path: Path) -> str:
    # LLaVA's files are sent byte for byte; only a final line break (which editors add) is not part of the text.
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PromptFileError(f"{path}: not UTF-8 text ({exc})") from None
    return text.removesuffix("\n").removesuffix("\r")


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


def _load_vistune_layout(
    folder: Path, type_name: str, formats: Sequence[str]
) -> tuple[str, dict[str, str], list[PromptExample], list[Path]]:
    st = sample_type(type_name)
    system = _read(folder / "system.md")
    format_texts = {fmt: _read(folder / f"format_{fmt}.md") for fmt in formats}
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
    files = [folder / "system.md", *(folder / f"format_{fmt}.md" for fmt in formats), examples_path]
    return system, format_texts, examples, files


def _load_llava_layout(folder: Path, type_name: str) -> tuple[str, dict[str, str], list[PromptExample], list[Path]]:
    system_path = folder / "system_message.txt"
    system = _read_verbatim(system_path)
    shots: dict[str, dict[str, Path]] = {}
    for path in folder.iterdir():
        if (match := _LLAVA_SHOT.match(path.name)) and path.is_file():
            shots.setdefault(match[1], {})[match[2]] = path
    if not shots:
        raise PromptFileError(f"{folder}: no few-shot pairs; LLaVA's layout numbers them 000_caps.txt (the context) "
                              "with 000_conv.txt (the answer), 001_caps.txt with 001_conv.txt, …")
    examples, files = [], [system_path]
    for number in sorted(shots, key=lambda n: (int(n), n)):
        pair = shots[number]
        for part, other in (("caps", "conv"), ("conv", "caps")):
            if part not in pair:
                raise PromptFileError(f"{pair[other]} has no {number}_{part}.txt beside it: every few-shot is a "
                                      "context file (_caps.txt) and an answer file (_conv.txt)")
        caps, conv = _read_verbatim(pair["caps"]), _read_verbatim(pair["conv"])
        if not caps.strip():
            raise PromptFileError(f"{pair['caps']} is empty: it should hold the example's captions (and boxes)")
        try:  # checked, never re-rendered: the model reads the file's text
            output = parse(type_name, "llava-text", conv)
        except OutputFormatError as exc:
            shape = ("'Question:' / '===' / 'Answer:' blocks" if sample_type(type_name).has_questions
                     else "plain text")
            raise PromptFileError(f"{pair['conv']}: not a {type_name} answer in LLaVA's text format, "
                                  f"{shape} ({exc})") from None
        examples.append(PromptExample(caps, output, conv))
        files += [pair["caps"], pair["conv"]]
    return system, {"llava-text": ""}, examples, files


def _context_fields(type_name: str, raw: list[ContextField] | ContextTable | None) -> tuple[set[str], ImageDetail]:
    # The manifest's context of a type (list or table form) as a set of fields and the image detail.
    default = set(ContextSpec.default(type_name).fields)
    if raw is None or (isinstance(raw, list) and not raw):
        return default, "low"
    if isinstance(raw, list):
        return set(raw), "low"
    boxes = raw.boxes if raw.boxes is not None else "boxes" in default
    fields = {"captions"} | ({"boxes"} if boxes else set()) | ({"image"} if raw.image else set())
    return fields, raw.detail or "low"


def load_template(sample_type_name: str, prompt_set: str | Path | None = None) -> PromptTemplate:
    """Load and check a sample type's prompt from a prompt set (`None`: vistune's own; cached per process)."""
    return _load_template(sample_type(sample_type_name).name, _set_path(prompt_set))


@cache
def _load_template(type_name: str, path: Path) -> PromptTemplate:
    pset = _load_prompt_set(path)
    folder = path / type_name
    if not folder.is_dir():
        raise PromptFileError(f"prompt set {pset.name!r} ({path}) has no {type_name}/ folder; it has "
                              f"{', '.join(pset.sample_types)}: add the folder or ask only for those types")
    layout: Layout = "llava" if (folder / "system_message.txt").is_file() else "vistune"
    if layout == "llava" and (folder / "system.md").exists():
        raise PromptFileError(f"{folder} holds both system.md (vistune's layout) and system_message.txt "
                              "(LLaVA's): keep one")
    manifest = pset.manifest
    formats = tuple(manifest.output_formats or (("llava-text",) if layout == "llava" else OUTPUT_FORMATS))
    if layout == "llava" and formats != ("llava-text",):
        raise PromptFileError(f"{path / MANIFEST}: output_formats {list(formats)} cannot serve {type_name}/, which "
                              "is in LLaVA's layout: its few-shot answers are llava-text, so only 'llava-text' works")
    wanted, detail = _context_fields(type_name, manifest.context.get(type_name))
    spec = ContextSpec(
        fields=tuple(f for f in ("captions", "boxes", "image") if f in wanted),  # one order, however listed
        mark_crowds=manifest.mark_crowds if manifest.mark_crowds is not None else layout == "vistune",
        detail=detail,
    )
    if layout == "llava":
        system, format_texts, examples, files = _load_llava_layout(folder, type_name)
    else:
        system, format_texts, examples, files = _load_vistune_layout(folder, type_name, formats)
    # Settings are hashed (not the manifest file): a type's version moves only with what it renders.
    settings = {"layout": layout, "context": spec.fields, "mark_crowds": spec.mark_crowds, "formats": formats}
    if "image" in spec.fields:  # only then: the versions of text-only sets stay what they were
        settings["image_detail"] = spec.detail
    digest = hashlib.sha256(f"render {RENDER_VERSION}\0{json.dumps(settings, sort_keys=True)}\0".encode())
    files = sorted(files, key=lambda p: p.name)
    for file in files:
        digest.update(file.name.encode() + b"\0" + file.read_bytes() + b"\0")
    return PromptTemplate(
        sample_type=type_name,
        system=system,
        formats=format_texts,
        examples=tuple(examples),
        version=digest.hexdigest()[:12],
        files=tuple(p.name for p in files),
        context=spec,
        layout=layout,
        prompt_set=pset.name,
        folder=folder,
    )


# ---------------------------------------------------------------- messages
@cache
def _static_messages(type_name: str, output_format: str, path: Path) -> tuple[tuple[tuple[str, str], ...], str]:
    template = _load_template(type_name, path)
    messages = [("system", template.system_text(output_format))]
    for example in template.examples:
        context = example.context
        user = context if isinstance(context, str) else render_context(context, type_name, template.context)
        answer = example.answer_text if example.answer_text is not None else render(example.output, output_format)
        messages += [("user", user), ("assistant", answer)]
    return tuple(messages), template.version


def shared_prefix(sample_type_name: str, output_format: str, prompt_set: str | Path | None = None) -> list[Message]:
    """The messages every request of a type and format shares: system and few-shots (fresh dicts)."""
    static, _ = _static_messages(sample_type(sample_type_name).name, check_format(output_format), _set_path(prompt_set))
    return [{"role": role, "content": content} for role, content in static]


def build_messages(
    ctx: ImageContext, sample_type_name: str, output_format: str, prompt_set: str | Path | None = None
) -> tuple[list[Message], str]:
    """The chat messages for one image and `(messages, prompt_version)`, from a prompt set (`None`: vistune's).

    Order: system, then each few-shot (user, assistant) pair, then the image's own context,
    so every request of a type and format shares the same prefix. Returns fresh dicts.
    When the type's context has `image`, the last message's content is `[text part, image part]`, the image
    part a stored reference (`tasks.prompting.images.image_ref`, hashed into the request id) that the engine
    sends as a data URL. Raises `PromptFileError` when the set is broken or does not offer `output_format`,
    `ImageUnavailable` when the set wants the image and its file is missing or unreadable.
    """
    name, path = sample_type(sample_type_name).name, _set_path(prompt_set)
    static, version = _static_messages(name, check_format(output_format), path)
    messages: list[Message] = [{"role": role, "content": content} for role, content in static]
    spec = _load_template(name, path).context
    text = render_context(ctx, name, spec)
    if "image" not in spec.fields:
        messages.append({"role": "user", "content": text})
        return messages, version
    if ctx.file is None:
        raise ImageUnavailable(f"image {ctx.image_id}: no image file is known for it (the prompt set wants the image)")
    image = image_ref(ctx.image_id, ctx.file, spec.detail)
    messages.append({"role": "user", "content": [{"type": "text", "text": text}, image]})
    return messages, version


def prompt_versions(prompt_set: str | Path | None = None) -> dict[str, str]:
    """The current `prompt_version` of every sample type the prompt set has (`None`: vistune's own)."""
    pset = load_prompt_set(prompt_set)
    return {name: _load_template(name, pset.path).version for name in pset.sample_types}


def clear_caches() -> None:
    """Forget loaded prompt sets and messages (after editing prompt files in the same process)."""
    for cached in (_resolved, _load_prompt_set, _load_template, _static_messages):
        cached.cache_clear()
