"""Configuration and results of a generation run, and the one list of response statuses.

Every attempt at a request is one `responses` row whose `status` is one of `RESPONSE_STATUSES`.
A request is *done* when it has an `ok` row; otherwise its latest row says why it is not.
"""

from __future__ import annotations

from typing import Any, Literal, NamedTuple
from urllib.parse import unquote, urlsplit, urlunsplit

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, SecretStr, model_validator

NOT_SENT = frozenset({"budget_exceeded"})  # statuses of rows that made no HTTP call
# Keys of a request's stored `params` that are ours, not the API's: part of the request id hash
# (changing them would re-plan every database), dropped before sending.
LOCAL_PARAM_KEYS = frozenset({"output_format"})

# status -> what it means. `retry` says whether the engine tries the request again (up to
# `max_attempts`); a status that is not retried is the request's final failure for this run.
RESPONSE_STATUSES: dict[str, tuple[str, bool]] = {
    "ok": ("HTTP 200 whose content parses as the request's kind (its registered parser)", False),
    "rate_limited": ("HTTP 429; everybody pauses for Retry-After, then the request is retried", True),
    "server_error": ("HTTP 5xx", True),
    "timeout": ("no answer within the client timeout", True),
    "connection_error": ("the connection failed or dropped", True),
    "bad_output": ("HTTP 200 but the body or content does not parse (bad JSON, schema failure)", True),
    "truncated": ("finish_reason 'length': the answer hit max_tokens", True),
    "content_filter": ("finish_reason 'content_filter'", True),
    "refusal": ("the model refused (message.refusal set)", True),
    "client_error": ("another HTTP 4xx (bad request, auth, not found): fix the request or key", False),
    "budget_exceeded": ("not sent: --max-cost-usd was reached before this attempt", False),
    # our parser raised (a bug on our side): the paid content is kept for `validate` once it is fixed,
    # and the request is never re-sent (another answer would hit the same bug)
    "parse_error": ("HTTP 200 but our own parser raised on the content; never re-sent", False),
}
RETRYABLE_STATUSES = frozenset(s for s, (_, retry) in RESPONSE_STATUSES.items() if retry)


# Batch states (the `batches.status` column): OpenAI's own, plus two of ours. A batch is open until
# its results are in `responses` (STORED); a remote final state only means results can be fetched.
BATCH_UPLOADED = "uploaded"  # ours: input file uploaded, batch not yet created
BATCH_STORED = "stored"  # ours: results stored; nothing left to do
BATCH_REMOTE_FINAL = ("completed", "failed", "expired", "cancelled")  # the provider will not change it again
CLOSED_BATCH_STATES = (BATCH_STORED,)  # every other status is an open batch


class LlmRequest(NamedTuple):
    """One LLM call as the engine sees it: no sample types, only a `kind` that names its parser."""

    request_id: str
    kind: str
    model: str
    messages: list[dict[str, Any]]
    params: dict[str, Any]  # API params; keys the API must not see are dropped by the client
    est_input_tokens: int


def _all_sample_types() -> list[str]:
    from schemas.samples import SAMPLE_TYPES  # here: importing the engine's config loads no sample types

    return list(SAMPLE_TYPES)


