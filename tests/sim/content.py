"""What the fake model says: sample content derived from the captions and objects in the prompt.

The last user message is read line by line: `category: [x1, y1, x2, y2]` lines (also
`category (crowd): [...]`) are objects, other
lines with a few words are captions. Noun phrases are picked out of the captions with a cheap
determiner rule ("a large dog sitting..." -> "large dog"), so answers mention what each image shows
and samples differ per image. All choices come from a `random.Random` seeded by the request body
and the simulator seed, so the same request gives the same answer.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

SAMPLE_TYPE_NAMES = ("conversation", "detail_description", "complex_reasoning")

_OBJECT_LINE = re.compile(
    r"^\s*([A-Za-z][A-Za-z ]*?)\s*(?:\(crowd\))?\s*:\s*\[\s*[-\d.]+(?:\s*,\s*[-\d.]+){3}\s*\]\s*$"
)
_WORD = re.compile(r"[A-Za-z]+")
_DETERMINERS = frozenset(
    [
        "a",
        "an",
        "the",
        "two",
        "three",
        "four",
        "five",
        "several",
        "some",
        "many",
        "his",
        "her",
        "their",
        "its",
        "this",
        "that",
        "these",
        "those",
    ]
)
_PHRASE_STOP = frozenset(
    [
        "of",
        "on",
        "in",
        "at",
        "with",
        "and",
        "or",
        "is",
        "are",
        "was",
        "were",
        "to",
        "from",
        "by",
        "for",
        "near",
        "next",
        "under",
        "over",
        "while",
        "that",
        "which",
        "who",
        "into",
        "onto",
        "behind",
        "beside",
        "along",
        "across",
        "through",
        "up",
        "down",
        "out",
        "as",
    ]
)


@dataclass
class ImageFacts:
    """What the prompt says about one image."""

    captions: list[str] = field(default_factory=list)
    objects: list[str] = field(default_factory=list)  # one category per box, in prompt order
    phrases: list[str] = field(default_factory=list)  # noun phrases from the captions

    @property
    def subjects(self) -> list[str]:
        """Things to ask about: object categories, then caption noun phrases (subjects come first)."""
        seen: dict[str, None] = {}
        for p in [*self.objects, *self.phrases]:
            seen.setdefault(p, None)
        return list(seen) or ["scene"]


def read_facts(text: str) -> ImageFacts:
    """Captions, object categories and noun phrases found in a prompt text."""
    facts = ImageFacts()
    for line in text.splitlines():
        match = _OBJECT_LINE.match(line)
        if match:
            facts.objects.append(match.group(1).strip().lower())
            continue
        sentence = line.strip().lstrip("-*• ").strip()
        if len(_WORD.findall(sentence)) >= 4 and not sentence.endswith(":"):
            facts.captions.append(sentence.rstrip(". "))
    for caption in facts.captions:
        facts.phrases.extend(_noun_phrases(caption))
    return facts


def _noun_phrases(caption: str) -> list[str]:
    words = [w.lower() for w in _WORD.findall(caption)]
    phrases = []
    for i, word in enumerate(words):
        if word not in _DETERMINERS:
            continue
        run = []
        for nxt in words[i + 1 : i + 4]:
            if nxt in _PHRASE_STOP or nxt in _DETERMINERS or nxt.endswith("ing"):
                break
            # "a man rides": after a singular determiner, a later word in -s is a verb, not the noun
            if run and word in ("a", "an") and nxt.endswith("s") and not nxt.endswith("ss"):
                break
            run.append(nxt)
        if run:
            phrases.append(" ".join(run))
    return phrases


def _clause(caption: str) -> str:
    # "A man rides a horse" -> "a man rides a horse", for use inside a sentence.
    return caption[:1].lower() + caption[1:] if caption[:2] != "I " else caption


def _sentence(text: str) -> str:
    text = text.strip()
    return text[:1].upper() + text[1:] + ("" if text.endswith((".", "!", "?")) else ".")


def _plural_noun(noun: str) -> str:
    if noun == "person":
        return "people"
    return noun + ("es" if noun.endswith(("s", "sh", "ch", "x")) else "s")


def _plural(noun: str, n: int) -> str:
    if n == 1:
        return f"one {noun}"
    words = {2: "two", 3: "three", 4: "four", 5: "five", 6: "six"}
    return f"{words.get(n, str(n))} {_plural_noun(noun)}"


class SampleWriter:
    """Writes one sample of each type for the facts of one image."""

    def __init__(self, facts: ImageFacts, rng: random.Random) -> None:
        self.facts = facts
        self.rng = rng
        self.captions = facts.captions or ["a scene with several things in it"]

    def caption(self) -> str:
        return _clause(self.rng.choice(self.captions))

    def inventory(self) -> str:
        counts = Counter(self.facts.objects)
        if not counts:
            return ""
        parts = [_plural(noun, n) for noun, n in counts.most_common(4)]
        listed = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
        return f"Visible in the scene are {listed}."

    def description(self) -> str:
        first, *rest = self.captions
        sentences = [f"In the image, {_clause(first)}."]
        openers = ["Also,", "In addition,", "Looking closer,"]
        sentences += [_sentence(f"{self.rng.choice(openers)} {_clause(c)}") for c in rest[:3]]
        if inv := self.inventory():
            sentences.append(inv)
        subject = self.rng.choice(self.facts.subjects)
        sentences.append(f"The {subject} draws the eye and gives the scene its character.")
        sentences.append("The lighting and the surroundings make the details easy to make out.")
        sentences.append("Overall, the picture captures an ordinary moment with clear, natural detail.")
        return " ".join(sentences)

    def question_pool(self) -> list[tuple[str, str]]:
        subjects = self.facts.subjects[:]
        self.rng.shuffle(subjects)
        pool = [("What is happening in this image?", f"In the image, {self.caption()}. {self.inventory()}".strip())]
        for subject in subjects[:3]:
            related = next((c for c in self.captions if subject in c.lower()), self.captions[0])
            pool.append(
                (
                    f"What can you tell me about the {subject}?",
                    f"The {subject} is part of the scene: {_clause(related)}. It stands out clearly in the picture.",
                )
            )
        counts = Counter(self.facts.objects)
        if counts:
            noun, n = counts.most_common(1)[0]
            pool.append((f"How many {_plural_noun(noun)} can be seen?", f"There are {_plural(noun, n)} in the image."))
        subject = subjects[0]
        pool.append(
            (
                f"Why might the {subject} be there?",
                f"Judging from the scene, {self.caption()}, so the {subject} is most likely there as part of "
                f"that everyday activity. Its position and surroundings support this reading.",
            )
        )
        pool.append(
            (
                "What is the setting of this scene?",
                f"From what is visible, {self.caption()}. The surroundings look natural and uncluttered.",
            )
        )
        return pool

    def conversation(self) -> dict[str, Any]:
        pool = self.question_pool()
        first, others = pool[0], pool[1:]
        self.rng.shuffle(others)
        rounds = [first, *others][: self.rng.randint(2, min(4, len(pool)))]
        return {"rounds": [{"question": q, "answer": a} for q, a in rounds]}

    def complex_reasoning(self) -> dict[str, Any]:
        subject = self.rng.choice(self.facts.subjects)
        question = self.rng.choice(
            [
                f"What might explain the presence of the {subject} in this scene?",
                f"What can be inferred about the situation involving the {subject}?",
                f"What challenges could the {subject} face in this situation?",
            ]
        )
        answer = (
            f"Looking at the image, {self.caption()}. The {subject} fits that context, which suggests the "
            f"scene is part of a planned, everyday activity rather than a coincidence. "
            f"{self.inventory()} Taken together, these details point to people using the space as intended, "
            f"and the {subject} plays a practical role in it."
        ).replace("  ", " ")
        return {"question": question, "answer": answer}

    def sample(self, type_name: str) -> dict[str, Any]:
        """The sample of the given type, shaped like its output model in schemas/samples.py."""
        if type_name == "conversation":
            return self.conversation()
        if type_name == "complex_reasoning":
            return self.complex_reasoning()
        return {"description": self.description()}


def llava_text(type_name: str, sample: dict[str, Any]) -> str:
    """The sample in LLaVA's text format: Question/Answer rounds split by `===`, or plain text."""
    if type_name == "detail_description":
        return sample["description"]
    rounds = sample["rounds"] if type_name == "conversation" else [sample]
    return "\n===\n".join(f"Question:\n{r['question']}\n===\nAnswer:\n{r['answer']}" for r in rounds)


