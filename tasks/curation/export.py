"""Export: the `dataset` view -> LLaVA-format json (all types and one file per type), stage-1 caption
pairs, and Parquet copies of each.

Files written to `out_dir` (names in `export_files()`):
- `llava_instruct.json`: every surviving sample, ordered by `sample_id` (a stable shuffle of the mix);
- `llava_instruct_<type>.json`: the same records, one file per sample type;
- `llava_pretrain.json`: one image-caption pair per image (stage 1, LLaVA's `plain` template reads only
  the image and the caption), the caption drawn from the image's COCO captions;
- the same stems as `.parquet` (`datasets.load_dataset("parquet", data_files=...)`);
- `export_summary.json`: `ExportResult.as_dict()` (counts, skipped records, records lacking an image file with a
  few named, `missing_summary`), for the report and anything else that reads the folder later.

Images of an eval set (`eval_images`, schemas/eval.py) are held out: no sample or caption pair of theirs is
exported, and the result says how many records and images were left out (`eval_summary`).

`image` is `<split>/<file_name>` relative to `image_root`: the COCO folder holding `train2017/` and
`val2017/` (the `coco_root` recorded at ingest), which is also training's `image_root`.

A sample type's export rule is data: its (question, answer) turns come from
`schemas.samples.question_answer_pairs`, and a turn without a question (a detail description) gets an
instruction drawn from `tasks/curation/instructions/<SampleType.instructions>.txt`. Every random choice
(instruction, caption, `<image>` before or after the first question) is drawn from a generator seeded by
(seed, record id), so the same database and seed give byte-identical files.

One bad record never fails the export: a sample or caption pair that cannot become a valid LLaVA record
(an `<image>` in its text, data that no longer fits its output model, an unknown type, no `images` row, an
image path that leaves the image root) is skipped, listed in `ExportResult.skipped` with the reason, and the
rest is written.

Records are streamed: DuckDB rows are fetched `EXPORT_BATCH` at a time and every file is written as they
come (`RecordFile`: the JSON array piece by piece, byte-identical to one `json.dumps` of the whole list;
Parquet one row group per batch), so memory holds a batch, not the dataset.

Image paths are checked before they are written: `<split>/<file_name>` must be a plain relative path that,
joined to the (resolved) image root and normalised, stays inside it. Ingest already refuses such a
`file_name` (`bad_path`); this guards databases ingested before that check, or edited since. Symlinks
inside the image root are the root owner's choice and are followed as they are.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import os
import random
from array import array
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from functools import cache, lru_cache
from itertools import groupby
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from schemas.llava import IMAGE_PLACEHOLDER, LlavaRecord, LlavaTurn
from schemas.samples import SAMPLE_TYPES, question_answer_pairs, sample_type
from tasks.ingest.coco import path_problem
from tasks.store import read

INSTRUCTIONS_DIR = Path(__file__).parent / "instructions"
INSTRUCT_FILE = "llava_instruct"
PRETRAIN_FILE = "llava_pretrain"
PRETRAIN_INSTRUCTIONS = "brief_caption"
EXPORT_SUMMARY = "export_summary.json"
_PARQUET_SCHEMA = pa.schema([
    ("id", pa.string()),
    ("image", pa.string()),
    ("conversations", pa.list_(pa.struct([("from", pa.string()), ("value", pa.string())]))),
])


def stored_missing_summary(out_dir: str | Path) -> str | None:
    """The `missing_summary` an earlier export wrote into `out_dir` (None: none, or every image was there)."""
    path = Path(out_dir) / EXPORT_SUMMARY
    return json.loads(path.read_text(encoding="utf-8")).get("missing_summary") if path.exists() else None


@cache
def instructions(name: str) -> tuple[str, ...]:
    """The instruction phrasings in `tasks/curation/instructions/<name>.txt` (comments and blank lines skipped)."""
    path = INSTRUCTIONS_DIR / f"{name}.txt"
    if not path.exists():
        raise FileNotFoundError(f"no instruction list {path}: a turn without a question needs one (one per line)")
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    phrasings = tuple(line for line in lines if line and not line.startswith("#"))
    if not phrasings:
        raise ValueError(f"{path} has no instructions")
    return phrasings


def _rng(seed: int, record_id: str) -> random.Random:
    return random.Random(f"{seed}:{record_id}")


def _with_image(text: str, rng: random.Random) -> str:
    # LLaVA's data puts the placeholder before or after the first question at random.
    return f"{IMAGE_PLACEHOLDER}\n{text}" if rng.random() < 0.5 else f"{text}\n{IMAGE_PLACEHOLDER}"


def image_path(split: str, file_name: str) -> str:
    """An image's path relative to the image root."""
    return f"{split}/{file_name}"


