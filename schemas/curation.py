"""Curation shapes: reject reason codes, a validation result, and the thresholds the content rules use."""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field

from schemas.samples import SAMPLE_TYPES, ComplexReasoningOutput, ConversationOutput, DetailDescriptionOutput


class RejectCode(StrEnum):
    """Why a response did not become a sample; one `rejects` row per code that applies."""

    MALFORMED = "malformed"  # could not be parsed as the sample type in its output format
    EMPTY = "empty"  # no content, or an empty question / answer / description
    TOO_SHORT = "too_short"
    TOO_LONG = "too_long"
    HIDDEN_INPUT = "mentions_hidden_input"  # talks about the captions, boxes or coordinates it was given
    REFUSAL = "refusal"
    CONTENT_FILTER = "content_filter"  # the provider stopped the answer (finish_reason content_filter)
    REPEATED_QUESTION = "repeated_question"
    NON_ENGLISH = "non_english"
    TRUNCATED = "truncated"  # finish_reason length, or text that stops mid-sentence
    PARSE_ERROR = "parse_error"  # our parser raised (a bug, not the model's fault): fix it and validate again
    IMAGE_PLACEHOLDER = "image_placeholder"  # `<image>` in a question or answer: it would break the LLaVA record
    PROMPT_INJECTION = "prompt_injection"  # instructions to a model, chat-template tokens, role markers
    CONTROL_CHARACTERS = "control_characters"  # bidi overrides, zero-width and other invisible characters


class Reject(BaseModel):
    """One failed rule: its code and a detail that quotes the offending text."""

    model_config = ConfigDict(frozen=True)
    code: RejectCode
    detail: str


class ValidationResult(BaseModel):
    """The parsed output when every rule passed, else `output=None` and the rules that failed."""

    output: ConversationOutput | DetailDescriptionOutput | ComplexReasoningOutput | None = None
    rejects: list[Reject] = Field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when the response is a usable sample."""
        return self.output is not None and not self.rejects


class ContentThresholds(BaseModel):
    """Every number the content rules use, in one place. Word counts are whitespace-separated words; token
    counts use the offline cl100k encoding, so one giant "word" cannot pass a word limit.

    The per-type answer limits default to `schemas.samples.SAMPLE_TYPES` (one place for a type's facts).
    """

    model_config = ConfigDict(frozen=True)
    # An answer (or a description) shorter than this is too short, per sample type.
    min_answer_words: dict[str, int] = Field(
        default_factory=lambda: {n: t.min_answer_words for n, t in SAMPLE_TYPES.items()})
    # Any single answer (or description) longer than this is too long, per sample type.
    max_answer_words: dict[str, int] = Field(
        default_factory=lambda: {n: t.max_answer_words for n, t in SAMPLE_TYPES.items()})
    max_answer_tokens: dict[str, int] = Field(
        default_factory=lambda: {n: t.max_answer_tokens for n, t in SAMPLE_TYPES.items()})
    min_question_words: int = 2
    max_question_words: int = 80
    max_question_tokens: int = 200
    max_word_chars: int = 80  # longer than any English word or a URL on a sign: a runaway "word"
    min_rounds: int = 1  # a conversation with fewer rounds than this is too short
    max_rounds: int = 12  # a conversation with more rounds than this is too long
    # Non-English: a turn is checked once it has this many words / letters.
    english_min_words: int = 12
    # English prose runs at ~0.4, other Latin-script languages near 0-0.1 (most also fail on foreign function
    # words outnumbering English ones); a bare list of nouns ("apples, pears, ...") sits low, hence 12+ words.
    english_min_stopword_ratio: float = 0.05
    # ... but only with this many foreign function words as evidence: a list of fruit names has neither kind.
    non_english_min_foreign_words: int = 2
    english_min_letters: int = 12
    english_min_ascii_letter_ratio: float = 0.9
