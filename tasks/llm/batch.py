"""Batch mode: the OpenAI Batch API (half price, up to 24 h) for the requests a plan left pending.

One round: store the results of every finished batch, then write the requests that still lack
an `ok` response (and are in no open batch) to JSONL files within OpenAI's limits, upload them
and create batches. Rounds repeat until nothing is pending or `max_attempts` rounds are used.
Every batch is in the `batches` table from the moment its file is uploaded, so a restarted run
finds its open batches and polls them instead of paying again.

Like online mode (`tasks/llm/engine.py`, whose `send` dispatches here), results go through the
journal, the run has a `runs` row, and `max_cost_usd` holds across the runs of its budget: a
request is submitted only if its estimated cost at batch price (its full `max_tokens`) fits; the
others get a `budget_exceeded` row. The reservation of an open batch is replaced by what its
results cost once they are stored.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import openai

from schemas.generation import (
    BATCH_REMOTE_FINAL,
    BATCH_STORED,
    BATCH_UPLOADED,
    CLOSED_BATCH_STATES,
    GenerateConfig,
    GenerateStats,
    LlmRequest,
)
from schemas.tables import BatchRow, ResponseRow
from tasks import store
from tasks.llm import client as llm_client
from tasks.llm import parsers, pricing
from tasks.llm.budget import Budget, shared_budget
from tasks.llm.endpoint import DEFAULT_ENDPOINT
from tasks.llm.engine import budget_id_of, check_budget_model, finish_run, new_run_id, start_run
from tasks.store import queries
from tasks.store.journal import Journal, owner_alive, replay_orphans

MAX_REQUESTS_PER_FILE = 50_000  # OpenAI's limits per batch input file
MAX_BYTES_PER_FILE = 200 * 1024 * 1024
ENDPOINT = "/v1/chat/completions"
# the states are defined once, in schemas.generation; these names are kept for callers
FINAL_REMOTE = BATCH_REMOTE_FINAL
STORED = BATCH_STORED
UPLOADED = BATCH_UPLOADED
_CLOSED_SQL = ", ".join(f"'{state}'" for state in CLOSED_BATCH_STATES)


def batch_dir(db_path: Path) -> Path:
    """Where the JSONL input files are written (kept for inspection)."""
    return db_path.with_name(db_path.name + ".batches")


def batch_line(request_id: str, model: str, messages: list[dict[str, Any]], params: dict[str, Any]) -> str:
    """One line of a batch input file."""
    body = {"model": model, "messages": llm_client.api_messages(messages), **llm_client.api_params(params)}
    return json.dumps({"custom_id": request_id, "method": "POST", "url": ENDPOINT, "body": body},
                      ensure_ascii=False, separators=(",", ":"))


def split_lines(
    lines: Iterator[tuple[str, str]],
    *,
    max_requests: int = MAX_REQUESTS_PER_FILE,
    max_bytes: int = MAX_BYTES_PER_FILE,
) -> Iterator[list[tuple[str, str]]]:
    """Group (request_id, line) pairs into files of at most `max_requests` lines and `max_bytes` bytes."""
    group: list[tuple[str, str]] = []
    size = 0
    for request_id, line in lines:
        n = len(line.encode()) + 1
        if n > max_bytes:
            raise ValueError(f"request {request_id} alone is {n} bytes, over the batch file limit of {max_bytes}")
        if group and (len(group) >= max_requests or size + n > max_bytes):
            yield group
            group, size = [], 0
        group.append((request_id, line))
        size += n
    if group:
        yield group


def make_sync_client(config: GenerateConfig) -> openai.OpenAI:
    """A sync client for the batch control calls (uploads, polls): the SDK's own retries are fine there."""
    key = config.api_key.get_secret_value() if config.api_key else None
    return openai.OpenAI(base_url=config.base_url, api_key=key or "not-needed", timeout=config.timeout, max_retries=3)