def detect_sample_type(body: dict[str, Any]) -> str:
    """Which sample type a request asks for (the rule is documented in docs/SIMULATOR.md)."""
    metadata = body.get("metadata")
    if isinstance(metadata, dict) and metadata.get("vistune_sample_type") in SAMPLE_TYPE_NAMES:
        return metadata["vistune_sample_type"]
    schema = _response_schema(body)
    if schema is not None:
        name = (body.get("response_format") or {}).get("json_schema", {}).get("name")
        if name in SAMPLE_TYPE_NAMES:
            return name
        props = schema.get("properties", {})
        if "rounds" in props:
            return "conversation"
        if "question" in props:
            return "complex_reasoning"
        return "detail_description"
    system = " ".join(
        m.get("content") or ""
        for m in body.get("messages", [])
        if m.get("role") in ("system", "developer") and isinstance(m.get("content"), str)
    ).lower()
    if "conversation" in system:
        return "conversation"
    if "reasoning" in system:
        return "complex_reasoning"
    if "question" in system:
        return "conversation"
    return "detail_description"


def _response_schema(body: dict[str, Any]) -> dict[str, Any] | None:
    fmt = body.get("response_format")
    if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
        return (fmt.get("json_schema") or {}).get("schema") or {}
    return None


def last_user_text(messages: list[dict[str, Any]]) -> str:
    """The text of the last user message (the per-image part of the prompt)."""
    for message in reversed(messages):
        if message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, list):
                return "\n".join(p.get("text", "") for p in content if isinstance(p, dict))
            return content or ""
    return ""


