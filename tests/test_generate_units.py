"""Pieces of the generation engine that need no server: prices, limits, classification, journal, batch files."""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path

import pytest

from schemas.generation import RESPONSE_STATUSES, RETRYABLE_STATUSES, GenerateConfig
from tasks import store
from tasks.llm import pricing
from tasks.llm.batch import batch_line, split_lines
from tasks.llm.client import classify, redact
from tasks.llm.engine import Budget
from tasks.llm.ratelimit import LocalRateLimiter, RateLimiter, parse_duration, retry_after_s
from tasks.llm.shared_limiter import SharedRateLimiter
from tasks.prompting.formats import render
from tasks.store.journal import Journal, journal_dir, replay_orphans
from tests.fakes import journal_row, plan_stand_ins


def _body(content: str | None, finish_reason: str = "stop", refusal: str | None = None) -> dict:
    return {
        "choices": [{"message": {"content": content, "refusal": refusal}, "finish_reason": finish_reason}],
        "usage": {"prompt_tokens": 1200, "completion_tokens": 80, "prompt_tokens_details": {"cached_tokens": 1024}},
    }


def test_prices_match_longest_prefix_and_batch_discount() -> None:
    assert pricing.price("gpt-4o-2024-08-06") == pricing.price("gpt-4o")
    assert pricing.price("gpt-4o-mini-2024-07-18") == pricing.price("gpt-4o-mini")
    online = pricing.cost_usd("gpt-4o", 1_000_000, 1_000_000)
    assert online == pytest.approx(2.50 + 10.00)
    assert pricing.cost_usd("gpt-4o", 1_000_000, 1_000_000, batch=True) == pytest.approx(online / 2)
    assert pricing.cost_usd("gpt-4o", 1_000_000, 0, cached_tokens=1_000_000) == pytest.approx(1.25)
    assert pricing.cost_usd("my-local-llama", 1000, 1000) == 0.0
    with pytest.raises(pricing.UnknownModelPrice, match="my-local-llama"):
        pricing.price("my-local-llama")


def test_every_status_is_documented_and_retry_set_is_consistent() -> None:
    assert {"ok", "rate_limited", "server_error", "timeout", "connection_error", "bad_output", "truncated",
            "content_filter", "refusal", "client_error", "budget_exceeded", "parse_error"} == set(RESPONSE_STATUSES)
    assert not {"ok", "client_error", "parse_error", "budget_exceeded"} & RETRYABLE_STATUSES
    assert {"rate_limited", "server_error", "timeout", "bad_output"} <= RETRYABLE_STATUSES


def test_durations_and_retry_after() -> None:
    assert parse_duration("6m0s") == 360
    assert parse_duration("1.5s") == 1.5
    assert parse_duration("250ms") == 0.25
    assert parse_duration("2") == 2
    assert parse_duration(None) is None
    assert retry_after_s({"retry-after-ms": "150", "retry-after": "3"}) == 0.15
    assert retry_after_s({"retry-after": "3"}) == 3
    assert retry_after_s({}, default=1.0) == 1.0


def test_classify_each_outcome() -> None:
    good = render(__import__("schemas.samples", fromlist=["x"]).ComplexReasoningOutput(
        question="Why is the man holding an umbrella?", answer="It is raining, so he keeps himself dry."),
        "structured")
    ok = classify(_body(good), "complex_reasoning/structured")
    assert (ok.status, ok.prompt_tokens, ok.completion_tokens, ok.cached_tokens) == ("ok", 1200, 80, 1024)
    assert classify(_body('{"question": "x"'), "complex_reasoning/structured").status == "bad_output"
    assert classify(_body(good[:20], "length"), "complex_reasoning/structured").status == "truncated"
    assert classify(_body(None, "content_filter"), "complex_reasoning/structured").status == "content_filter"
    assert classify(_body(None, refusal="I can't help"), "complex_reasoning/structured").status == "refusal"
    assert classify({"choices": []}, "complex_reasoning/structured").status == "bad_output"
    text = classify(_body("Question:\nWhat?\n===\nAnswer:\nA dog."), "complex_reasoning/llava-text")
    assert text.status == "ok"


def test_redact_removes_the_key_and_key_shaped_strings() -> None:
    key = "sk-proj-abcdefghijklmnop1234"
    message = f"Incorrect API key provided: {key}. Also sk-other-ABCDEFGH99 appears."
    cleaned = redact(message, key)
    assert key not in cleaned and "sk-other-ABCDEFGH99" not in cleaned
    assert "Incorrect API key provided" in cleaned


def test_budget_refuses_what_would_pass_the_cap() -> None:
    budget = Budget(1.0)
    assert budget.try_reserve(0.6)
    assert not budget.try_reserve(0.6)  # 0.6 reserved + 0.6 > 1.0
    budget.settle(0.6, 0.3)
    assert budget.try_reserve(0.6)
    assert Budget(None).try_reserve(1e9)


