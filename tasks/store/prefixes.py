"""Shared prompt prefixes: stored once, put back in front of each request's own messages when read.

Every request of a (prompt version, sample type, output format) starts with the same system message and
few-shots (about 5 KB); only its last message, the image's own, differs. So `requests_stored` keeps a
request's own messages and the id of its prefix, and `prompt_prefixes` keeps each prefix once (schema 4).
The full messages come back, the same bytes, in three places:

- `full_messages` (Python): what the engine sends, via `queries.claim` / `queries.unanswered` (batch files too);
- the view `requests` (SQL): `vistune sql`, the duckdb CLI and every query written before schema 4;
- the request id, which hashes the full messages (`tasks/prompting/plan.py`), so no id changed.

Why string concatenation reproduces the bytes: both JSON columns hold `json.dumps(value, ensure_ascii=False)`
(`store._cell`), and a list's text is `"[" + ", ".join(items) + "]"`. So the prefix's text without its `]`,
then `", "`, then the own messages' text without its `[` is exactly the full list's text.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import duckdb

Message = dict[str, Any]

# The image's own message is the last one (tasks/prompting/prompts.py `build_messages`); the rest is shared.
OWN_MESSAGES = 1


def split(messages: list[Message]) -> tuple[list[Message], list[Message]]:
    """(shared prefix, own messages) of a request's messages; the prefix is empty for a one-message request."""
    if len(messages) <= OWN_MESSAGES:
        return [], list(messages)
    return messages[:-OWN_MESSAGES], messages[-OWN_MESSAGES:]


def prefix_id(prefix: list[Message]) -> str:
    """The content hash that names a prefix in `prompt_prefixes`."""
    from tasks.store import stable_hash  # here: the store package imports this module

    return stable_hash("prompt_prefix", prefix)


def requests_view_sql(columns: Sequence[str]) -> str:
    """The view `requests`: the stored rows with their full messages, in the columns (and order) of schema 3."""
    full = ("CASE WHEN q.prefix_id IS NULL THEN q.messages ELSE CAST("
            "left(p.messages::VARCHAR, length(p.messages::VARCHAR) - 1) || ', ' || substr(q.messages::VARCHAR, 2)"
            " AS JSON) END AS messages")
    cols = ", ".join(full if c == "messages" else f"q.{c}" for c in columns if c != "prefix_id")
    return (f"CREATE OR REPLACE VIEW requests AS SELECT {cols} FROM requests_stored q "
            "LEFT JOIN prompt_prefixes p ON p.prefix_id = q.prefix_id")


def full_messages(con: duckdb.DuckDBPyConnection, rows: Sequence[tuple[str | None, Any]]) -> list[list[Message]]:
    """The full messages of stored requests, from their `(prefix_id, messages)` cells, in the order given.

    Each prefix is read and parsed once per call, and its message dicts are shared by the lists returned:
    treat them as read-only (the engine does; `llm_client.api_messages` builds new lists).
    """
    wanted = sorted({pid for pid, _ in rows if pid is not None})
    prefixes: dict[str, list[Message]] = {}
    if wanted:
        found = con.execute("SELECT prefix_id, messages FROM prompt_prefixes WHERE prefix_id IN "
                            "(SELECT unnest(?::VARCHAR[]))", [wanted]).fetchall()
        prefixes = {pid: _json(messages) for pid, messages in found}
        lost = [pid for pid in wanted if pid not in prefixes]
        if lost:
            raise LookupError(f"prompt_prefixes lacks prefix(es) {lost[:3]} that stored requests name")
    return [_json(own) if pid is None else [*prefixes[pid], *_json(own)] for pid, own in rows]


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value  # JSON columns arrive as text
