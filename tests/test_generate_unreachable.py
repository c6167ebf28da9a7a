"""An endpoint that answers nothing usable makes `vistune generate` fail loudly and fast, with every attempt stored."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from typer.testing import CliRunner

from flows.cli import get_app
from schemas.generation import GenerateConfig
from tasks import store
from tasks.ingest.coco import ingest
from tasks.llm.engine import EndpointUnreachable, run_requests_sync
from tests.sim import SimConfig, start_simulator


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_generate_exits_non_zero_when_every_request_fails(db_path: Path, sample_coco: Path) -> None:
    ingest(sample_coco, "train2017", db_path)
    result = CliRunner().invoke(get_app(), [
        "generate", "--db", str(db_path), "--base-url", f"http://127.0.0.1:{_closed_port()}/v1",
        "--types", "conversation", "--limit", "2", "--max-attempts", "2", "--timeout", "2", "--no-progress",
    ], env={"OPENAI_API_KEY": "sk-test-unreachable"})
    assert result.exit_code == 1, result.output
    assert "all 2 requests failed" in result.output
    assert "connection_error=2" in result.output or "timeout=2" in result.output
    attempts = store.query("SELECT status, count(*) AS n FROM responses GROUP BY 1", path=db_path)
    assert sum(r["n"] for r in attempts) == 4  # 2 requests x 2 attempts, each stored with its failure class
    assert all(r["status"] != "ok" for r in attempts)


def _plan(db: Path, n: int) -> list[str]:
    from bench.gen_scale import synthetic_images
    from tasks.prompting.plan import plan_requests

    synthetic_images(db, n)
    return plan_requests(db, sample_types=["complex_reasoning"], model="gpt-4o-mini").request_ids


def _config(base_url: str, **overrides) -> GenerateConfig:
    values = {"base_url": base_url, "api_key": "sk-test-breaker-0123456789", "model": "gpt-4o-mini", "concurrency": 4,
              "timeout": 2.0, "backoff_base_s": 0.01, "backoff_max_s": 0.02, "max_attempts": 5}
    return GenerateConfig(**{**values, **overrides})


def test_a_dead_endpoint_trips_the_breaker_after_a_run_of_connection_failures(db_path: Path) -> None:
    ids = _plan(db_path, 60)  # 300 attempts without a breaker
    with pytest.raises(EndpointUnreachable, match="20 attempts in a row could not reach") as stopped:
        run_requests_sync(ids, db_path=db_path, config=_config(f"http://127.0.0.1:{_closed_port()}/v1"))
    assert "connection_error" in str(stopped.value) or "connection failed" in str(stopped.value)
    attempts = store.query("SELECT count(*) AS n FROM responses", path=db_path)[0]["n"]
    assert 20 <= attempts < 20 + 4  # the run of 20, plus at most the other workers' attempts in flight
    assert store.query("SELECT status FROM runs", path=db_path)[0]["status"] == "failed"
    assert store.query("SELECT count(*) AS n FROM claims", path=db_path)[0]["n"] == 0  # released for a rerun


def test_an_endpoint_failing_every_first_attempt_trips_the_breaker(db_path: Path) -> None:
    ids = _plan(db_path, 40)
    with start_simulator(SimConfig(fault_5xx=1.0)) as sim, pytest.raises(EndpointUnreachable, match="first 10"):
        run_requests_sync(ids, db_path=db_path, config=_config(sim.base_url, breaker_first_attempts=10))
    attempts = store.query("SELECT count(*) AS n FROM responses", path=db_path)[0]["n"]
    assert 10 <= attempts < 10 + 4
    assert len(sim.log) == attempts  # every call made is stored


def test_the_cli_stops_a_run_against_a_closed_port_with_one_message(db_path: Path, sample_coco: Path) -> None:
    ingest(sample_coco, "train2017", db_path)
    result = CliRunner().invoke(get_app(), [
        "generate", "--db", str(db_path), "--base-url", f"http://127.0.0.1:{_closed_port()}/v1",
        "--types", "conversation,detail_description,complex_reasoning", "--concurrency", "2", "--timeout", "2",
        "--no-progress",
    ], env={"OPENAI_API_KEY": "sk-test-unreachable"})
    assert result.exit_code == 2, result.output
    assert "error: stopped: 20 attempts in a row could not reach" in " ".join(result.output.split())
    assert "Traceback" not in result.output
    attempts = store.query("SELECT count(*) AS n FROM responses", path=db_path)[0]["n"]
    assert 20 <= attempts < 22  # not max_attempts x requests: the rows made are kept