# ---------------------------------------------------------------- database helpers
def _open_batches(db: Path) -> list[dict[str, Any]]:
    return store.query(f"SELECT * FROM batches WHERE status NOT IN ({_CLOSED_SQL}) ORDER BY created_at", path=db)


def _claim_pending(db: Path, ids: Sequence[str], config: GenerateConfig, journal: Journal,
                   run_id: str) -> list[LlmRequest]:
    """Claim the requests among ids still to answer and in no open batch, in id order.

    One write transaction: another process submitting the same requests either holds their claims
    (they are skipped here) or has saved its batch row (they are in an open batch), never neither.
    The claims are released once this round's batch rows are saved (`_release`).
    """
    with store.write(db) as con:
        found = queries.unanswered(con, ids, skip_open_batches=True)
        if found.missing:
            raise ValueError(f"{len(found.missing)} request id(s) are not in the `requests` table of {db}, "
                             f"e.g. {found.missing[:3]}: plan them first")
        claimed = queries.claim(
            con, [r.request_id for r in found.requests], journal.owner, lease_s=config.claim_lease_s,
            now=store.utcnow(), run_id=run_id, owner_alive=lambda owner: owner_alive(db, owner),
        ) if found.requests else None
    requests = claimed.requests if claimed else []
    for kind in {r.kind for r in requests}:
        parsers.parser_for(kind)  # an unknown kind fails here, before anything is paid
    return sorted(requests, key=lambda r: r.request_id)


def _release(db: Path, journal: Journal) -> None:
    # This round's requests are in saved batch rows now (or were not submitted): others may look at them.
    with store.write(db) as con:
        queries.release_claims(con, journal.owner)


def _save_batch(db: Path, row: BatchRow) -> None:
    with store.write(db) as con:
        store.insert_rows(con, BatchRow, [row], on_conflict="replace")


def _batch_attempts(db: Path, ids: Sequence[str]) -> dict[str, int]:
    # Batch attempts that were submitted (a budget refusal sent nothing).
    with store.read(db) as con:
        return dict(con.execute(
            "SELECT request_id, count(*) FROM responses WHERE mode = 'batch' AND status <> 'budget_exceeded' "
            "AND request_id IN (SELECT unnest(?::VARCHAR[])) GROUP BY request_id", [list(ids)]
        ).fetchall())


def estimate_usd(request: LlmRequest, config: GenerateConfig) -> float:
    """A request's cost at batch price if its answer uses all of `max_tokens` (what the budget reserves)."""
    completion = int(request.params.get("max_tokens") or config.max_tokens)
    return pricing.cost_usd(request.model, request.est_input_tokens, completion, batch=True)


def _open_reservations(db: Path, budget_id: str, config: GenerateConfig) -> dict[str, float]:
    # batch_id -> estimated cost, for the open batches of this budget's runs (a restarted run still owes them)
    with store.read(db) as con:
        rows = con.execute(
            "SELECT b.batch_id, b.request_ids FROM batches b JOIN runs r ON r.run_id = b.run_id "
            f"WHERE b.status NOT IN ({_CLOSED_SQL}) AND json_extract_string(r.params, '$.budget_id') = ?",
            [budget_id]).fetchall()
        reservations = {}
        for batch_id, request_ids in rows:
            requests = queries.unanswered(con, _json(request_ids)).requests
            reservations[batch_id] = sum(estimate_usd(r, config) for r in requests)
    return reservations


