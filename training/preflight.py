"""Preflight: check every record of a stage's data before any model weights load.

A bad record found hours into a run kills every rank; found here, it costs seconds. Each record goes through
the same code the dataset uses (`data.encode_conversation`: placeholder rules, template, tokenization with the
mismatch check, image-token expansion and truncation), and its image is opened (`header`: PIL reads the header;
`decode`: PIL `verify`, then a full decode). Records are split into chunks checked in parallel by a process
pool (forked, so the records and the processor are shared, not pickled).

The report counts records by problem (they fail training) and by note (they train, but you may want to know),
keeps the first examples of each with record ids, lists every bad record in `bad_records.jsonl` and draws a
histogram of token lengths against `model_max_length`.
"""

from __future__ import annotations

import json
import logging
import math
import multiprocessing
import os
import time
from array import array
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from PIL import Image
from transformers import LlavaProcessor

from schemas.llava import IMAGE_PLACEHOLDER
from training.config import StageName, TrainConfig
from training.data import (
    IGNORE_INDEX,
    ImagePathError,
    ImageTokensTooLong,
    TokenizationMismatch,
    encode_conversation,
    resolve_image,
)
from training.model import num_image_tokens, processor_for_stage
from training.templates import TEMPLATES

log = logging.getLogger(__name__)
ImageCheck = Literal["header", "decode"]

# What makes a record fail (training would raise on it), and what is only worth knowing.
PROBLEMS: dict[str, str] = {
    "json": "not an object with a non-empty 'conversations' list of {from, value} string turns",
    "image_path": "'image' is not a relative path inside image_root",
    "image_missing": "the image file does not exist",
    "image_unreadable": "PIL cannot read the image",
    "placeholder": f"{IMAGE_PLACEHOLDER} more than once, outside the first human turn, or without an image",
    "conversation": "roles do not alternate human/gpt, or it does not end with a gpt reply",
    "tokenization_mismatch": "a token straddles a reply boundary (labels cannot be placed)",
    "image_tokens_too_long": "the image tokens alone exceed model_max_length",
}
NOTES: dict[str, str] = {
    "truncated": "longer than model_max_length: text is cut",
    "no_reply_tokens": "no reply token left after truncation (trains on nothing)",
    "placeholder_added": f"has an image but no {IMAGE_PLACEHOLDER}; it is added to the first human turn",
    "duplicate_id": "its id is used by another record",
}
EXAMPLES = 5  # first examples kept per problem and note
SMALL = 2000  # fewer records than this are checked in-process: a pool costs more than it saves


class PreflightFailed(ValueError):
    """Some records of a stage's data would fail training (`data.on_bad_sample: fail`)."""


@dataclass
class Finding:
    """One problem or note of one record."""

    index: int
    id: str
    kind: str
    message: str


@dataclass
class ChunkResult:
    """What a worker found in one chunk of records."""

    lengths: array = field(default_factory=lambda: array("i"))  # untruncated tokens; -1 for bad records
    bad: list[Finding] = field(default_factory=list)
    notes: Counter = field(default_factory=Counter)
    note_examples: list[Finding] = field(default_factory=list)
    truncated_tokens: int = 0


