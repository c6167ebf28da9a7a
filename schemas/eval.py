"""Evaluation: the rows of the eval tables, the judge's output model and the LLaVA-Bench file records.

An eval set is a fixed list of held-out images with their context (captions and boxes), one question per
(image, category), and a reference answer per question written by a text-only LLM from the context. Each
model under test answers every question from the image (`eval_answers`, one row per model id); a judge LLM
scores the reference and the candidate side by side (`eval_reviews`). Categories use the LLaVA-Bench names.

Eval requests live in the same `requests` table as generation's (the engine serves them), with a
`sample_type` that starts with `EVAL_SAMPLE_TYPE_PREFIX`: validation, the `slot_status` view and planning
leave those rows alone (they are no instruction samples).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from schemas.tables import TableRow

# LLaVA-Bench's category names (conversation, detailed description, complex reasoning), in report order.
EVAL_CATEGORIES: tuple[str, ...] = ("conv", "detail", "complex")
Category = Literal["conv", "detail", "complex"]
# `requests.sample_type` of every eval request starts with this; nothing that reads samples looks at them.
EVAL_SAMPLE_TYPE_PREFIX = "eval:"
# The two orders a pair can be judged in: `forward` shows the reference as Assistant 1 (LLaVA's order).
ORDERS: tuple[str, ...] = ("forward", "swapped")
Order = Literal["forward", "swapped"]


def eval_sample_type(stage: str) -> str:
    """The `requests.sample_type` of an eval request of `stage` (question, reference, answer, review)."""
    return f"{EVAL_SAMPLE_TYPE_PREFIX}{stage}"


# ---------------------------------------------------------------- LLM outputs
class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EvalQuestionOutput(_Strict):
    """What the question writer returns (structured form): one question about the image."""

    question: str = Field(min_length=1)


class ReviewOutput(_Strict):
    """What the judge returns: a score from 1 to 10 for each assistant and why. Both forms validate here."""

    assistant_1_score: int = Field(ge=1, le=10)
    assistant_2_score: int = Field(ge=1, le=10)
    explanation: str = Field(min_length=1)

    @field_validator("explanation")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("the explanation is blank")
        return value.strip()


# ---------------------------------------------------------------- LLaVA-Bench file records
class _Record(BaseModel):
    model_config = ConfigDict(extra="allow")  # LLaVA's files carry fields we do not read


class QuestionRecord(_Record):
    """One line of a LLaVA-Bench questions file."""

    question_id: int
    image: str = Field(min_length=1)
    text: str = Field(min_length=1)
    category: Category


class Instance(_Record):
    """One annotated object of a context line: category and `[x1, y1, x2, y2]` normalised to [0, 1]."""

    category: str = Field(min_length=1)
    bbox: list[float] = Field(min_length=4, max_length=4)

    @field_validator("bbox")
    @classmethod
    def _normalised(cls, box: list[float]) -> list[float]:
        if not all(0.0 <= v <= 1.0 for v in box):
            raise ValueError(f"bbox {box} is not normalised to [0, 1]")
        if box[2] < box[0] or box[3] < box[1]:
            raise ValueError(f"bbox {box} is not [x1, y1, x2, y2] with x2 >= x1 and y2 >= y1")
        return box


class ContextRecord(_Record):
    """One line of a LLaVA-Bench context file: an image's captions and boxes."""

    id: Any = None
    image: str = Field(min_length=1)
    captions: list[str] = Field(min_length=1)
    instances: list[Instance] = Field(default_factory=list)


class AnswerRecord(_Record):
    """One line of a LLaVA answers file; only `question_id` and `text` are required (reference answers)."""

    question_id: int
    text: str  # a model may answer nothing; the judge scores that, it is not a bad line
    prompt: str | None = None
    answer_id: str | None = None
    model_id: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)


class ReferenceRecord(AnswerRecord):
    """A reference answer line: the yardstick of every review, so it must say something."""

    text: str = Field(min_length=1)