class GenerateConfig(BaseModel):
    """Everything `vistune generate` needs; flags > env > settings file fill it (see the CLI)."""

    model_config = ConfigDict(extra="forbid")

    model: str = "gpt-4o"
    base_url: str | None = None  # None: the openai client's default (api.openai.com)
    api_key: SecretStr | None = None
    format: Literal["structured", "llava-text"] = "structured"
    mode: Literal["online", "batch"] = "online"
    concurrency: int = Field(default=64, ge=1)
    rpm: float | None = Field(default=None, gt=0)  # None: learn from x-ratelimit-* headers
    tpm: float | None = Field(default=None, gt=0)
    max_cost_usd: float | None = Field(default=None, ge=0)
    # the runs that share `max_cost_usd` (shards and retries of one flow run); None: this run alone
    budget_id: str | None = None
    timeout: float = Field(default=120.0, gt=0)  # seconds per HTTP attempt
    # how each POST travels (tasks/llm/transport.py): lean aiohttp, or the openai SDK's own `post`
    transport: Literal["aiohttp", "sdk"] = "aiohttp"
    # event-loop wake-up batching (tasks/llm/wakeups.py): None = sized from the rate limit, 0 = off
    wakeup_window_ms: float | None = Field(default=None, ge=0, le=1000)
    max_attempts: int = Field(default=5, ge=1)
    temperature: float = 0.2
    max_tokens: int = Field(default=2048, ge=1)
    types: list[str] = Field(default_factory=lambda: _all_sample_types())
    limit: int | None = Field(default=None, ge=1)  # number of images; None = all
    backoff_base_s: float = Field(default=1.0, gt=0)  # first retry waits up to this (full jitter)
    backoff_max_s: float = Field(default=60.0, gt=0)
    # journal -> DuckDB cadence: a flush costs 30 ms of CPU in a busy process and 90-160 ms in one
    # at a provider's pace (DuckDB's pages go cold between flushes), the largest fixed cost of a run.
    # It happens FIRST_FLUSH_S after the first answers (the duckdb CLI sees a run start), then every
    # `flush_interval_s` or at `flush_rows` pending rows, whichever comes first. Durability comes
    # from the journal meanwhile, and `vistune sql` reads the journal too, so it is current anyway.
    flush_interval_s: float = Field(default=120.0, gt=0)
    flush_rows: int = Field(default=2000, ge=1)
    batch_poll_s: float = Field(default=30.0, gt=0)
    # Claims (tasks/store/queries.py `claim`): concurrent engines on one database send each request once.
    # An engine claims `claim_chunk` requests per short write transaction (default: sized from the store,
    # `tasks/llm/engine.py` `claim_chunk_for`), renews its leases from the
    # flush loop and releases each claim once the request's rows are flushed. A dead engine's claims
    # are released when its journal is replayed; `claim_lease_s` only matters for an owner whose
    # journal is not visible here. A run waits for requests claimed elsewhere, looking every `claim_poll_s`.
    claim_lease_s: float = Field(default=600.0, gt=0)
    claim_chunk: int | None = Field(default=None, ge=1)
    claim_poll_s: float = Field(default=5.0, gt=0)
    # Circuit breaker: stop the run (EndpointUnreachable) after this many connection failures or
    # timeouts in a row, or when this many first attempts of a run all failed (429s not counted).
    breaker_consecutive_failures: int = Field(default=20, ge=1)
    breaker_first_attempts: int = Field(default=50, ge=1)
    # Several endpoints at once (schemas/endpoints.py, tasks/llm/pool.py): each request goes to the endpoint with
    # the most headroom; each endpoint has its own limits, key variable and breaker. Replaces base_url/rpm/tpm.
    endpoints_file: str | None = None

    # `user:password@` of `base_url`, moved out so that the URL can be logged and stored; sent as HTTP
    # Basic auth (tasks/llm/endpoint.py). Private: never dumped, never a flow parameter.
    _base_url_credentials: SecretStr | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _endpoints_file_alone(self) -> GenerateConfig:
        # An endpoints file names every endpoint with its own URL and limits: a single one beside it is ambiguous.
        if self.endpoints_file is None:
            return self
        given = [name for name in ("base_url", "rpm", "tpm") if getattr(self, name) is not None]
        if given:
            raise ValueError(f"endpoints_file {self.endpoints_file} sets each endpoint's base_url, rpm and tpm: "
                             f"drop {', '.join(given)} (or the endpoints file)")
        if self.mode == "batch":
            raise ValueError(f"batch mode sends to one endpoint: drop endpoints_file {self.endpoints_file} and give "
                             "--base-url (several endpoints are for online mode, where rate limits are the ceiling)")
        return self

    @model_validator(mode="after")
    def _split_url_credentials(self) -> GenerateConfig:
        parts = urlsplit(self.base_url or "")
        if "@" in parts.netloc:
            self._base_url_credentials = SecretStr(f"{unquote(parts.username or '')}:{unquote(parts.password or '')}")
            self.base_url = urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))
        return self

    @property
    def base_url_credentials(self) -> SecretStr | None:
        """`user:password` that came in `base_url` (which no longer holds them), else None."""
        return self._base_url_credentials


