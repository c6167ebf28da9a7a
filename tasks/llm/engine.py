"""Send planned requests to an OpenAI-compatible endpoint as fast as its limits allow; lose nothing.

The engine knows no sample types: it sends `LlmRequest`s and checks each answer with the parser
registered for the request's `kind` (`tasks/llm/parsers.py`). `send` is the one entry point for
online and batch mode (`tasks/llm/batch.py`); both append their rows to the same journal, write a
`runs` row and hold `max_cost_usd` across every run of a `budget_id` (`tasks/llm/budget.py`).

How one online run works (`run_requests`):
- leftover journals of crashed runs are loaded into DuckDB first, then requests are read in
  chunks and those that already have an `ok` response are skipped (never paid twice), as are
  those whose answer made our own parser raise (`parse_error`: re-sending would not fix our bug);
- `concurrency` worker coroutines take requests from a bounded queue (memory stays flat);
- each request goes to its endpoint (`endpoint_for`, `tasks/llm/endpoint.py`); each attempt waits
  for the endpoint's rate limiter, is sent once (`tasks/llm/client.py`), and its row is
  appended to the journal before the worker looks at anything else; retries use tenacity's
  exponential backoff with full jitter on the retryable statuses (`schemas.generation`);
- a background loop moves journal rows into `responses` a few seconds after the first answers,
  then every `flush_interval_s`, in one short transaction (off the event loop) and reports progress.

Why tenacity: it is the maintained retry library already in our dependencies; its
`wait_random_exponential` is the "full jitter" backoff, and `retry_if_result` lets a classified
attempt (not an exception) decide whether to retry.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from tenacity import AsyncRetrying, retry_if_result, stop_after_attempt, wait_random_exponential

from schemas.generation import RETRYABLE_STATUSES, GenerateConfig, GenerateStats, LlmRequest
from schemas.settings import get_settings
from schemas.tables import RunRow
from tasks import store
from tasks.llm import client as llm_client
from tasks.llm import parsers, pricing, wakeups
from tasks.llm.budget import Budget, shared_budget
from tasks.llm.endpoint import Endpoint
from tasks.llm.ratelimit import LocalRateLimiter, RateLimiter
from tasks.store import queries
from tasks.store.journal import Journal, replay_orphans

__all__ = ["AuthenticationFailed", "Budget", "run_requests", "run_requests_sync", "send", "with_settings"]

LOAD_CHUNK = 1000
PROGRESS_EVERY_S = 0.5
FIRST_FLUSH_S = 5.0
ProgressCallback = Callable[[GenerateStats], None]


def with_settings(config: GenerateConfig) -> GenerateConfig:
    """Fill `api_key` and `base_url` left unset from env / `.env` / `vistune.toml`."""
    settings = get_settings()
    updates: dict[str, Any] = {}
    if config.api_key is None and settings.openai_api_key is not None:
        updates["api_key"] = settings.openai_api_key
    if config.base_url is None and settings.openai_base_url:
        updates["base_url"] = settings.openai_base_url
    return config.model_copy(update=updates) if updates else config


class AuthenticationFailed(RuntimeError):
    """The endpoint rejected the API key: the run stops at once instead of failing every request."""


def _load_pending(db_path: Path, ids: Sequence[str]) -> tuple[list[LlmRequest], int]:
    # The requests among `ids` to send, in the given order, and how many are held for a parse_error.
    with store.read(db_path) as con:
        found = queries.unanswered(con, ids)
    if found.missing:
        raise ValueError(f"{len(found.missing)} request id(s) are not in the `requests` table of {db_path}, "
                         f"e.g. {found.missing[:3]}: plan them first")
    for kind in {r.kind for r in found.requests}:
        parsers.parser_for(kind)  # an unknown kind fails here, before anything is paid
    return found.requests, len(found.held)


class _Engine:
    """The state of one `run_requests` call."""

    def __init__(
        self, db_path: Path, config: GenerateConfig, limiter: RateLimiter, run_id: str, budget: Budget
    ) -> None:
        self.db_path = db_path
        self.config = config
        self.run_id = run_id
        self.stats = GenerateStats()
        self.budget = budget
        self.avg_completion = float(config.max_tokens)  # pessimistic until answers arrive
        self.answers = 0
        self._window: float | None = None  # the wake-up window in force (tasks/llm/wakeups.py); None: not set yet
        self.journal = Journal(db_path)
        self.endpoint = Endpoint.open(config, limiter)
        self.retrying = AsyncRetrying(
            stop=stop_after_attempt(config.max_attempts),
            wait=wait_random_exponential(multiplier=config.backoff_base_s, max=config.backoff_max_s),
            retry=retry_if_result(lambda status: status in RETRYABLE_STATUSES),
            retry_error_callback=lambda state: state.outcome.result(),
        )

    def endpoint_for(self, request: LlmRequest) -> Endpoint:
        """Where `request` is sent: the one default endpoint for now (the seam for endpoint pools)."""
        return self.endpoint

    def _size_wakeup_window(self) -> None:
        # Batch the loop's wake-ups while requests flow: sized by the rate limit in force (it may be
        # learned from headers) and the concurrency, which must cover what the batching holds back.
        if self.config.wakeup_window_ms is not None:
            self._set_window(self.config.wakeup_window_ms / 1000)
        else:
            rpm = getattr(self.endpoint.limiter, "rpm", None)
            self._set_window(wakeups.window_for_rate(rpm, self.config.concurrency))

    def _set_window(self, window: float) -> None:
        if window != self._window:
            self._window = window
            wakeups.set_window(window)

    def _record(self, request_id: str, attempt_no: int, status: str, **fields: Any) -> None:
        row = {
            "response_id": store.stable_hash(request_id, self.run_id, attempt_no),
            "request_id": request_id,
            "attempt": attempt_no,
            "status": status,
            "mode": "online",
            "created_at": store.utcnow().isoformat(),
            "run_id": self.run_id,
            **fields,
        }
        self.journal.append(row)
        self.stats.add_response(row)

    async def _attempt(self, request: LlmRequest, counter: list[int]) -> str:
        endpoint = self.endpoint_for(request)
        counter[0] += 1
        estimate = endpoint.cost_usd(request.model, request.est_input_tokens, int(self.avg_completion))
        if not self.budget.try_reserve(estimate):
            self._record(request.request_id, counter[0], "budget_exceeded",
                         error=f"not sent: --max-cost-usd {self.config.max_cost_usd} reached")
            return "budget_exceeded"
        try:
            await endpoint.limiter.acquire(1, request.est_input_tokens + int(request.params.get("max_tokens") or 0))
            result = await llm_client.attempt(endpoint.sender, request, api_key=endpoint.api_key)
        except BaseException:
            self.budget.settle(estimate, 0.0)
            raise
        cost = endpoint.cost_usd(request.model, result.prompt_tokens, result.completion_tokens, result.cached_tokens)
        self.budget.settle(estimate, cost)
        self._record(
            request.request_id, counter[0], result.status, http_status=result.http_status, content=result.content,
            finish_reason=result.finish_reason, prompt_tokens=result.prompt_tokens,
            completion_tokens=result.completion_tokens, cached_tokens=result.cached_tokens, cost_usd=cost,
            latency_s=round(result.latency_s, 4), error=result.error,
        )
        if result.completion_tokens:  # the budget's estimate of an answer: the mean so far
            self.answers += 1
            self.avg_completion = self.stats.completion_tokens / self.answers
        if result.headers:
            endpoint.limiter.observe_headers(result.headers)
            self._size_wakeup_window()
        if result.status == "rate_limited":
            endpoint.limiter.penalize(result.retry_after_s if result.retry_after_s is not None else 1.0)
        if result.http_status in (401, 403):  # every other request would fail the same way
            raise AuthenticationFailed(
                f"the API refused the key (HTTP {result.http_status}): {result.error}. "
                "Check OPENAI_API_KEY / --base-url; nothing else was sent after this."
            )
        return result.status

    async def _one(self, request: LlmRequest) -> None:
        counter = [0]
        status = await self.retrying(self._attempt, request, counter)
        self.stats.final_by_status[status] = self.stats.final_by_status.get(status, 0) + 1
        if status == "ok":
            self.stats.done += 1
        else:
            self.stats.failed += 1

    async def _produce(self, ids: Sequence[str], queue: asyncio.Queue) -> None:
        for i in range(0, len(ids), LOAD_CHUNK):
            chunk = ids[i : i + LOAD_CHUNK]
            rows, held = await asyncio.to_thread(_load_pending, self.db_path, chunk)
            self.stats.held_parse_error += held
            self.stats.already_ok += len(chunk) - len(rows) - held
            if i == 0:  # sending starts now; the first load itself was not held to a window boundary
                self._size_wakeup_window()
            for row in rows:
                await queue.put(row)
        for _ in range(self.config.concurrency):
            await queue.put(None)

    async def _work(self, queue: asyncio.Queue) -> None:
        while (request := await queue.get()) is not None:
            await self._one(request)

    async def _flush_loop(self, on_progress: ProgressCallback | None, started: float) -> None:
        last_flush = time.monotonic()
        interval = min(FIRST_FLUSH_S, self.config.flush_interval_s)  # the first answers show up soon
        while True:
            await asyncio.sleep(min(PROGRESS_EVERY_S, self.config.flush_interval_s))
            due = time.monotonic() - last_flush >= interval and self.journal.pending > 0
            if due or self.journal.pending >= self.config.flush_rows:
                await asyncio.to_thread(self.journal.flush)
                last_flush, interval = time.monotonic(), self.config.flush_interval_s
            if on_progress is not None:
                self.stats.wall_s = time.monotonic() - started
                on_progress(self.stats.model_copy(deep=True))

    async def run(self, ids: Sequence[str], on_progress: ProgressCallback | None) -> GenerateStats:
        started = time.monotonic()
        self.stats.requests = len(ids)
        queue: asyncio.Queue = asyncio.Queue(maxsize=self.config.concurrency * 2)
        flusher = asyncio.create_task(self._flush_loop(on_progress, started))
        try:
            try:
                async with asyncio.TaskGroup() as group:  # a failing worker cancels the others
                    group.create_task(self._produce(ids, queue))
                    for _ in range(self.config.concurrency):
                        group.create_task(self._work(queue))
            except BaseExceptionGroup as failed:  # surface the cause, not asyncio's wrapper
                raise failed.exceptions[0] from None
        finally:
            self._set_window(0.0)  # the last flush and closes answer at once, not on window boundaries
            flusher.cancel()
            await asyncio.gather(flusher, return_exceptions=True)
            await asyncio.to_thread(self.journal.close)
            await self.endpoint.close()
        self.stats.wall_s = time.monotonic() - started
        if on_progress is not None:
            on_progress(self.stats.model_copy(deep=True))
        return self.stats


def _write_run(db_path: Path, row: RunRow) -> None:
    with store.write(db_path) as con:
        store.insert_rows(con, RunRow, [row], on_conflict="replace")


def budget_id_of(config: GenerateConfig, run_id: str) -> str:
    """The budget a run spends from: `config.budget_id`, else its own run id."""
    return config.budget_id or run_id


def start_run(db_path: Path, config: GenerateConfig, run_id: str) -> RunRow:
    """Write the `runs` row of a starting generation run (online or batch) and return it."""
    # Never the API key: runs rows are readable by anyone with the database. The budget id is
    # always filled in: it is how later runs find the money this one spent.
    params = config.model_dump(mode="json", exclude={"api_key"}) | {"budget_id": budget_id_of(config, run_id)}
    run = RunRow(run_id=run_id, kind="generate", started_at=store.utcnow(), params=params)
    _write_run(db_path, run)
    return run


def finish_run(db_path: Path, run: RunRow, stats: GenerateStats | None) -> None:
    """Mark a run completed with its stats, or failed when `stats` is None."""
    run.status, run.finished_at = ("completed" if stats is not None else "failed"), store.utcnow()
    if stats is not None:
        run.stats = stats.model_dump(mode="json")
    _write_run(db_path, run)


def check_budget_model(config: GenerateConfig) -> None:
    """A cap needs a price for the model: refuse before anything is sent."""
    if config.max_cost_usd is not None and not pricing.known(config.model):
        raise ValueError(f"--max-cost-usd needs a price for model {config.model!r}: add it to {pricing.PRICES_FILE}")


def new_run_id() -> str:
    """A fresh run id."""
    return store.stable_hash("generate", time.time_ns(), length=16)


async def run_requests(
    request_ids: Sequence[str],
    *,
    db_path: str | Path | None = None,
    config: GenerateConfig,
    limiter: RateLimiter | None = None,
    on_progress: ProgressCallback | None = None,
    run_id: str | None = None,
) -> GenerateStats:
    """Send every request among `request_ids` that lacks an `ok` response online; returns the run's counts.

    `limiter` is any `RateLimiter` (default: an in-process one from `config.rpm`/`config.tpm`,
    learning from headers). `on_progress` gets a stats snapshot at most every 0.5 s.
    """
    db = store.resolve_db(db_path)
    check_budget_model(config)
    run_id = run_id or new_run_id()
    limiter = limiter or LocalRateLimiter(config.rpm, config.tpm)
    await asyncio.to_thread(replay_orphans, db)
    run = await asyncio.to_thread(start_run, db, config, run_id)
    stats: GenerateStats | None = None
    try:
        with shared_budget(db, budget_id_of(config, run_id), config.max_cost_usd) as budget:
            stats = await _Engine(db, config, limiter, run_id, budget).run(request_ids, on_progress)
    finally:
        await asyncio.to_thread(finish_run, db, run, stats)
    return stats


def run_requests_sync(request_ids: Sequence[str], **kwargs: Any) -> GenerateStats:
    """`run_requests` for callers without an event loop (CLI, Prefect tasks in worker threads).

    It runs on a loop that batches its wake-ups (`tasks/llm/wakeups.py`), which roughly halves the
    client's CPU per request at a provider's pace.
    """
    return wakeups.run(run_requests(request_ids, **kwargs))


def send(
    request_ids: Sequence[str],
    *,
    db_path: str | Path | None = None,
    config: GenerateConfig,
    limiter: RateLimiter | None = None,
    on_progress: ProgressCallback | None = None,
    run_id: str | None = None,
) -> GenerateStats:
    """Send the requests among `request_ids` that lack an `ok` answer, online or as batches (`config.mode`).

    Either way every answer is journaled and stored the same way, a `runs` row is written and
    `config.max_cost_usd` holds across the runs of `config.budget_id`. `limiter` applies online only.
    """
    if config.mode == "batch":
        from tasks.llm.batch import run_batch  # the batch module needs the sync openai client

        return run_batch(store.resolve_db(db_path), request_ids, config, on_progress=on_progress, run_id=run_id)
    return run_requests_sync(request_ids, db_path=db_path, config=config, limiter=limiter,
                             on_progress=on_progress, run_id=run_id)

