"""Batch mode against the simulator's /v1/files and /v1/batches: store, resubmit failed rows, resume after restart."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from bench.gen_scale import synthetic_images
from schemas.generation import GenerateConfig
from tasks import store
from tasks.llm.batch import STORED, make_sync_client, run_batch
from tasks.pipeline import generate
from tasks.prompting.formats import parse
from tasks.prompting.plan import plan_requests
from tests.sim import SimConfig, start_simulator


def _config(sim, **overrides) -> GenerateConfig:
    values = {"base_url": sim.base_url, "api_key": "sk-batch-test", "mode": "batch", "batch_poll_s": 0.1,
              "model": "gpt-4o", "max_attempts": 4, "types": ["complex_reasoning"]}
    return GenerateConfig(**{**values, **overrides})


def _batch_creates(sim) -> int:
    return sum(1 for r in list(sim.log) if r.method == "POST" and r.path.endswith("/batches"))


def test_batch_mode_stores_everything_and_resubmits_only_failed_rows(db_path: Path) -> None:
    synthetic_images(db_path, 30)
    with start_simulator(SimConfig(seed=4, batch_delay_s=0.1, fault_5xx=0.2, fault_malformed=0.1)) as sim:
        stats = generate(db_path, _config(sim))
        assert (stats.requests, stats.done, stats.failed) == (30, 30, 0)
        creates = _batch_creates(sim)
        assert creates >= 2  # the failed rows went out again
        again = generate(db_path, _config(sim))
        assert again.requests == 0 and _batch_creates(sim) == creates

    rows = store.query("SELECT r.request_id, r.status, r.mode, r.cost_usd, r.content, q.output_format "
                       "FROM responses r JOIN requests q USING (request_id)", path=db_path)
    assert {r["mode"] for r in rows} == {"batch"}
    statuses = Counter(r["status"] for r in rows)
    assert statuses["ok"] == 30 and statuses["server_error"] + statuses["bad_output"] > 0
    for r in rows:
        if r["status"] == "ok":
            parse("complex_reasoning", r["output_format"], r["content"])
    # Each request was resubmitted only until it had a good answer.
    ok_per_request = Counter(r["request_id"] for r in rows if r["status"] == "ok")
    assert set(ok_per_request.values()) == {1}
    batches = store.query("SELECT status, n_requests FROM batches", path=db_path)
    assert len(batches) == creates and {b["status"] for b in batches} == {STORED}
    assert batches[0]["n_requests"] == 30


def test_batch_polling_resumes_after_a_restart(db_path: Path) -> None:
    synthetic_images(db_path, 5)
    plan = plan_requests(db_path, sample_types=["complex_reasoning"], model="gpt-4o")
    with start_simulator(SimConfig(seed=1, batch_delay_s=0.5)) as sim:
        config = _config(sim)
        # First process: submits and stops without waiting (as if it was killed while polling).
        first = run_batch(db_path, plan.request_ids, config, wait=False)
        assert first.done == 0
        open_batches = store.query("SELECT batch_id, status FROM batches", path=db_path)
        assert len(open_batches) == 1 and open_batches[0]["status"] != STORED
        # Second process: finds the open batch in DuckDB and polls it instead of paying again.
        second = run_batch(db_path, plan.request_ids, config, client=make_sync_client(config))
        assert second.done == 5
        assert _batch_creates(sim) == 1
        uploads = [r for r in list(sim.log) if r.method == "POST" and r.path.endswith("/files")]
        assert len(uploads) == 1
    assert store.query("SELECT status FROM batches", path=db_path)[0]["status"] == STORED


def test_two_batch_runs_at_once_submit_each_request_once(db_path: Path, monkeypatch) -> None:
    # Claims cover batch mode too: a request goes out in one batch, whichever run got to it first.
    import threading

    from tasks.llm import batch

    # Make the race certain: the first run to submit waits until the other run has looked for work too.
    looked, both_looked = [0], threading.Event()
    claim_pending, submit = batch._claim_pending, batch.submit

    def counting_claim(*args, **kwargs):
        found = claim_pending(*args, **kwargs)
        looked[0] += 1
        if looked[0] >= 2:
            both_looked.set()
        return found

    def waiting_submit(*args, **kwargs):
        both_looked.wait(timeout=10)
        return submit(*args, **kwargs)

    monkeypatch.setattr(batch, "_claim_pending", counting_claim)
    monkeypatch.setattr(batch, "submit", waiting_submit)
    synthetic_images(db_path, 40)
    plan = plan_requests(db_path, sample_types=["complex_reasoning"], model="gpt-4o")
    with start_simulator(SimConfig(seed=6, batch_delay_s=0.2)) as sim:
        results: list = []
        runs = [threading.Thread(target=lambda: results.append(run_batch(db_path, plan.request_ids, _config(sim))))
                for _ in range(2)]
        for run in runs:
            run.start()
        for run in runs:
            run.join(timeout=120)
    assert len(results) == 2 and both_looked.is_set()
    submitted = Counter(rid for b in store.query("SELECT request_ids FROM batches", path=db_path)
                        for rid in json.loads(b["request_ids"]))
    assert set(submitted) == set(plan.request_ids)  # every request went out ...
    assert set(submitted.values()) == {1}  # ... in exactly one batch
    ok = store.query("SELECT count(DISTINCT request_id) AS n, count(*) AS rows FROM responses WHERE status = 'ok'",
                     path=db_path)[0]
    assert ok == {"n": 40, "rows": 40}
    assert store.query("SELECT count(*) AS n FROM claims", path=db_path) == [{"n": 0}]