# ---------------------------------------------------------------- submit
def submit(db: Path, client: openai.OpenAI, requests: Sequence[LlmRequest], run_id: str | None = None) -> list[str]:
    """Write, upload and create batches for the given requests; returns the batch ids."""
    folder = batch_dir(db)
    folder.mkdir(parents=True, exist_ok=True)
    lines = ((r.request_id, batch_line(r.request_id, r.model, r.messages, r.params)) for r in requests)
    created = []
    for group in split_lines(lines):
        path = folder / f"{store.stable_hash([rid for rid, _ in group], time.time_ns(), length=16)}.jsonl"
        path.write_text("".join(line + "\n" for _, line in group), encoding="utf-8")
        with open(path, "rb") as f:
            uploaded = client.files.create(file=f, purpose="batch")
        now = store.utcnow()
        row = BatchRow(
            batch_id=f"{UPLOADED}:{uploaded.id}", input_file_id=uploaded.id, status=UPLOADED,
            n_requests=len(group), request_ids=[rid for rid, _ in group], created_at=now, updated_at=now,
            run_id=run_id,
        )
        _save_batch(db, row)  # recorded before the batch exists: a crash here cannot lose it
        created.append(_create(db, client, row))
    return created


def _create(db: Path, client: openai.OpenAI, row: BatchRow) -> str:
    # Create the batch for an uploaded file, unless a crash happened right after creating it.
    existing = next((b for b in client.batches.list(limit=100) if b.input_file_id == row.input_file_id), None)
    batch = existing or client.batches.create(
        input_file_id=row.input_file_id, endpoint=ENDPOINT, completion_window="24h",
        metadata={"vistune_run": row.run_id or ""},
    )
    with store.write(db) as con:
        con.execute("DELETE FROM batches WHERE batch_id = ?", [row.batch_id])
        store.insert_rows(con, BatchRow, [row.model_copy(update={
            "batch_id": batch.id, "status": batch.status, "updated_at": store.utcnow()})])
    return batch.id


# ---------------------------------------------------------------- poll and store
StoredCallback = Callable[[str, float], None]


def poll(
    db: Path,
    client: openai.OpenAI,
    journal: Journal,
    stats: GenerateStats | None = None,
    on_stored: StoredCallback | None = None,
) -> int:
    """Refresh every open batch; store the results of finished ones through `journal`. Returns how many are open.

    `on_stored(batch_id, cost_usd)` is called once a batch's results are in `responses`.
    """
    still_open = 0
    for b in _open_batches(db):
        row = BatchRow.model_validate({**b, "request_ids": _json(b["request_ids"])})
        if row.status == UPLOADED:
            _create(db, client, row)
            still_open += 1
            continue
        remote = client.batches.retrieve(row.batch_id)
        row = row.model_copy(update={
            "status": remote.status, "output_file_id": remote.output_file_id,
            "error_file_id": remote.error_file_id, "updated_at": store.utcnow(),
        })
        if remote.status not in FINAL_REMOTE:
            _save_batch(db, row)
            still_open += 1
            continue
        cost = _store_results(db, client, row, journal, stats)
        _save_batch(db, row.model_copy(update={"status": STORED}))  # after its rows are in `responses`
        if on_stored is not None:
            on_stored(row.batch_id, cost)
    return still_open


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


def _store_results(
    db: Path, client: openai.OpenAI, row: BatchRow, journal: Journal, stats: GenerateStats | None
) -> float:
    # The batch's rows go through the journal like online answers; returns what they cost.
    kinds = {r[0]: (r[1], r[2]) for r in _request_kinds(db, row.request_ids)}
    attempts = _batch_attempts(db, row.request_ids)
    seen: set[str] = set()
    responses: list[ResponseRow] = []
    for file_id in (row.output_file_id, row.error_file_id):
        if not file_id:
            continue
        for line in client.files.content(file_id).text.splitlines():
            if not line.strip():
                continue
            record = json.loads(line)
            rid = record.get("custom_id")
            if rid not in kinds or rid in seen:
                continue
            seen.add(rid)
            responses.append(_response_row(row, rid, record, kinds[rid], attempts.get(rid, 0) + 1))
    for rid in row.request_ids:  # rows the batch never answered (failed, expired, cancelled)
        if rid not in seen and rid in kinds:
            responses.append(ResponseRow(
                response_id=store.stable_hash(row.batch_id, rid), request_id=rid, attempt=attempts.get(rid, 0) + 1,
                status="server_error", error=f"batch {row.batch_id} ended '{row.status}' without a result for it",
                mode="batch", created_at=store.utcnow(), run_id=row.run_id, endpoint=DEFAULT_ENDPOINT,
            ))
    secret = [client.api_key] if client.api_key and client.api_key != "not-needed" else []
    for r in responses:
        if secret:  # an endpoint may echo the key: it never reaches the journal
            r.content = llm_client.redact_exact(r.content, secret) if r.content else r.content
            r.error = llm_client.redact(r.error, secret) if r.error else r.error
        journal.append(r.model_dump(mode="json"))
        if stats is not None:
            stats.add_response(r)
    journal.flush()
    return sum(r.cost_usd for r in responses)


