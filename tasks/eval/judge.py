"""The judge: an LLM scores the reference and the candidate answer of every question, side by side.

For each (question, reference, candidate answer of a model) the judge reads the context (captions and boxes),
the question and both answers as [Assistant 1] / [Assistant 2], with the rubric of the question's category
(`tasks/eval/templates`), and returns two integer scores from 1 to 10 and an explanation: structured JSON
(default) or LLaVA's text form (first line "S1 S2"), both checked by `schemas.eval.ReviewOutput`.

`forward` shows the reference as Assistant 1 (LLaVA's order). With `swap`, each pair is judged in both orders;
the report averages the two and measures position bias. Every call goes through the engine (journal, claims,
budget, batch mode); a stored review is never asked for again (its request is answered, and pairs that have a
review are not even planned). A review that does not parse is an `eval_rejects` row with the reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from schemas.eval import ORDERS, EvalRejectRow, EvalReviewRow
from schemas.generation import GenerateConfig, GenerateStats
from tasks import store
from tasks.eval import calls, prompts
from tasks.eval.parsing import parse_review, review_kind
from tasks.eval.sets import context_of, reject_row, require_set, set_images


@dataclass
class JudgeResult:
    """What one judge pass did."""

    judge_model: str
    pairs: int = 0  # (question, model) pairs with a reference and an answer
    already_reviewed: int = 0  # reviews (pair and order) stored before: not asked for again
    new_reviews: int = 0
    rejects: list[str] = field(default_factory=list)  # this pass's unparseable reviews, one line each
    failed: int = 0  # calls that got no answer this time (a rerun tries them again)
    stats: GenerateStats = field(default_factory=GenerateStats)

    def as_dict(self) -> dict[str, Any]:
        """Plain dict for logs, artifacts and `--json`."""
        return {"judge_model": self.judge_model, "pairs": self.pairs, "already_reviewed": self.already_reviewed,
                "new_reviews": self.new_reviews, "rejects": self.rejects, "failed": self.failed,
                "cost_usd": round(self.stats.cost_usd, 6)}


def judge(
    db: str | Path | None, name: str, *, model_ids: list[str] | None = None, config: GenerateConfig | None = None,
    swap: bool = False, on_progress: calls.ProgressCallback | None = None,
) -> JudgeResult:
    """Review every answer of `model_ids` (default: every model with answers on the set) that lacks a review."""
    db = store.resolve_db(db)
    require_set(db, name)
    config = calls.engine_config(config)
    orders = ORDERS if swap else ORDERS[:1]
    pairs = store.query(
        "SELECT q.question_id, q.category, q.text AS question, q.image, r.text AS reference, a.model_id, "
        "a.text AS answer FROM eval_questions q JOIN eval_references r USING (set_name, question_id) "
        "JOIN eval_answers a USING (set_name, question_id) WHERE q.set_name = ? "
        + ("AND a.model_id IN (SELECT unnest(?::VARCHAR[])) " if model_ids else "")
        + "ORDER BY a.model_id, q.question_id", [name, *([model_ids] if model_ids else [])], path=db)
    reviewed = {(r["model_id"], r["question_id"], r["pair_order"]) for r in store.query(
        "SELECT model_id, question_id, pair_order FROM eval_reviews WHERE set_name = ? AND judge_model = ?",
        [name, config.model], path=db)}
    result = JudgeResult(judge_model=config.model, pairs=len(pairs))
    images = {img["image"]: img for img in set_images(db, name)}
    rows, planned = [], []
    for pair in pairs:
        image = images[pair["image"]]
        for order in orders:
            if (pair["model_id"], pair["question_id"], order) in reviewed:
                result.already_reviewed += 1
                continue
            first, second = ((pair["reference"], pair["answer"]) if order == "forward"
                             else (pair["answer"], pair["reference"]))
            messages, version = prompts.judge_messages(context_of(image), pair["question"], first, second,
                                                       pair["category"], config.format)
            params: dict[str, Any] = {"temperature": config.temperature, "max_tokens": config.max_tokens}
            if config.format == "structured":
                params["response_format"] = {"type": "json_schema", "json_schema": prompts.REVIEW_SCHEMA}
            row = calls.request_row(stage="review", image_id=image["image_id"], version=version, model=config.model,
                                    output_format=config.format, kind=review_kind(config.format),
                                    messages=messages, params=params)
            rows.append(row)
            planned.append((pair, order, row.request_id))
    if not rows:
        return result
    calls.plan(db, rows)
    result.stats = calls.send(db, [r.request_id for r in rows], config, on_progress=on_progress)
    found = calls.outcomes(db, [r.request_id for r in rows])
    reviews, rejects, now = [], [], store.utcnow()
    for pair, order, rid in planned:
        outcome = found.get(rid)
        if outcome is not None and outcome.ok:
            review = parse_review(config.format, outcome.content)
            first, second = review.assistant_1_score, review.assistant_2_score
            ref, cand = (first, second) if order == "forward" else (second, first)
            reviews.append(EvalReviewRow(
                request_id=rid, set_name=name, model_id=pair["model_id"], question_id=pair["question_id"],
                category=pair["category"], pair_order=order, judge_model=config.model, score_reference=ref,
                score_candidate=cand, explanation=review.explanation, response_id=outcome.response_id or rid,
                created_at=now))
        elif outcome is not None and outcome.unusable:
            rejects.append(reject_row(outcome, name, "review", pair["question_id"], pair["model_id"]))
        else:
            result.failed += 1
    with store.write(db) as con:
        result.new_reviews = store.insert_rows(con, EvalReviewRow, reviews)
        store.insert_rows(con, EvalRejectRow, rejects)
    result.rejects = [f"review of {r.model_id} on question {r.question_id}: {r.code}: {r.detail}" for r in rejects]
    return result
