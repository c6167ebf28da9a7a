"""The two output formats an LLM may answer in, rendered and parsed to the same pydantic objects.

- `structured`: JSON that follows the sample type's output model (OpenAI strict json_schema).
- `llava-text`: LLaVA's own text format. Question/answer types are rounds of
  `Question:\\n…\\n===\\nAnswer:\\n…` separated by `===`; a detail description is plain text.

Few-shot examples are stored as JSON objects and rendered with `render`, so a prompt's
examples always show the same format the model is asked to answer in.
"""

from __future__ import annotations

import json
import re
from typing import Any

from pydantic import ValidationError

from schemas.samples import (
    ComplexReasoningOutput,
    ConversationOutput,
    DetailDescriptionOutput,
    SampleOutput,
    sample_type,
)

OUTPUT_FORMATS = ("structured", "llava-text")
_SEPARATOR = "==="
_QUESTION = re.compile(r"^\s*(?:Question|Q)\s*:\s*", re.IGNORECASE)
_ANSWER = re.compile(r"^\s*(?:Answer|A)\s*:\s*", re.IGNORECASE)


class OutputFormatError(ValueError):
    """The LLM's text could not be read as the requested sample type and format."""


def check_format(output_format: str) -> str:
    """Validate an output format name."""
    if output_format not in OUTPUT_FORMATS:
        raise ValueError(f"unknown output format {output_format!r}; expected one of {', '.join(OUTPUT_FORMATS)}")
    return output_format


def json_schema(type_name: str) -> dict[str, Any]:
    """The strict JSON schema (OpenAI `response_format`) for a sample type's output model."""
    model = sample_type(type_name).output_model
    return {"name": type_name, "strict": True, "schema": _strictify(model.model_json_schema())}


def _strictify(schema: dict[str, Any]) -> dict[str, Any]:
    # Strict mode wants every property required and no extras, and rejects some keywords.
    schema = json.loads(json.dumps(schema))

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if node.get("type") == "object" and "properties" in node:
                node["required"] = list(node["properties"])
                node["additionalProperties"] = False
            for key in ("title", "minItems", "maxItems", "default"):
                node.pop(key, None)
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(schema)
    return schema


def render(output: SampleOutput, output_format: str) -> str:
    """The text an ideal LLM answer would have, in the given format."""
    check_format(output_format)
    if output_format == "structured":
        return output.model_dump_json(indent=None)
    if isinstance(output, DetailDescriptionOutput):
        return output.description
    pairs = (
        [(r.question, r.answer) for r in output.rounds]
        if isinstance(output, ConversationOutput)
        else [(output.question, output.answer)]
    )
    return f"\n{_SEPARATOR}\n".join(f"Question:\n{q}\n{_SEPARATOR}\nAnswer:\n{a}" for q, a in pairs)


def parse(type_name: str, output_format: str, content: str | None) -> SampleOutput:
    """Parse an LLM answer into the sample type's output model, or raise `OutputFormatError`."""
    check_format(output_format)
    model = sample_type(type_name).output_model
    if content is None or not content.strip():
        raise OutputFormatError("empty response content")
    if output_format == "structured":
        try:
            return model.model_validate_json(_strip_code_fence(content))
        except ValidationError as exc:
            raise OutputFormatError(f"not a valid {type_name} JSON object: {_first_error(exc)}") from None
    if model is DetailDescriptionOutput:
        return DetailDescriptionOutput(description=content.strip())
    pairs = _parse_question_answers(content)
    try:
        if model is ConversationOutput:
            return ConversationOutput.model_validate({"rounds": [{"question": q, "answer": a} for q, a in pairs]})
        if len(pairs) != 1:
            raise OutputFormatError(f"expected one question and answer, found {len(pairs)}")
        return ComplexReasoningOutput(question=pairs[0][0], answer=pairs[0][1])
    except ValidationError as exc:
        raise OutputFormatError(f"not a valid {type_name}: {_first_error(exc)}") from None


def _parse_question_answers(content: str) -> list[tuple[str, str]]:
    blocks = [b.strip() for b in re.split(rf"^\s*{_SEPARATOR}\s*$", content.strip(), flags=re.MULTILINE)]
    blocks = [b for b in blocks if b]
    pairs: list[tuple[str, str]] = []
    question: str | None = None
    for block in blocks:
        if _QUESTION.match(block):
            if question is not None:
                raise OutputFormatError(f"question without an answer: {question[:60]!r}")
            question = _QUESTION.sub("", block, count=1).strip()
        elif _ANSWER.match(block):
            if question is None:
                raise OutputFormatError(f"answer without a question: {block[:60]!r}")
            pairs.append((question, _ANSWER.sub("", block, count=1).strip()))
            question = None
        else:
            raise OutputFormatError(f"block is neither 'Question:' nor 'Answer:': {block[:60]!r}")
    if question is not None:
        raise OutputFormatError(f"last question has no answer: {question[:60]!r}")
    if not pairs:
        raise OutputFormatError("no 'Question:' / 'Answer:' pairs found")
    return pairs


def _strip_code_fence(content: str) -> str:
    text = content.strip()
    if text.startswith("```"):
        text = re.sub(r"^```(?:json)?\s*|\s*```$", "", text)
    return text


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err.get("loc", ())) or "(root)"
    return f"{where}: {err.get('msg')}"