# ---------------------------------------------------------------- tables
class EvalSetRow(TableRow):
    """An eval set: where its questions came from and with which parameters."""

    table: ClassVar[str] = "eval_sets"
    primary_key: ClassVar[tuple[str, ...]] = ("name",)
    name: str
    source: str  # build | llava-bench
    params: dict[str, Any] = Field(default_factory=dict)
    created_at: datetime


class EvalImageRow(TableRow):
    """A held-out image of a set with the context the question writer, reference writer and judge see.

    `image` is the path relative to `image_root`, as LLaVA's question files write it. `image_id` is the COCO id
    (of an ingested image, or read from a COCO file name); export leaves every ingested image named here out.
    """

    table: ClassVar[str] = "eval_images"
    primary_key: ClassVar[tuple[str, ...]] = ("set_name", "image")
    set_name: str
    image: str
    image_root: str
    image_id: int
    position: int  # order in the set (question ids of a built set derive from it)
    captions: list[str]
    instances: list[dict[str, Any]]  # {"category", "bbox": [x1, y1, x2, y2]} normalised
    created_at: datetime


class EvalQuestionRow(TableRow):
    """One question of a set (imported, or written by the engine from the image's context)."""

    table: ClassVar[str] = "eval_questions"
    primary_key: ClassVar[tuple[str, ...]] = ("set_name", "question_id")
    set_name: str
    question_id: int
    image: str
    category: str
    text: str
    request_id: str | None = None  # the request that wrote it; None: imported
    created_at: datetime


class EvalReferenceRow(TableRow):
    """The reference answer of a question: imported, or written by a text-only LLM from the context."""

    table: ClassVar[str] = "eval_references"
    primary_key: ClassVar[tuple[str, ...]] = ("set_name", "question_id")
    set_name: str
    question_id: int
    text: str
    source: str  # imported | generated
    model: str | None = None
    request_id: str | None = None
    created_at: datetime


class EvalAnswerRow(TableRow):
    """A candidate model's answer to a question, in LLaVA's answer-file fields."""

    table: ClassVar[str] = "eval_answers"
    primary_key: ClassVar[tuple[str, ...]] = ("set_name", "model_id", "question_id")
    set_name: str
    model_id: str
    question_id: int
    text: str
    prompt: str | None = None
    answer_id: str | None = None
    backend: str  # transformers | vllm | openai | imported
    checkpoint: str | None = None  # the checkpoint folder or the endpoint's model name
    metadata: dict[str, Any] = Field(default_factory=dict)
    request_id: str | None = None  # openai backend: the engine's request
    created_at: datetime


class EvalReviewRow(TableRow):
    """One judge review of (reference, candidate) for a question, in one order; scores mapped back to the answers."""

    table: ClassVar[str] = "eval_reviews"
    primary_key: ClassVar[tuple[str, ...]] = ("request_id",)
    request_id: str  # the judge request (its id hashes the judge model, messages and params)
    set_name: str
    model_id: str
    question_id: int
    category: str
    pair_order: str  # forward: Assistant 1 is the reference; swapped: Assistant 1 is the candidate
    judge_model: str
    score_reference: int
    score_candidate: int
    explanation: str
    response_id: str
    created_at: datetime


class EvalRejectRow(TableRow):
    """An eval LLM answer that could not be used (an unparseable review, question or reference), with why."""

    table: ClassVar[str] = "eval_rejects"
    primary_key: ClassVar[tuple[str, ...]] = ("response_id",)
    response_id: str
    request_id: str
    set_name: str
    stage: str  # question | reference | answer | review
    model_id: str | None = None
    question_id: int | None = None
    code: str  # the response status: bad_output, truncated, refusal, content_filter, parse_error
    detail: str
    created_at: datetime


EVAL_TABLES: tuple[type[TableRow], ...] = (
    EvalSetRow, EvalImageRow, EvalQuestionRow, EvalReferenceRow, EvalAnswerRow, EvalReviewRow, EvalRejectRow,
)
