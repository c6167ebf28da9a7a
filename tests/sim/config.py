"""Everything the simulator can be told: one flat pydantic model, so every field is also a CLI flag."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

FAULT_FIELDS = (
    "fault_429",
    "fault_5xx",
    "fault_hang",
    "fault_malformed",
    "fault_length",
    "fault_content_filter",
    "fault_refusal",
)


class SimConfig(BaseModel):
    """Settings of one simulator instance. Rates are probabilities per request (or per batch row)."""

    model_config = ConfigDict(extra="forbid")

    host: str = "127.0.0.1"
    port: int = Field(0, ge=0, le=65535, description="0 picks a free port")
    seed: int = 0

    latency: Literal["fixed", "uniform", "lognormal"] = "fixed"
    latency_ms: float = Field(0.0, ge=0, description="mean latency of a chat completion")
    latency_spread: float = Field(
        0.5, ge=0, description="uniform: half-width as a fraction of the mean; lognormal: sigma"
    )

    rpm: int | None = Field(None, gt=0, description="requests per minute; None = unlimited")
    tpm: int | None = Field(None, gt=0, description="tokens per minute; None = unlimited")
    rate_window_s: float = Field(
        60.0, gt=0, le=60, description="burst size in seconds of refill: 60 = a minute's worth, 1 = per-second limits"
    )

    fault_429: float = Field(0.0, ge=0, le=1, description="injected 429 rate_limit_exceeded")
    fault_5xx: float = Field(0.0, ge=0, le=1, description="injected server errors, half 500 and half 503")
    fault_hang: float = Field(0.0, ge=0, le=1, description="never answer (until hang_s or client disconnect)")
    fault_malformed: float = Field(0.0, ge=0, le=1, description="200 with unparseable content")
    fault_length: float = Field(0.0, ge=0, le=1, description="200 with truncated content, finish_reason=length")
    fault_content_filter: float = Field(0.0, ge=0, le=1, description="200 with finish_reason=content_filter")
    fault_refusal: float = Field(0.0, ge=0, le=1, description="200 with a refusal instead of an answer")
    fault_retry_after_ms: int = Field(100, ge=0, description="Retry-After sent with an injected 429")
    hang_s: float = Field(600.0, ge=0, description="how long a hanging request sleeps before closing unanswered")

    # Eval and judge mode (tests/sim/judge.py): how the simulated judge scores [Assistant 1] and [Assistant 2].
    judge_scoring: Literal["grounded", "fixed"] = Field(
        "grounded", description="grounded: from how much of each answer the context supports; fixed: judge_score_1/2"
    )
    judge_score_1: float = Field(8.0, ge=1, le=10, description="fixed scoring: mean score of Assistant 1")
    judge_score_2: float = Field(6.0, ge=1, le=10, description="fixed scoring: mean score of Assistant 2")
    judge_noise: float = Field(0.0, ge=0, description="standard deviation (points) of seeded noise on each score")
    judge_position_bias: float = Field(0.0, description="points added to Assistant 1's score (a first-position bias)")
    judge_unparseable: float = Field(0.0, ge=0, le=1, description="share of reviews without readable scores")

    token_counter: Literal["tiktoken", "approx"] = "tiktoken"
    cache_min_tokens: int = Field(1024, ge=0, description="prefix caching starts at this many tokens")
    cache_block_tokens: int = Field(128, gt=0, description="cached tokens grow in blocks of this size")

    batch_delay_s: float = Field(1.0, ge=0, description="a batch completes this long after it is created")
    max_batch_requests: int = Field(50_000, gt=0)
    max_file_bytes: int = Field(200 * 1024 * 1024, gt=0)

    models: list[str] = Field(
        default_factory=lambda: ["gpt-4o-mini", "gpt-4o", "gpt-4.1-mini", "gpt-4-0613"],
        description="ids listed by /v1/models (any model name is accepted by chat completions)",
    )
    log_path: Path | None = Field(None, description="append one JSON line per served request")
    log_in_memory: bool = Field(True, description="keep served-request records in `.log`")

    @model_validator(mode="after")
    def _faults_fit(self) -> SimConfig:
        total = sum(getattr(self, name) for name in FAULT_FIELDS)
        if total > 1.0 + 1e-9:
            raise ValueError(f"fault rates add up to {total:.3f}; they must add up to at most 1 ({FAULT_FIELDS})")
        return self