BAD_PATH = "bad_path"


def image_path_problem(root: Path, split: str, file_name: str) -> str | None:
    """Why `<split>/<file_name>` cannot be an exported image path under `root` (it would name a file outside
    it, or `file_name` is absolute), or None."""
    for part in (split, file_name):  # each on its own: "train2017" + "/etc/passwd" is no plain relative path
        if problem := path_problem(part):
            return f"{BAD_PATH}: image path {problem.removeprefix('file_name ')}"
    relative = image_path(split, file_name)
    base = root.resolve()
    target = Path(os.path.normpath(base / relative))  # lexical: `..` can no longer hide behind a symlink
    if not target.is_relative_to(base):
        return f"{BAD_PATH}: image path {relative[:200]!r} leaves the image root {base}"
    return None


def _instruction_list(type_name: str) -> str:
    name = sample_type(type_name).instructions
    if name is None:
        raise ValueError(f"sample type {type_name!r} has a turn without a question but no instruction list: "
                         "set SampleType.instructions in schemas/samples.py")
    return name


def instruct_record(sample_id: str, type_name: str, data: dict[str, Any], image: str, seed: int) -> LlavaRecord:
    """One dataset sample as a LLaVA record."""
    output = sample_type(type_name).output_model.model_validate(data)
    rng = _rng(seed, sample_id)
    turns: list[LlavaTurn] = []
    for index, (question, answer) in enumerate(question_answer_pairs(output)):
        human = question if question is not None else rng.choice(instructions(_instruction_list(type_name)))
        if index == 0:
            human = _with_image(human, rng)
        turns += [LlavaTurn(speaker="human", value=human), LlavaTurn(speaker="gpt", value=answer)]
    return LlavaRecord(id=sample_id, image=image, conversations=turns)


def pretrain_record(image_id: int, captions: list[str], image: str, seed: int) -> LlavaRecord:
    """One image-caption pair for stage 1: a brief-caption instruction with the image, then the caption."""
    record_id = f"{image_id:012d}"
    rng = _rng(seed, record_id)
    caption = rng.choice(sorted(c.strip() for c in captions))
    human = _with_image(rng.choice(instructions(PRETRAIN_INSTRUCTIONS)), rng)
    return LlavaRecord(id=record_id, image=image, conversations=[
        LlavaTurn(speaker="human", value=human), LlavaTurn(speaker="gpt", value=caption)])


@dataclass(frozen=True)
class SkippedRecord:
    """A record `export` left out: which file it was meant for, its id, and why."""

    stem: str  # INSTRUCT_FILE or PRETRAIN_FILE
    record_id: str  # the sample_id, or the image id of a caption pair
    reason: str

    def message(self) -> str:
        """One line for logs and the CLI."""
        return f"{self.stem} record {self.record_id}: {self.reason}"


MISSING_EXAMPLES = 5  # image paths named in the one-line summary of missing images
MISSING_KEPT = 100  # missing image paths an export keeps by name (the first, sorted); all are counted


class MissingImages:
    """Distinct image paths missing under the root: all counted, the first `MISSING_KEPT` (sorted) kept by name.

    Each missing record costs 8 bytes here (a 64-bit hash of its path); a set of the paths themselves took
    ~180 MB at 1.58M images, all missing (bench/gen_scale.py exports without image files)."""

    def __init__(self) -> None:
        self._hashes = array("Q")
        self.first: list[str] = []  # sorted, distinct

    def add(self, image: str) -> None:
        self._hashes.append(int.from_bytes(hashlib.blake2b(image.encode(), digest_size=8).digest(), "little"))
        if len(self.first) < MISSING_KEPT or image < self.first[-1]:
            at = bisect.bisect_left(self.first, image)
            if at == len(self.first) or self.first[at] != image:
                self.first.insert(at, image)
                del self.first[MISSING_KEPT:]

    def count(self) -> int:
        """How many distinct paths were added."""
        return int(np.unique(np.frombuffer(self._hashes, dtype=np.uint64)).size) if self._hashes else 0