class SchemaFiller:
    """Builds a value valid for a JSON schema, taking values from a hint where the shapes agree.

    Handles what OpenAI strict mode allows: object, array, string, number, integer, boolean, null,
    enum, const, anyOf, and `$ref` into `$defs`. Strings without a hint are written from the
    image facts according to the property name (question, answer, description, anything else).
    """

    def __init__(self, root: dict[str, Any], writer: SampleWriter) -> None:
        self.defs = {**root.get("definitions", {}), **root.get("$defs", {})}
        self.writer = writer

    def fill(self, schema: dict[str, Any], hint: Any = None, name: str = "") -> Any:
        if "$ref" in schema:
            return self.fill(self.defs[schema["$ref"].rsplit("/", 1)[-1]], hint, name)
        if "const" in schema:
            return schema["const"]
        if "enum" in schema:
            return hint if hint in schema["enum"] else schema["enum"][0]
        for key in ("anyOf", "oneOf"):
            if key in schema:
                options = [s for s in schema[key] if s.get("type") != "null"] or schema[key]
                return self.fill(options[0], hint, name)
        kind = schema.get("type", "object" if "properties" in schema else "string")
        if isinstance(kind, list):
            kind = next((k for k in kind if k != "null"), "null")
        if kind == "object":
            hint = hint if isinstance(hint, dict) else {}
            return {k: self.fill(s, hint.get(k), k) for k, s in schema.get("properties", {}).items()}
        if kind == "array":
            return self._array(schema, hint, name)
        if kind == "string":
            text = hint if isinstance(hint, str) else self._string(name)
            if "maxLength" in schema:
                text = text[: schema["maxLength"]]
            return text.ljust(schema.get("minLength", 0), ".")
        if kind == "integer":
            return hint if isinstance(hint, int) else max(int(schema.get("minimum", 1)), 1)
        if kind == "number":
            return hint if isinstance(hint, int | float) else float(schema.get("minimum", 1.0))
        if kind == "boolean":
            return hint if isinstance(hint, bool) else True
        return None

    def _array(self, schema: dict[str, Any], hint: Any, name: str) -> list[Any]:
        items = schema.get("items", {})
        low, high = schema.get("minItems", 0), schema.get("maxItems", 4)
        if isinstance(hint, list):
            values = list(hint)
        else:
            pool = self.writer.question_pool() if _is_question_answer(items, self.defs) else []
            n = max(low, min(high, self.writer.rng.randint(2, 4)))
            values = [{"question": q, "answer": a} for q, a in pool[:n]]
        values = values[:high] if high >= low else values
        while len(values) < max(low, 1 if not isinstance(hint, list) else 0):
            values.append(None)
        return [self.fill(items, v, name) for v in values]

    def _string(self, name: str) -> str:
        lowered = name.lower()
        if "question" in lowered:
            return f"What can you tell me about the {self.writer.rng.choice(self.writer.facts.subjects)}?"
        if "description" in lowered or "answer" in lowered:
            return self.writer.description()
        return _sentence(self.writer.caption())


def _is_question_answer(items: dict[str, Any], defs: dict[str, Any]) -> bool:
    if "$ref" in items:
        items = defs.get(items["$ref"].rsplit("/", 1)[-1], {})
    return {"question", "answer"} <= set(items.get("properties", {}))
