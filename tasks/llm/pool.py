"""Several endpoints at once: read the endpoints file, and choose the endpoint of each attempt.

At LLaVA's scale the provider's rate limit per key or deployment is the ceiling; an endpoints file
(`schemas/endpoints.py`) lists several (OpenAI organisations, Azure regions, vLLM replicas) and one run
sends to all of them:

- each endpoint has its own rate limiter from its `rpm`/`tpm` (in-process, or a bucket of the shared SQLite
  limiter when the run was given one: `SharedRateLimiter.for_endpoint`, so processes on one machine share
  each endpoint's limit as they share a single endpoint's);
- each attempt goes to the endpoint that could start it soonest (`EndpointPool.choose`): the limiter's own
  wait plus this process's requests already queued or in flight there, in units of that endpoint's rate. Under
  load every endpoint keeps a queue in proportion to its limit, so each runs at its limit and the run at their
  sum. `priority` tiers: a higher number gets only what the lower ones cannot start at once;
- each endpoint has its own circuit breaker (`Breaker`): one that stops answering, or rejects its key, is cut
  out of the run and its requests go to the others; the run stops only when every endpoint is out.

Without an endpoints file the pool holds the run's one endpoint (`GenerateConfig.base_url`, the key), and
everything behaves as it always did.
"""

from __future__ import annotations

import os
import tomllib
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from schemas.endpoints import EndpointsFile, EndpointSpec
from schemas.generation import GenerateConfig
from tasks.llm.endpoint import Endpoint
from tasks.llm.ratelimit import LocalRateLimiter, RateLimiter

# Statuses that say the endpoint was not reached (a breaker counts them in a row).
UNREACHABLE_STATUSES = frozenset({"connection_error", "timeout"})


