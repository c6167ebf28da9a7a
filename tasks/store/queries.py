"""The store's questions about the work: what is done, what is pending. Defined once, here.

Two levels, one rule:
- a *request* (one exact LLM call) is answered once it has an `ok` response; the engine never
  sends an answered request again (`unanswered`);
- a *slot* (image, sample type, prompt version, model) is done when it has an accepted sample,
  when an answer awaits validation, or when its answers were rejected more than
  `max_regenerations` times; otherwise the plan sends (or re-sends) its next request
  (`slot_states`, used by `tasks/prompting/plan.py` and README query 7's view).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import duckdb

from schemas.generation import LlmRequest

# One row per slot that has requests: how many of its answers were rejected, whether one was
# accepted, and whether one still awaits validation. A view, so SQL users see the same numbers.
SLOT_STATUS_VIEW = """
CREATE OR REPLACE VIEW slot_status AS
WITH answered AS (
  SELECT q.image_id, q.sample_type, q.prompt_version, q.model, q.request_id,
         EXISTS (SELECT 1 FROM samples s WHERE s.response_id = r.response_id) AS accepted,
         EXISTS (SELECT 1 FROM rejects j WHERE j.response_id = r.response_id) AS rejected
  FROM requests q JOIN responses r ON r.request_id = q.request_id AND r.status IN ('ok', 'parse_error')
)
SELECT image_id, sample_type, prompt_version, model,
       bool_or(accepted) AS accepted,
       count(DISTINCT request_id) FILTER (WHERE rejected AND NOT accepted) AS rejected,
       bool_or(NOT accepted AND NOT rejected) AS awaiting_validation
FROM answered GROUP BY ALL
"""


@dataclass(frozen=True)
class SlotState:
    """What the store knows about one (image, sample type, prompt version, model)."""

    accepted: bool = False
    rejected: int = 0  # answered requests of the slot whose answer was rejected
    awaiting_validation: bool = False

    def done(self, max_regenerations: int) -> bool:
        """No request to send: accepted, waiting for validation, or given up after the regenerations."""
        return self.accepted or self.awaiting_validation or self.rejected > max_regenerations


def slot_states(con: duckdb.DuckDBPyConnection, model: str) -> dict[tuple[int, str, str], SlotState]:
    """(image_id, sample_type, prompt_version) -> state, for every slot of `model` that has an answer."""
    rows = con.execute(
        "SELECT image_id, sample_type, prompt_version, accepted, rejected, awaiting_validation "
        "FROM slot_status WHERE model = ?", [model]).fetchall()
    return {(r[0], r[1], r[2]): SlotState(bool(r[3]), int(r[4]), bool(r[5])) for r in rows}


def unanswered(con: duckdb.DuckDBPyConnection, ids: Sequence[str]) -> tuple[list[LlmRequest], list[str]]:
    """The requests among `ids` without an `ok` response (in the given order), and the ids not in `requests`."""
    rows = con.execute(
        "SELECT request_id, kind, model, messages, params, est_input_tokens, "
        "EXISTS (SELECT 1 FROM responses r WHERE r.request_id = q.request_id AND r.status = 'ok') "
        "FROM requests q WHERE request_id IN (SELECT unnest(?::VARCHAR[]))",
        [list(ids)],
    ).fetchall()
    known = {r[0] for r in rows}
    missing = [i for i in ids if i not in known]
    order = {rid: i for i, rid in enumerate(ids)}
    pending = [
        LlmRequest(r[0], r[1], r[2], _json(r[3]), _json(r[4]), r[5])
        for r in sorted(rows, key=lambda r: order[r[0]]) if not r[6]
    ]
    return pending, missing


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value  # JSON columns arrive as text
