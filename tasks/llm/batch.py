"""Batch mode: the OpenAI Batch API (half price, up to 24 h) for the requests a plan left pending.

One round: store the results of every finished batch, then write the requests that still lack
an `ok` response (and are in no open batch) to JSONL files within OpenAI's limits, upload them
and create batches. Rounds repeat until nothing is pending or `max_attempts` rounds are used.
Every batch is in the `batches` table from the moment its file is uploaded, so a restarted run
finds its open batches and polls them instead of paying again.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import openai

from schemas.generation import GenerateConfig, GenerateStats
from schemas.tables import BatchRow, ResponseRow
from tasks import store
from tasks.llm import client as llm_client
from tasks.llm import pricing
from tasks.store.journal import DB_LOCK

MAX_REQUESTS_PER_FILE = 50_000  # OpenAI's limits per batch input file
MAX_BYTES_PER_FILE = 200 * 1024 * 1024
ENDPOINT = "/v1/chat/completions"
FINAL_REMOTE = ("completed", "failed", "expired", "cancelled")
STORED = "stored"  # our own status: the batch's results are in `responses`
UPLOADED = "uploaded"  # our own status: input file uploaded, batch not yet created


def batch_dir(db_path: Path) -> Path:
    """Where the JSONL input files are written (kept for inspection)."""
    return db_path.with_name(db_path.name + ".batches")


def batch_line(request_id: str, model: str, messages: list[dict[str, Any]], params: dict[str, Any]) -> str:
    """One line of a batch input file."""
    body = {"model": model, "messages": messages, **llm_client.api_params(params)}
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
    return store.query(f"SELECT * FROM batches WHERE status <> '{STORED}' ORDER BY created_at", path=db)


def _pending(db: Path, ids: Sequence[str]) -> list[tuple[Any, ...]]:
    # Requests among ids with no ok response and in no open batch.
    with DB_LOCK, store.read(db) as con:
        return con.execute(
            "SELECT request_id, model, messages, params FROM requests q "
            "WHERE request_id IN (SELECT unnest(?::VARCHAR[])) "
            "AND NOT EXISTS (SELECT 1 FROM responses r WHERE r.request_id = q.request_id AND r.status = 'ok') "
            "AND NOT EXISTS (SELECT 1 FROM batches b, unnest(CAST(b.request_ids AS VARCHAR[])) AS u(rid) "
            f"  WHERE b.status <> '{STORED}' AND u.rid = q.request_id) ORDER BY request_id",
            [list(ids)],
        ).fetchall()


def _save_batch(db: Path, row: BatchRow) -> None:
    with DB_LOCK, store.write(db) as con:
        store.insert_rows(con, BatchRow, [row], on_conflict="replace")


def _batch_attempts(db: Path, ids: Sequence[str]) -> dict[str, int]:
    with DB_LOCK, store.read(db) as con:
        return dict(con.execute(
            "SELECT request_id, count(*) FROM responses WHERE mode = 'batch' "
            "AND request_id IN (SELECT unnest(?::VARCHAR[])) GROUP BY request_id", [list(ids)]
        ).fetchall())


# ---------------------------------------------------------------- submit
def submit(db: Path, client: openai.OpenAI, rows: Sequence[tuple[Any, ...]], run_id: str | None = None) -> list[str]:
    """Write, upload and create batches for the given (request_id, model, messages, params) rows."""
    folder = batch_dir(db)
    folder.mkdir(parents=True, exist_ok=True)
    lines = (
        (rid, batch_line(rid, model, json.loads(messages), json.loads(params)))
        for rid, model, messages, params in rows
    )
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
    with DB_LOCK, store.write(db) as con:
        con.execute("DELETE FROM batches WHERE batch_id = ?", [row.batch_id])
        store.insert_rows(con, BatchRow, [row.model_copy(update={
            "batch_id": batch.id, "status": batch.status, "updated_at": store.utcnow()})])
    return batch.id


# ---------------------------------------------------------------- poll and store
def poll(db: Path, client: openai.OpenAI, stats: GenerateStats | None = None) -> int:
    """Refresh every open batch; store the results of finished ones. Returns how many are still open."""
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
        _store_results(db, client, row, stats)
        _save_batch(db, row.model_copy(update={"status": STORED}))
    return still_open


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


def _store_results(db: Path, client: openai.OpenAI, row: BatchRow, stats: GenerateStats | None) -> None:
    kinds = {r[0]: (r[1], r[2], r[3]) for r in _request_kinds(db, row.request_ids)}
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
                mode="batch", created_at=store.utcnow(), run_id=row.run_id,
            ))
    with DB_LOCK, store.write(db) as con:
        store.insert_rows(con, ResponseRow, responses, on_conflict="ignore")
    if stats is not None:
        for r in responses:
            stats.attempts += 1
            stats.attempts_by_status[r.status] = stats.attempts_by_status.get(r.status, 0) + 1
            stats.prompt_tokens += r.prompt_tokens
            stats.completion_tokens += r.completion_tokens
            stats.cached_tokens += r.cached_tokens
            stats.cost_usd += r.cost_usd


def _request_kinds(db: Path, ids: Sequence[str]) -> list[tuple[Any, ...]]:
    with DB_LOCK, store.read(db) as con:
        return con.execute(
            "SELECT request_id, model, sample_type, output_format FROM requests "
            "WHERE request_id IN (SELECT unnest(?::VARCHAR[]))", [list(ids)]
        ).fetchall()


def _response_row(batch: BatchRow, rid: str, record: dict[str, Any], kind: tuple[str, str, str],
                  attempt_no: int) -> ResponseRow:
    model, type_name, output_format = kind
    response = record.get("response") or {}
    code = response.get("status_code")
    body = response.get("body")
    common = {"response_id": store.stable_hash(batch.batch_id, rid), "request_id": rid, "attempt": attempt_no,
              "mode": "batch", "created_at": store.utcnow(), "run_id": batch.run_id, "http_status": code}
    if code == 200 and isinstance(body, dict):
        result = llm_client.classify(body, type_name, output_format)
        cost = pricing.cost_usd(model, result.prompt_tokens, result.completion_tokens, result.cached_tokens,
                                batch=True)
        return ResponseRow(**common, status=result.status, content=result.content, finish_reason=result.finish_reason,
                           prompt_tokens=result.prompt_tokens, completion_tokens=result.completion_tokens,
                           cached_tokens=result.cached_tokens, cost_usd=cost, error=result.error)
    error = record.get("error") or (body.get("error") if isinstance(body, dict) else body)
    status = llm_client.status_for_http(code) if code else "server_error"
    return ResponseRow(**common, status=status, error=f"batch row failed: {json.dumps(error)[:1500]}")


# ---------------------------------------------------------------- the loop
def run_batch(
    db_path: str | Path,
    request_ids: Sequence[str],
    config: GenerateConfig,
    *,
    on_progress: Callable[[GenerateStats], None] | None = None,
    client: openai.OpenAI | None = None,
    wait: bool = True,
) -> GenerateStats:
    """Submit the pending requests as batches, poll, store, resubmit failed rows (up to max_attempts rounds).

    With `wait=False` it does one round (store finished batches, submit what is pending) and
    returns; call it again later to continue (the state is in DuckDB).
    """
    db = store.resolve_db(db_path)
    store.ensure_schema(db)
    client = client or make_sync_client(config)
    stats = GenerateStats(requests=len(request_ids))
    started = time.monotonic()
    rounds = 0
    while True:
        still_open = poll(db, client, stats)
        pending = _pending(db, request_ids)
        attempts = _batch_attempts(db, [r[0] for r in pending]) if pending else {}
        pending = [r for r in pending if attempts.get(r[0], 0) < config.max_attempts]
        if pending and rounds < config.max_attempts:
            submit(db, client, pending)
            rounds += 1
            still_open += 1
        stats.wall_s = time.monotonic() - started
        if on_progress is not None:
            on_progress(stats.model_copy(deep=True))
        if not wait or still_open == 0:
            break
        time.sleep(config.batch_poll_s)
    _final_counts(db, request_ids, stats)
    stats.wall_s = time.monotonic() - started
    return stats


def _final_counts(db: Path, ids: Sequence[str], stats: GenerateStats) -> None:
    # The latest status of every request: ok if any response is ok.
    with DB_LOCK, store.read(db) as con:
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
