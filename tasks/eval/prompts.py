"""The eval prompts: template files beside this module, versioned by content hash, and the messages built from them.

- question writer (per category): `question_<category>.md` + `question_format_<format>.md`; user: the context;
- reference writer: `reference.md`; user: the context and the question;
- judge (per category): `judge.md` + `rubric_<category>.md` + `judge_format_<format>.md`; user: the context,
  the question and both answers as [Assistant 1] / [Assistant 2];
- candidate (openai backend): the image as a content part, then the question.

A version is the hash of the files a message uses, so editing a template makes new requests (new ids).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import Any

from schemas.eval import EVAL_CATEGORIES
from tasks.prompting.prompts import format_number
from tasks.store import stable_hash

TEMPLATES = Path(__file__).parent / "templates"
OUTPUT_FORMATS = ("structured", "llava-text")
QUESTION_SCHEMA = {
    "name": "vistune_eval_question",
    "strict": True,
    "schema": {"type": "object", "properties": {"question": {"type": "string"}}, "required": ["question"],
               "additionalProperties": False},
}
REVIEW_SCHEMA = {
    "name": "vistune_eval_review",
    "strict": True,
    "schema": {
        "type": "object",
        "properties": {"assistant_1_score": {"type": "integer"}, "assistant_2_score": {"type": "integer"},
                       "explanation": {"type": "string"}},
        "required": ["assistant_1_score", "assistant_2_score", "explanation"],
        "additionalProperties": False,
    },
}


def _check(category: str, output_format: str | None = None) -> None:
    if category not in EVAL_CATEGORIES:
        raise ValueError(f"unknown eval category {category!r}; expected one of {', '.join(EVAL_CATEGORIES)}")
    if output_format is not None and output_format not in OUTPUT_FORMATS:
        raise ValueError(f"unknown output format {output_format!r}; expected one of {', '.join(OUTPUT_FORMATS)}")


@cache
def _read(name: str) -> str:
    path = TEMPLATES / name
    if not path.is_file():
        raise FileNotFoundError(f"eval template {path} is missing")
    return path.read_text(encoding="utf-8").strip()


def _system(names: Sequence[str]) -> tuple[str, str]:
    """The system text made of `names` (blank line between) and its version (hash of the files)."""
    texts = [_read(n) for n in names]
    return "\n\n".join(texts), stable_hash(list(names), texts, length=12)


def render_context(captions: Sequence[str], instances: Sequence[dict[str, Any]]) -> str:
    """Captions one per line, a blank line, then `category: [x1, y1, x2, y2]` per object (LLaVA's layout)."""
    lines = [" ".join(c.split()) for c in captions if c.strip()]
    boxes = [f"{o['category']}: [{', '.join(format_number(v) for v in o['bbox'])}]" for o in instances]
    return "\n".join(lines) + ("\n\n" + "\n".join(boxes) if boxes else "")


def question_messages(context: str, category: str, output_format: str) -> tuple[list[dict[str, Any]], str]:
    """Messages asking for one question of `category` about the image in `context`, and their version."""
    _check(category, output_format)
    system, version = _system([f"question_{category}.md", f"question_format_{output_format}.md"])
    return [{"role": "system", "content": system}, {"role": "user", "content": context}], version


def reference_messages(context: str, question: str) -> tuple[list[dict[str, Any]], str]:
    """Messages asking the text-only LLM for the reference answer, and their version."""
    system, version = _system(["reference.md"])
    user = f"{context}\n\nQuestion:\n{question.strip()}"
    return [{"role": "system", "content": system}, {"role": "user", "content": user}], version


def judge_messages(
    context: str, question: str, answer_1: str, answer_2: str, category: str, output_format: str
) -> tuple[list[dict[str, Any]], str]:
    """Messages asking the judge to score `answer_1` (Assistant 1) and `answer_2` (Assistant 2), and their version."""
    _check(category, output_format)
    system, version = _system(["judge.md", f"rubric_{category}.md", f"judge_format_{output_format}.md"])
    user = (f"[Context]\n{context}\n\n[Question]\n{question.strip()}\n\n"
            f"[Assistant 1]\n{answer_1.strip()}\n[End of Assistant 1]\n\n"
            f"[Assistant 2]\n{answer_2.strip()}\n[End of Assistant 2]")
    return [{"role": "system", "content": system}, {"role": "user", "content": user}], version


def answer_messages(image_part: dict[str, Any], question: str) -> list[dict[str, Any]]:
    """The candidate's request on an OpenAI-compatible vision endpoint: the image, then the question."""
    return [{"role": "user", "content": [image_part, {"type": "text", "text": question.strip()}]}]


def versions() -> dict[str, str]:
    """The version of every eval prompt (for the report and `vistune eval report --json`)."""
    out = {"reference": _system(["reference.md"])[1]}
    for category in EVAL_CATEGORIES:
        for fmt in OUTPUT_FORMATS:
            out[f"question/{category}/{fmt}"] = question_messages("", category, fmt)[1]
            out[f"judge/{category}/{fmt}"] = judge_messages("", "", "", "", category, fmt)[1]
    return out
