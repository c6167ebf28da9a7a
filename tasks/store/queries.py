"""The store's questions about the work: what is done, what is pending. Defined once, here.

Two levels, one rule:
- a *request* (one exact LLM call) is answered once it has an `ok` response, or a `parse_error`
  one (our parser's bug: paying again would not fix it); the engine never sends an answered
  request again (`unanswered`);
- a *slot* (image, sample type, prompt version, model) is done when it has an accepted sample,
  when an answer awaits validation, or when its answers were rejected more than
  `max_regenerations` times; otherwise the plan sends (or re-sends) its next request
  (`slot_states`, used by `tasks/prompting/plan.py` and README query 7's view).

Concurrent engines (processes, Prefect workers, threads) on one database send each request once:
`claim` takes the unanswered requests of a chunk for one engine in one short write transaction,
skipping those another engine holds. A claim is released once the request's rows are in
`responses` (`release_claims`, in the flush's own transaction), so "no `ok` row and no live claim"
means nobody has the answer. A dead engine's claims are released when its journal is replayed
(`tasks/store/journal.py` `replay_orphans`); an expired lease frees a claim whose owner has no
journal here (`owner_alive` decides).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, NamedTuple

import duckdb

from schemas.eval import EVAL_SAMPLE_TYPE_PREFIX
from schemas.generation import CLOSED_BATCH_STATES, LlmRequest
from tasks.store.prefixes import full_messages

# One row per slot that has requests: how many of its answers were rejected, whether one was
# accepted, and whether one still awaits validation. A view, so SQL users see the same numbers.
# Eval requests (questions, references, answers, reviews: schemas/eval.py) are no sample slots.
SLOT_STATUS_VIEW = f"""
CREATE OR REPLACE VIEW slot_status AS
WITH answered AS (
  SELECT q.image_id, q.sample_type, q.prompt_version, q.model, q.request_id,
         EXISTS (SELECT 1 FROM samples s WHERE s.response_id = r.response_id) AS accepted,
         EXISTS (SELECT 1 FROM rejects j WHERE j.response_id = r.response_id) AS rejected
  FROM requests_stored q JOIN responses r ON r.request_id = q.request_id AND r.status IN ('ok', 'parse_error')
  WHERE NOT starts_with(q.sample_type, '{EVAL_SAMPLE_TYPE_PREFIX}')
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

    def label(self, max_regenerations: int) -> str:
        """accepted | awaiting_validation | given_up | to_regenerate (what `vistune status` counts)."""
        if self.accepted:
            return "accepted"
        if self.awaiting_validation:
            return "awaiting_validation"
        return "given_up" if self.rejected > max_regenerations else "to_regenerate"


def slot_states(
    con: duckdb.DuckDBPyConnection, model: str, image_range: tuple[int, int] | None = None
) -> dict[tuple[int, str, str], SlotState]:
    """(image_id, sample_type, prompt_version) -> state, for every slot of `model` that has an answer
    (only of the images with `lo <= image_id <= hi` when `image_range` is given)."""
    in_range, bounds = (" AND image_id BETWEEN ? AND ?", list(image_range)) if image_range is not None else ("", [])
    rows = con.execute(
        "SELECT image_id, sample_type, prompt_version, accepted, rejected, awaiting_validation "
        f"FROM slot_status WHERE model = ?{in_range}", [model, *bounds]).fetchall()
    return {(r[0], r[1], r[2]): SlotState(bool(r[3]), int(r[4]), bool(r[5])) for r in rows}


class Unanswered(NamedTuple):
    """What `unanswered` found among the ids it was given."""

    requests: list[LlmRequest]  # to send, in the order given
    missing: list[str]  # ids that are not in `requests`: plan them first
    held: list[str]  # answered, but our own parser raised (`parse_error`): re-sending would not fix it


def slot_summary(con: duckdb.DuckDBPyConnection, max_regenerations: int) -> dict[str, int]:
    """How many answered slots (every model) are accepted, awaiting validation, to regenerate or given up."""
    rows = con.execute("SELECT accepted, rejected, awaiting_validation FROM slot_status").fetchall()
    counts = dict.fromkeys(("accepted", "awaiting_validation", "to_regenerate", "given_up"), 0)
    for accepted, rejected, awaiting in rows:
        counts[SlotState(bool(accepted), int(rejected), bool(awaiting)).label(max_regenerations)] += 1
    return counts


def unanswered(con: duckdb.DuckDBPyConnection, ids: Sequence[str], *, skip_open_batches: bool = False) -> Unanswered:
    """The requests among `ids` that still need an answer: no `ok` and no `parse_error` response.

    With `skip_open_batches`, requests waiting in an open Batch API job are left out too (they are
    paid for already; the batch's results will answer them).
    """
    closed = ", ".join(f"'{state}'" for state in CLOSED_BATCH_STATES)
    in_open_batch = (
        "EXISTS (SELECT 1 FROM batches b, unnest(CAST(b.request_ids AS VARCHAR[])) AS u(rid) "
        f"WHERE b.status NOT IN ({closed}) AND u.rid = q.request_id)" if skip_open_batches else "false")
    rows = con.execute(
        "SELECT request_id, kind, model, prefix_id, messages, params, est_input_tokens, "
        "EXISTS (SELECT 1 FROM responses r WHERE r.request_id = q.request_id AND r.status = 'ok'), "
        "EXISTS (SELECT 1 FROM responses r WHERE r.request_id = q.request_id AND r.status = 'parse_error'), "
        f"{in_open_batch} FROM requests_stored q WHERE request_id IN (SELECT unnest(?::VARCHAR[]))",
        [list(ids)],
    ).fetchall()
    known = {r[0] for r in rows}
    order = {rid: i for i, rid in enumerate(ids)}
    rows.sort(key=lambda r: order[r[0]])
    send = [r for r in rows if not any(r[7:])]
    messages = full_messages(con, [(r[3], r[4]) for r in send])
    return Unanswered(
        requests=[LlmRequest(r[0], r[1], r[2], m, p, r[6])
                  for r, m, p in zip(send, messages, _shared_json([r[5] for r in send]), strict=True)],
        missing=[i for i in ids if i not in known],
        held=[r[0] for r in rows if r[8] and not r[7]],
    )


class Claimed(NamedTuple):
    """What `claim` found among the ids it was given; every id is in exactly one list."""

    requests: list[LlmRequest]  # claimed for the caller now: send them, in the order given
    missing: list[str]  # not in `requests`: plan them first
    held: list[str]  # answered with `parse_error` (see `Unanswered.held`)
    answered: list[str]  # have an `ok` response
    busy: list[str]  # claimed by another engine that may be sending them: look again later
    stored_requests: int = 0  # rows in `requests` (what a claim transaction's scans grow with)


def claim(
    con: duckdb.DuckDBPyConnection,
    ids: Sequence[str],
    owner: str,
    *,
    lease_s: float,
    now: datetime,
    run_id: str | None = None,
    owner_alive: Callable[[str], bool] = lambda owner: True,
) -> Claimed:
    """Claim for `owner` the requests among `ids` that still need an answer and no other engine holds.

    Call it inside a write transaction (`store.write`): the read and the insert must be atomic. A
    claim held by another owner is taken over only when its lease (`expires_at`) has passed and
    `owner_alive(owner)` is False. Only the claimed requests' messages are read.
    """
    rows = con.execute(
        "SELECT q.request_id, "
        "EXISTS (SELECT 1 FROM responses r WHERE r.request_id = q.request_id AND r.status = 'ok'), "
        "EXISTS (SELECT 1 FROM responses r WHERE r.request_id = q.request_id AND r.status = 'parse_error'), "
        "c.owner, c.expires_at FROM requests_stored q LEFT JOIN claims c ON c.request_id = q.request_id "
        "WHERE q.request_id IN (SELECT unnest(?::VARCHAR[]))",
        [list(ids)],
    ).fetchall()
    state = {r[0]: r[1:] for r in rows}
    answered, held, busy, mine = [], [], [], []
    alive: dict[str, bool] = {}
    for rid in dict.fromkeys(ids):
        if rid not in state:
            continue
        ok, parse_error, holder, expires = state[rid]
        if ok:
            answered.append(rid)
        elif parse_error:
            held.append(rid)
        elif holder is None or holder == owner:
            mine.append(rid)
        elif expires > now or alive.setdefault(holder, owner_alive(holder)):
            busy.append(rid)
        else:  # the lease passed and its owner is gone: take it over
            mine.append(rid)
    missing = [i for i in ids if i not in state]
    if mine and not missing:  # a caller refuses missing ids: claim nothing then
        con.execute(
            "INSERT OR REPLACE INTO claims (request_id, owner, run_id, claimed_at, expires_at) "
            "SELECT unnest(?::VARCHAR[]), ?, ?, ?, ?", [mine, owner, run_id, now, now + timedelta(seconds=lease_s)])
    found = con.execute(
        "SELECT request_id, kind, model, prefix_id, messages, params, est_input_tokens FROM requests_stored "
        "WHERE request_id IN (SELECT unnest(?::VARCHAR[]))", [mine]).fetchall() if mine else []
    messages = full_messages(con, [(r[3], r[4]) for r in found])
    params = _shared_json([r[5] for r in found])
    by_id = {r[0]: LlmRequest(r[0], r[1], r[2], m, p, r[6]) for r, m, p in zip(found, messages, params, strict=True)}
    stored = con.execute("SELECT count(*) FROM requests_stored").fetchall()[0][0]  # from metadata: no scan
    return Claimed([by_id[rid] for rid in mine], missing, held, answered, busy, stored)


def renew_claims(con: duckdb.DuckDBPyConnection, owner: str, *, lease_s: float, now: datetime) -> set[str]:
    """Extend every lease `owner` holds to `now + lease_s`; returns the request ids it still holds."""
    rows = con.execute("UPDATE claims SET expires_at = ? WHERE owner = ? RETURNING request_id",
                       [now + timedelta(seconds=lease_s), owner]).fetchall()
    return {r[0] for r in rows}


def release_claims(con: duckdb.DuckDBPyConnection, owner: str, ids: Sequence[str] | None = None) -> None:
    """Drop `owner`'s claims on `ids` (all of them when None): their rows are stored, or the owner is gone."""
    if ids is None:
        con.execute("DELETE FROM claims WHERE owner = ?", [owner])
    elif ids:
        con.execute("DELETE FROM claims WHERE owner = ? AND request_id IN (SELECT unnest(?::VARCHAR[]))",
                    [owner, list(ids)])


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value  # JSON columns arrive as text


def _shared_json(values: Sequence[Any]) -> list[Any]:
    """`_json` of each value, each distinct text parsed once and its object shared (treat as read-only).

    Requests of a type carry the same params, whose JSON schema takes ~3 KB as Python objects: a claim of
    10,000 requests held ~30 MB of copies of a few params."""
    parsed: dict[str, Any] = {}
    out = []
    for value in values:
        if isinstance(value, str):
            if value not in parsed:
                parsed[value] = json.loads(value)
            value = parsed[value]
        out.append(value)
    return out
