"""What the LLM must return for each sample type, and the registry that names the types.

A sample type is data: its output model and every per-type fact (which context it sees, its
instruction list for export, its expected answer size, its word limits) live on `SampleType` here;
its prompt files under `tasks/prompting/templates/<name>/` and its parsers (registered by
`tasks/prompting/formats.py`) are looked up by `SampleType.name`. Modules read these fields by
name instead of branching on `if type == ...`.
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
    """A conversation between a person asking about the image and the assistant: one round or more."""

    # One round is a valid conversation (LLaVA's data has them); ContentThresholds.min_rounds can ask for more.
    rounds: list[QuestionAnswer] = Field(min_length=1)


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
    """One kind of instruction sample and every fact about it that other modules need."""

    name: str
    output_model: type[_Strict]
    sees_boxes: bool  # the paper shows conversation captions only; the others captions + boxes
    paper_count: int  # size of this type in LLaVA-Instruct-158K, for the report's mix
    # Expected completion tokens when the database has no answers yet to learn from
    # (LLaVA-Instruct-158K averages, rounded: conversations are the longest); tasks/llm/estimate.py.
    default_output_tokens: int
    # Default limits of one answer (or the description); schemas.curation.ContentThresholds. The maxima leave
    # room for the paper's longest answers (multi-paragraph, several hundred words); tokens catch giant "words".
    min_answer_words: int
    max_answer_words: int
    max_answer_tokens: int
    # Several (question, answer) rounds per sample (a conversation) rather than exactly one.
    multi_round: bool = False
    # The sample has no question of its own: export draws one from tasks/curation/instructions/<this>.txt.
    instructions: str | None = None

    @property
    def has_questions(self) -> bool:
        """False for a type whose sample is one text without a question (export adds an instruction)."""
        return self.instructions is None


SAMPLE_TYPES: dict[str, SampleType] = {
    t.name: t
    for t in (
        SampleType("conversation", ConversationOutput, sees_boxes=False, paper_count=58_000,
                   default_output_tokens=450, min_answer_words=2, max_answer_words=800, max_answer_tokens=1600,
                   multi_round=True),
        SampleType("detail_description", DetailDescriptionOutput, sees_boxes=True, paper_count=23_000,
                   default_output_tokens=200, min_answer_words=25, max_answer_words=800, max_answer_tokens=1600,
                   instructions="detail_description"),
        SampleType("complex_reasoning", ComplexReasoningOutput, sees_boxes=True, paper_count=77_000,
                   default_output_tokens=300, min_answer_words=15, max_answer_words=800,
                   max_answer_tokens=1600),
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


def output_from_pairs(type_name: str, pairs: list[tuple[str | None, str]]) -> SampleOutput:
    """The inverse of `question_answer_pairs`: a type's output model built from its turns.

    Raises `ValueError` (pydantic's `ValidationError` included) when the turns do not fit the type.
    """
    st = sample_type(type_name)
    if not st.multi_round and len(pairs) != 1:
        raise ValueError(f"expected one {'question and answer' if st.has_questions else 'text'}, found {len(pairs)}")
    if any((q is None) == st.has_questions for q, _ in pairs):
        raise ValueError(f"every {st.name} turn {'needs a' if st.has_questions else 'has no'} question")
    if st.output_model is ConversationOutput:
        return ConversationOutput.model_validate({"rounds": [{"question": q, "answer": a} for q, a in pairs]})
    if st.output_model is ComplexReasoningOutput:
        return ComplexReasoningOutput.model_validate({"question": pairs[0][0], "answer": pairs[0][1]})
    return DetailDescriptionOutput.model_validate({"description": pairs[0][1]})
