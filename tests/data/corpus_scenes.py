"""Hand-written LLaVA-style samples, one scene per image, for the validator corpus (tests/data/validator_corpus.py).

The scenes themselves are data, in `tests/data/corpus_scenes.json`; this module loads them as `SCENES`.
Written for vistune in the style of LLaVA-Instruct (answers that talk about the image as if seen, detailed
multi-paragraph answers to hard questions); nothing here is copied from LLaVA's prompts or data.
Each scene: a few conversation rounds, one detailed description, complex-reasoning questions, and the
objects in it (the bad items insert leaks about them).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

SCENES_JSON = Path(__file__).with_name("corpus_scenes.json")
QA = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Scene:
    """One imagined image and the samples an LLM could write about it."""

    name: str
    objects: tuple[str, ...]
    rounds: QA
    description: str
    reasoning: QA

    @classmethod
    def from_json(cls, record: dict) -> Scene:
        """A scene from its JSON object (pairs are `[question, answer]` lists there)."""
        return cls(name=record["name"], objects=tuple(record["objects"]),
                   rounds=tuple((q, a) for q, a in record["rounds"]), description=record["description"],
                   reasoning=tuple((q, a) for q, a in record["reasoning"]))


SCENES: tuple[Scene, ...] = tuple(
    Scene.from_json(s) for s in json.loads(SCENES_JSON.read_text(encoding="utf-8"))["scenes"])
