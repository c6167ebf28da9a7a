"""The simulator's eval mode: questions, reference answers and judge reviews for vistune's eval requests.

Eval requests are recognised by their JSON schema name (`vistune_eval_question`, `vistune_eval_review`) or, in
LLaVA's text forms, by their wording: a message holding both `[Assistant 1]` and `[Assistant 2]` is a review, a
system prompt asking for an "evaluation question"/"evaluation request" is a question, one that makes the model
"the reference assistant" asks for a reference answer (docs/SIMULATOR.md, "Eval and judge mode").

A review's scores come from `SimConfig.judge_scoring`:
- `grounded` (default): an answer scores by how much of its wording the context (captions and object names)
  supports, 1 + 9 x that fraction, so a reference written from the captions beats a random tiny model;
- `fixed`: Assistant 1 gets `judge_score_1` and Assistant 2 `judge_score_2` (means, before noise).
Then `judge_noise` (a seeded normal, in points) and `judge_position_bias` (points added to Assistant 1) apply,
and scores are rounded and clipped to 1-10. `judge_unparseable` is the share of reviews that cannot be read
(a text review without its score line; a JSON review with a score of 0), fixed per request body.
"""

from __future__ import annotations

import random
import re
from typing import Any

from tests.sim.config import SimConfig
from tests.sim.content import SampleWriter, read_facts

QUESTION_SCHEMA = "vistune_eval_question"
REVIEW_SCHEMA = "vistune_eval_review"
_WORDS = re.compile(r"[a-z]{3,}")
_STOP = frozenset(["the", "and", "with", "that", "this", "there", "are", "was", "were", "for", "from", "its",
                   "into", "onto", "has", "have", "can", "you", "your", "image", "picture", "scene", "answer",
                   "question"])


def _texts(body: dict[str, Any], roles: tuple[str, ...]) -> str:
    out = []
    for m in body.get("messages", []):
        if m.get("role") not in roles:
            continue
        content = m.get("content")
        if isinstance(content, list):
            out += [p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text"]
        elif isinstance(content, str):
            out.append(content)
    return "\n".join(out)


def eval_kind(body: dict[str, Any]) -> str | None:
    """`review`, `question`, `reference`, or None for a request that is no eval request."""
    fmt = body.get("response_format") or {}
    name = (fmt.get("json_schema") or {}).get("name") if isinstance(fmt, dict) else None
    if name == REVIEW_SCHEMA:
        return "review"
    if name == QUESTION_SCHEMA:
        return "question"
    everything = _texts(body, ("system", "developer", "user"))
    if "[Assistant 1]" in everything and "[Assistant 2]" in everything:
        return "review"
    system = _texts(body, ("system", "developer")).lower()
    if "evaluation question" in system or "evaluation request" in system:
        return "question"
    if "reference assistant" in system:
        return "reference"
    return None


def _between(text: str, start: str, end: str) -> str:
    _, sep, rest = text.partition(start)
    return rest.partition(end)[0].strip() if sep else ""


def _grounded(answer: str, context: str) -> float:
    # 1 + 9 x the share of the answer's content words that the context mentions
    words = [w for w in _WORDS.findall(answer.lower()) if w not in _STOP]
    if not words:
        return 1.0
    known = set(_WORDS.findall(context.lower()))
    return 1 + 9 * sum(w in known for w in words) / len(words)


def review_scores(body: dict[str, Any], config: SimConfig, rng: random.Random) -> tuple[int, int]:
    """The two scores the simulated judge gives (see the module doc)."""
    user = _texts(body, ("user",))
    if config.judge_scoring == "fixed":
        means = [config.judge_score_1, config.judge_score_2]
    else:
        context = _between(user, "[Context]", "[Question]")
        means = [_grounded(_between(user, "[Assistant 1]", "[End of Assistant 1]"), context),
                 _grounded(_between(user, "[Assistant 2]", "[End of Assistant 2]"), context)]
    means[0] += config.judge_position_bias
    return tuple(max(1, min(10, round(m + rng.gauss(0, config.judge_noise)))) for m in means)  # type: ignore[return-value]


def eval_content(kind: str, body: dict[str, Any], config: SimConfig, rng: random.Random, structured: bool) -> str:
    """The content of an answer to an eval request of `kind`."""
    system = _texts(body, ("system", "developer")).lower()
    if kind == "review":
        s1, s2 = review_scores(body, config, rng)
        explanation = (f"Assistant 1 earns {s1} and Assistant 2 earns {s2}: the scores follow how much of each "
                       "answer the described picture supports.")
        unreadable = rng.random() < config.judge_unparseable
        if structured:
            import orjson

            return orjson.dumps({"assistant_1_score": 0 if unreadable else s1, "assistant_2_score": s2,
                                 "explanation": explanation}).decode()
        return explanation if unreadable else f"{s1} {s2}\n{explanation}"
    user = _texts(body, ("user",))
    writer = SampleWriter(read_facts(user.split("\nQuestion:\n")[0]), rng)
    if kind == "question":
        if "detailed description" in system:
            question = rng.choice(["Describe this picture in detail.", "What is going on in this scene? Explain."])
        elif "reasoning" in system:
            question = writer.complex_reasoning()["question"]
        else:
            question = rng.choice(writer.question_pool())[0]
        if structured:
            import orjson

            return orjson.dumps({"question": question}).decode()
        return question
    question = user.partition("\nQuestion:\n")[2].lower()
    if "describe" in question or "detail" in question:
        return writer.description()
    return writer.complex_reasoning()["answer"]