@dataclass
class ExportResult:
    """What `export` wrote: file paths, record counts, images not found under the image root, skipped records.

    `missing_image_count` counts the image paths (relative to the image root) some record points at without a
    file there, and `missing_images` names the first `MISSING_KEPT` of them, sorted; `records_missing_image`
    counts those records (written, or left out with `require_images`, then also counted in
    `dropped_missing_image`)."""

    out_dir: str
    image_root: str
    paths: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    missing_images: list[str] = field(default_factory=list)
    missing_image_count: int = 0
    skipped: list[SkippedRecord] = field(default_factory=list)
    records_missing_image: int = 0
    dropped_missing_image: int = 0
    require_images: bool = False
    eval_records_left_out: int = 0  # samples and caption pairs of eval images (held out for evaluation)
    eval_images_left_out: int = 0  # eval images that had something to export

    def eval_summary(self) -> str | None:
        """One line for the CLI and logs: what eval images kept out of the files; None when nothing was."""
        if not self.eval_records_left_out:
            return None
        return (f"{self.eval_records_left_out:,} record(s) of {self.eval_images_left_out:,} eval image(s) left out "
                "(held out for `vistune eval`)")

    def as_dict(self) -> dict[str, Any]:
        """Plain dict (for logs and Prefect artifacts); lists only the first missing images and skipped records."""
        out = asdict(self)
        out["missing_images"] = self.missing_images[:20]
        out["missing_summary"] = self.missing_summary()
        out["skipped"] = [asdict(s) for s in self.skipped[:20]]
        out["skipped_count"] = len(self.skipped)
        out["bad_path_count"] = self.bad_paths
        out["eval_summary"] = self.eval_summary()
        return out

    @property
    def bad_paths(self) -> int:
        """Records skipped because their image path would leave the image root."""
        return sum(1 for s in self.skipped if s.reason.startswith(BAD_PATH))

    def missing_summary(self) -> str | None:
        """One line for the CLI, the report and the exports artifact: how many records lack their image file,
        a few of those images by name, and whether they were left out; None when every image is there."""
        if not self.records_missing_image:
            return None
        named = ", ".join(self.missing_images[:MISSING_EXAMPLES])
        more = (f" and {self.missing_image_count - MISSING_EXAMPLES:,} more"
                if self.missing_image_count > MISSING_EXAMPLES else "")
        fate = ("left out (require_images)" if self.require_images
                else "exported anyway; --require-images leaves them out")
        return (f"{self.records_missing_image:,} record(s) lack an image file under {self.image_root} "
                f"({self.missing_image_count:,} image(s): {named}{more}): {fate}")

    def __repr__(self) -> str:  # flows log the result: keep it short when thousands of images are missing
        counts = ", ".join(f"{k}={v}" for k, v in self.counts.items())
        return (f"ExportResult(out_dir={self.out_dir!r}, {counts}, missing_images={self.missing_image_count}, "
                f"records_missing_image={self.records_missing_image}, skipped={len(self.skipped)})")


def default_image_root(db_path: str | Path | None) -> Path:
    """The COCO folder the images were ingested from, when they all come from one."""
    with read(db_path) as con:
        roots = [r[0] for r in con.execute("SELECT DISTINCT coco_root FROM images ORDER BY 1").fetchall()]
    if len(roots) != 1:
        raise ValueError(f"images come from {len(roots)} COCO folders {roots}: pass --image-root explicitly")
    return Path(roots[0])


def export_files() -> list[str]:
    """The file stems `export` writes, each as `.json` and `.parquet`."""
    return [INSTRUCT_FILE, *(f"{INSTRUCT_FILE}_{name}" for name in SAMPLE_TYPES), PRETRAIN_FILE]


EXPORT_BATCH = 10_000  # rows fetched from DuckDB, and records per Parquet row group, at a time


def json_array_text(record: dict[str, Any], first: bool) -> str:
    """One record's piece of a JSON array as `json.dumps(records, ensure_ascii=False, indent=1)` writes it.

    At depth 1 every line of the record's own `indent=1` text gets one more space (strings cannot hold a raw
    newline: json escapes it), and records are separated by `,` + newline."""
    return ("\n " if first else ",\n ") + json.dumps(record, ensure_ascii=False, indent=1).replace("\n", "\n ")


