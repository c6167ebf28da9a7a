"""`vistune infer --backend openai`: answers from an OpenAI-compatible vision endpoint, through the engine.

A `training.inference` backend like `transformers` and `vllm`, so `vistune infer` writes the same LLaVA answers
file whatever answers. Every call is a `requests` row sent by the engine, so rate limits, retries, the journal
and no-double-pay apply: a rerun of a killed `infer` pays for nothing twice, even for answers the file lost.
The endpoint and key come from the settings (OPENAI_BASE_URL, OPENAI_API_KEY), the store from VISTUNE_DB.
Imported by `flows/cli/infer.py` only (it registers the backend), so `tasks.eval` stays free of torch.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tasks import store
from tasks.eval import calls
from tasks.eval.parsing import ANSWER_KIND, parse_text
from training.inference import Conversation, Generation, GenerationParams, register_backend

DETAIL = "high"  # the vision detail level asked for; the eval flow's openai answers use the same


class NoAnswer(RuntimeError):
    """The endpoint gave no usable answer to a question (after the engine's retries)."""


def file_image_id(path: Path) -> int:
    """A stable id for an image file that is not an ingested COCO image (the request row names one)."""
    return -int.from_bytes(hashlib.sha256(str(path.resolve()).encode()).digest()[:6], "big")  # < 0: never COCO's


def conversation_messages(conversation: Conversation, detail: str = DETAIL) -> list[dict[str, Any]]:
    """The conversation as chat messages: the image goes with the first user turn, as in training."""
    from tasks.prompting.images import image_ref

    messages: list[dict[str, Any]] = []
    for number, turn in enumerate(conversation.turns):
        role = "user" if turn["from"] == "human" else "assistant"
        text = turn["value"].replace("<image>", "").strip()
        if number == 0 and conversation.image is not None:
            part = image_ref(file_image_id(conversation.image), conversation.image, detail)
            messages.append({"role": role, "content": [part, {"type": "text", "text": text}]})
        else:
            messages.append({"role": role, "content": text})
    return messages


class OpenAIBackend:
    """Answers with `model` at the configured OpenAI-compatible endpoint; one engine run per batch."""

    name = "openai"

    def __init__(self, model: str | Path, *, db_path: str | Path | None = None, **config: Any) -> None:
        self.model = str(model)
        self.default_model_id = self.model
        self.db = store.resolve_db(db_path)
        store.ensure_schema(self.db)
        self.config = calls.engine_config(None, model=self.model, **config)

    def generate(self, conversations: Sequence[Conversation], params: GenerationParams) -> list[Generation]:
        """One reply per conversation; a conversation the endpoint did not answer fails the batch, naming it."""
        sampling: dict[str, Any] = {"temperature": params.temperature, "max_tokens": params.max_new_tokens}
        if not params.greedy and params.top_p < 1:
            sampling["top_p"] = params.top_p
        rows = [calls.request_row(stage="answer", image_id=file_image_id(c.image) if c.image else 0,
                                  version="image+question", model=self.model, output_format="text", kind=ANSWER_KIND,
                                  messages=conversation_messages(c), params=sampling) for c in conversations]
        calls.plan(self.db, rows)
        calls.send(self.db, [r.request_id for r in rows], self.config)
        found = calls.outcomes(self.db, [r.request_id for r in rows])
        replies: list[Generation] = []
        for conversation, row in zip(conversations, rows, strict=True):
            outcome = found.get(row.request_id)
            if outcome is None or not outcome.ok:
                reason = "never sent" if outcome is None else f"{outcome.status}: {outcome.error or ''}".strip(": ")
                where = self.config.base_url or "api.openai.com"
                raise NoAnswer(f"question {conversation.id}: {self.model} at {where} gave no answer ({reason}); "
                               "rerun to retry it (nothing answered is paid twice)")
            replies.append(Generation(parse_text(outcome.content), self._completion_tokens(outcome.response_id)))
        return replies

    def _completion_tokens(self, response_id: str | None) -> int:
        rows = store.query("SELECT completion_tokens FROM responses WHERE response_id = ?", [response_id],
                           path=self.db)
        return int(rows[0]["completion_tokens"]) if rows else 0


register_backend("openai", OpenAIBackend)
