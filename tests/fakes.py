"""Test helpers: requests planted in the store, a sender that counts calls, waiting for a condition."""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from schemas.tables import RequestRow
from tasks import store
from tasks.llm.transport import Reply


def plant_requests(db: Path, n: int, kind: str, model: str = "gpt-4o", max_tokens: int = 100) -> list[str]:
    """`n` requests of `kind` in the `requests` table (no sample types involved); returns their ids."""
    rows = []
    for i in range(n):
        messages = [{"role": "user", "content": f"question {i}"}]
        params = {"max_tokens": max_tokens, "temperature": 0.0}
        rows.append(RequestRow(
            request_id=store.stable_hash(kind, model, messages, params), image_id=i, sample_type="test",
            prompt_version="v0", model=model, output_format="test", kind=kind, messages=messages, params=params,
            est_input_tokens=1000, created_at=store.utcnow(),
        ))
    with store.write(db) as con:
        store.insert_rows(con, RequestRow, rows)
    return [r.request_id for r in rows]


def plan_stand_ins(db: Path, *request_ids: str) -> None:
    """`requests` rows for the given ids: journal rows enter `responses` only for planned requests."""
    rows = [RequestRow(request_id=rid, image_id=1, sample_type="conversation", prompt_version="v", model="m",
                       output_format="structured", messages=[], params={}, est_input_tokens=1,
                       created_at=store.utcnow()) for rid in request_ids]
    with store.write(db) as con:
        store.insert_rows(con, RequestRow, rows)


def journal_row(request_id: str, n: int, **fields: Any) -> dict[str, Any]:
    """A response row as the engine journals it (attempt `n` of `request_id`, status ok)."""
    return {"response_id": f"{request_id}-{n}", "request_id": request_id, "attempt": n, "status": "ok",
            "content": "x", "created_at": store.utcnow().isoformat(), **fields}


def wait_for(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    """Poll `predicate` until it holds; fail naming `what` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(0.05)


def chat_body(content: str, prompt_tokens: int = 1000, completion_tokens: int = 100) -> dict[str, Any]:
    """An OpenAI chat completion body."""
    return {"choices": [{"message": {"content": content}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens}}


class CountingSender:
    """A `ChatSender` that answers every request with the same completion and counts the calls per request."""

    def __init__(self, content: str = "answer", completion_tokens: int = 100) -> None:
        self.content = content
        self.completion_tokens = completion_tokens
        self.calls: Counter[str] = Counter()

    async def send(self, body: dict[str, Any], headers: Mapping[str, str]) -> Reply:
        self.calls[headers.get("X-Vistune-Request-Id", "")] += 1
        payload = chat_body(self.content, completion_tokens=self.completion_tokens)
        return Reply(200, {}, json.dumps(payload).encode())

    async def close(self) -> None:
        pass