class RecordFile:
    """One export stem written record by record: `<stem>.json` (byte-identical to one `json.dumps` of the whole
    list, plus a newline) and `<stem>.parquet` (row groups of `EXPORT_BATCH`), each via a `.tmp` file renamed on
    `close()`, so memory holds one batch, not the file."""

    def __init__(self, out: Path, stem: str) -> None:
        self.json_path, self.parquet_path = out / f"{stem}.json", out / f"{stem}.parquet"
        self._json_tmp = self.json_path.with_suffix(".json.tmp")
        self._parquet_tmp = self.parquet_path.with_suffix(".parquet.tmp")
        self._json = self._json_tmp.open("w", encoding="utf-8")
        self._json.write("[")
        self._parquet = pq.ParquetWriter(self._parquet_tmp, _PARQUET_SCHEMA, compression="zstd")
        self._batch: list[dict[str, Any]] = []
        self.count = 0

    def add(self, record: dict[str, Any]) -> None:
        self._json.write(json_array_text(record, first=self.count == 0))
        self.count += 1
        self._batch.append(record)
        if len(self._batch) >= EXPORT_BATCH:
            self._flush()

    def _flush(self) -> None:
        self._parquet.write_table(pa.Table.from_pylist(self._batch, schema=_PARQUET_SCHEMA))
        self._batch = []

    def close(self) -> list[str]:
        """Finish both files and move them into place; their paths."""
        self._json.write("\n]\n" if self.count else "]\n")
        self._json.close()
        if self._batch or not self.count:  # an empty file still gets its schema and one (empty) row group
            self._flush()
        self._parquet.close()
        self._json_tmp.replace(self.json_path)
        self._parquet_tmp.replace(self.parquet_path)
        return [str(self.json_path), str(self.parquet_path)]


# DuckDB sorts only keys: the dataset's sample ids (its view's window reads key columns only), then each batch's
# rows are looked up by id, and captions are read a range of image ids at a time. Sorting the samples with their
# data filled DuckDB's whole cap at 1.58M samples (and failed under 256MB); here its share stays bounded by the
# batch (docs/BENCHMARKS.md, "The data path at 10x LLaVA").
_SAMPLE_ROWS = ("SELECT sample_id, sample_type, data, image_id FROM samples "
                "WHERE sample_id IN (SELECT unnest(?::VARCHAR[]))")
_IMAGE_ROWS = "SELECT image_id, split, file_name FROM images WHERE image_id IN (SELECT unnest(?::BIGINT[]))"
_CAPTION_ROWS = """
SELECT i.image_id, i.split, i.file_name, c.caption
FROM images i JOIN captions c USING (image_id) WHERE i.image_id BETWEEN ? AND ? ORDER BY i.image_id, c.caption_id
"""


def _dataset_rows(con: Any) -> Iterator[tuple[Any, ...]]:
    """(sample_id, sample_type, data, split, file_name, image_id) of every `dataset` row, by sample_id; split and
    file_name are None for an image without an `images` row."""
    ids = con.sql("SELECT sample_id FROM dataset ORDER BY sample_id").to_arrow_table().column(0)
    for start in range(0, len(ids), EXPORT_BATCH):
        batch = ids.slice(start, EXPORT_BATCH).to_pylist()
        rows = {r[0]: r for r in con.execute(_SAMPLE_ROWS, [batch]).fetchall()}
        images = {r[0]: r[1:] for r in con.execute(_IMAGE_ROWS, [sorted({r[3] for r in rows.values()})]).fetchall()}
        for sample_id in batch:
            _, type_name, data, image_id = rows[sample_id]
            split, file_name = images.get(image_id, (None, None))
            yield sample_id, type_name, data, split, file_name, image_id


def _caption_rows(con: Any) -> Iterator[tuple[Any, ...]]:
    """(image_id, split, file_name, caption) of every image with captions, by image id then caption id."""
    image_ids = con.execute("SELECT image_id FROM images ORDER BY image_id").fetchnumpy()["image_id"]
    for start in range(0, len(image_ids), EXPORT_BATCH):
        step = image_ids[start : start + EXPORT_BATCH]
        yield from con.execute(_CAPTION_ROWS, [int(step[0]), int(step[-1])]).fetchall()


def _reason(exc: Exception) -> str:
    # pydantic's message starts with a header line and a count; the first error line says what is wrong
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = next((line for line in lines if "<image>" in line or "record" in line), lines[-1] if lines else "")
    return f"{type(exc).__name__}: {text or exc!r}"[:300]


