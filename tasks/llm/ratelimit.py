"""Request and token rate limits: the protocol every limiter follows, and the in-process one.

The generation engine only talks to a `RateLimiter`: it calls `acquire` before each HTTP
attempt, `observe_headers` after each response and `penalize` after a 429. The default
`LocalRateLimiter` below serves one process; `tasks/llm/shared_limiter.py` serves several worker
processes on one machine with the same three methods.

Why aiolimiter: it is a small, maintained asyncio leaky bucket with fair FIFO waiting and
amounts per acquisition (tokens), which is exactly an RPM/TPM limit; a hand-written bucket would
re-implement its wake-up ordering.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Mapping
from typing import Protocol, runtime_checkable

from aiolimiter import AsyncLimiter


@runtime_checkable
class RateLimiter(Protocol):
    """What the generation engine needs from a limiter (one process or shared by many)."""

    async def acquire(self, requests: int = 1, tokens: int = 0) -> None:
        """Wait until `requests` calls carrying `tokens` tokens may be sent, then take them."""
        ...

    def penalize(self, retry_after_s: float) -> None:
        """The server said 429: nobody sends anything for `retry_after_s` seconds."""
        ...

    def observe_headers(self, headers: Mapping[str, str]) -> None:
        """Learn limits from a response's `x-ratelimit-*` headers (may be a no-op)."""
        ...


_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str | None) -> float | None:
    """OpenAI's reset durations (`"1s"`, `"6m0s"`, `"250ms"`, or plain seconds) in seconds."""
    if not text:
        return None
    text = text.strip()
    try:
        return float(text)
    except ValueError:
        pass
    parts = _DURATION_PART.findall(text)
    return sum(float(n) * _UNIT_S[u] for n, u in parts) if parts else None


def retry_after_s(headers: Mapping[str, str], default: float = 1.0) -> float:
    """How long a 429 asks us to wait: `retry-after-ms`, else `Retry-After` seconds, else default."""
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return max(float(ms) / 1000, 0.0)
        except ValueError:
            pass
    seconds = parse_duration(headers.get("retry-after"))
    return default if seconds is None else max(seconds, 0.0)


class LocalRateLimiter:
    """RPM/TPM limits for one process, configured or learned from `x-ratelimit-*` headers.

    `burst_s` is how many seconds' worth of requests may go at once: a small burst keeps every
    sliding minute within the limit (a full-minute bucket would send 600 calls in the first
    second and then stall). `headroom` < 1 leaves a margin under limits learned from headers.
    """

    def __init__(
        self,
        rpm: float | None = None,
        tpm: float | None = None,
        *,
        burst_s: float = 1.0,
        headroom: float = 1.0,
        learn: bool = True,
    ) -> None:
        self.burst_s = burst_s
        self.headroom = headroom
        self.learn = learn
        self._rpm_fixed = rpm is not None
        self._tpm_fixed = tpm is not None
        self._requests = self._bucket(rpm)
        self._tokens: AsyncLimiter | None = None
        self._tpm: float | None = None
        self._set_tpm(tpm)
        self._resume_at = 0.0
        self.penalties = 0

    @property
    def rpm(self) -> float | None:
        """The request limit in force (None: unlimited so far)."""
        return None if self._requests is None else self._requests.max_rate * 60 / self._requests.time_period

    @property
    def tpm(self) -> float | None:
        """The token limit in force (None: unlimited so far)."""
        return self._tpm

    def _bucket(self, per_minute: float | None) -> AsyncLimiter | None:
        if per_minute is None:
            return None
        period = max(self.burst_s, 60.0 / per_minute)  # a bucket must hold at least one request
        return AsyncLimiter(per_minute * period / 60.0, period)

    def _set_tpm(self, tpm: float | None) -> None:
        # Token permits use a whole-minute bucket: one request may carry thousands of tokens,
        # more than a one-second slice of a modest TPM.
        self._tpm = tpm
        self._tokens = None if tpm is None else AsyncLimiter(tpm, 60.0)

    async def acquire(self, requests: int = 1, tokens: int = 0) -> None:
        """Wait for the pause after a 429 to end, then for request and token permits."""
        while (delay := self._resume_at - time.monotonic()) > 0:
            await asyncio.sleep(delay)
        if self._requests is not None:
            await self._requests.acquire(requests)
        if self._tokens is not None and tokens > 0:
            await self._tokens.acquire(min(tokens, self._tokens.max_rate))

    def wait_estimate_s(self, tokens: int = 0) -> float:
        """About how long one more request with `tokens` would wait here now (0: it could go at once).

        Callers already waiting are not counted (the caller knows its own); a request whose permit is not there
        yet counts one permit's refill time. Used to route requests between endpoints (`tasks/llm/pool.py`).
        """
        wait = max(0.0, self._resume_at - time.monotonic())
        if self._requests is not None and not self._requests.has_capacity(1):
            wait = max(wait, self._requests.time_period / self._requests.max_rate)
        if self._tokens is not None and tokens > 0:
            need = min(tokens, self._tokens.max_rate)
            if not self._tokens.has_capacity(need):
                wait = max(wait, 60.0 * need / self._tokens.max_rate)
        return wait

    def penalize(self, retry_after_s: float) -> None:
        """Pause every caller of `acquire` for `retry_after_s` seconds."""
        self.penalties += 1
        self._resume_at = max(self._resume_at, time.monotonic() + retry_after_s)

    def observe_headers(self, headers: Mapping[str, str]) -> None:
        """Adopt the server's limits when none were configured; pause briefly when no request is left."""
        if not self.learn:
            return
        limit_requests = _number(headers.get("x-ratelimit-limit-requests"))
        if not self._rpm_fixed and limit_requests and (self.rpm is None or abs(self.rpm - limit_requests) > 0.5):
            self._requests = self._bucket(limit_requests * self.headroom)
        limit_tokens = _number(headers.get("x-ratelimit-limit-tokens"))
        if not self._tpm_fixed and limit_tokens and (self._tpm is None or abs(self._tpm - limit_tokens) > 0.5):
            self._set_tpm(limit_tokens * self.headroom)
        # OpenAI's reset headers say when the bucket is *full* again, which can be a minute away;
        # one request's worth of refill is what we actually need to wait for.
        if _number(headers.get("x-ratelimit-remaining-requests")) == 0 and self.rpm:
            self._resume_at = max(self._resume_at, time.monotonic() + 60.0 / self.rpm)


def _number(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        return float(text)
    except ValueError:
        return None
