"""Eval sets: build one from held-out ingested images, or import LLaVA-Bench's files; then write what is missing.

`build_set` picks `per_category` images of a split deterministically (by a seeded hash of the image id, among
images with captions and boxes), stores their context, and asks the engine for one question per (image,
category) and then for the reference answer of each question (a text-only LLM reading the same context).
`import_llava_bench` reads LLaVA-Bench's layout (questions, context, optional reference answers); without
answers the references are generated the same way.

Both are resumable: what is stored is never asked for again, and an answered request is never paid twice. An
answer that cannot be used becomes an `eval_rejects` row with its reason; a rerun asks again for what is missing.
Question ids of a built set are `position * 3 + category index` (0, 1, 2 for conv, detail, complex).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from schemas.eval import (
    EVAL_CATEGORIES,
    ContextRecord,
    EvalImageRow,
    EvalQuestionRow,
    EvalReferenceRow,
    EvalRejectRow,
    EvalSetRow,
    QuestionRecord,
    ReferenceRecord,
)
from schemas.generation import GenerateConfig, GenerateStats
from tasks import store
from tasks.eval import calls, prompts
from tasks.eval.parsing import REFERENCE_KIND, parse_question, parse_text, question_kind

Record = TypeVar("Record", bound=BaseModel)


class EvalFileError(ValueError):
    """A bad eval input file; the message names the file, the line and the problem."""


@dataclass
class SetResult:
    """What building or importing a set did (counts are of the whole set after the call, plus this call's news)."""

    name: str
    created: bool = False  # this call created the set (its images were not held out of earlier exports)
    images: int = 0
    questions: int = 0
    references: int = 0
    new_questions: int = 0
    new_references: int = 0
    rejects: list[str] = field(default_factory=list)  # this call's unusable answers, one line each
    failed: int = 0  # calls that got no answer this time (a rerun tries them again)
    stats: GenerateStats = field(default_factory=GenerateStats)

    def as_dict(self) -> dict[str, Any]:
        """Plain dict for logs, artifacts and `--json`."""
        return {"name": self.name, "images": self.images, "questions": self.questions,
                "references": self.references, "new_questions": self.new_questions,
                "new_references": self.new_references, "rejects": self.rejects, "failed": self.failed,
                "cost_usd": round(self.stats.cost_usd, 6)}


# ---------------------------------------------------------------- set rows
def get_set(db: Path, name: str) -> EvalSetRow | None:
    """The set's row, or None when there is no set of that name (a read: an older file is migrated by the store)."""
    with store.read(db) as con:
        row = con.execute("SELECT name, source, params, created_at FROM eval_sets WHERE name = ?", [name]).fetchone()
    if row is None:
        return None
    return EvalSetRow(name=row[0], source=row[1], params=json.loads(row[2]), created_at=row[3])


def require_set(db: Path, name: str) -> EvalSetRow:
    """The set's row, or a ValueError naming the sets that exist."""
    found = get_set(db, name)
    if found is None:
        names = [r["name"] for r in store.query("SELECT name FROM eval_sets ORDER BY 1", path=db)]
        raise ValueError(f"no eval set {name!r} in {db} (sets: {', '.join(names) or 'none'}): create it with "
                         "`vistune eval build` or `vistune eval import-llava-bench`")
    return found


def _claim_set(db: Path, name: str, source: str, params: dict[str, Any]) -> bool:
    # A set's definition never changes: the same call resumes it, another one is refused. True: created now.
    existing = get_set(db, name)
    if existing is not None:
        if existing.source != source or existing.params != params:
            raise ValueError(f"eval set {name!r} exists with other parameters ({existing.source}, "
                             f"{json.dumps(existing.params)}): choose another --name")
        return False
    with store.write(db) as con:
        store.insert_rows(con, EvalSetRow, [EvalSetRow(name=name, source=source, params=params,
                                                       created_at=store.utcnow())])
    return True


def images_in_dataset(db: Path, name: str) -> int:
    """How many of the set's images have samples in the `dataset` view (exports made before the set existed
    included them; later exports leave them out)."""
    return store.query("SELECT count(DISTINCT d.image_id) AS n FROM dataset d JOIN eval_images e USING (image_id) "
                       "WHERE e.set_name = ?", [name], path=db)[0]["n"]


def set_images(db: Path, name: str) -> list[dict[str, Any]]:
    """The set's images in order, with their context (captions, instances)."""
    rows = store.query("SELECT * FROM eval_images WHERE set_name = ? ORDER BY position, image", [name], path=db)
    for row in rows:
        row["captions"], row["instances"] = json.loads(row["captions"]), json.loads(row["instances"])
    return rows


def context_of(image: dict[str, Any]) -> str:
    """The text the question writer, reference writer and judge read about an image."""
    return prompts.render_context(image["captions"], image["instances"])


# ---------------------------------------------------------------- build from ingested images
def pick_images(db: Path, split: str, n: int, seed: int = 0) -> list[int]:
    """`n` image ids of `split` with captions and boxes, ordered by a seeded hash of the id (same call, same pick)."""
    with store.read(db) as con:
        ids = [r[0] for r in con.execute(
            "SELECT image_id FROM images i WHERE split = ? AND EXISTS (SELECT 1 FROM captions c WHERE "
            "c.image_id = i.image_id) AND EXISTS (SELECT 1 FROM objects o WHERE o.image_id = i.image_id)",
            [split]).fetchall()]
    if len(ids) < n:
        raise ValueError(f"split {split!r} has {len(ids)} ingested image(s) with captions and boxes, {n} wanted: "
                         f"ingest the split (`vistune ingest --split {split}`) or lower --per-category")
    return sorted(ids, key=lambda i: store.stable_hash("eval-pick", seed, i))[:n]


def build_set(
    db: str | Path | None, name: str, *, split: str = "val2017", per_category: int = 30, seed: int = 0,
    config: GenerateConfig | None = None, on_progress: calls.ProgressCallback | None = None,
) -> SetResult:
    """Create (or resume) the set `name`: pick images, then write the missing questions and references.

    `config` is the engine config of the question and reference writer (model, endpoint, format, limits).
    """
    if per_category < 1:
        raise ValueError(f"--per-category must be >= 1, got {per_category}")
    db = store.resolve_db(db)
    store.ensure_schema(db)
    created = _claim_set(db, name, "build", {"split": split, "per_category": per_category, "seed": seed})
    if not set_images(db, name):
        from tasks.prompting.prompts import load_contexts

        picked = pick_images(db, split, per_category, seed)
        with store.read(db) as con:
            contexts = load_contexts(con, picked)
            where = {r[0]: (r[1], r[2]) for r in con.execute(
                "SELECT image_id, coco_root, split || '/' || file_name FROM images WHERE image_id IN "
                "(SELECT unnest(?::BIGINT[]))", [picked]).fetchall()}
        now = store.utcnow()
        rows = [EvalImageRow(
            set_name=name, image=where[i][1], image_root=where[i][0], image_id=i, position=pos,
            captions=list(contexts[i].captions),
            instances=[{"category": o.category, "bbox": list(o.box)} for o in contexts[i].objects], created_at=now,
        ) for pos, i in enumerate(picked)]
        with store.write(db) as con:
            store.insert_rows(con, EvalImageRow, rows)
    result = SetResult(name=name, created=created)
    write_questions(db, name, config, result, on_progress)
    write_references(db, name, config, result, on_progress)
    return _counted(db, result)


def write_questions(
    db: Path, name: str, config: GenerateConfig | None, result: SetResult,
    on_progress: calls.ProgressCallback | None = None,
) -> None:
    """Ask the engine for every question of a built set not stored yet (one per image and category)."""
    have = {r["question_id"] for r in store.query(
        "SELECT question_id FROM eval_questions WHERE set_name = ?", [name], path=db)}
    images = set_images(db, name)
    wanted = [(img, c, img["position"] * len(EVAL_CATEGORIES) + c) for img in images
              for c in range(len(EVAL_CATEGORIES)) if img["position"] * len(EVAL_CATEGORIES) + c not in have]
    if not wanted:
        return
    config = calls.engine_config(config)
    planned: list[tuple[dict[str, Any], int, int, str]] = []
    rows = []
    for image, cat, qid in wanted:
        messages, version = prompts.question_messages(context_of(image), EVAL_CATEGORIES[cat], config.format)
        params: dict[str, Any] = {"temperature": config.temperature, "max_tokens": config.max_tokens}
        if config.format == "structured":
            params["response_format"] = {"type": "json_schema", "json_schema": prompts.QUESTION_SCHEMA}
        row = calls.request_row(stage="question", image_id=image["image_id"], version=version, model=config.model,
                                output_format=config.format, kind=question_kind(config.format), messages=messages,
                                params=params)
        rows.append(row)
        planned.append((image, cat, qid, row.request_id))
    calls.plan(db, rows)
    result.stats.add(calls.send(db, [r.request_id for r in rows], config, on_progress=on_progress))
    found = calls.outcomes(db, [r.request_id for r in rows])
    questions, rejects, now = [], [], store.utcnow()
    for image, cat, qid, rid in planned:
        outcome = found.get(rid)
        if outcome is not None and outcome.ok:
            questions.append(EvalQuestionRow(set_name=name, question_id=qid, image=image["image"],
                                             category=EVAL_CATEGORIES[cat], request_id=rid, created_at=now,
                                             text=parse_question(config.format, outcome.content)))
        elif outcome is not None and outcome.unusable:
            rejects.append(reject_row(outcome, name, "question", qid))
        else:
            result.failed += 1
    _store_outcomes(db, EvalQuestionRow, questions, rejects, result)
    result.new_questions += len(questions)


def write_references(
    db: Path, name: str, config: GenerateConfig | None, result: SetResult,
    on_progress: calls.ProgressCallback | None = None,
) -> None:
    """Ask the text-only LLM for the reference answer of every question that has none."""
    missing = store.query(
        "SELECT q.question_id, q.text, q.image FROM eval_questions q WHERE q.set_name = ? AND NOT EXISTS "
        "(SELECT 1 FROM eval_references r WHERE r.set_name = q.set_name AND r.question_id = q.question_id) "
        "ORDER BY q.question_id", [name], path=db)
    if not missing:
        return
    config = calls.engine_config(config)
    images = {img["image"]: img for img in set_images(db, name)}
    rows, planned = [], []
    for q in missing:
        image = images[q["image"]]
        messages, version = prompts.reference_messages(context_of(image), q["text"])
        row = calls.request_row(stage="reference", image_id=image["image_id"], version=version, model=config.model,
                                output_format="text", kind=REFERENCE_KIND, messages=messages,
                                params={"temperature": config.temperature, "max_tokens": config.max_tokens})
        rows.append(row)
        planned.append((q["question_id"], row.request_id))
    calls.plan(db, rows)
    result.stats.add(calls.send(db, [r.request_id for r in rows], config, on_progress=on_progress))
    found = calls.outcomes(db, [r.request_id for r in rows])
    references, rejects, now = [], [], store.utcnow()
    for qid, rid in planned:
        outcome = found.get(rid)
        if outcome is not None and outcome.ok:
            references.append(EvalReferenceRow(set_name=name, question_id=qid, text=parse_text(outcome.content),
                                               source="generated", model=config.model, request_id=rid,
                                               created_at=now))
        elif outcome is not None and outcome.unusable:
            rejects.append(reject_row(outcome, name, "reference", qid))
        else:
            result.failed += 1
    _store_outcomes(db, EvalReferenceRow, references, rejects, result)
    result.new_references += len(references)


def reject_row(outcome: calls.Outcome, set_name: str, stage: str, question_id: int | None,
            model_id: str | None = None) -> EvalRejectRow:
    return EvalRejectRow(response_id=outcome.response_id or outcome.request_id, request_id=outcome.request_id,
                         set_name=set_name, stage=stage, model_id=model_id, question_id=question_id,
                         code=outcome.status or "unknown", detail=(outcome.error or "no reason recorded")[:1000],
                         created_at=store.utcnow())


def _store_outcomes(db: Path, model: type, rows: Sequence[Any], rejects: Sequence[EvalRejectRow],
                    result: SetResult) -> None:
    with store.write(db) as con:
        store.insert_rows(con, model, list(rows))
        store.insert_rows(con, EvalRejectRow, list(rejects))
    result.rejects += [f"{r.stage} {r.question_id}: {r.code}: {r.detail}" for r in rejects]


def _counted(db: Path, result: SetResult) -> SetResult:
    counts = store.query(
        "SELECT (SELECT count(*) FROM eval_images WHERE set_name = $1) AS images, "
        "(SELECT count(*) FROM eval_questions WHERE set_name = $1) AS questions, "
        "(SELECT count(*) FROM eval_references WHERE set_name = $1) AS refs", [result.name], path=db)[0]
    result.images, result.questions, result.references = counts["images"], counts["questions"], counts["refs"]
    return result


# ---------------------------------------------------------------- LLaVA-Bench files
def read_jsonl(path: str | Path, record: type[Record]) -> list[tuple[int, Record]]:
    """Every non-blank line of a JSON-lines file as `record`, with its line number; one bad line is an error
    naming the file, the line and the problem."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise EvalFileError(f"{path}: cannot read: {exc.strerror or exc}") from None
    out = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            raw = json.loads(line)
        except ValueError as exc:
            raise EvalFileError(f"{path}:{lineno}: not JSON ({exc})") from None
        if not isinstance(raw, dict):
            raise EvalFileError(f"{path}:{lineno}: expected a JSON object, got {type(raw).__name__}")
        try:
            out.append((lineno, record.model_validate(raw)))
        except ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(str(p) for p in err.get("loc", ())) or "(record)"
            raise EvalFileError(f"{path}:{lineno}: {where}: {err.get('msg')}") from None
    if not out:
        raise EvalFileError(f"{path}: no records")
    return out


def image_id_of(image: str) -> int:
    """The COCO id in an image file name (its last run of digits, e.g. COCO_val2014_000000441147.jpg -> 441147);
    a name without digits gets a stable number from its hash (it cannot be an ingested COCO image)."""
    digits = re.findall(r"\d+", Path(image).stem)
    return int(digits[-1]) if digits else -int(store.stable_hash("eval-image", image, length=12), 16)


def import_llava_bench(
    db: str | Path | None, name: str, *, questions: str | Path, context: str | Path, image_root: str | Path,
    answers: str | Path | None = None, config: GenerateConfig | None = None,
    on_progress: calls.ProgressCallback | None = None,
) -> SetResult:
    """Import LLaVA-Bench's files as the set `name` (every file is checked before anything is written); without
    `answers`, the reference answers are generated from the context by the LLM of `config`."""
    db = store.resolve_db(db)
    root = Path(image_root).resolve()
    qs = read_jsonl(questions, QuestionRecord)
    ctx = read_jsonl(context, ContextRecord)
    by_image: dict[str, ContextRecord] = {}
    for lineno, c in ctx:
        if c.image in by_image:
            raise EvalFileError(f"{context}:{lineno}: image {c.image!r} has a context line already")
        by_image[c.image] = c
    seen: dict[int, int] = {}
    order: dict[str, int] = {}
    for lineno, q in qs:
        if q.question_id in seen:
            raise EvalFileError(f"{questions}:{lineno}: question_id {q.question_id} repeats line {seen[q.question_id]}")
        seen[q.question_id] = lineno
        if q.image not in by_image:
            raise EvalFileError(f"{questions}:{lineno}: image {q.image!r} has no line in {context}")
        if not (root / q.image).is_file():
            raise EvalFileError(f"{questions}:{lineno}: image file {root / q.image} not found (--image-root)")
        order.setdefault(q.image, len(order))
    refs: list[tuple[int, ReferenceRecord]] = []
    if answers is not None:
        refs = read_jsonl(answers, ReferenceRecord)
        answered: dict[int, int] = {}
        for lineno, a in refs:
            if a.question_id not in seen:
                raise EvalFileError(f"{answers}:{lineno}: question_id {a.question_id} is not in {questions}")
            if a.question_id in answered:
                raise EvalFileError(f"{answers}:{lineno}: question_id {a.question_id} repeats line "
                                    f"{answered[a.question_id]}")
            answered[a.question_id] = lineno
    store.ensure_schema(db)
    created = _claim_set(db, name, "llava-bench", {"questions": str(Path(questions).resolve()), "image_root": str(root),
                                         "answers": str(Path(answers).resolve()) if answers else None})
    now = store.utcnow()
    images = [EvalImageRow(set_name=name, image=image, image_root=str(root), image_id=image_id_of(image),
                           position=pos, captions=by_image[image].captions,
                           instances=[{"category": i.category, "bbox": i.bbox} for i in by_image[image].instances],
                           created_at=now) for image, pos in order.items()]
    question_rows = [EvalQuestionRow(set_name=name, question_id=q.question_id, image=q.image, category=q.category,
                                     text=q.text, created_at=now) for _, q in qs]
    reference_rows = [EvalReferenceRow(set_name=name, question_id=a.question_id, text=a.text, source="imported",
                                       model=a.model_id, created_at=now) for _, a in refs]
    result = SetResult(name=name, created=created)
    with store.write(db) as con:
        store.insert_rows(con, EvalImageRow, images)
        result.new_questions = store.insert_rows(con, EvalQuestionRow, question_rows)
        result.new_references = store.insert_rows(con, EvalReferenceRow, reference_rows)
    write_references(db, name, config, result, on_progress)
    return _counted(db, result)