@dataclass
class PreflightReport:
    """The outcome of checking one data file."""

    stage: str
    data: str
    records: int
    images: str
    workers: int
    seconds: float
    max_length: int
    problems: dict[str, int]
    notes: dict[str, int]
    examples: dict[str, list[dict]]
    bad: list[Finding]
    truncated_tokens: int
    lengths: list[int]

    @property
    def ok(self) -> bool:
        """No record would fail training."""
        return not self.bad

    @property
    def bad_indices(self) -> list[int]:
        """Positions of the records that fail, sorted."""
        return sorted({finding.index for finding in self.bad})

    def summary(self) -> str:
        """Counts, first examples and length statistics as printable text."""
        bad_records = len(self.bad_indices)
        lines = [
            f"preflight {self.stage}: {self.records} records in {self.data}; images checked by {self.images}; "
            f"{self.workers} worker(s); {self.seconds:.1f} s",
            f"  ok: {self.records - bad_records}   bad: {bad_records}",
        ]
        for title, counts, meaning in (("problems (fail training)", self.problems, PROBLEMS),
                                       ("notes (train anyway)", self.notes, NOTES)):
            if not counts:
                continue
            lines.append(f"  {title}:")
            for kind, count in sorted(counts.items(), key=lambda item: -item[1]):
                extra = f", {self.truncated_tokens} tokens cut" if kind == "truncated" else ""
                lines.append(f"    {kind:<22} {count:>8}  ({meaning[kind]}{extra})")
                for example in self.examples.get(kind, []):
                    lines.append(f"      id {example['id']} (record {example['index']}): {example['message'][:300]}")
        good = sorted(length for length in self.lengths if length >= 0)
        if good:
            p99 = good[min(len(good) - 1, math.ceil(0.99 * len(good)) - 1)]
            lines.append(f"  tokens: min {good[0]}, median {good[len(good) // 2]}, p99 {p99}, max {good[-1]} "
                         f"(model_max_length {self.max_length})")
        return "\n".join(lines)

    def failure_message(self, report_dir: Path | None, limit: int = 50) -> str:
        """Every bad record (up to `limit`, then where the full list is) and what to do."""
        lines = [f"{len(self.bad_indices)} of {self.records} records of {self.data} would fail {self.stage}:"]
        lines += [f"  id {f.id} (record {f.index}): {f.kind}: {f.message[:300]}" for f in self.bad[:limit]]
        if len(self.bad) > limit:
            lines.append(f"  ... and {len(self.bad) - limit} more")
        if report_dir is not None:
            lines.append(f"every bad record is listed in {report_dir / 'bad_records.jsonl'}")
        lines.append("fix the data, or set data.on_bad_sample=skip to train without these records")
        return "\n".join(lines)

    def save(self, directory: Path) -> Path:
        """Write report.json, report.txt, bad_records.jsonl and lengths.png under `directory`."""
        directory.mkdir(parents=True, exist_ok=True)
        body = {k: v for k, v in self.__dict__.items() if k not in ("bad", "lengths")}
        body["bad_records"] = len(self.bad_indices)
        (directory / "report.json").write_text(json.dumps(body, indent=2))
        (directory / "report.txt").write_text(self.summary() + "\n")
        with (directory / "bad_records.jsonl").open("w") as handle:
            for finding in self.bad:
                handle.write(json.dumps(finding.__dict__) + "\n")
        plot_lengths([length for length in self.lengths if length >= 0], self.max_length,
                     directory / "lengths.png", f"{self.stage}: {Path(self.data).name}")
        return directory