def _request_kinds(db: Path, ids: Sequence[str]) -> list[tuple[Any, ...]]:
    with store.read(db) as con:
        return con.execute(
            "SELECT request_id, model, kind FROM requests WHERE request_id IN (SELECT unnest(?::VARCHAR[]))",
            [list(ids)],
        ).fetchall()


def _response_row(batch: BatchRow, rid: str, record: dict[str, Any], kind: tuple[str, str],
                  attempt_no: int) -> ResponseRow:
    model, request_kind = kind
    response = record.get("response") or {}
    code = response.get("status_code")
    body = response.get("body")
    common = {"response_id": store.stable_hash(batch.batch_id, rid), "request_id": rid, "attempt": attempt_no,
              "mode": "batch", "created_at": store.utcnow(), "run_id": batch.run_id, "http_status": code,
              "endpoint": DEFAULT_ENDPOINT}  # batch mode sends to the run's one endpoint
    if code == 200 and isinstance(body, dict):
        result = llm_client.classify(body, request_kind)
        cost = pricing.cost_usd(model, result.prompt_tokens, result.completion_tokens, result.cached_tokens,
                                batch=True)
        return ResponseRow(**common, status=result.status, content=result.content, finish_reason=result.finish_reason,
                           prompt_tokens=result.prompt_tokens, completion_tokens=result.completion_tokens,
                           cached_tokens=result.cached_tokens, cost_usd=cost, error=result.error)
    error = record.get("error") or (body.get("error") if isinstance(body, dict) else body)
    status = llm_client.status_for_http(code) if code else "server_error"
    return ResponseRow(**common, status=status, error=f"batch row failed: {json.dumps(error)[:1500]}")


def _within_budget(
    requests: Sequence[LlmRequest], budget: Budget, config: GenerateConfig, journal: Journal, stats: GenerateStats,
    run_id: str, attempts: dict[str, int],
) -> tuple[list[LlmRequest], dict[str, float]]:
    # The requests whose estimate fits, with their reservations; the others get a budget_exceeded row.
    fit, estimates = [], {}
    for r in requests:
        estimate = estimate_usd(r, config)
        if budget.try_reserve(estimate):
            fit.append(r)
            estimates[r.request_id] = estimate
            continue
        row = ResponseRow(
            response_id=store.stable_hash(r.request_id, run_id, "budget_exceeded"), request_id=r.request_id,
            attempt=attempts.get(r.request_id, 0) + 1, status="budget_exceeded", mode="batch",
            error=f"not submitted: --max-cost-usd {config.max_cost_usd} reached", created_at=store.utcnow(),
            run_id=run_id,
        )
        journal.append(row.model_dump(mode="json"))
        stats.add_response(row)
    return fit, estimates


