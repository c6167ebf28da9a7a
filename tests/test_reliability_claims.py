"""Never paid twice across processes: claims with an expiring lease, and one sample per slot in the dataset."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from datetime import timedelta
from pathlib import Path

import pytest

from bench.gen_scale import synthetic_images
from schemas.tables import SampleRow
from tasks import store
from tasks.store import queries
from tasks.store.journal import Journal, journal_dir, replay_orphans
from tests.fakes import plan_stand_ins, wait_for
from tests.sim import SimConfig, start_simulator_process

REPO = Path(__file__).resolve().parents[1]
SECRET = "sk-vistune-claims-test-SECRET-0123456789"
# `vistune generate` with small claim chunks (the CLI has no flag for them), so that concurrent
# processes share a small plan instead of the first one claiming all of it.
CLI = [sys.executable, "-c",
       "import schemas.generation as g\n"
       "fields = g.GenerateConfig.model_fields\n"
       "fields['claim_chunk'].default, fields['claim_poll_s'].default = 8, 0.3\n"
       "g.GenerateConfig.model_rebuild(force=True)\n"
       "from flows.cli import main\n"
       "main()"]




def _claim(db: Path, ids: list[str], owner: str, *, now=None, lease_s: float = 60.0) -> queries.Claimed:
    with store.write(db) as con:
        return queries.claim(con, ids, owner, lease_s=lease_s, now=now or store.utcnow(),
                             owner_alive=lambda o: (journal_dir(db) / f"{o}.lock").exists())


def test_a_claim_is_exclusive_until_released_or_expired_with_its_owner_gone(db_path: Path) -> None:
    store.ensure_schema(db_path)
    plan_stand_ins(db_path, "r1", "r2", "r3")
    first = _claim(db_path, ["r1", "r2"], "A")
    assert [r.request_id for r in first.requests] == ["r1", "r2"]
    again = _claim(db_path, ["r1", "r2", "r3"], "B")
    assert (again.busy, [r.request_id for r in again.requests]) == (["r1", "r2"], ["r3"])
    assert [r.request_id for r in _claim(db_path, ["r1"], "A").requests] == ["r1"]  # the owner keeps its own

    with store.write(db_path) as con:  # A's answer to r1 is stored, then its claim released
        queries.release_claims(con, "A", ["r1"])
        con.execute("INSERT INTO responses (response_id, request_id, attempt, status, created_at) "
                    "VALUES ('x', 'r1', 1, 'ok', now())")
    later = _claim(db_path, ["r1", "r2"], "B")
    assert (later.answered, later.busy, later.requests) == (["r1"], ["r2"], [])

    # A's lease ends, and A has no journal here (it ran elsewhere, or its journal was replayed): taken over.
    expired = store.utcnow() + timedelta(seconds=61)
    assert [r.request_id for r in _claim(db_path, ["r2"], "B", now=expired).requests] == ["r2"]
    # A live owner's claim is never taken over, lease or not: its journal lock file says it runs.
    live = Journal(db_path)
    plan_stand_ins(db_path, "r4")
    assert [r.request_id for r in _claim(db_path, ["r4"], live.owner).requests] == ["r4"]
    assert _claim(db_path, ["r4"], "B", now=expired + timedelta(days=1)).busy == ["r4"]
    with store.write(db_path) as con:  # renewal answers what the owner still holds
        assert queries.renew_claims(con, live.owner, lease_s=60, now=store.utcnow()) == {"r4"}
    live.close()


def test_replaying_a_dead_engine_frees_its_claims_with_its_rows(db_path: Path) -> None:
    store.ensure_schema(db_path)
    plan_stand_ins(db_path, "r1", "r2")
    folder = journal_dir(db_path)
    folder.mkdir(parents=True)
    (folder / "4242-dead.lock").write_text("")  # unheld: its process was killed
    (folder / "4242-dead.000001.jsonl").write_text(
        '{"response_id": "d1", "request_id": "r1", "attempt": 1, "status": "ok", "content": "x", '
        '"created_at": "2024-01-01T00:00:00"}\n')
    assert _claim(db_path, ["r1", "r2"], "4242-dead").requests  # it had claimed both
    assert _claim(db_path, ["r1", "r2"], "B").busy == ["r1", "r2"]
    assert replay_orphans(db_path) == 1
    after = _claim(db_path, ["r1", "r2"], "B")
    assert (after.answered, [r.request_id for r in after.requests]) == (["r1"], ["r2"])


def test_the_dataset_keeps_one_sample_per_slot(db_path: Path) -> None:
    store.ensure_schema(db_path)
    now = store.utcnow()

    def sample(sid: str, image: int, seconds: int, version: str = "v1") -> SampleRow:
        return SampleRow(sample_id=sid, request_id=f"q{sid}", response_id=f"r{sid}", image_id=image,
                         sample_type="conversation", prompt_version=version, model="m", data={}, text=sid,
                         created_at=now + timedelta(seconds=seconds))

    with store.write(db_path) as con:  # two answers of one slot (two processes before claims), another slot
        store.insert_rows(con, SampleRow, [sample("b", 1, 2), sample("a", 1, 1), sample("c", 2, 1),
                                           sample("d", 1, 3, version="v2")])
    ids = [r["sample_id"] for r in store.query("SELECT sample_id FROM dataset ORDER BY 1", path=db_path)]
    assert ids == ["a", "c", "d"]  # the first accepted sample of each (image, type, prompt_version)


def _generate(db: Path, base_url: str, concurrency: int) -> subprocess.Popen:
    env = {**os.environ, "OPENAI_API_KEY": SECRET, "VISTUNE_DB": str(db)}
    cmd = [*CLI, "generate", "--db", str(db), "--base-url", base_url, "--model", "gpt-4o-mini",
           "--types", "complex_reasoning", "--no-progress", "--concurrency", str(concurrency),
           "--flush-interval", "1", "--max-regenerations", "0"]
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)




@pytest.mark.parametrize("processes", [2, 4])
def test_concurrent_processes_one_killed_pay_each_request_once(tmp_path: Path, processes: int) -> None:
    db = tmp_path / "shared.duckdb"
    n, concurrency = 96, 3
    synthetic_images(db, n)
    store.ensure_schema(db)
    with start_simulator_process(SimConfig(latency_ms=80, seed=11)) as sim:
        runs = [_generate(db, sim.base_url, concurrency) for _ in range(processes)]
        by_pid = {run.pid: run for run in runs}

        def busy_process() -> subprocess.Popen | None:
            # a process that has journaled some answers and still runs: the one to kill
            for segment in journal_dir(db).glob("*.jsonl"):
                run = by_pid.get(int(segment.name.split("-")[0]))
                if run is not None and run.poll() is None and segment.read_bytes().count(b"\n") >= 4:
                    return run
            return None

        wait_for(lambda: busy_process() is not None, 180, "a process with journaled answers")
        victim = busy_process()
        assert victim is not None
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        victim.stdout.close()
        survivors = [run for run in runs if run is not victim]
        outputs = [run.communicate(timeout=300)[0] for run in survivors]
        for run, out in zip(survivors, outputs, strict=True):
            assert run.returncode == 0, out
        restart = _generate(db, sim.base_url, concurrency)  # anything the survivors left
        out, _ = restart.communicate(timeout=300)
        assert restart.returncode == 0, out
        time.sleep(0.3)
        log = [r for r in sim.read_log() if r["path"] == "/v1/chat/completions"]

    rows = store.query("SELECT request_id, status, run_id FROM responses", path=db)
    ok_rows = Counter(r["request_id"] for r in rows if r["status"] == "ok")
    assert len(ok_rows) == n  # every request answered
    assert set(ok_rows.values()) == {1}  # and exactly one paid answer stored for each
    served = Counter(r["client_request_id"] for r in log if r["status"] == 200)
    twice = {rid for rid, k in served.items() if k > 1}
    # A SIGKILL loses only the calls in flight: an answer the server sent as the process died is never
    # journaled, so that request is sent once more. Nothing that was journaled was sent again.
    assert len(twice) <= concurrency, twice
    killed_runs = {r["run_id"] for r in rows} - {
        r["run_id"] for r in store.query("SELECT run_id FROM runs WHERE status = 'completed'", path=db)}
    assert not [r for r in rows if r["request_id"] in twice and r["run_id"] in killed_runs and r["status"] == "ok"]
    by_run = Counter(r["run_id"] for r in rows if r["status"] == "ok")
    assert sum(by_run[run] for run in killed_runs) >= 4  # the killed process's answers were replayed, kept
    assert len(by_run) >= 2  # the work was shared
    assert store.query("SELECT count(*) AS n FROM claims", path=db)[0]["n"] == 0  # all released
    assert not list(journal_dir(db).glob("*"))
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path


def test_claimed_requests_share_each_distinct_params_object(db_path: Path) -> None:
    # A claim of 10,000 requests held a parsed copy of the same few-KB params per request.
    import json

    from tasks.prompting.plan import plan_requests

    synthetic_images(db_path, 12)
    ids = list(plan_requests(db_path, sample_types=["complex_reasoning", "conversation"],
                             model="gpt-4o-mini").request_ids)
    claimed = _claim(db_path, ids, "A").requests
    assert len(claimed) == 24
    stored = {r["request_id"]: json.loads(r["params"]) for r in store.query(
        "SELECT request_id, params FROM requests_stored", path=db_path)}
    assert all(r.params == stored[r.request_id] for r in claimed)
    assert len({id(r.params) for r in claimed}) == 2  # one object per type's params
