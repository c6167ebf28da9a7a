"""Builds `tests/data/validator_corpus.jsonl`, the labelled corpus the validator is calibrated on.

    python -m tests.data.validator_corpus      # rewrites the jsonl (deterministic: same bytes every run)

One item per line: `{"id", "sample_type", "format", "content", "finish_reason", "label": "good"|"bad",
"expect": [reject codes], "case"}`. Good items are the scenes of `tests/data/corpus_scenes.json` (all three
types, single-round and multi-round conversations, long multi-paragraph answers) plus hand-written hard
negatives: text that looks like a leak or a refusal but is part of the scene (prices, TV captions, signs,
fruit lists, ...). Bad items take a good sample and break it the way real LLM answers go wrong (one class
per reject code, several phrasings each), or are written whole (malformed text, other languages).
The hand-written texts (hard negatives, leak/refusal/injection phrasings, translations, the held-out set) are
data in `tests/data/corpus_snippets.json`; this module only loads them and builds the items.
All texts are our own, written in LLaVA-Instruct's style; none is copied from LLaVA.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from schemas.samples import output_from_pairs
from tasks.prompting.formats import render
from tests.data.corpus_scenes import SCENES, Scene

CORPUS = Path(__file__).with_name("validator_corpus.jsonl")
SNIPPETS_JSON = Path(__file__).with_name("corpus_snippets.json")
Pairs = list[tuple[str | None, str]]
SNIPPETS: dict = json.loads(SNIPPETS_JSON.read_text(encoding="utf-8"))


def _table(section: dict) -> dict:
    """A section of the snippets file without its `_comment`."""
    return {k: v for k, v in section.items() if not k.startswith("_")}


def _pairs(rows: list[list[str | None]]) -> Pairs:
    """`[question, answer]` lists from the JSON as pairs."""
    return [(q, a) for q, a in rows]


# Hand-written hard negatives (good), grouped by what they test; flattened in file order.
HARD_GOOD: list[dict] = [row for group in _table(SNIPPETS["hard_good"]).values() for row in group]
LEAKS: dict[str, list[str]] = _table(SNIPPETS["leaks"])  # phrase group -> phrasings; `{o}`: an object of the scene
REFUSALS: list[str] = SNIPPETS["refusals"]
INJECTIONS: list[str] = SNIPPETS["injections"]
PLACEHOLDERS: list[str] = SNIPPETS["placeholders"]
CONTROL: dict[str, str] = _table(SNIPPETS["control_characters"])  # name -> phrase with invisible characters
FOREIGN: dict[str, str] = _table(SNIPPETS["foreign"])  # language -> the same beach answer, translated
HOLDOUT: dict = SNIPPETS["holdout"]  # written after tuning, as a check on overfitting: bad, foreign, good


@dataclass
class Item:
    """One labelled response."""

    id: str
    sample_type: str
    format: str
    content: str | None
    label: str
    expect: list[str] = field(default_factory=list)
    case: str = ""
    finish_reason: str | None = "stop"

    def as_json(self) -> dict:
        """The jsonl record."""
        return {"id": self.id, "sample_type": self.sample_type, "format": self.format, "content": self.content,
                "finish_reason": self.finish_reason, "label": self.label, "expect": self.expect, "case": self.case}


def _render(sample_type: str, pairs: Pairs, fmt: str) -> str:
    return render(output_from_pairs(sample_type, pairs), fmt)


def _sample(scene: Scene, sample_type: str, k: int = 0) -> Pairs:
    if sample_type == "conversation":
        return list(scene.rounds)
    if sample_type == "detail_description":
        return [(None, scene.description)]
    return [scene.reasoning[k % len(scene.reasoning)]]


# ----------------------------------------------------------------------------------------------- good items
def scene_items() -> Iterator[Item]:
    """Every scene as samples of all three types, in both output formats, with conversation subsets."""
    for n, scene in enumerate(SCENES):
        fmt, other = ("structured", "llava-text") if n % 2 else ("llava-text", "structured")
        rounds = list(scene.rounds)
        yield Item(f"good-{scene.name}-conv-all", "conversation", fmt, _render("conversation", rounds, fmt), "good",
                   case="multi-round conversation")
        yield Item(f"good-{scene.name}-conv-first2", "conversation", other,
                   _render("conversation", rounds[:2], other), "good", case="two-round conversation")
        longest = max(rounds, key=lambda r: len(r[1]))
        yield Item(f"good-{scene.name}-conv-single-long", "conversation", other,
                   _render("conversation", [longest], other), "good", case="single-round conversation")
        yield Item(f"good-{scene.name}-conv-single-short", "conversation", fmt,
                   _render("conversation", rounds[:1], fmt), "good", case="single-round conversation, short")
        for f in (fmt, other):
            yield Item(f"good-{scene.name}-detail-{f}", "detail_description", f,
                       _render("detail_description", [(None, scene.description)], f), "good", case="description")
        for k, pair in enumerate(scene.reasoning):
            f = fmt if k % 2 == 0 else other
            yield Item(f"good-{scene.name}-reason-{k}", "complex_reasoning", f,
                       _render("complex_reasoning", [pair], f), "good", case="complex reasoning")


def hard_good_items() -> Iterator[Item]:
    """The hand-written hard negatives, alternating output formats."""
    for n, row in enumerate(HARD_GOOD):
        fmt = "structured" if n % 2 else "llava-text"
        yield Item(f"good-{row['id']}", row["type"], fmt, _render(row["type"], _pairs(row["pairs"]), fmt), "good",
                   case=row["case"])


# ------------------------------------------------------------------------------------------------ bad items
def _insert(pairs: Pairs, sentence: str, rng: random.Random) -> Pairs:
    """Put `sentence` at the start or the end of one answer (before its last sentence ends, if at the end)."""
    index = rng.randrange(len(pairs))
    question, answer = pairs[index]
    new = f"{sentence} {answer}" if rng.random() < 0.5 or not answer.rstrip().endswith(".") else \
        f"{answer.rstrip()} {sentence}"
    return [*pairs[:index], (question, new), *pairs[index + 1:]]


def _types(i: int) -> str:
    return ("conversation", "detail_description", "complex_reasoning")[i % 3]


def phrase_items(rng: random.Random) -> Iterator[Item]:
    """Leaks, refusals, injections, `<image>` and invisible characters inserted into good samples."""
    groups: list[tuple[str, str, list[str]]] = [
        *((f"hidden-{name}", "mentions_hidden_input", phrases) for name, phrases in LEAKS.items()),
        ("refusal", "refusal", REFUSALS), ("injection", "prompt_injection", INJECTIONS),
        ("placeholder", "image_placeholder", PLACEHOLDERS),
    ]
    n = 0
    for group, code, phrases in groups:
        for k, phrase in enumerate(phrases):
            for copy in range(2):  # each phrasing in two scenes and two sample types
                scene = SCENES[(n * 7 + copy * 5) % len(SCENES)]
                sample_type = _types(n + copy)
                pairs = _insert(_sample(scene, sample_type, copy), phrase.format(o=rng.choice(scene.objects)), rng)
                fmt = ("structured", "llava-text")[(n + copy) % 2]
                yield Item(f"bad-{group}-{k}-{copy}", sample_type, fmt, _render(sample_type, pairs, fmt), "bad",
                           [code], case=group)
            n += 1
    for k, (name, phrase) in enumerate(CONTROL.items()):
        scene = SCENES[(k * 3) % len(SCENES)]
        sample_type = _types(k)
        pairs = _insert(_sample(scene, sample_type), phrase.format(o=rng.choice(scene.objects)), rng)
        fmt = ("structured", "llava-text")[k % 2]
        yield Item(f"bad-control-{name}", sample_type, fmt, _render(sample_type, pairs, fmt), "bad",
                   ["control_characters"], case=f"control characters: {name}")


def foreign_items() -> Iterator[Item]:
    """Answers in other languages, in each sample type."""
    beach_q = "What is the dog doing?"
    for k, (lang, text) in enumerate(FOREIGN.items()):
        sample_type = _types(k)
        long_text = f"{text} {text}" if sample_type != "conversation" else text  # over the min answer length
        if sample_type == "conversation":
            pairs: Pairs = [("What animal is in the picture?", "There is a brown and white dog in the picture."),
                            (beach_q, long_text)]
        elif sample_type == "detail_description":
            pairs = [(None, long_text)]
        else:
            pairs = [("Why might the dog be so excited?", long_text)]
        fmt = ("structured", "llava-text")[k % 2]
        yield Item(f"bad-foreign-{lang}", sample_type, fmt, _render(sample_type, pairs, fmt), "bad",
                   ["non_english"], case=f"non-English: {lang}")


GIANT = "ha" * 50_000  # 100,000 characters without a space: a degenerate generation


def length_items() -> Iterator[Item]:
    """Too long (words, tokens, one giant word, rounds, questions) and too short answers."""
    rounds = list(SCENES[0].rounds)
    yield Item("bad-giant-word-100k", "conversation", "structured",
               _render("conversation", [("What is the woman doing?", f"The woman is laughing: {GIANT}")],
                       "structured"), "bad", ["too_long"], case="a 100,000-character word")
    yield Item("bad-giant-word-detail", "detail_description", "llava-text",
               f"{SCENES[1].description} {'=' * 20_000}", "bad", ["too_long"], case="a 20,000-character word")
    yield Item("bad-giant-hex", "complex_reasoning", "structured",
               _render("complex_reasoning", [(SCENES[2].reasoning[0][0], SCENES[2].reasoning[0][1] + " "
                                              + "0123456789abcdef" * 300)], "structured"),
               "bad", ["too_long"], case="a 4,800-character word")
    yield Item("bad-giant-loooong", "conversation", "llava-text",
               _render("conversation", [("Is the dog happy?", "Yes, the dog looks so" + "o" * 500 + " happy!")],
                       "llava-text"), "bad", ["too_long"], case="a 500-character word")
    loop = ("The dog is running on the beach and the man is watching the dog and the waves are rolling onto the "
            "sand. ")
    yield Item("bad-loop-detail", "detail_description", "structured",
               _render("detail_description", [(None, SCENES[1].description + " " + loop * 45)], "structured"),
               "bad", ["too_long"], case="repetition loop, 1,000 words")
    yield Item("bad-loop-conv", "conversation", "llava-text",
               _render("conversation", [*rounds[:2], ("What else is there?", ("There is a pot on the stove. " * 150)
                                                      .strip())], "llava-text"),
               "bad", ["too_long"], case="repetition loop in one answer")
    many = [(f"What is on shelf number {i} of the bookcase?", f"Shelf number {i} holds a row of old paperbacks.")
            for i in range(1, 15)]
    yield Item("bad-14-rounds", "conversation", "structured", _render("conversation", many, "structured"), "bad",
               ["too_long"], case="14 rounds")
    long_question = SNIPPETS["too_long_question"]
    yield Item("bad-long-question", "complex_reasoning", "llava-text",
               _render("complex_reasoning", [(long_question, SCENES[2].reasoning[1][1])], "llava-text"), "bad",
               ["too_long"], case="question of 80+ words")
    yield Item("bad-token-flood", "detail_description", "llava-text",
               SCENES[3].description + " " + " ".join(["$$$!!!???###%%%^^^&&&***"] * 300), "bad", ["too_long"],
               case="over the token limit in few words")
    shorts: list[tuple[str, str, Pairs]] = [(r["id"], r["type"], _pairs(r["pairs"])) for r in SNIPPETS["too_short"]]
    shorts.append(("question-one-word-2", "complex_reasoning", [("Why?", SCENES[5].reasoning[0][1])]))
    for k, (name, sample_type, pairs) in enumerate(shorts):
        fmt = ("structured", "llava-text")[k % 2]
        yield Item(f"bad-short-{name}", sample_type, fmt, _render(sample_type, pairs, fmt), "bad", ["too_short"],
                   case="too short")


def format_items() -> Iterator[Item]:
    """Malformed and empty responses, content filter stops, repeated questions."""
    good_conv = _render("conversation", list(SCENES[1].rounds), "structured")
    good_reason = _render("complex_reasoning", [SCENES[2].reasoning[0]], "structured")
    malformed: list[tuple[str, str, str, str]] = [
        ("json-cut", "conversation", "structured", good_conv[: len(good_conv) // 2]),
        ("json-wrong-key", "conversation", "structured", good_conv.replace('"rounds"', '"conversation"')),
        ("json-extra-key", "complex_reasoning", "structured", good_reason[:-1] + ', "confidence": "high"}'),
        ("json-array", "conversation", "structured", json.dumps([{"question": "What is it?", "answer": "A dog."}])),
        ("json-prose", "detail_description", "structured", SCENES[4].description),
        ("json-trailing-text", "complex_reasoning", "structured", good_reason + "\n\nI hope this helps!"),
        ("text-no-answer", "conversation", "llava-text",
         "Question:\nWhat is the dog doing?\n===\nQuestion:\nWhere is the man?\n===\nAnswer:\nNear the water."),
        ("text-markdown", "conversation", "llava-text",
         "**Question:** What is the dog doing?\n**Answer:** The dog is jumping to catch a frisbee."),
        ("text-prose", "complex_reasoning", "llava-text", SCENES[3].reasoning[0][1]),
        ("text-two-pairs", "complex_reasoning", "llava-text",
         _render("conversation", [SCENES[5].reasoning[0], SCENES[6].reasoning[0]], "llava-text")),
        ("text-answer-first", "conversation", "llava-text",
         "Answer:\nThe dog is jumping.\n===\nQuestion:\nWhat is the dog doing?"),
        ("json-missing-answer", "complex_reasoning", "structured",
         json.dumps({"question": SCENES[7].reasoning[0][0]})),
    ]
    for name, sample_type, fmt, content in malformed:
        yield Item(f"bad-malformed-{name}", sample_type, fmt, content, "bad", ["malformed"], case="malformed")
    yield Item("bad-malformed-refusal", "conversation", "structured",
               "I'm sorry, but I can't help with that request.", "bad", ["malformed", "refusal"],
               case="refusal instead of JSON")
    empties: list[tuple[str, str, str, str | None]] = [
        ("none", "conversation", "structured", None),
        ("blank", "detail_description", "llava-text", "  \n\n "),
        ("json-blank-answer", "complex_reasoning", "structured",
         json.dumps({"question": "Why is the street wet?", "answer": " "})),
        ("json-blank-description", "detail_description", "structured", json.dumps({"description": ""})),
        ("json-blank-question", "conversation", "structured",
         json.dumps({"rounds": [{"question": "", "answer": "The dog is jumping."}]})),
        ("text-blank-answer", "conversation", "llava-text",
         "Question:\nWhat is the dog doing?\n===\nAnswer:\n\n===\nQuestion:\nWhere is the man?\n===\nAnswer:\n"
         "He is standing near the water."),
    ]
    for name, sample_type, fmt, content in empties:
        yield Item(f"bad-empty-{name}", sample_type, fmt, content, "bad", ["empty"], case="empty")
    for k, scene in enumerate(SCENES[:6]):
        sample_type = _types(k)
        fmt = ("structured", "llava-text")[k % 2]
        yield Item(f"bad-content-filter-{k}", sample_type, fmt, _render(sample_type, _sample(scene, sample_type),
                                                                        fmt),
                   "bad", ["content_filter"], case="finish_reason content_filter", finish_reason="content_filter")
    for k, rows in enumerate(SNIPPETS["repeated_questions"]):
        fmt = ("structured", "llava-text")[k % 2]
        yield Item(f"bad-repeated-{k}", "conversation", fmt, _render("conversation", _pairs(rows), fmt), "bad",
                   ["repeated_question"], case="repeated question")


def truncated_items(rng: random.Random) -> Iterator[Item]:
    """Answers cut off: by the provider (finish_reason length) and in the text, at random word boundaries."""
    for k, scene in enumerate(SCENES):
        sample_type = _types(k)
        *pairs, (question, answer) = _sample(scene, sample_type)
        cut = answer[: rng.randrange(len(answer) // 2, len(answer) - 5)]  # the provider stops in the last answer
        yield Item(f"bad-truncated-length-{k}", sample_type, "llava-text",
                   _render(sample_type, [*pairs, (question, cut)], "llava-text"), "bad", ["truncated"],
                   case="finish_reason length", finish_reason="length")
    # Cut where an LLM's text often stops when max_tokens hits: after a function word or a comma, with no
    # finish_reason recorded (a response imported from elsewhere, `validate-text` without --finish-reason).
    stops = (" the", " and", " a", ",", " of their", " because", " with its", " such as", " (", " than")
    for k, stop in enumerate(stops):
        scene = SCENES[(k * 4) % len(SCENES)]
        sample_type = ("detail_description", "complex_reasoning")[k % 2]
        answer = _sample(scene, sample_type)[0][1]
        head = answer[: rng.randrange(len(answer) // 2, len(answer) - 10)]
        head = head[: head.rfind(" ")] + stop
        pairs = [(_sample(scene, sample_type)[0][0], head)]
        yield Item(f"bad-truncated-text-{k}", sample_type, "llava-text", _render(sample_type, pairs, "llava-text"),
                   "bad", ["truncated"], case="cut mid-sentence, no finish_reason", finish_reason=None)


def holdout_items(rng: random.Random) -> Iterator[Item]:
    """The held-out items: bad phrasings in scenes, other languages, and good hard negatives."""
    for k, row in enumerate(HOLDOUT["bad"]):
        scene = SCENES[(k * 5 + 2) % len(SCENES)]
        sample_type = _types(k + 1)
        pairs = _insert(_sample(scene, sample_type), row["phrase"].format(o=rng.choice(scene.objects)), rng)
        fmt = ("structured", "llava-text")[k % 2]
        yield Item(f"bad-holdout-{row['id']}", sample_type, fmt, _render(sample_type, pairs, fmt), "bad",
                   [row["code"]], case=f"holdout: {row['code']}")
    for k, (lang, text) in enumerate(HOLDOUT["foreign"].items()):
        yield Item(f"bad-holdout-foreign-{lang}", "detail_description", ("structured", "llava-text")[k % 2],
                   _render("detail_description", [(None, f"{text} {text}")], ("structured", "llava-text")[k % 2]),
                   "bad", ["non_english"], case="holdout: non-English")
    for k, row in enumerate(HOLDOUT["good"]):
        fmt = ("structured", "llava-text")[k % 2]
        yield Item(f"good-holdout-{row['id']}", row["type"], fmt, _render(row["type"], _pairs(row["pairs"]), fmt),
                   "good", case="holdout: hard negative")


def build() -> list[Item]:
    """Every corpus item, in a fixed order."""
    rng = random.Random(12)
    return [*scene_items(), *hard_good_items(), *phrase_items(rng), *foreign_items(), *length_items(),
            *format_items(), *truncated_items(rng), *holdout_items(rng)]


def write(path: Path = CORPUS) -> int:
    """Write the corpus as jsonl; returns the number of items."""
    items = build()
    # ASCII escapes: the file holds bidi overrides and line separators that editors and diffs would act on
    path.write_text("".join(json.dumps(i.as_json()) + "\n" for i in items), encoding="utf-8")
    return len(items)


def load(path: Path = CORPUS) -> list[dict]:
    """The corpus items as dicts."""
    return [json.loads(line) for line in path.read_text(encoding="utf-8").split("\n") if line.strip()]


if __name__ == "__main__":
    print(f"{write()} items -> {CORPUS}")
