"""Questions tests ask of a served-request log, for in-memory records and JSONL dicts alike."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any

from tests.sim.core import ServedRequest

CHAT_PATHS = ("/v1/chat/completions", "batch:/v1/chat/completions")


def _get(record: ServedRequest | dict[str, Any], field: str) -> Any:
    return record.get(field) if isinstance(record, dict) else getattr(record, field)


def answered(records: Iterable[ServedRequest | dict[str, Any]]) -> list[str]:
    """Body hashes of the chat requests answered with HTTP 200, in log order (online and batch)."""
    return [_get(r, "body_hash") for r in records if _get(r, "status") == 200 and _get(r, "path") in CHAT_PATHS]


def answered_twice(records: Iterable[ServedRequest | dict[str, Any]]) -> dict[str, int]:
    """Body hashes answered with 200 more than once, with their counts (empty = nothing paid twice)."""
    return {h: n for h, n in Counter(answered(records)).items() if n > 1}