def plot_lengths(lengths: Sequence[int], max_length: int, png: Path, title: str) -> Path:
    """Histogram of untruncated token lengths, with `model_max_length` marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 4))
    if lengths:
        axis.hist(lengths, bins=min(60, max(5, len(set(lengths)))), color="tab:blue")
    axis.axvline(max_length, color="tab:red", linestyle="--", label=f"model_max_length {max_length}")
    axis.set_xlabel("tokens (image tokens expanded, before truncation)")
    axis.set_ylabel("records")
    axis.set_title(title)
    axis.legend()
    figure.tight_layout()
    figure.savefig(png)
    plt.close(figure)
    return png


@dataclass
class _Checker:
    """Everything a worker needs; set once per process (inherited by fork)."""

    records: list
    image_root: Path
    processor: LlavaProcessor
    template: str
    max_length: int
    images: ImageCheck

    def __post_init__(self) -> None:
        self.image_root = self.image_root.resolve()  # once, not per record (a syscall per path part)
        self.render = TEMPLATES[self.template]
        self.tokenizer = self.processor.tokenizer
        self.image_tokens = num_image_tokens(self.processor)
        self.image_token_id = self.tokenizer.convert_tokens_to_ids(IMAGE_PLACEHOLDER)
        self.seen_images: dict[Path, tuple[str, str] | None] = {}  # records often share an image

    def check_chunk(self, start: int, end: int) -> ChunkResult:
        result = ChunkResult()
        for index in range(start, end):
            self._check(index, self.records[index], result)
        return result

    def _check(self, index: int, record: object, result: ChunkResult) -> None:
        sample_id = str(record.get("id", index)) if isinstance(record, dict) else str(index)
        findings: list[tuple[str, str]] = []
        length = -1
        structure = _structure_problem(record)
        if structure:
            findings.append(("json", structure))
        else:
            image = record.get("image")
            path = None
            if image:  # as the dataset reads it: an empty or null image means a text-only record
                try:
                    path = resolve_image(self.image_root, image, sample_id, root_resolved=True)
                except ImagePathError as exc:
                    findings.append(("image_path", str(exc)))
            text = self._check_text(index, record, sample_id, result)
            if isinstance(text, tuple):
                findings.append(text)
            else:
                length = text
            if path is not None:
                problem = self._check_image(path)
                if problem:
                    findings.append((problem[0], f"sample {sample_id}: {problem[1]}"))
        for kind, message in findings:
            result.bad.append(Finding(index, sample_id, kind, message))
        result.lengths.append(-1 if findings else length)

    def _check_text(self, index: int, record: dict, sample_id: str, result: ChunkResult) -> int | tuple[str, str]:
        """The untruncated token length, or (problem, message)."""
        conversations = record["conversations"]
        if record.get("image") and not any(IMAGE_PLACEHOLDER in turn["value"] for turn in conversations):
            self._note(result, index, sample_id, "placeholder_added", f"sample {sample_id}: no {IMAGE_PLACEHOLDER}")
        try:
            _, labels, length = encode_conversation(
                record, sample_id, self.render, self.tokenizer, self.image_token_id, self.image_tokens,
                self.max_length,
            )
        except TokenizationMismatch as exc:
            return "tokenization_mismatch", str(exc)
        except ImageTokensTooLong as exc:
            return "image_tokens_too_long", str(exc)
        except ValueError as exc:
            kind = "placeholder" if IMAGE_PLACEHOLDER in str(exc) else "conversation"
            return kind, str(exc)
        if length > self.max_length:
            result.truncated_tokens += length - self.max_length
            self._note(result, index, sample_id, "truncated",
                       f"sample {sample_id}: {length} tokens, {length - self.max_length} cut")
            if all(label == IGNORE_INDEX for label in labels):
                self._note(result, index, sample_id, "no_reply_tokens",
                           f"sample {sample_id}: every reply token lies past {self.max_length}")
        return length

    def _check_image(self, path: Path) -> tuple[str, str] | None:
        if path not in self.seen_images:
            self.seen_images[path] = check_image(path, self.images)
        return self.seen_images[path]

    @staticmethod
    def _note(result: ChunkResult, index: int, sample_id: str, kind: str, message: str) -> None:
        result.notes[kind] += 1
        if result.notes[kind] <= EXAMPLES:
            result.note_examples.append(Finding(index, sample_id, kind, message))


def _structure_problem(record: object) -> str | None:
    """Why a record is not LLaVA-shaped json, or None."""
    if not isinstance(record, dict):
        return f"a {type(record).__name__}, not a json object"
    conversations = record.get("conversations")
    if not isinstance(conversations, list) or not conversations:
        return "'conversations' is missing, empty or not a list"
    for position, turn in enumerate(conversations):
        if not (isinstance(turn, dict) and isinstance(turn.get("from"), str) and isinstance(turn.get("value"), str)):
            return f"conversations[{position}] is not an object with string 'from' and 'value'"
    if "image" in record and record["image"] is not None and not isinstance(record["image"], str):
        return f"'image' is a {type(record['image']).__name__}, not a path string"
    return None


def check_image(path: Path, images: ImageCheck) -> tuple[str, str] | None:
    """(problem, message) when the image is missing or unreadable, else None.

    `header` opens the file (PIL reads and parses the header only); `decode` also runs PIL's `verify` and
    then a full decode to RGB, which catches truncated and corrupt pixel data.
    """
    try:  # one open, no separate stat: a missing file (or a directory) fails the open itself
        opened = Image.open(path)
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return "image_missing", f"image {path} not found; check image_root"
    except Exception as exc:  # PIL raises many types for corrupt files
        return "image_unreadable", f"image {path}: {type(exc).__name__}: {exc}"
    try:
        with opened as image:
            if image.width <= 0 or image.height <= 0:
                return "image_unreadable", f"image {path} has size {image.size}"
            if images == "decode":
                image.verify()
        if images == "decode":
            with Image.open(path) as image:
                image.convert("RGB")
    except Exception as exc:  # PIL raises many types for corrupt files
        return "image_unreadable", f"image {path}: {type(exc).__name__}: {exc}"
    return None


_CHECKER: _Checker | None = None  # the worker's checker (inherited by fork, or built by the initializer)


def _init_worker(checker: _Checker | None) -> None:
    global _CHECKER
    if checker is not None:  # spawn: sent once per worker; fork: already inherited
        _CHECKER = checker


def _run_chunk(bounds: tuple[int, int]) -> ChunkResult:
    assert _CHECKER is not None
    return _CHECKER.check_chunk(*bounds)


def check_records(
    records: list,
    image_root: Path,
    processor: LlavaProcessor,
    template: str,
    max_length: int,
    *,
    images: ImageCheck = "decode",
    workers: int | None = None,
    stage: str = "",
    data: str = "",
) -> PreflightReport:
    """Check `records` (a loaded LLaVA json list) as a stage with `template` and `processor` would read them."""
    global _CHECKER
    start = time.perf_counter()
    workers = max(1, workers or os.cpu_count() or 1)
    checker = _Checker(records, Path(image_root), processor, template, max_length, images)
    count = len(records)
    if workers == 1 or count < SMALL:
        workers = 1
        results = [checker.check_chunk(0, count)]
    else:
        size = max(256, min(8192, math.ceil(count / (workers * 16))))  # enough chunks to balance the load
        bounds = [(i, min(i + size, count)) for i in range(0, count, size)]
        methods = multiprocessing.get_all_start_methods()
        context = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
        # The parent may have used the tokenizer's thread pool; the forked workers must not.
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        _CHECKER = checker
        try:
            with ProcessPoolExecutor(
                workers, mp_context=context, initializer=_init_worker,
                initargs=(None if context.get_start_method() == "fork" else checker,),
            ) as pool:
                results = list(pool.map(_run_chunk, bounds))
        finally:
            _CHECKER = None
    return _merge(results, records, stage, data, images, workers, time.perf_counter() - start, max_length)


def _merge(results: list[ChunkResult], records: list, stage: str, data: str, images: str, workers: int,
           seconds: float, max_length: int) -> PreflightReport:
    lengths: list[int] = []
    bad: list[Finding] = []
    notes: Counter = Counter()
    note_examples: list[Finding] = []
    truncated = 0
    for result in results:
        lengths.extend(result.lengths)
        bad.extend(result.bad)
        notes.update(result.notes)
        note_examples.extend(result.note_examples)
        truncated += result.truncated_tokens
    ids = Counter(str(r.get("id")) for r in records if isinstance(r, dict) and r.get("id") is not None)
    duplicates = [(i, str(r["id"])) for i, r in enumerate(records)
                  if isinstance(r, dict) and r.get("id") is not None and ids[str(r["id"])] > 1]
    if duplicates:
        notes["duplicate_id"] = len(duplicates)
        note_examples += [Finding(i, sid, "duplicate_id", f"id {sid} is used by {ids[sid]} records")
                          for i, sid in duplicates[:EXAMPLES]]
    problems = Counter(finding.kind for finding in bad)
    examples: dict[str, list[dict]] = {}
    for finding in [*bad, *note_examples]:
        kept = examples.setdefault(finding.kind, [])
        if len(kept) < EXAMPLES:
            kept.append({"id": finding.id, "index": finding.index, "message": finding.message})
    return PreflightReport(
        stage=stage, data=data, records=len(records), images=images, workers=workers, seconds=seconds,
        max_length=max_length, problems=dict(problems), notes=dict(notes), examples=examples, bad=bad,
        truncated_tokens=truncated, lengths=lengths,
    )


def load_json_list(path: Path) -> list:
    """A data file's records, unchecked (preflight checks each); the file itself must be a json list."""
    try:
        records = json.loads(Path(path).read_text())
    except json.JSONDecodeError as exc:
        raise PreflightFailed(f"{path} is not valid json: {exc}") from exc
    if not isinstance(records, list):
        raise PreflightFailed(f"{path}: expected a json list of LLaVA records, got a {type(records).__name__}")
    return records


