"""The model under test answers every question of a set: a local checkpoint, an endpoint, or a LLaVA answer file.

- `local_answers`: `python -m training infer` in its own process (as training runs: torch stays out of the
  orchestrator, a crash or OOM cannot take it down, the same command runs on a GPU box). It reads LLaVA's
  question file this module writes and appends LLaVA answer lines, resuming by `question_id`, so a killed run
  loses at most a batch; the lines are then stored in `eval_answers`.
- `openai_answers`: any OpenAI-compatible vision endpoint (`vllm serve` of a vistune checkpoint, a hosted
  model as a baseline) through the engine: the image is a stored reference materialised as a base64
  `image_url` part at send time (`tasks/prompting/images.py`), so limits, retries, journal and no-double-pay hold.
- `import_answers`: answers made elsewhere, in LLaVA's answer format.

Only questions without a stored answer of the model are asked again.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from schemas.eval import AnswerRecord, EvalAnswerRow, EvalRejectRow
from schemas.generation import GenerateConfig, GenerateStats
from tasks import store
from tasks.child_process import stream_process
from tasks.eval import calls, prompts
from tasks.eval.parsing import ANSWER_KIND, parse_text
from tasks.eval.sets import read_jsonl, reject_row, require_set

LOCAL_BACKENDS = ("transformers", "vllm")
BACKENDS = (*LOCAL_BACKENDS, "openai")


class InferenceFailed(RuntimeError):
    """`python -m training infer` exited non-zero or ran too long; the message carries its last lines."""


@dataclass
class AnswerResult:
    """What one answering pass did for one model."""

    model_id: str
    backend: str
    questions: int = 0  # questions of the set
    already_answered: int = 0
    new_answers: int = 0
    rejects: list[str] = field(default_factory=list)
    failed: int = 0
    stats: GenerateStats = field(default_factory=GenerateStats)  # openai backend only

    def as_dict(self) -> dict[str, Any]:
        """Plain dict for logs, artifacts and `--json`."""
        return {"model_id": self.model_id, "backend": self.backend, "questions": self.questions,
                "already_answered": self.already_answered, "new_answers": self.new_answers,
                "rejects": self.rejects, "failed": self.failed, "cost_usd": round(self.stats.cost_usd, 6)}


def model_id_for(checkpoint: str | Path) -> str:
    """A readable id for a checkpoint folder: its last two path parts (`runs/stage2/final` -> `stage2/final`)."""
    parts = Path(checkpoint).resolve().parts
    return "/".join(parts[-2:]) if len(parts) >= 2 else str(checkpoint)


def parse_model_spec(spec: str) -> tuple[str | None, str]:
    """`ID=CHECKPOINT` or `CHECKPOINT` -> (id or None, checkpoint)."""
    model_id, sep, path = spec.partition("=")
    return (model_id.strip(), path.strip()) if sep and model_id.strip() and path.strip() else (None, spec)


def _questions(db: Path, name: str, model_id: str) -> tuple[int, list[dict[str, Any]]]:
    # (number of questions in the set, those without an answer of `model_id`, with their image's root and id)
    total = store.query("SELECT count(*) AS n FROM eval_questions WHERE set_name = ?", [name], path=db)[0]["n"]
    missing = store.query(
        "SELECT q.question_id, q.image, q.text, q.category, i.image_root, i.image_id FROM eval_questions q "
        "JOIN eval_images i ON i.set_name = q.set_name AND i.image = q.image WHERE q.set_name = ? AND NOT EXISTS "
        "(SELECT 1 FROM eval_answers a WHERE a.set_name = q.set_name AND a.model_id = ? "
        "AND a.question_id = q.question_id) ORDER BY q.question_id", [name, model_id], path=db)
    return total, missing


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "model"


def infer_command(
    checkpoint: str | Path, questions: Path, image_root: str | Path, out: Path, *, model_id: str,
    backend: str = "transformers", batch_size: int | None = None, max_new_tokens: int | None = None,
    temperature: float | None = None, top_p: float | None = None,
) -> list[str]:
    """`python -m training infer ...` for one question file (options left unset keep training's defaults)."""
    cmd = [sys.executable, "-m", "training", "infer", "--model", str(checkpoint), "--questions", str(questions),
           "--image-root", str(image_root), "--out", str(out), "--backend", backend, "--model-id", model_id]
    for flag, value in (("--batch-size", batch_size), ("--max-new-tokens", max_new_tokens),
                        ("--temperature", temperature), ("--top-p", top_p)):
        if value is not None:
            cmd += [flag, str(value)]
    return cmd


def run_streaming(cmd: Sequence[str], *, on_line: Callable[[str], None] = print,
                  timeout_s: float | None = None) -> list[str]:
    """Run `cmd`, calling `on_line` per output line (stdout and stderr merged); returns the last lines, or raises
    `InferenceFailed` with them when it exits non-zero or runs past `timeout_s` (then it is killed)."""
    return stream_process(cmd, on_line=on_line, failure=InferenceFailed, timeout_s=timeout_s)


def local_answers(
    db: str | Path | None, name: str, checkpoint: str | Path, *, model_id: str | None = None,
    backend: str = "transformers", work_dir: str | Path | None = None, batch_size: int | None = None,
    max_new_tokens: int | None = None, temperature: float | None = None, top_p: float | None = None,
    on_line: Callable[[str], None] = print, timeout_s: float | None = None,
) -> AnswerResult:
    """Answer the set's unanswered questions with a local checkpoint (`python -m training infer` subprocess).

    The question and answer files live in `work_dir` (default: `eval/<set>/<model id>/` beside the database);
    the answer file is kept, so a killed run resumes where it stopped.
    """
    if backend not in LOCAL_BACKENDS:
        raise ValueError(f"backend {backend!r} is not a local one ({', '.join(LOCAL_BACKENDS)})")
    db = store.resolve_db(db)
    require_set(db, name)
    if not Path(checkpoint).exists():
        raise FileNotFoundError(f"checkpoint {checkpoint} not found")
    model_id = model_id or model_id_for(checkpoint)
    total, missing = _questions(db, name, model_id)
    result = AnswerResult(model_id=model_id, backend=backend, questions=total,
                          already_answered=total - len(missing))
    if not missing:
        return result
    work = Path(work_dir) if work_dir else db.parent / "eval" / _slug(name) / _slug(model_id)
    work.mkdir(parents=True, exist_ok=True)
    roots = sorted({q["image_root"] for q in missing})
    for k, root in enumerate(roots):  # infer reads one image root per call
        questions, out = work / f"questions_{k}.jsonl", work / f"answers_{k}.jsonl"
        lines = [json.dumps({"question_id": q["question_id"], "image": q["image"], "text": q["text"],
                             "category": q["category"]}, ensure_ascii=False)
                 for q in missing if q["image_root"] == root]
        questions.write_text("\n".join(lines) + "\n", encoding="utf-8")
        run_streaming(infer_command(checkpoint, questions, root, out, model_id=model_id, backend=backend,
                                    batch_size=batch_size, max_new_tokens=max_new_tokens, temperature=temperature,
                                    top_p=top_p), on_line=on_line, timeout_s=timeout_s)
        result.new_answers += store_answer_file(db, name, out, model_id=model_id, backend=backend,
                                                checkpoint=str(Path(checkpoint).resolve()))
    result.failed = len(_questions(db, name, model_id)[1])
    return result


def store_answer_file(db: Path, name: str, path: Path, *, model_id: str, backend: str,
                      checkpoint: str | None = None) -> int:
    """Store the lines of a LLaVA answer file for questions of the set; returns how many answers were new."""
    known = {r["question_id"] for r in store.query(
        "SELECT question_id FROM eval_questions WHERE set_name = ?", [name], path=db)}
    records = read_jsonl(path, AnswerRecord)
    unknown = [(n, a.question_id) for n, a in records if a.question_id not in known]
    if unknown:
        raise ValueError(f"{path}:{unknown[0][0]}: question_id {unknown[0][1]} is not a question of eval set {name!r}")
    now = store.utcnow()
    rows = [EvalAnswerRow(set_name=name, model_id=model_id, question_id=a.question_id, text=a.text, prompt=a.prompt,
                          answer_id=a.answer_id, backend=backend, checkpoint=checkpoint, metadata=a.metadata,
                          created_at=now) for _, a in records]
    with store.write(db) as con:
        return store.insert_rows(con, EvalAnswerRow, rows)


def import_answers(db: str | Path | None, name: str, path: str | Path, *, model_id: str | None = None) -> AnswerResult:
    """Store a LLaVA answer file made elsewhere as the answers of `model_id` (default: the file's `model_id`)."""
    db = store.resolve_db(db)
    require_set(db, name)
    records = read_jsonl(path, AnswerRecord)
    model_id = model_id or records[0][1].model_id
    if not model_id:
        raise ValueError(f"{path}: no model_id in the file: pass one")
    result = AnswerResult(model_id=model_id, backend="imported")
    result.new_answers = store_answer_file(db, name, Path(path), model_id=model_id, backend="imported",
                                           checkpoint=str(path))
    result.questions, missing = _questions(db, name, model_id)
    result.already_answered = result.questions - len(missing) - result.new_answers
    return result


def openai_answers(
    db: str | Path | None, name: str, *, model: str, model_id: str | None = None,
    config: GenerateConfig | None = None, detail: str = "high", on_progress: calls.ProgressCallback | None = None,
) -> AnswerResult:
    """Answer the set's unanswered questions with `model` at an OpenAI-compatible vision endpoint (the engine)."""
    from tasks.prompting.images import image_ref

    db = store.resolve_db(db)
    require_set(db, name)
    config = calls.engine_config(config, model=model)
    model_id = model_id or model
    total, missing = _questions(db, name, model_id)
    result = AnswerResult(model_id=model_id, backend="openai", questions=total, already_answered=total - len(missing))
    rows, planned = [], []
    for q in missing:
        part = image_ref(q["image_id"], Path(q["image_root"]) / q["image"], detail)
        messages = prompts.answer_messages(part, q["text"])
        row = calls.request_row(stage="answer", image_id=q["image_id"], version="image+question", model=model,
                                output_format="text", kind=ANSWER_KIND, messages=messages,
                                params={"temperature": config.temperature, "max_tokens": config.max_tokens})
        rows.append(row)
        planned.append((q, row.request_id))
    if not rows:
        return result
    calls.plan(db, rows)
    result.stats = calls.send(db, [r.request_id for r in rows], config, on_progress=on_progress)
    found = calls.outcomes(db, [r.request_id for r in rows])
    answers, rejects, now = [], [], store.utcnow()
    for q, rid in planned:
        outcome = found.get(rid)
        if outcome is not None and outcome.ok:
            answers.append(EvalAnswerRow(
                set_name=name, model_id=model_id, question_id=q["question_id"], text=parse_text(outcome.content),
                prompt=q["text"], answer_id=outcome.response_id, backend="openai", checkpoint=model,
                metadata={"base_url": config.base_url}, request_id=rid, created_at=now))
        elif outcome is not None and outcome.unusable:
            rejects.append(reject_row(outcome, name, "answer", q["question_id"], model_id))
        else:
            result.failed += 1
    with store.write(db) as con:
        result.new_answers = store.insert_rows(con, EvalAnswerRow, answers)
        store.insert_rows(con, EvalRejectRow, rejects)
    result.rejects = [f"answer of {r.model_id} to question {r.question_id}: {r.code}: {r.detail}" for r in rejects]
    return result