async def test_local_limiter_spaces_requests_and_pauses_after_429() -> None:
    limiter = LocalRateLimiter(rpm=600, burst_s=0.1)  # 10/s, one at a time
    assert isinstance(limiter, RateLimiter)
    start = time.monotonic()
    for _ in range(6):
        await limiter.acquire()
    assert time.monotonic() - start >= 0.4  # 1 immediate, then 5 more at 0.1 s intervals
    limiter.penalize(0.3)
    start = time.monotonic()
    await limiter.acquire()
    assert time.monotonic() - start >= 0.25


def test_local_limiter_learns_limits_from_headers() -> None:
    limiter = LocalRateLimiter()
    assert limiter.rpm is None
    limiter.observe_headers({"x-ratelimit-limit-requests": "600", "x-ratelimit-limit-tokens": "90000",
                             "x-ratelimit-remaining-requests": "599"})
    assert limiter.rpm == pytest.approx(600) and limiter.tpm == pytest.approx(90000)
    fixed = LocalRateLimiter(rpm=100)
    fixed.observe_headers({"x-ratelimit-limit-requests": "600"})
    assert fixed.rpm == pytest.approx(100)  # a configured limit wins


def test_shared_limiter_follows_the_protocol(tmp_path: Path) -> None:
    assert isinstance(SharedRateLimiter(tmp_path / "bucket.sqlite", rpm=60), RateLimiter)



def test_journal_flushes_in_batches_and_replays_a_dead_process(db_path: Path) -> None:
    plan_stand_ins(db_path, "a", "b", "c")  # creates the schema too
    journal = Journal(db_path)
    for i in range(5):
        journal.append(journal_row("a", i))
    assert journal.pending == 5
    assert journal.flush() == 5
    assert store.query("SELECT count(*) AS n FROM responses", path=db_path)[0]["n"] == 5
    assert replay_orphans(db_path) == 0  # the journal's owner is alive: its rows are its own business
    journal.append(journal_row("b", 1))
    journal.close()
    assert store.query("SELECT count(*) AS n FROM responses", path=db_path)[0]["n"] == 6
    assert list(journal_dir(db_path).iterdir()) == []

    # A process killed before flushing leaves its lock file unheld and its segment behind,
    # with a torn last line; replay loads the complete lines once.
    folder = journal_dir(db_path)
    (folder / "999-dead.lock").write_text("")
    lines = [json.dumps(journal_row("c", i)) + "\n" for i in range(3)]
    (folder / "999-dead.000001.jsonl").write_text("".join(lines) + '{"response_id": "torn')
    (folder / "999-dead.000002.jsonl").write_text(lines[0])  # already loaded rows are ignored
    assert replay_orphans(db_path) == 3
    assert replay_orphans(db_path) == 0
    assert list(folder.iterdir()) == []


def test_batch_files_respect_count_and_size_limits() -> None:
    lines = [(f"r{i:02d}", batch_line(f"r{i:02d}", "gpt-4o", [{"role": "user", "content": "x" * 100}],
                                  {"output_format": "llava-text", "max_tokens": 10})) for i in range(25)]
    first = json.loads(lines[0][1])
    assert first["custom_id"] == "r00" and first["url"] == "/v1/chat/completions"
    assert "output_format" not in first["body"] and first["body"]["max_tokens"] == 10
    by_count = list(split_lines(iter(lines), max_requests=10))
    assert [len(g) for g in by_count] == [10, 10, 5]
    size = len(lines[0][1].encode()) + 1
    by_size = list(split_lines(iter(lines), max_bytes=size * 4 + 1))
    assert [len(g) for g in by_size] == [4, 4, 4, 4, 4, 4, 1]
    assert all(sum(len(line.encode()) + 1 for _, line in g) <= size * 4 + 1 for g in by_size)
    with pytest.raises(ValueError, match="r00"):
        list(split_lines(iter(lines), max_bytes=10))


def test_config_never_dumps_the_key() -> None:
    config = GenerateConfig(api_key="sk-secret-abcdefgh123")
    assert "sk-secret" not in repr(config) and "sk-secret" not in config.model_dump_json()


def test_journal_survives_concurrent_appends_during_flush(db_path: Path) -> None:
    store.ensure_schema(db_path)
    plan_stand_ins(db_path, "p")
    journal = Journal(db_path)

    async def produce() -> None:
        for i in range(300):
            journal.append(journal_row("p", i))
            if i % 50 == 0:
                await asyncio.to_thread(journal.flush)

    asyncio.run(produce())
    journal.close()
    assert store.query("SELECT count(*) AS n FROM responses", path=db_path)[0]["n"] == 300
    assert not any(p.name.startswith(str(os.getpid())) for p in journal_dir(db_path).iterdir())