# ---------------------------------------------------------------- the loop
def run_batch(
    db_path: str | Path,
    request_ids: Sequence[str],
    config: GenerateConfig,
    *,
    on_progress: Callable[[GenerateStats], None] | None = None,
    client: openai.OpenAI | None = None,
    wait: bool = True,
    run_id: str | None = None,
) -> GenerateStats:
    """Submit the pending requests as batches, poll, store, resubmit failed rows (up to max_attempts rounds).

    With `wait=False` it does one round (store finished batches, submit what is pending) and
    returns; call it again later to continue (the state is in DuckDB).
    """
    db = store.resolve_db(db_path)
    store.ensure_schema(db)
    check_budget_model(config)
    client = client or make_sync_client(config)
    run_id = run_id or new_run_id()
    replay_orphans(db)
    run = start_run(db, config, run_id)
    stats: GenerateStats | None = None
    journal = Journal(db)
    try:
        budget_id = budget_id_of(config, run_id)
        with shared_budget(db, budget_id, config.max_cost_usd) as budget:
            stats = _rounds(db, request_ids, config, client, wait, run_id, journal, budget, on_progress)
    finally:
        _release(db, journal)
        journal.close()
        finish_run(db, run, stats)
    return stats


def _rounds(
    db: Path, request_ids: Sequence[str], config: GenerateConfig, client: openai.OpenAI, wait: bool, run_id: str,
    journal: Journal, budget: Budget, on_progress: Callable[[GenerateStats], None] | None,
) -> GenerateStats:
    stats = GenerateStats(requests=len(request_ids))
    started = time.monotonic()
    reservations = _open_reservations(db, budget_id_of(config, run_id), config)
    for estimate in reservations.values():
        budget.hold(estimate)  # already submitted: owed whatever the cap says now

    def settle(batch_id: str, cost: float) -> None:
        if batch_id in reservations:  # a batch of another budget is stored, not charged to this one
            budget.settle(reservations.pop(batch_id), cost)

    refused: set[str] = set()  # refused by the budget in this run: not offered again
    rounds = 0
    while True:
        still_open = poll(db, client, journal, stats, settle)
        pending = [r for r in _claim_pending(db, request_ids, config, journal, run_id) if r.request_id not in refused]
        attempts = _batch_attempts(db, [r.request_id for r in pending]) if pending else {}
        pending = [r for r in pending if attempts.get(r.request_id, 0) < config.max_attempts]
        if pending and rounds < config.max_attempts:
            fit, estimates = _within_budget(pending, budget, config, journal, stats, run_id, attempts)
            refused |= {r.request_id for r in pending} - set(estimates)
            journal.flush()
            if fit:
                for batch_id, ids in _submitted(db, submit(db, client, fit, run_id)):
                    reservations[batch_id] = sum(estimates[i] for i in ids)
                rounds += 1
                still_open += 1
        _release(db, journal)
        stats.wall_s = time.monotonic() - started
        if on_progress is not None:
            on_progress(stats.model_copy(deep=True))
        if not wait or still_open == 0:
            break
        time.sleep(config.batch_poll_s)
    _final_counts(db, request_ids, stats)
    stats.wall_s = time.monotonic() - started
    return stats


def _submitted(db: Path, batch_ids: Sequence[str]) -> list[tuple[str, list[str]]]:
    rows = store.query("SELECT batch_id, request_ids FROM batches WHERE batch_id IN (SELECT unnest(?::VARCHAR[]))",
                       [list(batch_ids)], path=db)
    return [(r["batch_id"], _json(r["request_ids"])) for r in rows]


def _final_counts(db: Path, ids: Sequence[str], stats: GenerateStats) -> None:
    # The latest status of every request: ok if any response is ok.
    with store.read(db) as con:
        rows = con.execute(
            "SELECT request_id, bool_or(status = 'ok'), arg_max(status, created_at) FROM responses "
            "WHERE request_id IN (SELECT unnest(?::VARCHAR[])) GROUP BY request_id", [list(ids)]
        ).fetchall()
    stats.final_by_status = {}
    for _, ok, last in rows:
        status = "ok" if ok else last
        stats.final_by_status[status] = stats.final_by_status.get(status, 0) + 1
    stats.done = stats.final_by_status.get("ok", 0)
    stats.failed = len(ids) - stats.done