def export(
    db_path: str | Path | None, out_dir: str | Path, image_root: str | Path, seed: int = 0,
    require_images: bool = False,
) -> ExportResult:
    """Write the LLaVA json / Parquet files for the `dataset` view and the stage-1 caption pairs.

    Records whose image file is missing under `image_root` are counted (and named) in the result; with
    `require_images` they are also left out of the files."""
    out, root = Path(out_dir), Path(image_root)
    result = ExportResult(out_dir=str(out), image_root=str(root), require_images=require_images)
    missing = MissingImages()  # images some record points at without a file under the root

    @lru_cache(maxsize=1 << 16)  # one stat per image however many records share it, in bounded memory
    def image_found(image: str) -> bool:
        return (root / image).is_file()

    def keep(image: str) -> bool:
        # Counts a record whose image file is missing; False when `require_images` leaves it out.
        if image_found(image):
            return True
        missing.add(image)
        result.records_missing_image += 1
        if require_images:
            result.dropped_missing_image += 1
        return not require_images

    eval_images: set[int] = set()  # held-out images something was left out of

    def held(image_id: int) -> bool:
        if image_id not in held_out:
            return False
        result.eval_records_left_out += 1
        eval_images.add(image_id)
        return True

    # Records are streamed from DuckDB `EXPORT_BATCH` rows at a time into files open side by side, so memory
    # holds a batch, not the dataset (issue 16 goal 5).
    with read(db_path) as con:
        held_out = {r[0] for r in con.execute("SELECT DISTINCT image_id FROM eval_images").fetchall()}
        out.mkdir(parents=True, exist_ok=True)  # after a read: no empty folder when there is no database
        files = {stem: RecordFile(out, stem) for stem in (INSTRUCT_FILE, PRETRAIN_FILE)}
        files |= {f"{INSTRUCT_FILE}_{name}": RecordFile(out, f"{INSTRUCT_FILE}_{name}") for name in SAMPLE_TYPES}
        for sample_id, type_name, data, split, file_name, sample_image in _dataset_rows(con):
            if held(sample_image):
                continue
            if split is None:
                result.skipped.append(SkippedRecord(INSTRUCT_FILE, sample_id, "its image has no row in `images`: "
                                                                              "ingest its COCO split"))
                continue
            if problem := image_path_problem(root, split, file_name):
                result.skipped.append(SkippedRecord(INSTRUCT_FILE, sample_id, problem))
                continue
            try:
                record = instruct_record(sample_id, type_name, json.loads(data), image_path(split, file_name), seed)
            except (ValueError, TypeError, KeyError) as exc:  # pydantic's ValidationError is a ValueError
                result.skipped.append(SkippedRecord(INSTRUCT_FILE, sample_id, _reason(exc)))
                continue
            if not keep(record.image):
                continue
            as_json = record.to_json()
            files[INSTRUCT_FILE].add(as_json)
            stem = f"{INSTRUCT_FILE}_{type_name}"
            if stem not in files:
                files[stem] = RecordFile(out, stem)
            files[stem].add(as_json)
        # one row per caption, grouped here: a `list()` aggregate of every image held them all at once
        for (image_id, split, name), rows in groupby(_caption_rows(con), key=lambda row: row[:3]):
            caps = [row[3] for row in rows]
            if held(image_id):
                continue
            if problem := image_path_problem(root, split, name):
                result.skipped.append(SkippedRecord(PRETRAIN_FILE, f"{image_id:012d}", problem))
                continue
            try:
                record = pretrain_record(image_id, caps, image_path(split, name), seed)
            except (ValueError, TypeError, KeyError) as exc:
                result.skipped.append(SkippedRecord(PRETRAIN_FILE, f"{image_id:012d}", _reason(exc)))
                continue
            if keep(record.image):
                files[PRETRAIN_FILE].add(record.to_json())
    for stem, file in files.items():
        result.paths += file.close()
        result.counts[stem] = file.count
    result.missing_images, result.missing_image_count = missing.first, missing.count()
    result.eval_images_left_out = len(eval_images)
    summary = out / EXPORT_SUMMARY  # beside the files: the report (another step) reads what the export saw
    summary.with_suffix(".json.tmp").write_text(json.dumps(result.as_dict(), indent=1) + "\n", encoding="utf-8")
    summary.with_suffix(".json.tmp").replace(summary)
    return result
