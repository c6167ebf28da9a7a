"""RPM and TPM limits as OpenAI applies them: buckets that refill continuously over a minute.

A server must refuse rather than wait, and must report its remaining capacity and reset time in
headers, so this is a small non-blocking bucket rather than a client-side limiter such as
aiolimiter (which only offers `acquire`, a wait).
"""

from __future__ import annotations

import math
import time


class Bucket:
    """Refills at `limit` per 60 s and holds `window_s` seconds of refill (60: a minute's worth)."""

    def __init__(self, limit: int, window_s: float = 60.0) -> None:
        self.limit = limit
        self.rate = limit / 60.0
        self.capacity = max(1.0, self.rate * window_s)
        self.level = self.capacity
        self._t = time.monotonic()

    def _refill(self, now: float) -> None:
        self.level = min(self.capacity, self.level + (now - self._t) * self.rate)
        self._t = now

    def wait_s(self, amount: float, now: float) -> float:
        """Seconds until `amount` units are available (0 if they are now)."""
        self._refill(now)
        return 0.0 if self.level >= amount else (amount - self.level) / self.rate

    def take(self, amount: float) -> None:
        """Use `amount` units; may go below zero when usage is charged after the fact."""
        self.level -= amount

    def remaining(self) -> int:
        return max(0, math.floor(self.level))

    def reset_s(self) -> float:
        """Seconds until the bucket is full again."""
        return max(0.0, (self.capacity - self.level) / self.rate)


def format_duration(seconds: float) -> str:
    """OpenAI's reset header style: `20ms`, `1.5s`, `6m0s`."""
    if seconds < 1:
        return f"{math.ceil(seconds * 1000)}ms"
    if seconds < 60:
        return f"{seconds:.3g}s"
    minutes, rest = divmod(seconds, 60)
    return f"{int(minutes)}m{rest:.0f}s"


class RateLimits:
    """The RPM and TPM buckets of one simulator (None = that limit is off)."""

    def __init__(self, rpm: int | None, tpm: int | None, window_s: float = 60.0) -> None:
        self.requests = Bucket(rpm, window_s) if rpm else None
        self.tokens = Bucket(tpm, window_s) if tpm else None

    def admit(self, tokens: int) -> tuple[float, str | None]:
        """Take one request and `tokens` if both fit; else (seconds to wait, "requests" or "tokens")."""
        now = time.monotonic()
        if self.requests is not None and (wait := self.requests.wait_s(1, now)) > 0:
            return wait, "requests"
        if self.tokens is not None:
            if tokens > self.tokens.capacity:
                return math.inf, "tokens"
            if (wait := self.tokens.wait_s(tokens, now)) > 0:
                return wait, "tokens"
        if self.requests is not None:
            self.requests.take(1)
        if self.tokens is not None:
            self.tokens.take(tokens)
        return 0.0, None

    def charge_tokens(self, tokens: int) -> None:
        """Count tokens only known after the answer was written."""
        if self.tokens is not None:
            self.tokens.take(tokens)

    def headers(self) -> dict[str, str]:
        """The x-ratelimit-* headers for the current state."""
        out: dict[str, str] = {}
        for kind, bucket in (("requests", self.requests), ("tokens", self.tokens)):
            if bucket is not None:
                out[f"x-ratelimit-limit-{kind}"] = str(bucket.limit)
                out[f"x-ratelimit-remaining-{kind}"] = str(bucket.remaining())
                out[f"x-ratelimit-reset-{kind}"] = format_duration(bucket.reset_s())
        return out
