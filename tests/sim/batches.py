"""`/v1/files` and `/v1/batches`: uploaded JSONL runs through the same fake model after a delay.

Lifecycle: `validating` -> (`failed`) -> `in_progress` -> (`batch_delay_s`) -> `finalizing` ->
`completed`, or `cancelling` -> `cancelled`. Rows that answer with HTTP 200 (including malformed,
truncated, filtered and refused content) go to the output file; 4xx/5xx rows and hangs (reported
as `batch_expired`) go to the error file. Rate limits and latency do not apply to batch rows.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from typing import Any

import orjson

from tests.sim.core import SERVER_ERRORS, BadRequest, ServedRequest, Simulator, error_body

BATCH_ENDPOINT = "/v1/chat/completions"
_YIELD_EVERY = 200  # rows processed between event-loop yields, so online requests keep flowing


@dataclass
class StoredFile:
    """One uploaded or generated file, kept in memory."""

    id: str
    filename: str
    purpose: str
    data: bytes
    created_at: int = field(default_factory=lambda: int(time.time()))

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "file",
            "bytes": len(self.data),
            "created_at": self.created_at,
            "filename": self.filename,
            "purpose": self.purpose,
            "status": "processed",
            "expires_at": None,
            "status_details": None,
        }


class NotFound(LookupError):
    """No file or batch with that id (HTTP 404)."""


class BatchService:
    """In-memory files and batches of one simulator."""

    def __init__(self, sim: Simulator) -> None:
        self.sim = sim
        self.files: dict[str, StoredFile] = {}
        self.batches: dict[str, dict[str, Any]] = {}
        self._cancel: dict[str, asyncio.Event] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    # --- files ----------------------------------------------------------------------------------

    def add_file(self, filename: str, purpose: str, data: bytes) -> StoredFile:
        """Store an upload; batch inputs over the size limit are refused."""
        if purpose == "batch" and len(data) > self.sim.config.max_file_bytes:
            raise BadRequest(
                f"file {filename!r} is {len(data)} bytes; batch input files may be at most "
                f"{self.sim.config.max_file_bytes} bytes. Split it into smaller files.",
                "file",
            )
        stored = StoredFile(self.sim.next_id("file-"), filename, purpose, data)
        self.files[stored.id] = stored
        return stored

    def file(self, file_id: str) -> StoredFile:
        try:
            return self.files[file_id]
        except KeyError:
            raise NotFound(f"No such File object: {file_id}") from None

    # --- batches --------------------------------------------------------------------------------

    def batch(self, batch_id: str) -> dict[str, Any]:
        try:
            return self.batches[batch_id]
        except KeyError:
            raise NotFound(f"No such Batch object: {batch_id}") from None

    def create(self, body: dict[str, Any]) -> dict[str, Any]:
        """Create a batch and start running it in the background."""
        input_file_id = body.get("input_file_id")
        if not isinstance(input_file_id, str):
            raise BadRequest("'input_file_id' is required", "input_file_id")
        self.file(input_file_id)
        if body.get("endpoint") != BATCH_ENDPOINT:
            raise BadRequest(f"endpoint must be {BATCH_ENDPOINT!r}, got {body.get('endpoint')!r}", "endpoint")
        if body.get("completion_window") != "24h":
            raise BadRequest("completion_window must be '24h'", "completion_window")
        now = int(time.time())
        batch = {
            "id": self.sim.next_id("batch_"),
            "object": "batch",
            "endpoint": BATCH_ENDPOINT,
            "errors": None,
            "input_file_id": input_file_id,
            "completion_window": "24h",
            "status": "validating",
            "output_file_id": None,
            "error_file_id": None,
            "created_at": now,
            "in_progress_at": None,
            "expires_at": now + 24 * 3600,
            "finalizing_at": None,
            "completed_at": None,
            "failed_at": None,
            "expired_at": None,
            "cancelling_at": None,
            "cancelled_at": None,
            "request_counts": {"total": 0, "completed": 0, "failed": 0},
            "metadata": body.get("metadata"),
        }
        self.batches[batch["id"]] = batch
        self._cancel[batch["id"]] = asyncio.Event()
        task = asyncio.get_running_loop().create_task(self._run(batch))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return batch

    def cancel(self, batch_id: str) -> dict[str, Any]:
        """Ask a running batch to stop; finished rows are still written out."""
        batch = self.batch(batch_id)
        if batch["status"] in ("validating", "in_progress", "finalizing"):
            batch["status"], batch["cancelling_at"] = "cancelling", int(time.time())
            self._cancel[batch_id].set()
        return batch

    def listing(self, limit: int, after: str | None) -> dict[str, Any]:
        """Batches newest first, in pages of `limit`, starting after the id `after`."""
        ids = list(reversed(self.batches))
        if after in self.batches:
            ids = ids[ids.index(after) + 1 :]
        page = [self.batches[i] for i in ids[:limit]]
        return {
            "object": "list",
            "data": page,
            "first_id": page[0]["id"] if page else None,
            "last_id": page[-1]["id"] if page else None,
            "has_more": len(ids) > limit,
        }

    async def _run(self, batch: dict[str, Any]) -> None:
        cancel = self._cancel[batch["id"]]
        rows, errors = self._validate(self.file(batch["input_file_id"]).data)
        if errors:
            batch.update(status="failed", failed_at=int(time.time()), errors={"object": "list", "data": errors})
            return
        batch.update(status="in_progress", in_progress_at=int(time.time()))
        batch["request_counts"]["total"] = len(rows)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(cancel.wait(), self.sim.config.batch_delay_s)
        if cancel.is_set():
            batch.update(status="cancelled", cancelled_at=int(time.time()))
            return
        output, failed = [], []
        for n, row in enumerate(rows, 1):
            line, ok = self._answer_row(batch["id"], row)
            (output if ok else failed).append(line)
            if n % _YIELD_EVERY == 0:
                batch["request_counts"].update(completed=len(output), failed=len(failed))
                await asyncio.sleep(0)
                if cancel.is_set():
                    break
        batch.update(status="finalizing", finalizing_at=int(time.time()))
        batch["request_counts"].update(completed=len(output), failed=len(failed))
        if output:
            batch["output_file_id"] = self.add_file(f"{batch['id']}_output.jsonl", "batch_output", b"".join(output)).id
        if failed:
            batch["error_file_id"] = self.add_file(f"{batch['id']}_error.jsonl", "batch_output", b"".join(failed)).id
        if cancel.is_set():
            batch.update(status="cancelled", cancelled_at=int(time.time()))
        else:
            batch.update(status="completed", completed_at=int(time.time()))

    def _validate(self, data: bytes) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        rows: list[dict[str, Any]] = []
        errors: list[dict[str, Any]] = []
        seen: set[str] = set()
        models: set[str] = set()
        limit = self.sim.config.max_batch_requests
        if len(data) > self.sim.config.max_file_bytes:
            return [], [_batch_error("file_too_large", f"input file exceeds {self.sim.config.max_file_bytes} bytes")]
        for number, line in enumerate(data.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = orjson.loads(line)
            except orjson.JSONDecodeError:
                errors.append(_batch_error("invalid_json_line", "this line is not valid JSON", number))
                continue
            custom_id = row.get("custom_id") if isinstance(row, dict) else None
            if not isinstance(custom_id, str) or custom_id in seen:
                errors.append(
                    _batch_error(
                        "duplicate_custom_id" if custom_id in seen else "missing_required_parameter",
                        f"custom_id must be a unique string, got {custom_id!r}",
                        number,
                    )
                )
                continue
            if row.get("method") != "POST" or row.get("url") != BATCH_ENDPOINT:
                errors.append(_batch_error("invalid_url", f"each line must POST to {BATCH_ENDPOINT}", number))
                continue
            if not isinstance(row.get("body"), dict):
                errors.append(_batch_error("missing_required_parameter", "'body' must be an object", number))
                continue
            seen.add(custom_id)
            models.add(str(row["body"].get("model")))
            rows.append(row)
            if len(rows) > limit:
                return [], [_batch_error("too_many_requests", f"a batch may hold at most {limit} requests", number)]
        if not rows and not errors:
            errors.append(_batch_error("empty_file", "the input file has no requests"))
        if len(models) > 1:
            errors.append(_batch_error("mixed_models", f"all requests must use one model, found {sorted(models)}"))
        return rows, errors

    def _answer_row(self, batch_id: str, row: dict[str, Any]) -> tuple[bytes, bool]:
        sim = self.sim
        request_id = sim.next_id("req_")
        line: dict[str, Any] = {
            "id": sim.next_id("batch_req_"),
            "custom_id": row["custom_id"],
            "response": None,
            "error": None,
        }
        entry = ServedRequest(
            time.time(),
            "POST",
            "batch:" + BATCH_ENDPOINT,
            None,
            request_id,
            batch_id=batch_id,
            custom_id=row["custom_id"],
        )
        try:
            request = sim.parse(orjson.dumps(row["body"]))
        except BadRequest as exc:
            status, body = 400, error_body(str(exc), "invalid_request_error", param=exc.param)
        else:
            entry.body_hash, entry.prompt_tokens = request.body_hash, request.prompt_tokens
            entry.attempt = sim.next_attempt(request)
            entry.fault = fault = sim.dice.fault(request.body_key, entry.attempt)
            if fault == "hang":
                status, body = 0, {}
                line["error"] = {
                    "code": "batch_expired",
                    "message": "This request could not be executed before the completion window expired.",
                }
            elif fault == "429":
                status, body = 429, error_body("Rate limit reached (simulated).", "requests", "rate_limit_exceeded")
            elif fault in SERVER_ERRORS:
                status, message = SERVER_ERRORS[fault]
                body = error_body(message, "server_error")
            else:
                status, body = 200, sim.completion(request, fault, sim.next_id("chatcmpl-"))
                entry.completion_tokens = body["usage"]["completion_tokens"]
                entry.cached_tokens = body["usage"]["prompt_tokens_details"]["cached_tokens"]
        if status:
            line["response"] = {"status_code": status, "request_id": request_id, "body": body}
            entry.status = status
        sim.record(entry)
        return orjson.dumps(line) + b"\n", status == 200


def _batch_error(code: str, message: str, line: int | None = None) -> dict[str, Any]:
    return {"code": code, "message": message, "param": None, "line": line}
