"""Content rules beyond shape: each looks at a parsed sample and returns the rejects it finds.

A rule is a plain function `(turns, sample_type, thresholds) -> list[Reject]`, where `turns` are the
sample's (question, answer) pairs (`question` is None for a detail description). `CONTENT_RULES` lists
them in the order their codes are reported. Thresholds live in `schemas.curation.ContentThresholds`.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache, cached_property

import tiktoken

from schemas.curation import ContentThresholds, Reject, RejectCode
from schemas.llava import IMAGE_PLACEHOLDER
from schemas.samples import sample_type as sample_type_info
from tasks.prompting.tokens import OFFLINE_ENCODING

Turns = list[tuple[str | None, str]]
Rule = Callable[[Turns, str, ContentThresholds], list[Reject]]

# The prompts hand the LLM captions and boxes it must write about as if it saw the image; these phrases
# give the game away. Each names the input (captions, a description, boxes, coordinates) together with a
# word that makes it the LLM's input rather than part of the scene: "the captions mention", "according to
# the description", "the information provided", "bbox", box-shaped number lists. Alone, the nouns are
# ordinary: a caption on a TV, "the description of each dish", "information given to visitors", prices.
_INPUT_NOUN = r"(?:captions?|descriptions?|annotations?)"
_REPORT_VERB = (r"(?:also\s+|only\s+|clearly\s+|further\s+|explicitly\s+)?"
                r"(?:mentions?|mentioned|says?|said|states?|stated|notes?|noted|indicates?|indicated|suggests?|suggested|specif(?:y|ies|ied)|describes?|described|"
                r"tells?|told|refers?|reveals?|confirms?|lists?|listed|focus(?:es)?\s+on|emphasi[sz]es?|highlights?|"
                r"agree|talks?\s+about|points?\s+out|includes?|contains?|impl(?:y|ies)|hints?\s+at|"
                r"do(?:es)?n't|do(?:es)?\s+not|did\s+not|didn't)\b"
                # a quotation after the verb is text in the scene: 'the caption says "Happy birthday"'
                r"(?!\s*[:,]?\s*[\"“'‘])")
_FRACTION = r"(?:0?\.\d+|1\.0+|[01])"
_SEP = r"(?:\s*[,;]\s*|\s+)"
HIDDEN_INPUT_PATTERNS: tuple[str, ...] = (
    # "according to the captions", "based on the image description", "from the description, ..."
    rf"\b(?:according\s+to|based\s+on|judging\s+(?:by|from)|(?:as\s+)?per|going\s+by)\s+(?:the\s+|these\s+|this\s+|my\s+)?"
    rf"(?:given\s+|provided\s+|image\s+|original\s+|available\s+)?{_INPUT_NOUN}\b",
    # "in the description" / "from the captions" unless it is the description *of* something in the scene
    rf"\b(?:from|in)\s+(?:the\s+|these\s+)?(?:given\s+|provided\s+|image\s+)?{_INPUT_NOUN}"
    r"(?=\s*[,.;:]|\s+(?:of\s+the\s+(?:image|scene|photo|picture)|provided|given|above|there|it|I|we|you|one)\b)",
    # "the description mentions", "the image description states", "the captions do not say"
    rf"\b(?:the|these|those|this|all|both|each|every|five|several|multiple|other|provided|given|original|image|"
    rf"first|second|third|fourth|fifth|last|another|any|no)\s+{_INPUT_NOUN}\s+{_REPORT_VERB}",
    rf"\b(?:mentioned|described|stated|noted|listed|specified|indicated|given|provided)\s+in\s+(?:the\s+|any\s+|a\s+|"
    rf"one\s+of\s+the\s+)?(?:{_INPUT_NOUN}|text|data|input)\b(?!\s+(?:of|on)\b)",
    r"\bimage\s+descriptions?\b",
    r"\b(?:one|some|none|all|two|three|four|five|each|any|most|many|several)\s+of\s+the\s+captions\b",
    r"\b(?:provided|given|multiple|several|five|these|those|other)\s+captions\b",
    r"\bcaptions?\s*(?:#|number\s+)?\d\b",
    # "the information provided", "the captions given" (not "information given to visitors")
    r"\b(?:descriptions?|annotations?|captions?|information|details|text|data|context)\s+(?:(?:you|I)\s+)?"
    r"(?:provided|given)\b(?!\s+(?:to|for|at|on|in|inside|about|through|with|by|near|beside|along|outside|here|"
    r"there|when|during|out|away|up|off|as)\b)",
    r"\b(?:the|this|your|my)\s+(?:provided|given)\s+(?:descriptions?|annotations?|captions?|information|context|text|"
    r"data|details|coordinates|boxes|objects?|list)\b",
    # "the text I was given", "the details you provided"
    r"\b(?:text|data|details|information|context|input|descriptions?|annotations?|captions?|coordinates|prompt)\s+"
    r"(?:that\s+)?(?:I(?:'ve|\s+have|\s+was|\s+were|\s+had|\s+am)?|you(?:'ve|\s+have)?)\s+(?:been\s+)?"
    r"(?:given|provided|received|shown|told|sent|shared|gave|wrote|listed)\b",
    r"\bbounding[\s-]*box(?:es)?\b",
    r"\bbbox(?:es)?\b",
    r"\b(?:box|object|normali[sz]ed|pixel|relative)\s+coordinates?\b",
    r"\b[xy][12]\s*[=:]\s*\d",
    # box-shaped numbers: two or more fractions in brackets [0.12, 0.34, ...] (not prices like (3.50, 4.25)),
    # three or more fractions without brackets, or four integers in brackets (a pixel box [120, 45, 300, 200])
    rf"[\[(]\s*(?=[^\])]*\.\d){_FRACTION}(?:{_SEP}{_FRACTION})+\s*[\])]",
    rf"[\[(]\s*{_FRACTION}(?:{_SEP}{_FRACTION}){{2,}}",
    rf"(?<![\d.,$€£])(?=[01]?\.\d)(?:{_FRACTION}\s*,\s*){{2,}}{_FRACTION}(?!\.?\d)",
    rf"(?<![\d.,$€£]){_FRACTION}\s*,\s*{_FRACTION}\s+(?:to|and|-|–|—)\s+{_FRACTION}\s*,\s*{_FRACTION}(?!\.?\d)",
    r"[\[(]\s*\d{1,4}(?:\.\d+)?\s*(?:,\s*\d{1,4}(?:\.\d+)?\s*){3}[\])]",
    # box fields written out: "x=120, y=45, w=300, h=200", "x1: 0.31, y1: 0.42"
    r"\b(?:x|y|w|h|x1|y1|x2|y2)\s*[=:]\s*\d+(?:\.\d+)?\s*,\s*(?:x|y|w|h|x1|y1|x2|y2)\s*[=:]\s*\d",
)

# A refusal names itself (an AI, a language model), apologises in the refusal idiom, declines a task, or says
# there is no image to look at. Quoted text (a sign reading "I am sorry we are closed") is left out first.
_MEDIA = r"(?:image|picture|photo|photograph|attachment|file)s?"
REFUSAL_PATTERNS: tuple[str, ...] = (
    r"\bas an ai\b",
    r"\bI(?:'m|\s+am)\s+(?:just\s+|only\s+)?an\s+ai\b",
    r"\bas a (?:large |multimodal |text-based )?language model\b",
    r"\bI(?:'m| am) (?:sorry|afraid)(?:,|\s+but\b|\s+I\b|\s+that\b|\s+there\b|\s+as\b|\s+not\b|\s+this\b)",
    r"^\s*(?:sorry|apologies|unfortunately)\b[,!.]?\s+(?:but\s+)?(?:I\b|as\b|there\s+is\s+no|no\s+image)",
    r"\bI(?: cannot| can't| can not| won't| will not| am unable to|'m unable to| am not able to|'m not able to|"
    r" must decline to| do not| don't) (?:help|assist|comply|fulfil|fulfill|generate|create|do that|"
    r"provide (?:assistance|help|that)|answer (?:that|this|your)|"
    rf"(?:see|view|access|open|process|analy[sz]e|describe|look at)\s+(?:the\s+|any\s+|an\s+|this\s+|your\s+)?"
    rf"(?:actual\s+|attached\s+|uploaded\s+)?{_MEDIA}\b|identify (?:real |specific )?(?:people|persons|individuals))",
    r"\bI (?:do not|don't) have (?:access|the ability|the capability|vision|eyes)\b",
    rf"\b(?:no|an?|the)\s+{_MEDIA}\s+(?:was\s+|is\s+|has\s+been\s+|were\s+|have\s+been\s+)?"
    r"(?:attached|uploaded|included|shared)\b",
    rf"\b{_MEDIA}\s+(?:was|is|has|were|have)\s*(?:not|n't)\s+(?:been\s+)?(?:attached|uploaded|included|shared)\b",
    rf"\b(?:please|could you|can you)\s+(?:re-?)?(?:upload|attach|share|provide|send)\s+(?:the|an?)\s+{_MEDIA}",
    rf"\bno\s+{_MEDIA}\s+(?:in|with)\s+(?:your|the|this)\s+(?:message|request|question|prompt)\b",
    rf"\b(?:your|the|this)\s+(?:message|request|question|prompt)\s+(?:does\s+not|doesn't)\s+(?:include|contain|have)"
    rf"\s+(?:an?\s+|any\s+)?{_MEDIA}",
)
# Apostrophes inside single quotes ('I'm sorry, we're closed') are followed by a letter; the closing quote is not.
_QUOTED = re.compile(r"\"[^\"\n]{1,300}\"|“[^”\n]{1,300}”|(?<!\w)'(?:[^'\n]|'(?=\w)){1,300}'(?!\w)|‘[^’\n]{1,300}’")

# Text meant for a model rather than a person: instructions that override the prompt, and the role markers
# and special tokens of chat templates (an answer is plain prose; these end up as training targets otherwise).
PROMPT_INJECTION_PATTERNS: tuple[str, ...] = (
    r"\b(?:ignore|disregard|forget|override|bypass)\s+(?:all\s+|any\s+|everything\s+|the\s+|your\s+|my\s+)*"
    r"(?:previous\s+|prior\s+|above\s+|earlier\s+|preceding\s+|original\s+|system\s+)*"
    r"(?:instructions?|prompts?|messages?|rules|directions|guidelines|context)\b",
    r"\bsystem\s+(?:prompt|message|instructions?)\b",
    r"\b(?:new|updated|real|actual|hidden|secret)\s+instructions?\s*:",
    r"\b(?:reveal|print|repeat|output|show)\s+(?:me\s+)?(?:your|the)\s+(?:system\s+prompt|instructions|prompt)\b",
    r"\b(?:developer|jailbreak|dan)\s+mode\b",
    r"\byou\s+are\s+now\s+(?:a|an|in|my|free|unrestricted|dan)\b",
    r"\bas\s+an?\s+(?:helpful\s+)?assistant,?\s+(?:you|I)\s+(?:must|should|will)\b",
    r"<\|[a-z_]+\|>|\[/?inst\]|<</?sys>>|</?s>|<\s*/?\s*im_(?:start|end)\s*>",
    r"###\s*(?:instruction|response|system|input|human|assistant)\s*:",
    r"(?:^|\n)\s*(?:user|assistant|system|human|gpt)\s*:",
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


HIDDEN_INPUT = Screen(HIDDEN_INPUT_PATTERNS, (
    "caption", "descript", "annotat", "information", "detail", "text", "data", "context", "input", "prompt",
    "provided", "given", "box", "coordinat", "x1", "x2", "y1", "y2", "x=", "x:", "x =", "0.", "1.0", " .", ",.",
    "[", "("))
REFUSAL = Screen(REFUSAL_PATTERNS, (
    "an ai", "language model", "sorry", "afraid", "apologies", "unfortunately", "cannot", "can't", "can not",
    "won't", "will not", "unable", "not able", "decline", "do not", "don't", "attached", "uploaded", "included",
    "shared", "upload", "attach", "share", "provide", "send", "message", "request", "question", "prompt"))
PROMPT_INJECTION = Screen(PROMPT_INJECTION_PATTERNS, (
    "ignore", "disregard", "forget", "override", "bypass", "system", "instruction", "reveal", "print", "repeat",
    "output", "show", "mode", "now", "assistant", "<", "inst]", "###", "user", "human", "gpt"))


def refusal_search(text: str) -> re.Match[str] | None:
    """The first refusal phrase in `text` outside quotes (a sign may read "I'm sorry, we're closed"), or None."""
    return REFUSAL.search(_QUOTED.sub('""', text))


def _wordset(text: str) -> frozenset[str]:
    return frozenset(text.split())


# Common English function words: frequent in any English prose, rare in other languages.
ENGLISH_STOPWORDS = _wordset(
    """a an the and or but of to in on at by for with from as is are was were be been being it its this that these
    those there here they them their he she his her we you i my our your not no can could would should will may might
    do does did has have had if then than so very into onto over under near while which who what where when why how
    also some any all each both more most other such only just up down out about"""
)
# Function words of the languages an LLM most often drifts into, none of them an English word: French, Spanish,
# Portuguese, Italian, German, Dutch, Swedish/Danish/Norwegian, Polish/Czech, Indonesian/Malay, Turkish, Hungarian.
FOREIGN_STOPWORDS = _wordset(
    """le la les des du une et est sur avec dans pour qui que pas sont il elle ils nous vous el los las del y
    con una por para es como pero muy um uma os não com são il lo gli della che di è sono und der die das den
    dem ein eine ist nicht mit auf zu von sich auch het een van zijn niet ook de en au aux ce cette leur sur
    och är det att inte på med som av jag ett og er ikke af jeg också się jest nie że jak oraz przez który
    która które są dla już czy je jsou který také yang dan di ini itu dengan untuk dari ada tidak akan juga
    sebuah seorang sedang karena ve bir bu ile için çok gibi olan var és egy hogy nem az na bo jego jej mert ez"""
)
# A text that stops on one of these (or on , ; : - ( ) was cut off mid-sentence. Words that can end an English
# sentence ("it is", "what it is made of", "the TV is on", "$2 each") are left out on purpose.
DANGLING_WORDS = _wordset("a an the and or but nor because including whose than very my your our their its every")
DANGLING_PAIRS = frozenset({"such as", "due to", "rather than", "as well as", "instead of", "next to",
                            "according to", "because of", "in order to", "as well"})
_WORD = re.compile(r"[^\W\d_]+(?:'[^\W\d_]+)?")
_NORMALISE = re.compile(r"[^\w]+")


def normalise(text: str) -> str:
    """Lower-case words separated by single spaces, punctuation dropped (for comparisons)."""
    return _NORMALISE.sub(" ", text.lower()).strip()


_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u9fff\uac00-\ud7af]")


def word_count(text: str) -> int:
    """Whitespace-separated words; in Chinese, Japanese and Korean text (written without spaces) each character
    counts as a word, so a long answer in those scripts is not "too short"."""
    words = len(text.split())
    return words if text.isascii() else words + len(_CJK.findall(text))


@cache
def _encoding() -> tiktoken.Encoding:
    return tiktoken.get_encoding(OFFLINE_ENCODING)


def token_count(text: str, at_most: int | None = None) -> int:
    """Tokens of `text` in the offline cl100k encoding (special-token strings count as text).

    With `at_most`, a text that cannot exceed it (a token is at least one UTF-8 byte) returns its byte count
    unencoded, so the common short answer costs no tokenisation.
    """
    if at_most is not None:
        size = len(text.encode("utf-8"))
        if size <= at_most:
            return size
    return len(_encoding().encode(text, disallowed_special=()))


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
    """Answers under / over the per-type limits (words and tokens), questions under / over theirs, a runaway
    "word" longer than any real one, and too few or too many rounds."""
    short: list[str] = []
    long: list[str] = []
    min_answer = t.min_answer_words.get(sample_type, 1)
    max_answer = t.max_answer_words.get(sample_type, 10_000)
    max_answer_tokens = t.max_answer_tokens.get(sample_type, 20_000)
    for label, text in _labelled(turns):
        if not text.strip():
            continue  # reported by rule_empty
        words = word_count(text)
        is_question = "question" in label
        low, high = (t.min_question_words, t.max_question_words) if is_question else (min_answer, max_answer)
        max_tokens = t.max_question_tokens if is_question else max_answer_tokens
        longest = max(text.split(), key=len)
        if words < low:
            short.append(f"{label} has {words} words (< {low}): {_quote(text)}")
        elif words > high:
            long.append(f"{label} has {words} words (> {high})")
        elif (tokens := token_count(text, at_most=max_tokens)) > max_tokens:
            long.append(f"{label} has {tokens} tokens (> {max_tokens})")
        if len(longest) > t.max_word_chars:
            long.append(f"{label} has a {len(longest)}-character word (> {t.max_word_chars}): {_quote(longest)}")
    if sample_type_info(sample_type).multi_round and len(turns) < t.min_rounds:
        short.append(f"{len(turns)} rounds (< {t.min_rounds})")
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
    for label, text in _labelled(turns):
        if match := refusal_search(text):
            return [Reject(code=RejectCode.REFUSAL, detail=f"{label} refuses: {match.group(0)!r} in {_quote(text)}")]
    return []


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
    """A turn in another script (few ASCII letters), or in another Latin-script language: more foreign function
    words than English ones, or few English ones and some foreign ones. Text with neither kind (a list of fruit
    names, of street names) is not evidence of another language and passes."""
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
            # one-letter words ("a", "i", "o") are function words in many languages, so they are no evidence
            english = sum(len(w) > 1 and w in ENGLISH_STOPWORDS for w in words)
            foreign = sum(w in FOREIGN_STOPWORDS for w in words)
            if foreign >= t.non_english_min_foreign_words and (
                    foreign > english or english / len(words) < t.english_min_stopword_ratio):
                detail = (f"{label}: {english / len(words):.0%} English and {foreign / len(words):.0%} foreign "
                          f"function words: {_quote(text)}")
                return [Reject(code=RejectCode.NON_ENGLISH, detail=detail)]
    return []


def rule_cut_off(turns: Turns, sample_type: str, t: ContentThresholds) -> list[Reject]:
    """The last answer stops mid-sentence: on a dangling comma/colon/dash, on a word like 'the' or 'and', or
    inside an open bracket. A missing final period alone is no sign: short answers often end without one."""
    if not turns or not turns[-1][1].strip():
        return []
    text = turns[-1][1].rstrip()
    words = _WORD.findall(text[-30:])
    last_two = " ".join(words[-2:]).lower()
    dangling = text[-1] in ",;:-(" or (text[-1].isalpha() and words and (
        words[-1].lower() in DANGLING_WORDS or last_two in DANGLING_PAIRS))
    tail = text[text.rfind("\n") + 1:]  # brackets are not carried across paragraphs
    unclosed = tail.count("(") > tail.count(")") or tail.count("[") > tail.count("]")
    if dangling or unclosed:
        why = "inside an open bracket" if unclosed and not dangling else "mid-sentence"
        return [Reject(code=RejectCode.TRUNCATED, detail=f"last answer stops {why}: …{text[-60:]!r}")]
    return []


_PLACEHOLDER = re.compile(re.escape(IMAGE_PLACEHOLDER).replace("image", r"\s*image\s*"), re.IGNORECASE)


def rule_image_placeholder(turns: Turns, sample_type: str, t: ContentThresholds) -> list[Reject]:
    """`<image>` in a question or answer: export puts exactly one, in the first question; another one would
    make the trainer splice image features into the text (and the LLaVA record invalid)."""
    for label, text in _labelled(turns):
        if match := _PLACEHOLDER.search(text):
            return [Reject(code=RejectCode.IMAGE_PLACEHOLDER, detail=f"{label} contains {match.group(0)!r}: "
                                                                      f"{_quote(text, match)}")]
    return []


def rule_prompt_injection(turns: Turns, sample_type: str, t: ContentThresholds) -> list[Reject]:
    """Instructions addressed to a model ('ignore the previous instructions', 'system prompt'), chat-template
    tokens (`<|im_start|>`, `[INST]`) and role markers at a line start ('User:'): none belongs in an answer."""
    found = _first_match(turns, PROMPT_INJECTION)
    if found is None:
        return []
    label, text, match = found
    return [Reject(code=RejectCode.PROMPT_INJECTION,
                   detail=f"{label} has {match.group(0).strip()!r}: {_quote(text, match)}")]


# Invisible characters: bidi overrides and isolates can reorder what a reader sees, zero-width ones hide text or
# split words; none occurs in an English answer. Unicode categories Cc (controls, except tab and newlines),
# Cf (format: bidi, zero-width, soft hyphen, BOM, tags), Co (private use), Cs (surrogates) and Zl / Zp (the
# line and paragraph separators, which some readers treat as line breaks and others do not).
_INVISIBLE_CATEGORIES = frozenset({"Cc", "Cf", "Co", "Cs", "Zl", "Zp"})
_ASCII_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def _invisible(text: str) -> tuple[int, str] | None:
    if text.isascii():  # the common case: one regex instead of a category lookup per character
        match = _ASCII_CONTROL.search(text)
        return (match.start(), match.group(0)) if match else None
    for index, char in enumerate(text):
        if char not in "\t\n\r" and unicodedata.category(char) in _INVISIBLE_CATEGORIES:
            return index, char
    return None


def rule_control_characters(turns: Turns, sample_type: str, t: ContentThresholds) -> list[Reject]:
    """Bidi-override, zero-width and other invisible or control characters anywhere in the sample."""
    for label, text in _labelled(turns):
        if found := _invisible(text):
            index, char = found
            name = unicodedata.name(char, f"U+{ord(char):04X}")
            return [Reject(code=RejectCode.CONTROL_CHARACTERS,
                           detail=f"{label} has {name} (U+{ord(char):04X}) at character {index}")]
    return []


CONTENT_RULES: tuple[Rule, ...] = (
    rule_empty,
    rule_length,
    rule_hidden_input,
    rule_refusal,
    rule_repeated_question,
    rule_non_english,
    rule_cut_off,
    rule_image_placeholder,
    rule_prompt_injection,
    rule_control_characters,
)
