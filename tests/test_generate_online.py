"""Online generation against the simulator (in-thread): formats, no re-sends, faults, budget, secrets."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from bench.gen_scale import synthetic_images
from schemas.generation import RETRYABLE_STATUSES, GenerateConfig
from tasks import store
from tasks.llm.engine import run_requests_sync
from tasks.pipeline import generate
from tasks.prompting.formats import parse
from tasks.prompting.plan import plan_requests
from tasks.store.journal import journal_dir
from tests.sim import SimConfig, start_simulator

SECRET = "sk-vistune-test-DO-NOT-LEAK-0123456789abcdef"


def _config(sim, **overrides) -> GenerateConfig:
    values = {"base_url": sim.base_url, "api_key": SECRET, "concurrency": 8, "timeout": 5.0,
              "backoff_base_s": 0.05, "backoff_max_s": 0.2, "flush_interval_s": 0.2, "model": "gpt-4o-mini"}
    return GenerateConfig(**{**values, **overrides})


def _chat_log(sim) -> list:
    return [r for r in list(sim.log) if r.path.endswith("/chat/completions")]


def _leaks(db: Path) -> list[str]:
    # Every file the run wrote: the database, its WAL, the journals.
    paths = [p for p in db.parent.rglob("*") if p.is_file()]
    return [str(p) for p in paths if SECRET.encode() in p.read_bytes()]


@pytest.mark.parametrize("output_format", ["structured", "llava-text"])
def test_generate_both_formats_then_rerun_sends_nothing(db_path: Path, output_format: str) -> None:
    synthetic_images(db_path, 4)
    with start_simulator(SimConfig(seed=1)) as sim:
        config = _config(sim, format=output_format, types=["conversation", "detail_description", "complex_reasoning"])
        progress: list = []
        stats = generate(db_path, config, on_progress=progress.append)
        assert (stats.requests, stats.done, stats.failed) == (12, 12, 0)
        assert progress and progress[-1].done == 12
        served = len(_chat_log(sim))
        assert served == 12

        rows = store.query(
            "SELECT q.sample_type, q.output_format, r.content, r.cost_usd, r.prompt_tokens FROM responses r "
            "JOIN requests q USING (request_id) WHERE r.status = 'ok'", path=db_path)
        assert len(rows) == 12
        for row in rows:
            assert row["output_format"] == output_format
            parse(row["sample_type"], output_format, row["content"])  # stored content is the usable answer
            assert row["cost_usd"] > 0 and row["prompt_tokens"] > 0

        again = generate(db_path, config)
        assert (again.requests, again.done, again.attempts) == (0, 0, 0)  # the plan has nothing pending
        ids = [r["request_id"] for r in store.query("SELECT request_id FROM requests", path=db_path)]
        direct = run_requests_sync(ids, db_path=db_path, config=config)  # even if asked explicitly
        assert (direct.already_ok, direct.attempts) == (12, 0)
        assert len(_chat_log(sim)) == served
    runs = store.query("SELECT status, params FROM runs WHERE kind = 'generate'", path=db_path)
    assert runs and all(r["status"] == "completed" for r in runs)
    assert _leaks(db_path) == []


def test_faults_every_request_ends_ok_or_with_a_recorded_reason(db_path: Path) -> None:
    n = 120
    synthetic_images(db_path, n)
    plan = plan_requests(db_path, sample_types=["complex_reasoning"], model="gpt-4o-mini")
    sim_config = SimConfig(seed=7, fault_429=0.10, fault_5xx=0.05, fault_hang=0.02, fault_malformed=0.03,
                           fault_retry_after_ms=50, hang_s=30)
    with start_simulator(sim_config) as sim:
        stats = run_requests_sync(plan.request_ids, db_path=db_path,
                                  config=_config(sim, concurrency=16, timeout=1.0, max_attempts=4))
        log = _chat_log(sim)

    rows = store.query("SELECT request_id, attempt, status, http_status, error, content FROM responses "
                       "ORDER BY request_id, attempt", path=db_path)
    # Every HTTP call the simulator saw is one stored attempt, and the counts add up.
    assert len(rows) == len(log) == stats.attempts
    assert Counter(r["status"] for r in rows) == Counter(stats.attempts_by_status)
    assert stats.done + stats.failed == n
    assert sum(stats.final_by_status.values()) == n
    faults = Counter(r.fault for r in log if r.fault)
    assert faults["429"] > 0 and faults["hang"] > 0 and faults["malformed"] > 0
    assert stats.attempts_by_status.get("timeout", 0) == faults["hang"]
    assert stats.attempts_by_status.get("rate_limited", 0) == faults["429"]

    by_request: dict[str, list[dict]] = {}
    for r in rows:
        by_request.setdefault(r["request_id"], []).append(r)
    assert set(by_request) == set(plan.request_ids)
    for rid, attempts in by_request.items():
        last = attempts[-1]
        assert [a["attempt"] for a in attempts] == list(range(1, len(attempts) + 1))
        assert all(a["status"] in RETRYABLE_STATUSES for a in attempts[:-1]), rid  # retried only when retryable
        if last["status"] != "ok":
            assert last["error"], f"{rid}: final failure without a reason"
            assert last["status"] not in RETRYABLE_STATUSES or len(attempts) == 4
    for r in rows:
        if r["status"] == "bad_output":
            assert r["content"] and r["error"]  # the paid-for body is kept
    assert stats.done >= n * 0.95  # 4 attempts make a final failure rare at these rates
    assert _leaks(db_path) == []
    errors = " ".join(r["error"] or "" for r in rows)
    assert SECRET not in errors


def test_budget_stops_new_requests(db_path: Path) -> None:
    synthetic_images(db_path, 40)
    plan = plan_requests(db_path, sample_types=["complex_reasoning"], model="gpt-4o", max_tokens=300)
    with start_simulator(SimConfig(seed=2)) as sim:
        one = _config(sim, model="gpt-4o", concurrency=4, max_tokens=300)
        first = run_requests_sync(plan.request_ids[:1], db_path=db_path, config=one)
        cap = first.cost_usd * 10.5  # room for about ten requests
        capped = one.model_copy(update={"max_cost_usd": cap})
        stats = run_requests_sync(plan.request_ids, db_path=db_path, config=capped)
        sent = len(_chat_log(sim))
    assert stats.cost_usd <= cap  # never passes the cap
    # and stops only when the requests in flight (4) plus one more could pass it
    assert cap - stats.cost_usd < 5 * first.cost_usd
    assert stats.done >= 5
    assert stats.final_by_status["budget_exceeded"] == stats.failed == len(plan.request_ids) - 1 - stats.done
    assert sent == 1 + stats.attempts  # attempts counts HTTP calls; budget_exceeded rows were never sent
    skipped = store.query("SELECT count(DISTINCT request_id) AS n FROM responses WHERE status = 'budget_exceeded' "
                          "AND http_status IS NULL", path=db_path)[0]["n"]
    assert skipped == stats.failed


def test_unplanned_request_ids_are_an_error(db_path: Path) -> None:
    synthetic_images(db_path, 1)
    plan = plan_requests(db_path, sample_types=["conversation"], model="gpt-4o-mini")
    with start_simulator(SimConfig()) as sim, pytest.raises(ValueError, match="not-a-request") as error:
        run_requests_sync([*plan.request_ids, "not-a-request"], db_path=db_path, config=_config(sim))
    assert "plan them first" in str(error.value)


def test_unknown_model_with_a_budget_is_refused(db_path: Path) -> None:
    with pytest.raises(ValueError, match=r"prices\.toml"):
        run_requests_sync([], db_path=db_path, config=GenerateConfig(model="local-llama", max_cost_usd=1.0))


def test_run_params_keep_the_key_out(db_path: Path) -> None:
    synthetic_images(db_path, 1)
    with start_simulator(SimConfig()) as sim:
        generate(db_path, _config(sim, types=["detail_description"]))
    params = store.query("SELECT params FROM runs", path=db_path)[0]["params"]
    assert "api_key" not in json.loads(params) and SECRET not in params
    assert not journal_dir(db_path).exists() or list(journal_dir(db_path).iterdir()) == []


def test_a_rejected_key_stops_the_run_at_once(db_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tasks.llm import client as llm_client
    from tasks.llm.engine import AuthenticationFailed

    synthetic_images(db_path, 30)
    plan = plan_requests(db_path, sample_types=["complex_reasoning"], model="gpt-4o-mini")
    calls = []

    async def unauthorized(sender, request, **kwargs):  # what the SDK reports for a 401
        calls.append(request.request_id)
        return llm_client.Attempt("client_error", http_status=401, error=f"Incorrect API key provided: {SECRET}")

    monkeypatch.setattr(llm_client, "attempt", unauthorized)
    with start_simulator(SimConfig()) as sim, pytest.raises(AuthenticationFailed, match="HTTP 401"):
        run_requests_sync(plan.request_ids, db_path=db_path, config=_config(sim, concurrency=2))
    assert len(calls) <= 2  # one per worker at most, not one per request
    rows = store.query("SELECT status, http_status FROM responses", path=db_path)
    assert rows and {r["http_status"] for r in rows} == {401}  # the failed attempts are recorded
    assert store.query("SELECT status FROM runs", path=db_path)[0]["status"] == "failed"


def test_claims_grow_with_the_store_and_every_request_is_sent_once(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With `claim_chunk` unset the first claim is small and the next ones are sized from the stored requests
    (`claim_chunk_for`), so a large store needs fewer of its scanning claim transactions per request."""
    from tasks.llm import engine
    from tasks.store import queries

    assert engine.claim_chunk_for(158_000) == 1000 and engine.claim_chunk_for(1_580_000) == 10_000  # LLaVA, 10x
    monkeypatch.setattr(engine, "CLAIM_CHUNK_MIN", 2)
    monkeypatch.setattr(engine, "CLAIM_CHUNK_MAX", 5)
    monkeypatch.setattr(engine, "CLAIM_ROWS_PER_REQUEST", 3)  # 12 stored requests -> 4 per claim
    sizes: list[int] = []
    real_claim = queries.claim

    def spy(con, ids, *args, **kwargs):  # type: ignore[no-untyped-def]
        sizes.append(len(ids))
        return real_claim(con, ids, *args, **kwargs)

    monkeypatch.setattr(queries, "claim", spy)
    synthetic_images(db_path, 12)
    ids = plan_requests(db_path, sample_types=["conversation"], model="gpt-4o-mini").request_ids
    with start_simulator(SimConfig(seed=3)) as sim:
        stats = run_requests_sync(ids, db_path=db_path, config=_config(sim))
        assert stats.done == 12 and len(_chat_log(sim)) == 12
    assert sizes == [2, 4, 4, 2]