class EndpointCounts(BaseModel):
    """What one endpoint of a run did (`GenerateStats.by_endpoint`)."""

    attempts: int = 0  # HTTP calls it got
    ok: int = 0
    cost_usd: float = 0.0
    cut_out: str | None = None  # why its breaker cut it out of the run, if it did


class GenerateStats(BaseModel):
    """Counts of one run (also what `on_progress` receives, as a snapshot)."""

    requests: int = 0  # requests this run was asked to finish
    already_ok: int = 0  # skipped: a good response was stored before
    held_parse_error: int = 0  # skipped: an earlier answer made our parser raise (fix it, then validate)
    done: int = 0  # got an ok response in this run
    failed: int = 0  # ended this run without an ok response
    taken_over: int = 0  # not sent: another engine took its claim over (this one outlived its lease)
    attempts: int = 0  # HTTP calls made (retries included)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    cost_usd: float = 0.0
    wall_s: float = 0.0
    attempts_by_status: dict[str, int] = Field(default_factory=dict)
    final_by_status: dict[str, int] = Field(default_factory=dict)  # last status of each request
    by_endpoint: dict[str, EndpointCounts] = Field(default_factory=dict)  # responses.endpoint -> its counts

    def add_response(self, row: Any) -> None:
        """Count one stored attempt (a `ResponseRow` or its dict); rows never sent count only by status."""
        get = row.get if isinstance(row, dict) else lambda name, default=None: getattr(row, name, default)
        status = get("status")
        self.attempts_by_status[status] = self.attempts_by_status.get(status, 0) + 1
        if status in NOT_SENT:
            return
        self.attempts += 1
        self.prompt_tokens += int(get("prompt_tokens") or 0)
        self.completion_tokens += int(get("completion_tokens") or 0)
        self.cached_tokens += int(get("cached_tokens") or 0)
        self.cost_usd += float(get("cost_usd") or 0.0)
        if (endpoint := get("endpoint")) is not None:
            counts = self.by_endpoint.setdefault(endpoint, EndpointCounts())
            counts.attempts += 1
            counts.ok += status == "ok"
            counts.cost_usd += float(get("cost_usd") or 0.0)

    def add(self, other: GenerateStats) -> None:
        """Add another run's counts to these (shards of one flow run); `wall_s` keeps the longest."""
        for name in ("requests", "already_ok", "held_parse_error", "done", "failed", "taken_over", "attempts",
                     "prompt_tokens", "completion_tokens", "cached_tokens", "cost_usd"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.wall_s = max(self.wall_s, other.wall_s)
        for name in ("attempts_by_status", "final_by_status"):
            table = getattr(self, name)
            for status, n in getattr(other, name).items():
                table[status] = table.get(status, 0) + n
        for endpoint, theirs in other.by_endpoint.items():
            mine = self.by_endpoint.setdefault(endpoint, EndpointCounts())
            mine.attempts, mine.ok = mine.attempts + theirs.attempts, mine.ok + theirs.ok
            mine.cost_usd += theirs.cost_usd
            mine.cut_out = mine.cut_out or theirs.cut_out

    @property
    def tokens(self) -> int:
        """Prompt plus completion tokens."""
        return self.prompt_tokens + self.completion_tokens

    def all_failed(self) -> str | None:
        """A message for the user when requests were sent and not one got a good answer, else None."""
        if not self.failed or self.done or self.already_ok:
            return None
        reasons = ", ".join(f"{status}={n}" for status, n in sorted(self.final_by_status.items()))
        return (f"all {self.failed} requests failed ({reasons}). Check OPENAI_BASE_URL / OPENAI_API_KEY and that "
                "the endpoint is reachable; every attempt is stored, and a rerun sends only what has no good answer. "
                'Details: vistune sql "SELECT status, error FROM responses ORDER BY created_at DESC LIMIT 5"')
