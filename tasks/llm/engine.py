"""Send planned requests to an OpenAI-compatible endpoint as fast as its limits allow; lose nothing.

How one run works (`run_requests`):
- leftover journals of crashed runs are loaded into DuckDB first, then requests are read in
  chunks and those that already have an `ok` response are skipped (never paid twice);
- `concurrency` worker coroutines take requests from a bounded queue (memory stays flat);
- each attempt waits for the rate limiter, is sent once (`tasks/llm/client.py`), and its row is
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
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from tenacity import AsyncRetrying, retry_if_result, stop_after_attempt, wait_random_exponential

from schemas.generation import RETRYABLE_STATUSES, GenerateConfig, GenerateStats
from schemas.settings import get_settings
from schemas.tables import RunRow
from tasks import store
from tasks.llm import client as llm_client
from tasks.llm import pricing, transport, wakeups
from tasks.llm.ratelimit import LocalRateLimiter, RateLimiter
from tasks.store.journal import DB_LOCK, Journal, replay_orphans

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


class Budget:
    """`--max-cost-usd`: an attempt may start only if spent + reserved + its own estimate fits."""

    def __init__(self, cap: float | None) -> None:
        self.cap = cap
        self.spent = 0.0
        self.reserved = 0.0

    def try_reserve(self, estimate: float) -> bool:
        """Reserve an attempt's estimated cost; False when the cap would be passed."""
        if self.cap is not None and self.spent + self.reserved + estimate > self.cap:
            return False
        self.reserved += estimate
        return True

    def settle(self, estimate: float, actual: float) -> None:
        """Replace a reservation by what the attempt really cost."""
        self.reserved -= estimate
        self.spent += actual


def _load_pending(db_path: Path, ids: Sequence[str]) -> list[tuple[Any, ...]]:
    # The requests among `ids` without an ok response, in the given order.
    with DB_LOCK, store.read(db_path) as con:
        rows = con.execute(
            "SELECT request_id, sample_type, model, output_format, messages, params, est_input_tokens, "
            "EXISTS (SELECT 1 FROM responses r WHERE r.request_id = q.request_id AND r.status = 'ok') "
            "FROM requests q WHERE request_id IN (SELECT unnest(?::VARCHAR[]))",
            [list(ids)],
        ).fetchall()
    if len(rows) < len(set(ids)):
        known = {r[0] for r in rows}
        unknown = [i for i in ids if i not in known]
        raise ValueError(f"{len(unknown)} request id(s) are not in the `requests` table of {db_path}, "
                         f"e.g. {unknown[:3]}: plan them first (tasks.prompting.plan.plan_requests)")
    order = {rid: i for i, rid in enumerate(ids)}
    # JSON columns arrive as text
    return [(r[0], r[1], r[2], r[3], json.loads(r[4]), json.loads(r[5]), r[6])
            for r in sorted(rows, key=lambda r: order[r[0]]) if not r[7]]


class _Engine:
    """The state of one `run_requests` call."""

    def __init__(self, db_path: Path, config: GenerateConfig, limiter: RateLimiter, run_id: str) -> None:
        self.db_path = db_path
        self.config = config
        self.limiter = limiter
        self.run_id = run_id
        self.api_key = config.api_key.get_secret_value() if config.api_key else None
        self.stats = GenerateStats()
        self.budget = Budget(config.max_cost_usd)
        self.avg_completion = float(config.max_tokens)  # pessimistic until answers arrive
        self.answers = 0
        self._window: float | None = None  # the wake-up window in force (tasks/llm/wakeups.py); None: not set yet
        self.journal = Journal(db_path)
        self.client = llm_client.make_client(base_url=config.base_url, api_key=self.api_key, timeout=config.timeout)
        self.sender = transport.make_sender(self.client, config.transport, config.timeout)
        self.retrying = AsyncRetrying(
            stop=stop_after_attempt(config.max_attempts),
            wait=wait_random_exponential(multiplier=config.backoff_base_s, max=config.backoff_max_s),
            retry=retry_if_result(lambda status: status in RETRYABLE_STATUSES),
            retry_error_callback=lambda state: state.outcome.result(),
        )

    def _size_wakeup_window(self) -> None:
        # Batch the loop's wake-ups while requests flow: sized by the rate limit in force (it may be
        # learned from headers) and the concurrency, which must cover what the batching holds back.
        if self.config.wakeup_window_ms is not None:
            self._set_window(self.config.wakeup_window_ms / 1000)
        else:
            self._set_window(wakeups.window_for_rate(getattr(self.limiter, "rpm", None), self.config.concurrency))

    def _set_window(self, window: float) -> None:
        if window != self._window:
            self._window = window
            wakeups.set_window(window)

    def _count(self, key: str, status: str) -> None:
        table = getattr(self.stats, key)
        table[status] = table.get(status, 0) + 1

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
        self._count("attempts_by_status", status)

    async def _attempt(self, request: tuple[Any, ...], counter: list[int]) -> str:
        request_id, type_name, model, output_format, messages, params, est_input = request
        counter[0] += 1
        estimate = pricing.cost_usd(model, est_input, int(self.avg_completion))
        if not self.budget.try_reserve(estimate):
            self._record(request_id, counter[0], "budget_exceeded",
                         error=f"not sent: --max-cost-usd {self.config.max_cost_usd} reached")
            return "budget_exceeded"
        try:
            await self.limiter.acquire(1, est_input + int(params.get("max_tokens") or 0))
            result = await llm_client.attempt(
                self.sender, model=model, messages=messages, params=params, sample_type=type_name,
                output_format=output_format, api_key=self.api_key, request_id=request_id,
            )
        except BaseException:
            self.budget.settle(estimate, 0.0)
            raise
        cost = pricing.cost_usd(model, result.prompt_tokens, result.completion_tokens, result.cached_tokens)
        self.budget.settle(estimate, cost)
        self._record(
            request_id, counter[0], result.status, http_status=result.http_status, content=result.content,
            finish_reason=result.finish_reason, prompt_tokens=result.prompt_tokens,
            completion_tokens=result.completion_tokens, cached_tokens=result.cached_tokens, cost_usd=cost,
            latency_s=round(result.latency_s, 4), error=result.error,
        )
        s = self.stats
        s.attempts += 1
        s.prompt_tokens += result.prompt_tokens
        s.completion_tokens += result.completion_tokens
        s.cached_tokens += result.cached_tokens
        s.cost_usd += cost
        if result.completion_tokens:  # the budget's estimate of an answer: the mean so far
            self.answers += 1
            self.avg_completion = s.completion_tokens / self.answers
        if result.headers:
            self.limiter.observe_headers(result.headers)
            self._size_wakeup_window()
        if result.status == "rate_limited":
            self.limiter.penalize(result.retry_after_s if result.retry_after_s is not None else 1.0)
        if result.http_status in (401, 403):  # every other request would fail the same way
            raise AuthenticationFailed(
                f"the API refused the key (HTTP {result.http_status}): {result.error}. "
                "Check OPENAI_API_KEY / --base-url; nothing else was sent after this."
            )
        return result.status

    async def _one(self, request: tuple[Any, ...]) -> None:
        counter = [0]
        status = await self.retrying(self._attempt, request, counter)
        self._count("final_by_status", status)
        if status == "ok":
            self.stats.done += 1
        else:
            self.stats.failed += 1

    async def _produce(self, ids: Sequence[str], queue: asyncio.Queue) -> None:
        for i in range(0, len(ids), LOAD_CHUNK):
            chunk = ids[i : i + LOAD_CHUNK]
            rows = await asyncio.to_thread(_load_pending, self.db_path, chunk)
            self.stats.already_ok += len(chunk) - len(rows)
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
            await self.sender.close()
            await self.client.close()
        self.stats.wall_s = time.monotonic() - started
        if on_progress is not None:
            on_progress(self.stats.model_copy(deep=True))
        return self.stats