class EndpointsFileError(ValueError):
    """The endpoints file cannot be used; `problems` has one line per problem, each naming the endpoint."""

    def __init__(self, path: str | Path, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        if len(self.problems) == 1:
            text = f"endpoints file {path}: {self.problems[0]}"
        else:
            text = f"endpoints file {path} has {len(self.problems)} problems:\n- " + "\n- ".join(self.problems)
        super().__init__(text)


@dataclass(frozen=True)
class EndpointEntry:
    """One endpoint of the file with its key, looked up in the environment (None: it names no variable)."""

    spec: EndpointSpec
    key: str | None = field(repr=False)


def _problem(name: str, error: Mapping[str, Any]) -> str:
    where = ".".join(str(part) for part in error["loc"])
    value = f" (got {error['input']!r})" if error["type"] not in ("missing", "extra_forbidden") else ""
    return f"endpoint {name!r}: {where}: {error['msg']}{value}" if where else f"endpoint {name!r}: {error['msg']}"


def load_endpoints(
    path: str | Path, environ: Mapping[str, str] | None = None, *, keys: bool = True
) -> list[EndpointEntry]:
    """The endpoints of the file with their keys; `EndpointsFileError` lists every problem found, one line each.

    `keys=False` (pricing, nothing sent) neither looks the keys up nor needs their variables set.

    Problems: the file missing or not TOML; anything but `[endpoints.<name>]` tables; a field missing, unknown or
    out of range; a key variable that is not set (named, never its value); two endpoints with the same URL, key
    variable and model (one deployment's limit would count twice).
    """
    environ = os.environ if environ is None else environ
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise EndpointsFileError(path, ["file not found"]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise EndpointsFileError(path, [f"cannot be read: {exc}"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise EndpointsFileError(path, [f"not valid TOML: {exc}"]) from None
    problems = [f"unknown top-level key {key!r}: the file holds [endpoints.<name>] tables only"
                for key in data if key != "endpoints"]
    tables = data.get("endpoints")
    if not isinstance(tables, dict) or not tables:
        raise EndpointsFileError(path, [*problems, "no endpoints: add at least one [endpoints.<name>] table"])
    entries: list[EndpointEntry] = []
    for name, table in tables.items():
        if not isinstance(table, dict):
            problems.append(f"endpoint {name!r}: must be a table ([endpoints.{name}]), got {type(table).__name__}")
            continue
        if "name" in table:
            problems.append(f"endpoint {name!r}: drop 'name': the table key is the endpoint's name")
            continue
        try:
            spec = EndpointSpec.model_validate({**table, "name": name})
        except ValidationError as exc:
            problems += [_problem(name, error) for error in exc.errors()]
            continue
        key = None
        if spec.api_key_env is not None and keys:
            key = environ.get(spec.api_key_env) or None
            if key is None:
                problems.append(f"endpoint {name!r}: environment variable {spec.api_key_env} (its API key) is not set")
                continue
        entries.append(EndpointEntry(spec, key))
    seen: dict[tuple[str | None, str | None, str | None], str] = {}
    for entry in entries:
        same = (entry.spec.base_url, entry.spec.api_key_env, entry.spec.model)
        if same in seen:
            problems.append(f"endpoints {seen[same]!r} and {entry.spec.name!r} have the same base_url, api_key_env "
                            "and model: one deployment's limit would count twice; keep one")
        seen.setdefault(same, entry.spec.name)
    if problems:
        raise EndpointsFileError(path, problems)
    EndpointsFile(endpoints={e.spec.name: e.spec for e in entries})  # the whole file's own rules
    return entries


def endpoint_limiter(spec: EndpointSpec, given: RateLimiter | None) -> RateLimiter:
    """The endpoint's limiter: a bucket of the run's shared limiter if it has per-endpoint buckets, else in-process."""
    for_endpoint = getattr(given, "for_endpoint", None)
    if for_endpoint is not None:  # the bucket is named by what the limit belongs to: URL, key variable and model
        return for_endpoint(f"{spec.name}|{spec.base_url or 'openai'}|{spec.api_key_env}|{spec.model}",
                            rpm=spec.rpm, tpm=spec.tpm)
    return LocalRateLimiter(spec.rpm, spec.tpm)


@dataclass
class Breaker:
    """One endpoint's circuit breaker: trips after a run of unreachable attempts, or when every first one failed."""

    unreachable_in_a_row: int = 0
    first_failures: Counter[str] = field(default_factory=Counter)  # statuses of failed attempts before the first ok
    seen_ok: bool = False

    def count(self, status: str, config: GenerateConfig, where: str) -> str | None:
        """Count an attempt's status; what went wrong once the breaker trips, else None."""
        self.unreachable_in_a_row = self.unreachable_in_a_row + 1 if status in UNREACHABLE_STATUSES else 0
        if status == "ok":
            self.seen_ok = True
        elif status != "rate_limited" and not self.seen_ok:  # a 429 says the endpoint is there
            self.first_failures[status] += 1
        if self.unreachable_in_a_row >= config.breaker_consecutive_failures:
            return f"{self.unreachable_in_a_row} attempts in a row could not reach {where}"
        if not self.seen_ok and self.first_failures.total() >= config.breaker_first_attempts:
            counts = ", ".join(f"{s}={n}" for s, n in sorted(self.first_failures.items()))
            return f"the first {self.first_failures.total()} attempts at {where} all failed ({counts})"
        return None


@dataclass
class PoolMember:
    """An endpoint in a run: its breaker, and this process's requests waiting for its limiter or in flight."""

    endpoint: Endpoint
    rpm: float | None
    breaker: Breaker = field(default_factory=Breaker)
    waiting: int = 0
    in_flight: int = 0
    out: str | None = None  # why it was cut out of the run

    def limiter_wait_s(self, tokens: int) -> float:
        """How long the endpoint's limiter would hold one more request now (0 for a limiter that cannot say)."""
        estimate = getattr(self.endpoint.limiter, "wait_estimate_s", None)
        return estimate(tokens) if estimate is not None else 0.0

    def busy_s(self) -> float:
        """This process's requests queued or in flight here, in seconds of the endpoint's rate."""
        return (self.waiting + self.in_flight) * 60.0 / self.rpm if self.rpm else 0.0


class EndpointPool:
    """The endpoints of one run and the choice between them."""

    def __init__(self, members: Sequence[PoolMember], source: str | None = None) -> None:
        self.members = list(members)
        self.source = source  # the endpoints file, None for a run's one endpoint
        self._by_name = {m.endpoint.name: m for m in self.members}

    @classmethod
    def open(
        cls, config: GenerateConfig, limiter: RateLimiter, entries: Sequence[EndpointEntry] | None
    ) -> EndpointPool:
        """The endpoints file's endpoints (`entries`), or the config's one endpoint with `limiter`."""
        if not entries:
            return cls([PoolMember(Endpoint.open(config, limiter), getattr(limiter, "rpm", None))])
        members = [PoolMember(Endpoint.from_spec(e.spec, e.key, config, endpoint_limiter(e.spec, limiter)), e.spec.rpm)
                   for e in entries]
        keys = tuple(e.key for e in entries if e.key)
        for m in members:  # any endpoint's answer or error may quote any key (a shared proxy): all are cut out
            m.endpoint.secrets = keys
        return cls(members, config.endpoints_file)

    @property
    def several(self) -> bool:
        """Whether the run has an endpoints file (names and cut-outs are then worth saying)."""
        return self.source is not None

    def member(self, endpoint: Endpoint) -> PoolMember:
        """The pool's state of `endpoint`."""
        return self._by_name[endpoint.name]

    @property
    def live(self) -> list[PoolMember]:
        """The endpoints not cut out."""
        return [m for m in self.members if m.out is None]

    def choose(self, tokens: int, avoid: Endpoint | None = None) -> Endpoint | None:
        """The endpoint that could start a request of `tokens` soonest (None: every one is out).

        Among endpoints that could start it at once, the lowest `priority`, then the least busy for its rate;
        otherwise the shortest expected wait whatever the priority (spill-over). `avoid` (where the request's
        last attempt failed) is skipped while another endpoint is live.
        """
        live = self.live
        if len(live) > 1 and avoid is not None:
            live = [m for m in live if m.endpoint is not avoid] or live
        if len(live) <= 1:
            return live[0].endpoint if live else None
        best, best_key = None, None
        for m in live:
            wait = m.limiter_wait_s(tokens)
            delay = wait + m.busy_s()
            key = (0, m.endpoint.priority, delay) if wait <= 0.0 and m.waiting == 0 else (1, 0, delay)
            if best_key is None or key < best_key:
                best, best_key = m, key
        assert best is not None
        return best.endpoint

    @property
    def rpm(self) -> float | None:
        """The live endpoints' request limits together (None: one is unknown)."""
        rates = [getattr(m.endpoint.limiter, "rpm", None) for m in self.live]
        return None if not rates or any(r is None for r in rates) else float(sum(rates))

    async def close(self) -> None:
        """Close every endpoint."""
        for m in self.members:
            await m.endpoint.close()
