"""The eval request kinds and their parsers, registered with the engine's registry on import.

Kinds: `eval/question/<format>`, `eval/reference`, `eval/answer`, `eval/review/<format>` (format: structured or
llava-text). A parser raises `OutputError` (the engine stores `bad_output` and retries) when the model's text
is unusable; an answer that never parses becomes an `eval_rejects` row with the reason, never a default value.

A review is the same `ReviewOutput` either way: structured JSON is validated by it directly; LLaVA's text form
(first line "S1 S2", the explanation below) is read into the same fields and validated by it too, so both
forms follow one set of rules (integers from 1 to 10, a non-blank explanation).
"""

from __future__ import annotations

import re
from functools import partial

from pydantic import ValidationError

from schemas.eval import EvalQuestionOutput, ReviewOutput
from tasks.llm import parsers
from tasks.llm.parsers import OutputError

QUESTION_KIND = "eval/question/{format}"
REFERENCE_KIND = "eval/reference"
ANSWER_KIND = "eval/answer"
REVIEW_KIND = "eval/review/{format}"
FORMATS = ("structured", "llava-text")
_LABEL = re.compile(r"^\s*(?:question|q)\s*[:.-]\s*", re.IGNORECASE)
_FENCE = re.compile(r"^```(?:json)?\s*|\s*```$")


def question_kind(output_format: str) -> str:
    """The kind of a question-writing request in `output_format`."""
    return QUESTION_KIND.format(format=output_format)


def review_kind(output_format: str) -> str:
    """The kind of a judge request in `output_format`."""
    return REVIEW_KIND.format(format=output_format)


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err.get("loc", ())) or "(root)"
    return f"{where}: {err.get('msg')}"


def _strip_fence(text: str) -> str:
    text = text.strip()
    return _FENCE.sub("", text) if text.startswith("```") else text


def parse_text(content: str | None) -> str:
    """A free-text answer (reference, candidate): the stripped text; empty is unusable."""
    if content is None or not content.strip():
        raise OutputError("empty answer")
    return content.strip()


def parse_question(output_format: str, content: str | None) -> str:
    """The question text of a question-writer answer."""
    if content is None or not content.strip():
        raise OutputError("empty question")
    if output_format == "structured":
        try:
            return EvalQuestionOutput.model_validate_json(_strip_fence(content)).question.strip()
        except ValidationError as exc:
            raise OutputError(f"not a question JSON object: {_first_error(exc)}") from None
    text = " ".join(line.strip() for line in content.strip().splitlines() if line.strip())
    text = _LABEL.sub("", text, count=1).strip().strip('"').strip()
    if not text:
        raise OutputError("empty question")
    return text


def parse_review(output_format: str, content: str | None) -> ReviewOutput:
    """The two scores and the explanation of a judge answer, or `OutputError` saying what is wrong."""
    if content is None or not content.strip():
        raise OutputError("empty review")
    if output_format == "structured":
        try:
            return ReviewOutput.model_validate_json(_strip_fence(content))
        except ValidationError as exc:
            raise OutputError(f"not a review JSON object: {_first_error(exc)}") from None
    first, _, rest = content.strip().partition("\n")
    tokens = first.replace(",", " ").split()
    if len(tokens) != 2:
        raise OutputError(f"first line {first[:60]!r} is not two scores 'S1 S2'")
    try:
        scores = [float(t) for t in tokens]
    except ValueError:
        raise OutputError(f"first line {first[:60]!r} is not two numbers 'S1 S2'") from None
    try:  # the same model as the JSON form: integers 1-10 (8.0 reads as 8, 7.5 does not), a non-blank reason
        return ReviewOutput(assistant_1_score=scores[0], assistant_2_score=scores[1], explanation=rest)
    except ValidationError as exc:
        raise OutputError(f"review scores {first[:40]!r}: {_first_error(exc)}") from None


def _register() -> None:
    for fmt in FORMATS:
        parsers.register(question_kind(fmt), partial(parse_question, fmt))
        parsers.register(review_kind(fmt), partial(parse_review, fmt))
    parsers.register(REFERENCE_KIND, parse_text)
    parsers.register(ANSWER_KIND, parse_text)


_register()
