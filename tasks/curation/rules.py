"""Content rules beyond shape: each looks at a parsed sample and returns the rejects it finds.

A rule is a plain function `(turns, sample_type, thresholds) -> list[Reject]`, where `turns` are the
sample's (question, answer) pairs (`question` is None for a detail description). `CONTENT_RULES` lists
them in the order their codes are reported. Thresholds live in `schemas.curation.ContentThresholds`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property

from schemas.curation import ContentThresholds, Reject, RejectCode

Turns = list[tuple[str | None, str]]
Rule = Callable[[Turns, str, ContentThresholds], list[Reject]]

# The prompts hand the LLM captions and boxes it must write as if it saw the image; these phrases
# give the game away. Plain mentions of numbers, sizes or "the image shows" are fine.
HIDDEN_INPUT_PATTERNS: tuple[str, ...] = (
    r"\bcaptions?\b",
    r"\b(?:descriptions?|annotations?|information)\s+(?:provided|given)\b",
    r"\b(?:provided|given)\s+(?:descriptions?|annotations?|information|context)\b",
    r"\b(?:based on|according to|from|in)\s+the\s+(?:descriptions?|annotations?)\b",
    r"\bbounding[\s-]*box(?:es)?\b",
    r"\bbox coordinates?\b",
    # a bracketed list of two or more fractions, as the boxes are written: [0.12, 0.34, ...]
    r"[\[(]\s*-?\d*\.\d+\s*(?:,\s*-?\d*\.\d+\s*)+[\])]?",
)

REFUSAL_PATTERNS: tuple[str, ...] = (
    r"\bas an ai\b",
    r"\bas a (?:large )?language model\b",
    r"\bI(?:'m| am) (?:sorry|afraid)\b",
    r"^\s*sorry\b",
    r"\bI(?: cannot| can't| can not| won't| am unable to|'m unable to| am not able to|'m not able to) "
    r"(?:help|assist|provide|comply|fulfil|fulfill|see|view|access|describe|answer|generate|create|do that)",
    r"\bI (?:do not|don't) have (?:access|the ability)\b",
)



@dataclass(frozen=True)
class Screen:
    """Case-insensitive patterns behind a cheap substring test: every pattern needs one of `keywords`.

    Most answers contain none of the keywords, so the regex (a slow scan in Python) rarely runs.
    """

    patterns: tuple[str, ...]
    keywords: tuple[str, ...]

    @cached_property
    def regex(self) -> re.Pattern[str]:
        """All patterns as one alternation."""
        return re.compile("|".join(f"(?:{p})" for p in self.patterns), re.IGNORECASE)

    def search(self, text: str) -> re.Match[str] | None:
        """The first match in `text`, or None."""
        lowered = text.lower()
        if not any(k in lowered for k in self.keywords):
            return None
        return self.regex.search(text)


HIDDEN_INPUT = Screen(HIDDEN_INPUT_PATTERNS,
                      ("caption", "provided", "given", "descript", "annotat", "box", "[", "("))
REFUSAL = Screen(REFUSAL_PATTERNS, ("as an ai", "language model", "sorry", "afraid", "cannot", "can't", "can not",
                                    "won't", "unable", "not able", "have access", "have the ability"))


def _wordset(text: str) -> frozenset[str]:
    return frozenset(text.split())


# Common English function words: frequent in any English prose, rare in other languages.
ENGLISH_STOPWORDS = _wordset(
    """a an the and or but of to in on at by for with from as is are was were be been being it its this that these
    those there here they them their he she his her we you i my our your not no can could would should will may might
    do does did has have had if then than so very into onto over under near while which who what where when why how
    also some any all each both more most other such only just up down out about"""
)
# Function words of the languages an LLM most often drifts into (French, Spanish, Portuguese, Italian,
# German, Dutch), none of them an English word.
FOREIGN_STOPWORDS = _wordset(
    """le la les des du une et est sur avec dans pour qui que pas sont il elle ils nous vous el los las del y
    con una por para es como pero muy um uma os não com são il lo gli della che di è sono und der die das den
    dem ein eine ist nicht mit auf zu von sich auch het een van zijn niet ook"""
)
# A text that stops on one of these (or on , ; : - ( ) was cut off mid-sentence.
DANGLING_WORDS = _wordset("a an the and or but of to in on at by for with from as is are was were that which")
_WORD = re.compile(r"[^\W\d_]+(?:'[^\W\d_]+)?")
_NORMALISE = re.compile(r"[^\w]+")


def normalise(text: str) -> str:
    """Lower-case words separated by single spaces, punctuation dropped (for comparisons)."""
    return _NORMALISE.sub(" ", text.lower()).strip()


def word_count(text: str) -> int:
    """Whitespace-separated words."""
    return len(text.split())


def _labelled(turns: Turns) -> list[tuple[str, str]]:
    """(label, text) of every non-None text, labels such as 'round 2 answer' for the details."""
    out: list[tuple[str, str]] = []
    for index, (question, answer) in enumerate(turns, start=1):
        prefix = f"round {index} " if len(turns) > 1 else ""
        if question is not None:
            out.append((f"{prefix}question", question))
        out.append((f"{prefix}answer" if question is not None else "description", answer))
    return out


def _quote(text: str, match: re.Match[str] | None = None, width: int = 40) -> str:
    if match is None:
        return repr(text[:80] + ("…" if len(text) > 80 else ""))
    start, end = max(0, match.start() - width), min(len(text), match.end() + width)
    return repr(("…" if start else "") + text[start:end] + ("…" if end < len(text) else ""))


def rule_empty(turns: Turns, sample_type: str, t: ContentThresholds) -> list[Reject]:
    """A question, answer or description that is blank."""
    blank = [label for label, text in _labelled(turns) if not text.strip()]
    return [Reject(code=RejectCode.EMPTY, detail=f"{', '.join(blank)} empty")] if blank else []


def rule_length(turns: Turns, sample_type: str, t: ContentThresholds) -> list[Reject]:
    """Answers under / over the per-type word limits, questions under / over theirs, too many rounds."""
    short: list[str] = []
    long: list[str] = []
    min_answer = t.min_answer_words.get(sample_type, 1)
    max_answer = t.max_answer_words.get(sample_type, 10_000)
    for label, text in _labelled(turns):
        if not text.strip():
            continue  # reported by rule_empty
        words = word_count(text)
        low, high = (t.min_question_words, t.max_question_words) if "question" in label else (min_answer, max_answer)
        if words < low:
            short.append(f"{label} has {words} words (< {low}): {_quote(text)}")
        elif words > high:
            long.append(f"{label} has {words} words (> {high})")
    if len(turns) > t.max_rounds:
        long.append(f"{len(turns)} rounds (> {t.max_rounds})")
    rejects = [Reject(code=RejectCode.TOO_SHORT, detail="; ".join(short))] if short else []
    return rejects + ([Reject(code=RejectCode.TOO_LONG, detail="; ".join(long))] if long else [])


def _first_match(turns: Turns, pattern: Screen) -> tuple[str, str, re.Match[str]] | None:
    for label, text in _labelled(turns):
        match = pattern.search(text)
        if match:
            return label, text, match
    return None


def rule_hidden_input(turns: Turns, sample_type: str, t: ContentThresholds) -> list[Reject]:
    """Mentions of the captions, boxes or coordinates the LLM was given instead of the image."""
    found = _first_match(turns, HIDDEN_INPUT)
    if found is None:
        return []
    label, text, match = found
    return [Reject(code=RejectCode.HIDDEN_INPUT, detail=f"{label} mentions {match.group(0)!r}: {_quote(text, match)}")]


def rule_refusal(turns: Turns, sample_type: str, t: ContentThresholds) -> list[Reject]:
    """Apologies, AI disclaimers and 'I cannot see the image'."""
    found = _first_match(turns, REFUSAL)
    if found is None:
        return []
    label, text, match = found
    return [Reject(code=RejectCode.REFUSAL, detail=f"{label} refuses: {_quote(text, match)}")]


def rule_repeated_question(turns: Turns, sample_type: str, t: ContentThresholds) -> list[Reject]:
    """The same question (case and punctuation ignored) asked twice in one conversation."""
    seen: dict[str, int] = {}
    repeats: list[str] = []
    for index, (question, _) in enumerate(turns, start=1):
        if question is None or not question.strip():
            continue
        key = normalise(question)
        if key in seen:
            repeats.append(f"round {index} repeats round {seen[key]}: {_quote(question)}")
        else:
            seen[key] = index
    return [Reject(code=RejectCode.REPEATED_QUESTION, detail="; ".join(repeats))] if repeats else []


def rule_non_english(turns: Turns, sample_type: str, t: ContentThresholds) -> list[Reject]:
    """A turn in another script (few ASCII letters), or in another Latin-script language: few English
    function words, or more common French/Spanish/Portuguese/Italian/German/Dutch ones than English ones."""
    for label, text in _labelled(turns):
        # Most answers are pure ASCII: skip the per-character count for them (it dominates validation time).
        letters = [] if text.isascii() else [c for c in text if c.isalpha()]
        if len(letters) >= t.english_min_letters:
            ascii_ratio = sum(c.isascii() for c in letters) / len(letters)
            if ascii_ratio < t.english_min_ascii_letter_ratio:
                detail = f"{label}: {ascii_ratio:.0%} of letters are ASCII: {_quote(text)}"
                return [Reject(code=RejectCode.NON_ENGLISH, detail=detail)]
        words = [w.lower() for w in _WORD.findall(text)]
        if len(words) >= t.english_min_words:
            english = sum(w in ENGLISH_STOPWORDS for w in words)
            foreign = sum(w in FOREIGN_STOPWORDS for w in words)
            if english / len(words) < t.english_min_stopword_ratio or foreign > english:
                detail = (f"{label}: {english / len(words):.0%} English and {foreign / len(words):.0%} foreign "
                          f"function words: {_quote(text)}")
                return [Reject(code=RejectCode.NON_ENGLISH, detail=detail)]
    return []


def rule_cut_off(turns: Turns, sample_type: str, t: ContentThresholds) -> list[Reject]:
    """The last answer stops mid-sentence: on a dangling comma/colon/dash or on a word like 'the' or 'and'."""
    if not turns or not turns[-1][1].strip():
        return []
    text = turns[-1][1].rstrip()
    words = _WORD.findall(text[-30:])
    if text[-1] in ",;:-(" or (text[-1].isalpha() and words and words[-1].lower() in DANGLING_WORDS):
        return [Reject(code=RejectCode.TRUNCATED, detail=f"last answer stops mid-sentence: …{text[-60:]!r}")]
    return []


CONTENT_RULES: tuple[Rule, ...] = (
    rule_empty,
    rule_length,
    rule_hidden_input,
    rule_refusal,
    rule_repeated_question,
    rule_non_english,
    rule_cut_off,
)
