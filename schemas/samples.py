"""What the LLM must return for each sample type, and the registry that names the types.

A sample type is data: its output model here, its prompt files under `tasks/prompting/templates/<name>/`,
and its export rule in `tasks/curation/export.py` are all looked up by `SampleType.name`.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field


class _Strict(BaseModel):
    # `extra="forbid"` makes the JSON schema strict-mode compatible (additionalProperties: false).
    model_config = ConfigDict(extra="forbid")


class QuestionAnswer(_Strict):
    """One round: a question about the image and its answer."""

    question: str
    answer: str


class ConversationOutput(_Strict):
    """A multi-turn conversation between a person asking about the image and the assistant."""

    rounds: list[QuestionAnswer] = Field(min_length=2)


class DetailDescriptionOutput(_Strict):
    """A rich, comprehensive description of the image."""

    description: str


class ComplexReasoningOutput(_Strict):
    """One question that needs reasoning beyond the visible content, and its step-by-step answer."""

    question: str
    answer: str


SampleOutput = ConversationOutput | DetailDescriptionOutput | ComplexReasoningOutput


@dataclass(frozen=True)
class SampleType:
    """One kind of instruction sample."""

    name: str
    output_model: type[_Strict]
    sees_boxes: bool  # the paper shows conversation captions only; the others captions + boxes
    paper_count: int  # size of this type in LLaVA-Instruct-158K, for the report's mix


SAMPLE_TYPES: dict[str, SampleType] = {
    t.name: t
    for t in (
        SampleType("conversation", ConversationOutput, sees_boxes=False, paper_count=58_000),
        SampleType("detail_description", DetailDescriptionOutput, sees_boxes=True, paper_count=23_000),
        SampleType("complex_reasoning", ComplexReasoningOutput, sees_boxes=True, paper_count=77_000),
    )
}


def sample_type(name: str) -> SampleType:
    """Look a sample type up by name, with an error that lists the valid names."""
    try:
        return SAMPLE_TYPES[name]
    except KeyError:
        raise ValueError(f"unknown sample type {name!r}; expected one of {', '.join(SAMPLE_TYPES)}") from None


def question_answer_pairs(output: SampleOutput) -> list[tuple[str | None, str]]:
    """The sample as (question, answer) turns; a detail description has no question of its own."""
    if isinstance(output, ConversationOutput):
        return [(r.question, r.answer) for r in output.rounds]
    if isinstance(output, ComplexReasoningOutput):
        return [(output.question, output.answer)]
    return [(None, output.description)]
