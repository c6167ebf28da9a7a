"""Send planned requests to an OpenAI-compatible endpoint as fast as its limits allow; lose nothing.

The engine knows no sample types: it sends `LlmRequest`s and checks each answer with the parser
registered for the request's `kind` (`tasks/llm/parsers.py`). `send` is the one entry point for
online and batch mode (`tasks/llm/batch.py`); both append their rows to the same journal, write a
`runs` row and hold `max_cost_usd` across every run of a `budget_id` (`tasks/llm/budget.py`).

How one online run works (`run_requests`):
- leftover journals of crashed runs are loaded into DuckDB first, then requests are *claimed* in
  chunks (`tasks/store/queries.py` `claim`, one short write transaction per chunk): those that
  already have an `ok` response are skipped (never paid twice), as are those whose answer made our
  own parser raise (`parse_error`: re-sending would not fix our bug) and those another engine holds
  (other processes, workers or threads on the same database); the run looks at those again every
  `claim_poll_s` until they are answered or their owner is gone, so it ends with its plan done;
- `concurrency` worker coroutines take requests from a bounded queue (memory stays flat);
- each attempt goes to an endpoint (`endpoint_for`: the run's one endpoint, or with an endpoints file
  the one with the most headroom, `tasks/llm/pool.py`); it waits for that endpoint's rate limiter, is
  sent once (`tasks/llm/client.py`), and its row (naming the endpoint) is appended to the journal before
  the worker looks at anything else; retries use tenacity's exponential backoff with full jitter on the
  retryable statuses (`schemas.generation`);
- a background loop moves journal rows into `responses` a few seconds after the first answers,
  then every `flush_interval_s`, in one short transaction (off the event loop) and reports progress;
  the same transaction releases the claims of finished requests and renews the others' leases;
- each endpoint's circuit breaker cuts it out of the run after `breaker_consecutive_failures`
  connection failures or timeouts in a row, or when its first `breaker_first_attempts` attempts all
  failed, and a 401/403 cuts it out at once: its requests go to the other endpoints. The run stops
  (`EndpointUnreachable`, `AuthenticationFailed`) when no endpoint is left: a dead endpoint costs
  seconds, not hours. Every attempt made is stored.

Why tenacity: it is the maintained retry library already in our dependencies; its
`wait_random_exponential` is the "full jitter" backoff, and `retry_if_result` lets a classified
attempt (not an exception) decide whether to retry.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypedDict, Unpack

from tenacity import AsyncRetrying, retry_if_result, stop_after_attempt, wait_random_exponential

from schemas.generation import RETRYABLE_STATUSES, EndpointCounts, GenerateConfig, GenerateStats, LlmRequest
from schemas.settings import get_settings
from schemas.tables import RunRow
from tasks import store
from tasks.llm import client as llm_client
from tasks.llm import parsers, pricing, wakeups
from tasks.llm.budget import Budget, shared_budget
from tasks.llm.endpoint import Endpoint
from tasks.llm.pool import EndpointEntry, EndpointPool, load_endpoints
from tasks.llm.ratelimit import LocalRateLimiter, RateLimiter
from tasks.store import queries
from tasks.store.journal import Journal, include_journal_rows, is_vanished_segment, owner_alive, replay_orphans

__all__ = ["AuthenticationFailed", "Budget", "EndpointUnreachable", "RunAborted", "run_requests", "run_requests_sync",
           "send", "with_settings"]

# A claim transaction scans the request-id columns of `requests` and `responses` (no key index: schemas/tables.py),
# so it costs more as the store grows: ~60 ms at 158K stored requests, ~240 ms at 1.58M. Claiming one request per
# CLAIM_ROWS_PER_REQUEST stored ones keeps that cost per request flat (bench/gen_tail.py): 1,000 per claim
# up to LLaVA's 158K stored requests, 10,000 from 10x that. A chunk's requests (messages included) are in memory.
CLAIM_CHUNK_MIN, CLAIM_CHUNK_MAX = 1000, 10_000
CLAIM_ROWS_PER_REQUEST = 158


def claim_chunk_for(stored_requests: int) -> int:
    """Requests per claim transaction for a store of `stored_requests` (GenerateConfig.claim_chunk unset)."""
    return max(CLAIM_CHUNK_MIN, min(CLAIM_CHUNK_MAX, stored_requests // CLAIM_ROWS_PER_REQUEST))


_STOPPED = "stopped"  # what `_attempt` returns once every endpoint is out: nothing was sent, nothing recorded
# what `_attempt` returns when its endpoint was cut out by that answer (a 401/403): tried again elsewhere
_MOVED = "moved"
_log = logging.getLogger("vistune.engine")
PROGRESS_EVERY_S = 0.5
FIRST_FLUSH_S = 5.0
ProgressCallback = Callable[[GenerateStats], None]


def with_settings(config: GenerateConfig) -> GenerateConfig:
    """Fill `api_key` and `base_url` left unset from env / `.env` / `vistune.toml`."""
    settings = get_settings()
    updates: dict[str, Any] = {}
    if config.api_key is None and settings.openai_api_key is not None:
        updates["api_key"] = settings.openai_api_key
    if config.base_url is None and settings.openai_base_url and config.endpoints_file is None:
        updates["base_url"] = settings.openai_base_url
    if not updates:
        return config
    # validated again (not model_copy): credentials in a URL from the environment move out of it too
    values = {name: getattr(config, name) for name in type(config).model_fields} | updates
    filled = type(config).model_validate(values)
    if config.base_url_credentials is not None and filled.base_url_credentials is None:
        filled._base_url_credentials = config.base_url_credentials
    return filled


class RunAborted(RuntimeError):
    """The run stopped at once, because every other request would fail the same way. What was sent is stored."""


class AuthenticationFailed(RunAborted):
    """The endpoint rejected the API key: the run stops at once instead of failing every request."""


class EndpointUnreachable(RunAborted):
    """The circuit breaker tripped (with an endpoints file: every endpoint's): too many failed attempts in a row,
    or every first one."""


@dataclass
class _Tries:
    """A request's attempts in this run: how many, and the endpoint where the last one failed."""

    made: int = 0
    failed_at: Endpoint | None = None


class _Engine:
    """The state of one `run_requests` call."""

    def __init__(
        self, db_path: Path, config: GenerateConfig, limiter: RateLimiter, run_id: str, budget: Budget,
        endpoints: Sequence[EndpointEntry] | None = None,
    ) -> None:
        self.db_path = db_path
        self.config = config
        self.run_id = run_id
        self.stats = GenerateStats()
        self.budget = budget
        self.avg_completion = float(config.max_tokens)  # pessimistic until answers arrive
        self.answers = 0
        self._window: float | None = None  # the wake-up window in force (tasks/llm/wakeups.py); None: not set yet
        # first: a bad endpoint config fails before any file exists
        self.pool = EndpointPool.open(config, limiter, endpoints)
        if self.pool.several:  # every endpoint of the file is in the counts, also one that never got a call
            for member in self.pool.members:
                self.stats.by_endpoint[member.endpoint.name] = EndpointCounts()
        self.journal = Journal(db_path)
        self.owner = self.journal.owner  # claims are held in the journal owner's name (tasks/store/queries.py)
        self._claimed: set[str] = set()  # claimed by this engine and not finished
        self._finished: list[str] = []  # finished since the last flush: their claims go with that flush
        self._lost: set[str] = set()  # claims another engine took over (this one outlived its lease)
        self._renewed = time.monotonic()
        self._claiming: asyncio.Future | None = None  # the claim transaction in progress, if any
        self._tripped: EndpointUnreachable | None = None  # every endpoint is out: nothing more is sent
        self.retrying = AsyncRetrying(
            stop=stop_after_attempt(config.max_attempts),
            wait=wait_random_exponential(multiplier=config.backoff_base_s, max=config.backoff_max_s),
            retry=retry_if_result(lambda status: status in RETRYABLE_STATUSES or status == _MOVED),
            retry_error_callback=lambda state: state.outcome.result(),
        )

    def endpoint_for(self, request: LlmRequest, avoid: Endpoint | None = None) -> Endpoint | None:
        """Where the next attempt at `request` goes: the live endpoint with the most headroom (None: none is left).

        `avoid`, where its last attempt failed, is skipped while another endpoint is live.
        """
        tokens = request.est_input_tokens + int(request.params.get("max_tokens") or 0)
        return self.pool.choose(tokens, avoid)

    def _size_wakeup_window(self) -> None:
        # Batch the loop's wake-ups while requests flow: sized by the rate limit in force (it may be
        # learned from headers; with several endpoints, theirs together) and the concurrency, which must
        # cover what the batching holds back.
        if self.config.wakeup_window_ms is not None:
            self._set_window(self.config.wakeup_window_ms / 1000)
        else:
            self._set_window(wakeups.window_for_rate(self.pool.rpm, self.config.concurrency))

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

    def _breaker(self, endpoint: Endpoint, status: str, error: str | None) -> None:
        # Count the attempt on its endpoint's breaker; cut the endpoint out when it looks dead.
        member = self.pool.member(endpoint)
        if member.out is not None or self._tripped is not None:
            return
        what = member.breaker.count(status, self.config, endpoint.base_url or "api.openai.com")
        if what is not None:
            self._cut_out(endpoint, f"{what}; last error: {error or status}")

    def _cut_out(self, endpoint: Endpoint, reason: str, *, auth: bool = False) -> None:
        # Take `endpoint` out of the run: its requests go to the others. With none left the run stops
        # (a rejected key at once, a dead endpoint once the calls in flight are stored).
        member = self.pool.member(endpoint)
        if member.out is not None:
            return
        member.out = reason
        self.stats.by_endpoint.setdefault(endpoint.name, EndpointCounts()).cut_out = reason
        left = self.pool.live
        if left:
            _log.warning("endpoint %r (%s) is cut out of the run: %s. Its requests go to the %d other endpoint(s): %s",
                         endpoint.name, endpoint.base_url or "api.openai.com", reason, len(left),
                         ", ".join(m.endpoint.name for m in left))
            return
        done = "Nothing more is sent; every attempt is stored, and a rerun sends only what has no good answer."
        if self.pool.several:
            outs = "; ".join(f"{m.endpoint.name}: {m.out}" for m in self.pool.members)
            text = f"stopped: every endpoint is out of the run ({outs}). {done} Check the endpoints in " \
                   f"{self.pool.source}, their key variables, and that they are up."
        elif auth:
            text = f"{reason}. Check OPENAI_API_KEY / --base-url; nothing else was sent after this."
        else:
            text = f"stopped: {reason}. {done} Check --base-url / OPENAI_BASE_URL and that the endpoint is up."
        if auth:
            raise AuthenticationFailed(text)
        self._tripped = EndpointUnreachable(text)

    async def _attempt(self, request: LlmRequest, tries: _Tries) -> str:
        while True:
            if self._tripped is not None:  # every endpoint is out: send nothing more (calls in flight still finish)
                return _STOPPED
            endpoint = self.endpoint_for(request, tries.failed_at)
            if endpoint is None:
                return _STOPPED
            member = self.pool.member(endpoint)
            estimate = endpoint.cost_usd(request.model, request.est_input_tokens, int(self.avg_completion))
            if not self.budget.try_reserve(estimate):
                tries.made += 1
                self._record(request.request_id, tries.made, "budget_exceeded", endpoint=endpoint.name,
                             error=f"not sent: --max-cost-usd {self.config.max_cost_usd} reached")
                return "budget_exceeded"
            member.waiting += 1
            try:
                await endpoint.limiter.acquire(1, request.est_input_tokens + int(request.params.get("max_tokens") or 0))
            except BaseException:
                self.budget.settle(estimate, 0.0)
                raise
            finally:
                member.waiting -= 1
            if member.out is None:
                break
            self.budget.settle(estimate, 0.0)  # cut out while this request waited for it: nothing sent, choose again
        tries.made += 1
        member.in_flight += 1
        try:
            sent = request if endpoint.model is None else request._replace(model=endpoint.model_for(request.model))
            result = await llm_client.attempt(endpoint.sender, sent, api_key=endpoint.api_key,
                                             secrets=endpoint.secrets)
        except BaseException:
            self.budget.settle(estimate, 0.0)
            raise
        finally:
            member.in_flight -= 1
        cost = endpoint.cost_usd(request.model, result.prompt_tokens, result.completion_tokens, result.cached_tokens)
        self.budget.settle(estimate, cost)
        self._record(
            request.request_id, tries.made, result.status, http_status=result.http_status, content=result.content,
            finish_reason=result.finish_reason, prompt_tokens=result.prompt_tokens,
            completion_tokens=result.completion_tokens, cached_tokens=result.cached_tokens, cost_usd=cost,
            latency_s=round(result.latency_s, 4), error=result.error, endpoint=endpoint.name,
        )
        if result.completion_tokens:  # the budget's estimate of an answer: the mean so far
            self.answers += 1
            self.avg_completion = self.stats.completion_tokens / self.answers
        if result.headers:
            endpoint.limiter.observe_headers(result.headers)
            self._size_wakeup_window()
        if result.status == "rate_limited":
            endpoint.limiter.penalize(result.retry_after_s if result.retry_after_s is not None else 1.0)
        if result.status != "ok":
            tries.failed_at = endpoint
        if result.http_status in (401, 403):  # every other request would fail the same way there
            code = f"HTTP {result.http_status}"
            error = result.error or code
            # the client's error text starts with "HTTP 401: " already: say it once
            refused = f"the API refused the key ({error if error.startswith(code) else f'{code}: {error}'})"
            if endpoint.key_env:
                refused += f" of {endpoint.key_env}"
            self._cut_out(endpoint, refused, auth=True)  # raises AuthenticationFailed when no endpoint is left
            return _MOVED
        self._breaker(endpoint, result.status, result.error)
        return result.status

    async def _one(self, request: LlmRequest) -> None:
        rid = request.request_id
        if rid in self._lost:  # another engine took the claim over: it sends this one
            self._lost.discard(rid)
            self._claimed.discard(rid)
            self.stats.taken_over += 1
            return
        status = await self.retrying(self._attempt, request, _Tries())
        if status == _STOPPED:  # not finished: its claim goes with the others when the run ends
            return
        if status == _MOVED:  # its last attempt was refused by a key that was then cut out
            status = "client_error"
        self._claimed.discard(rid)
        self._finished.append(rid)  # after its last row is journaled: the next flush stores it, then releases it
        self.stats.final_by_status[status] = self.stats.final_by_status.get(status, 0) + 1
        if status == "ok":
            self.stats.done += 1
        else:
            self.stats.failed += 1

    def _claim(self, ids: Sequence[str], in_journals: bool = False) -> queries.Claimed:
        # One short write transaction: which of `ids` this engine sends (tasks/store/queries.py `claim`).
        # `in_journals`: answers other live engines journaled but have not flushed count as answered
        # (used while waiting for their claims, so a waiting run ends as soon as the answers exist).
        replay_orphans(self.db_path)  # a dead engine's answers are stored and its claims freed first
        for tries_left in (2, 1, 0):
            try:
                with store.write(self.db_path) as con:
                    if in_journals:
                        include_journal_rows(con, self.db_path)  # shadows `responses` in this connection only
                    got = queries.claim(con, ids, self.owner, lease_s=self.config.claim_lease_s,
                                        now=store.utcnow(), run_id=self.run_id,
                                        owner_alive=lambda owner: owner_alive(self.db_path, owner))
                    if got.missing:  # raised inside the transaction: nothing is claimed
                        raise ValueError(f"{len(got.missing)} request id(s) are not in the `requests` table of "
                                         f"{self.db_path}, e.g. {got.missing[:3]}: plan them first")
                    for kind in {r.kind for r in got.requests}:
                        parsers.parser_for(kind)  # an unknown kind fails here, before anything is paid
                return got
            except Exception as exc:  # a segment flushed away while it was read: list them again
                if not (in_journals and tries_left and is_vanished_segment(exc)):
                    raise
        raise AssertionError("unreachable")

    async def _claim_async(self, ids: Sequence[str], in_journals: bool = False) -> queries.Claimed:
        # Shielded: a cancelled run still waits for (and then releases) a claim transaction in progress.
        self._claiming = asyncio.get_running_loop().run_in_executor(None, self._claim, ids, in_journals)
        return await asyncio.shield(self._claiming)

    async def _enqueue(self, got: queries.Claimed, queue: asyncio.Queue) -> list[str]:
        # Count what needs no sending, queue what was claimed; returns the ids held by other engines.
        self.stats.held_parse_error += len(got.held)
        self.stats.already_ok += len(got.answered)
        for request in got.requests:
            self._claimed.add(request.request_id)
            await queue.put(request)
        return got.busy

    async def _produce(self, ids: Sequence[str], queue: asyncio.Queue) -> None:
        # The first claim is small, so sending starts soon; it also counts the stored requests for the others.
        chunk = self.config.claim_chunk or CLAIM_CHUNK_MIN
        waiting: list[str] = []
        start = 0
        while start < len(ids) and self._tripped is None:
            got = await self._claim_async(ids[start : start + chunk])
            if start == 0:  # sending starts now; the first claim itself was not held to a window boundary
                self._size_wakeup_window()
            start += chunk
            chunk = self.config.claim_chunk or claim_chunk_for(got.stored_requests)
            waiting += await self._enqueue(got, queue)
        while waiting and self._tripped is None:  # requests other engines hold: wait until answered or owner gone
            await asyncio.sleep(self.config.claim_poll_s)
            still: list[str] = []
            for i in range(0, len(waiting), chunk):
                still += await self._enqueue(await self._claim_async(waiting[i : i + chunk], True), queue)
            waiting = still
        for _ in range(self.config.concurrency):
            await queue.put(None)

    async def _work(self, queue: asyncio.Queue) -> None:
        while (request := await queue.get()) is not None:
            if self._tripped is None:  # after a trip the queue is drained, so the producer can stop
                await self._one(request)

    async def _flush(self, *, release_all: bool = False) -> None:
        # Move journal rows into `responses`; in the same transaction release the claims of the requests
        # finished before it (their rows are in it) and renew the leases of the others.
        finished, self._finished = self._finished, []
        before = set(self._claimed)
        lease, owner = self.config.claim_lease_s, self.owner
        held: set[str] | None = None

        def settle(con: Any) -> None:
            nonlocal held
            if release_all:
                queries.release_claims(con, owner)
            else:
                queries.release_claims(con, owner, finished)
                held = queries.renew_claims(con, owner, lease_s=lease, now=store.utcnow())

        try:
            await asyncio.to_thread(self.journal.flush, settle)
        except BaseException:
            self._finished = finished + self._finished  # released by a later flush
            raise
        self._renewed = time.monotonic()
        if held is not None:  # claims that are gone were taken over after our lease expired: do not send those
            self._lost |= (before & self._claimed) - held

    async def _flush_loop(self, on_progress: ProgressCallback | None, started: float) -> None:
        last_flush = time.monotonic()
        interval = min(FIRST_FLUSH_S, self.config.flush_interval_s)  # the first answers show up soon
        while True:
            await asyncio.sleep(min(PROGRESS_EVERY_S, self.config.flush_interval_s))
            due = time.monotonic() - last_flush >= interval and self.journal.pending > 0
            renew = time.monotonic() - self._renewed >= self.config.claim_lease_s / 3
            if due or renew or self.journal.pending >= self.config.flush_rows:
                await self._flush()
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
            if self._tripped is not None:  # after the calls in flight were stored
                raise self._tripped
        finally:
            self._set_window(0.0)  # the last flush and closes answer at once, not on window boundaries
            flusher.cancel()
            await asyncio.gather(flusher, return_exceptions=True)
            if self._claiming is not None:  # a claim committing now must be released below
                await asyncio.wait([self._claiming])
            try:
                await self._flush(release_all=True)  # every row stored, then every claim of this engine freed
            finally:
                await asyncio.to_thread(self.journal.close)
                await self.pool.close()
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


def start_run(
    db_path: Path, config: GenerateConfig, run_id: str, endpoints: Sequence[EndpointEntry] | None = None
) -> RunRow:
    """Write the `runs` row of a starting generation run (online or batch) and return it."""
    # Never the API key, nor credentials of the URL (GenerateConfig keeps them out of `base_url`): runs
    # rows are readable by anyone with the database. The budget id is always filled in: it is how
    # later runs find the money this one spent. The endpoints of a file as read (key variable names only).
    params = config.model_dump(mode="json", exclude={"api_key"}) | {"budget_id": budget_id_of(config, run_id)}
    if endpoints:
        params["endpoints"] = [e.spec.model_dump(mode="json", exclude_none=True) for e in endpoints]
    run = RunRow(run_id=run_id, kind="generate", started_at=store.utcnow(), params=params)
    _write_run(db_path, run)
    return run


def finish_run(db_path: Path, run: RunRow, stats: GenerateStats | None) -> None:
    """Mark a run completed with its stats, or failed when `stats` is None."""
    run.status, run.finished_at = ("completed" if stats is not None else "failed"), store.utcnow()
    if stats is not None:
        run.stats = stats.model_dump(mode="json")
    _write_run(db_path, run)


def check_budget_model(config: GenerateConfig, endpoints: Sequence[EndpointEntry] | None = None) -> None:
    """A cap needs a price for the model (for each endpoint's model): refuse before anything is sent."""
    if config.max_cost_usd is None:
        return
    for entry in endpoints or [None]:
        model = config.model if entry is None else entry.spec.price_model or entry.spec.model or config.model
        if not pricing.known(model):
            where = "" if entry is None else f" (endpoint {entry.spec.name!r}: set its price_model or add the model)"
            raise ValueError(f"--max-cost-usd needs a price for model {model!r}{where}: "
                             f"add it to {pricing.PRICES_FILE}")


def new_run_id() -> str:
    """A fresh run id."""
    return store.stable_hash("generate", time.time_ns(), length=16)


class SendOptions(TypedDict, total=False):
    """Where and how a send runs; the same options for `send`, `run_requests` and `run_requests_sync`."""

    db_path: str | Path | None  # default: the VISTUNE_DB setting
    limiter: RateLimiter | None  # online only; default: an in-process limiter from config.rpm/tpm
    on_progress: ProgressCallback | None  # a stats snapshot at most every 0.5 s
    run_id: str | None  # default: a fresh id


async def run_requests(
    request_ids: Sequence[str], *, config: GenerateConfig, **options: Unpack[SendOptions]
) -> GenerateStats:
    """Send every request among `request_ids` that lacks an `ok` response online; returns the run's counts.

    `limiter` is any `RateLimiter` (default: an in-process one from `config.rpm`/`config.tpm`,
    learning from headers). With `config.endpoints_file` each endpoint has its own limiter: a bucket of
    `limiter` when it offers `for_endpoint` (`SharedRateLimiter`), else an in-process one.
    `on_progress` gets a stats snapshot at most every 0.5 s. Requests other
    engines hold are waited for, not sent (`claim`). Raises `RunAborted` (`AuthenticationFailed`,
    `EndpointUnreachable`) when sending more is pointless; the run is then marked failed.
    """
    db = store.resolve_db(options.get("db_path"))
    # an endpoints file is read (and its key variables looked up) where the run runs: a Prefect worker's environment
    endpoints = load_endpoints(config.endpoints_file) if config.endpoints_file else None
    check_budget_model(config, endpoints)
    run_id = options.get("run_id") or new_run_id()
    limiter = options.get("limiter") or LocalRateLimiter(config.rpm, config.tpm)
    await asyncio.to_thread(replay_orphans, db)
    run = await asyncio.to_thread(start_run, db, config, run_id, endpoints)
    stats: GenerateStats | None = None
    try:
        with shared_budget(db, budget_id_of(config, run_id), config.max_cost_usd) as budget:
            engine = _Engine(db, config, limiter, run_id, budget, endpoints)
            stats = await engine.run(request_ids, options.get("on_progress"))
    finally:
        await asyncio.to_thread(finish_run, db, run, stats)
    return stats


def run_requests_sync(
    request_ids: Sequence[str], *, config: GenerateConfig, **options: Unpack[SendOptions]
) -> GenerateStats:
    """`run_requests` for callers without an event loop (CLI, Prefect tasks in worker threads).

    It runs on a loop that batches its wake-ups (`tasks/llm/wakeups.py`), which roughly halves the
    client's CPU per request at a provider's pace.
    """
    return wakeups.run(run_requests(request_ids, config=config, **options))


def send(request_ids: Sequence[str], *, config: GenerateConfig, **options: Unpack[SendOptions]) -> GenerateStats:
    """Send the requests among `request_ids` that lack an `ok` answer, online or as batches (`config.mode`).

    Either way every answer is journaled and stored the same way, a `runs` row is written and
    `config.max_cost_usd` holds across the runs of `config.budget_id`. `limiter` applies online only.
    """
    if config.mode == "batch":
        from tasks.llm.batch import run_batch  # the batch module needs the sync openai client

        return run_batch(store.resolve_db(options.get("db_path")), request_ids, config,
                         on_progress=options.get("on_progress"), run_id=options.get("run_id"))
    return run_requests_sync(request_ids, config=config, **options)

