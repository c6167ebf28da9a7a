"""The two output formats an LLM may answer in, rendered and parsed to the same pydantic objects.

- `structured`: JSON that follows the sample type's output model (OpenAI strict json_schema).
- `llava-text`: LLaVA's own text format. Question/answer types are rounds of
  `Question:\\n…\\n===\\nAnswer:\\n…` separated by `===`; a detail description is plain text.

Few-shot examples are stored as JSON objects and rendered with `render`, so a prompt's
examples always show the same format the model is asked to answer in. `render` is part of what the
model reads: a change to its output must bump `tasks.prompting.prompts.RENDER_VERSION`.

Importing this module registers one parser per sample type and format with the LLM engine
(`tasks/llm/parsers.py`), under the request kind `sample_kind(type, format)`, e.g. "conversation/structured".
"""

from __future__ import annotations

import json
import re
from functools import partial
from typing import Any

from pydantic import ValidationError

from schemas.samples import SAMPLE_TYPES, SampleOutput, output_from_pairs, question_answer_pairs, sample_type
from tasks.llm import parsers

OUTPUT_FORMATS = ("structured", "llava-text")
_SEPARATOR = "==="
_QUESTION = re.compile(r"^\s*(?:Question|Q)\s*:\s*", re.IGNORECASE)
_ANSWER = re.compile(r"^\s*(?:Answer|A)\s*:\s*", re.IGNORECASE)


class OutputFormatError(parsers.OutputError):
    """The LLM's text could not be read as the requested sample type and format (the engine retries it)."""


def check_format(output_format: str) -> str:
    """Validate an output format name."""
    if output_format not in OUTPUT_FORMATS:
        raise ValueError(f"unknown output format {output_format!r}; expected one of {', '.join(OUTPUT_FORMATS)}")
    return output_format


def sample_kind(type_name: str, output_format: str) -> str:
    """The request kind (parser name in `tasks.llm.parsers`) of a sample request, e.g. "conversation/structured"."""
    return f"{sample_type(type_name).name}/{check_format(output_format)}"


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
    pairs = question_answer_pairs(output)
    if pairs[0][0] is None:  # a type without questions (detail description) is its plain text
        return pairs[0][1]
    return f"\n{_SEPARATOR}\n".join(f"Question:\n{q}\n{_SEPARATOR}\nAnswer:\n{a}" for q, a in pairs)


def parse(type_name: str, output_format: str, content: str | None) -> SampleOutput:
    """Parse an LLM answer into the sample type's output model, or raise `OutputFormatError`."""
    check_format(output_format)
    st = sample_type(type_name)
    if content is None or not content.strip():
        raise OutputFormatError("empty response content")
    if output_format == "structured":
        try:
            return st.output_model.model_validate_json(_strip_code_fence(content))
        except ValidationError as exc:
            raise OutputFormatError(f"not a valid {type_name} JSON object: {_first_error(exc)}") from None
    pairs = _parse_question_answers(content) if st.has_questions else [(None, content.strip())]
    try:
        return output_from_pairs(st.name, pairs)
    except ValidationError as exc:
        raise OutputFormatError(f"not a valid {type_name}: {_first_error(exc)}") from None
    except ValueError as exc:  # wrong number of turns for the type
        raise OutputFormatError(str(exc)) from None


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


def _register_sample_parsers() -> None:
    # One parser per kind, so the engine checks a sample answer without knowing sample types.
    for type_name in SAMPLE_TYPES:
        for output_format in OUTPUT_FORMATS:
            parsers.register(sample_kind(type_name, output_format), partial(parse, type_name, output_format))


_register_sample_parsers()