def preflight_stage(
    cfg: TrainConfig,
    stage_name: StageName,
    processor: LlavaProcessor,
    records: list,
    data: Path,
    report_dir: Path,
    *,
    images: ImageCheck | None = None,
    workers: int | None = None,
) -> PreflightReport:
    """Check one of a stage's data files, print the summary and save the report under `report_dir`."""
    stage = cfg.stage(stage_name)
    report = check_records(
        records, cfg.image_root, processor, stage.template, cfg.model_max_length,
        images=images or cfg.data.preflight_images, workers=workers or cfg.data.preflight_workers,
        stage=stage_name, data=str(data),
    )
    report.save(report_dir)
    log.info("%s\n  report: %s", report.summary(), report_dir)
    return report


def check_config(
    cfg: TrainConfig,
    stages: Sequence[StageName],
    *,
    images: ImageCheck | None = None,
    workers: int | None = None,
) -> list[tuple[PreflightReport, Path]]:
    """`python -m training check`: preflight each stage's data (and held-out file) as the stage would read it.

    Returns (report, report directory) per file; reports go under `<output_dir>/<stage>/preflight*/`.
    """
    done = []
    for stage_name in stages:
        stage = cfg.stage(stage_name)
        if stage.data is None:
            raise ValueError(f"{stage_name}.data is not set: give the LLaVA json (e.g. {stage_name}.data=path.json)")
        files = {"preflight": Path(stage.data)}
        if isinstance(stage.eval_split, Path):
            files["preflight-eval"] = stage.eval_split
        processor = processor_for_stage(cfg, stage)
        for name, path in files.items():
            report_dir = cfg.stage_dir(stage_name) / name
            report = preflight_stage(cfg, stage_name, processor, load_json_list(path), path, report_dir,
                                     images=images, workers=workers)
            done.append((report, report_dir))
    return done
