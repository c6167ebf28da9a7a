"""Batch mode shares online's write path: rows through the journal, a `runs` row, the budget; and `vistune status`
lists only batches whose results are not stored yet."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from bench.gen_scale import synthetic_images
from flows.cli import get_app
from schemas.generation import BATCH_STORED, GenerateConfig
from schemas.tables import BatchRow
from tasks import store
from tasks.llm import batch
from tasks.llm.engine import send
from tasks.prompting.plan import plan_requests
from tasks.store import queries
from tasks.store.journal import Journal
from tests.sim import SimConfig, start_simulator


def _submitted_ids(db: Path) -> list[str]:
    rows = store.query("SELECT request_ids FROM batches", path=db)
    return [rid for r in rows for rid in json.loads(r["request_ids"])]


def test_batch_rows_go_through_the_journal_and_the_budget_stops_submission(db_path: Path, monkeypatch) -> None:
    journaled: list[dict] = []

    class SpyJournal(Journal):
        def append(self, row: dict) -> None:
            journaled.append(row)
            super().append(row)

    monkeypatch.setattr(batch, "Journal", SpyJournal)
    synthetic_images(db_path, 12)
    plan = plan_requests(db_path, sample_types=["complex_reasoning"], model="gpt-4o", max_tokens=300)
    with store.read(db_path) as con:
        requests = queries.unanswered(con, plan.request_ids).requests
    estimates = sorted(batch.estimate_usd(r, GenerateConfig(model="gpt-4o")) for r in requests)
    cap = sum(estimates[:5]) + estimates[0] / 2  # room for about five of the twelve
    with start_simulator(SimConfig(seed=3, batch_delay_s=0.1)) as sim:
        config = GenerateConfig(base_url=sim.base_url, api_key="sk-batch-budget-0123", mode="batch", model="gpt-4o",
                                batch_poll_s=0.1, max_cost_usd=cap, max_tokens=300)
        stats = send(plan.request_ids, db_path=db_path, config=config, run_id="batch-run-1")

    submitted = _submitted_ids(db_path)
    assert 0 < len(submitted) < 12
    rows = store.query("SELECT request_id, status, cost_usd, run_id, mode FROM responses", path=db_path)
    assert {r["mode"] for r in rows} == {"batch"} and {r["run_id"] for r in rows} == {"batch-run-1"}
    refused = {r["request_id"] for r in rows if r["status"] == "budget_exceeded"}
    assert refused == set(plan.request_ids) - set(submitted)  # what did not fit was never submitted
    assert sum(r["cost_usd"] for r in rows) <= cap
    # every stored row went through the journal, and the run's stats are counted from the same rows
    assert sorted(r["response_id"] for r in journaled) == sorted(
        r["response_id"] for r in store.query("SELECT response_id FROM responses", path=db_path))
    assert stats.attempts_by_status.get("budget_exceeded") == len(refused)
    assert stats.attempts == len(submitted) and stats.done == len(submitted)
    run = store.query("SELECT kind, status, params, stats FROM runs WHERE run_id = 'batch-run-1'", path=db_path)[0]
    assert (run["kind"], run["status"]) == ("generate", "completed")
    params = json.loads(run["params"])
    assert params["mode"] == "batch" and params["budget_id"] == "batch-run-1" and "api_key" not in params
    assert json.loads(run["stats"])["done"] == len(submitted)


def test_status_lists_open_batches_only(db_path: Path) -> None:
    store.ensure_schema(db_path)
    now = store.utcnow()
    rows = [BatchRow(batch_id=f"batch_{status}", input_file_id=f"file_{status}", status=status, n_requests=1,
                     request_ids=["r"], created_at=now, updated_at=now)
            for status in (BATCH_STORED, "in_progress", "completed")]
    with store.write(db_path) as con:
        store.insert_rows(con, BatchRow, rows)
    result = CliRunner().invoke(get_app(), ["status", "--db", str(db_path)])
    assert result.exit_code == 0, result.output
    assert "open batches: 2" in result.output
    assert "batch_in_progress" in result.output
    assert "batch_completed" in result.output  # finished remotely, results not stored yet: still open
    assert "batch_stored" not in result.output