def _write_run(db_path: Path, row: RunRow) -> None:
    with DB_LOCK, store.write(db_path) as con:
        store.insert_rows(con, RunRow, [row], on_conflict="replace")


def _run_params(config: GenerateConfig) -> dict[str, Any]:
    # Never the API key: runs rows are readable by anyone with the database.
    return config.model_dump(mode="json", exclude={"api_key"})


async def run_requests(
    request_ids: Sequence[str],
    *,
    db_path: str | Path | None = None,
    config: GenerateConfig,
    limiter: RateLimiter | None = None,
    on_progress: ProgressCallback | None = None,
    run_id: str | None = None,
) -> GenerateStats:
    """Send every request among `request_ids` that lacks an `ok` response; returns the run's counts.

    `limiter` is any `RateLimiter` (default: an in-process one from `config.rpm`/`config.tpm`,
    learning from headers). `on_progress` gets a stats snapshot at most every 0.5 s.
    """
    db = store.resolve_db(db_path)
    if config.max_cost_usd is not None and not pricing.known(config.model):
        raise ValueError(f"--max-cost-usd needs a price for model {config.model!r}: add it to {pricing.PRICES_FILE}")
    run_id = run_id or store.stable_hash("generate", time.time_ns(), length=16)
    limiter = limiter or LocalRateLimiter(config.rpm, config.tpm)
    await asyncio.to_thread(replay_orphans, db)
    started_at = store.utcnow()
    run = RunRow(run_id=run_id, kind="generate", started_at=started_at, params=_run_params(config))
    await asyncio.to_thread(_write_run, db, run)
    engine = _Engine(db, config, limiter, run_id)
    try:
        stats = await engine.run(request_ids, on_progress)
    except BaseException:
        run.status, run.finished_at = "failed", store.utcnow()
        await asyncio.to_thread(_write_run, db, run)
        raise
    run.status, run.finished_at = "completed", store.utcnow()
    run.stats = stats.model_dump(mode="json")
    await asyncio.to_thread(_write_run, db, run)
    return stats


def run_requests_sync(request_ids: Sequence[str], **kwargs: Any) -> GenerateStats:
    """`run_requests` for callers without an event loop (CLI, Prefect tasks in worker threads).

    It runs on a loop that batches its wake-ups (`tasks/llm/wakeups.py`), which roughly halves the
    client's CPU per request at a provider's pace.
    """
    return wakeups.run(run_requests(request_ids, **kwargs))


def generate(
    db_path: str | Path | None,
    config: GenerateConfig,
    *,
    limiter: RateLimiter | None = None,
    on_progress: ProgressCallback | None = None,
) -> GenerateStats:
    """Plan the missing requests for `config.types` / `config.limit` images, then send them."""
    from tasks.prompting.plan import plan_requests

    config = with_settings(config)
    if config.api_key is None and config.base_url is None:
        raise ValueError("no API key: set OPENAI_API_KEY (or --base-url for a local server that needs none)")
    db = store.resolve_db(db_path)
    plan = plan_requests(
        db, sample_types=config.types, model=config.model, output_format=config.format,
        limit_images=config.limit, temperature=config.temperature, max_tokens=config.max_tokens,
    )
    if config.mode == "batch":
        from tasks.llm.batch import run_batch

        return run_batch(db, plan.request_ids, config, on_progress=on_progress)
    return run_requests_sync(plan.request_ids, db_path=db, config=config, limiter=limiter, on_progress=on_progress)
