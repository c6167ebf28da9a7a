"""`max_cost_usd` is one budget for every run that shares a `budget_id`: shards in threads, and retries."""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path

import pytest

from schemas.generation import GenerateConfig
from tasks import store
from tasks.llm import parsers, pricing, transport
from tasks.llm.engine import run_requests_sync
from tests.fakes import CountingSender, plant_requests

KIND = "test/budget"
CALL_USD = pricing.cost_usd("gpt-4o", 1000, 100)  # what each fake answer costs


class SlowSender(CountingSender):
    """Answers after a short pause, so two engines overlap."""

    async def send(self, body, headers):
        await asyncio.sleep(0.01)
        return await super().send(body, headers)


@pytest.fixture
def sender(monkeypatch: pytest.MonkeyPatch) -> CountingSender:
    fake = SlowSender()
    monkeypatch.setattr(transport, "make_sender", lambda client, name, timeout: fake)
    parsers.register(KIND, lambda content: content)
    return fake


def _config(**overrides) -> GenerateConfig:
    values = {"base_url": "http://127.0.0.1:9/v1", "api_key": "sk-test-budget-0123456789", "model": "gpt-4o",
              "concurrency": 2, "max_tokens": 100, "flush_interval_s": 0.1}
    return GenerateConfig(**{**values, **overrides})


def _spent(db: Path) -> float:
    return store.query("SELECT coalesce(sum(cost_usd), 0) AS usd FROM responses", path=db)[0]["usd"]


def test_two_shards_sharing_a_budget_stay_under_the_cap_together(db_path: Path, sender: CountingSender) -> None:
    ids = plant_requests(db_path, 40, KIND)
    cap = CALL_USD * 25.5  # each shard alone (20 requests) fits, both together do not
    config = _config(max_cost_usd=cap, budget_id="flow-run-1")
    results = []

    def shard(part: list[str]) -> None:
        results.append(run_requests_sync(part, db_path=db_path, config=config))

    threads = [threading.Thread(target=shard, args=(ids[i::2],)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 2
    assert _spent(db_path) <= cap
    assert sum(sender.calls.values()) == sum(r.attempts for r in results) == sum(r.done for r in results)
    assert 20 < sum(r.done for r in results) <= 25  # the cap, not a per-shard share, stopped them
    assert sum(r.final_by_status.get("budget_exceeded", 0) for r in results) == 40 - sum(r.done for r in results)
    runs = store.query("SELECT params FROM runs", path=db_path)
    assert {json.loads(r["params"])["budget_id"] for r in runs} == {"flow-run-1"}


def test_a_retry_starts_from_the_money_already_spent(db_path: Path, sender: CountingSender) -> None:
    ids = plant_requests(db_path, 10, KIND)
    cap = CALL_USD * 5.5
    first = run_requests_sync(ids, db_path=db_path, config=_config(max_cost_usd=cap, budget_id="flow-run-2"))
    assert first.done == 5 and sum(sender.calls.values()) == 5
    retry = run_requests_sync(ids, db_path=db_path, config=_config(max_cost_usd=cap, budget_id="flow-run-2"))
    assert (retry.done, retry.attempts) == (0, 0)  # the first run spent the budget: nothing is sent
    assert retry.final_by_status == {"budget_exceeded": 5}
    assert sum(sender.calls.values()) == 5 and _spent(db_path) <= cap
    # without a budget id each run has its own budget (the default)
    own = run_requests_sync(ids, db_path=db_path, config=_config(max_cost_usd=cap))
    assert own.done == 5
