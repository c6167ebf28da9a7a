"""`vistune generate` as a real process: SIGKILL mid-run loses nothing paid, and readers get in while it writes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.gen_scale import synthetic_images
from tasks import store
from tasks.store.journal import journal_dir
from tests.fakes import wait_for
from tests.sim import SimConfig, start_simulator_process

REPO = Path(__file__).resolve().parents[1]
SECRET = "sk-vistune-process-test-SECRET-abcdef0123"
CLI = [sys.executable, "-c", "from flows.cli import main; main()"]


def _generate(db: Path, base_url: str, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "OPENAI_API_KEY": SECRET, "VISTUNE_DB": str(db)}
    cmd = [*CLI, "generate", "--db", str(db), "--base-url", base_url, "--model", "gpt-4o-mini",
           "--types", "complex_reasoning", "--no-progress", *extra]
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


# The duckdb CLI (`pip install duckdb-cli`) in read-only mode, when on PATH; it reads files written by
# the Python package. Unlike `vistune sql` it does not wait for the writer's lock, so it is retried.
DUCKDB_CLI = str(Path(sys.executable).parent / "duckdb")  # the dev extra installs it beside python


def _duckdb_cli_count(db: Path, within_s: float = 5.0) -> int:
    deadline = time.monotonic() + within_s
    while True:
        result = subprocess.run([DUCKDB_CLI, "-readonly", "-csv", "-noheader", str(db), "-c",
                                 "SELECT count(*) FROM responses"], capture_output=True, text=True, timeout=30)
        if result.returncode == 0:
            return int(result.stdout.strip())
        if time.monotonic() > deadline:
            raise AssertionError(f"duckdb CLI got no answer within {within_s}s: {result.stderr}")
        time.sleep(0.05)




def test_sigkill_mid_run_loses_only_calls_in_flight_and_never_resends_a_good_one(tmp_path: Path) -> None:
    db = tmp_path / "crash.duckdb"
    n, concurrency = 150, 8
    synthetic_images(db, n)
    with start_simulator_process(SimConfig(latency_ms=60, seed=5, fault_5xx=0.05)) as sim:
        def served_200() -> int:
            return sum(1 for r in sim.read_log() if r["status"] == 200)

        first = _generate(db, sim.base_url, "--concurrency", str(concurrency))
        wait_for(lambda: served_200() >= 40 or first.poll() is not None, 120, "40 answered calls")
        assert first.poll() is None, f"the run ended before the kill: {first.stdout.read()}"
        first.send_signal(signal.SIGKILL)
        first.wait()
        first.stdout.close()
        time.sleep(0.3)  # calls in flight at the kill may still be logged by the server
        log_first = sim.read_log()
        assert any(journal_dir(db).glob("*.jsonl")), "the killed run left no journal to recover"

        second = _generate(db, sim.base_url, "--concurrency", str(concurrency))
        out, _ = second.communicate(timeout=240)
        assert second.returncode == 0, out
        log_second = sim.read_log()[len(log_first):]

    runs = store.query("SELECT run_id FROM runs WHERE kind = 'generate' ORDER BY started_at", path=db)
    assert len(runs) == 2
    second_run = runs[1]["run_id"]
    rows = store.query("SELECT request_id, status, run_id FROM responses", path=db)
    first_rows = [r for r in rows if r["run_id"] != second_run]

    # Every 200 the server sent during the first run is stored, except calls in flight at the kill.
    served_ok = [r["client_request_id"] for r in log_first if r["status"] == 200]
    stored_first = {r["request_id"] for r in first_rows}
    missing = [rid for rid in served_ok if rid not in stored_first]
    assert len(missing) <= concurrency, f"{len(missing)} answered calls lost"
    assert len(first_rows) >= len([r for r in log_first if r["status"] is not None]) - concurrency

    # Nothing that had a stored good response was sent again.
    good_before = {r["request_id"] for r in first_rows if r["status"] == "ok"}
    resent = [r["client_request_id"] for r in log_second if r["client_request_id"] in good_before]
    assert resent == []

    done = store.query("SELECT count(DISTINCT request_id) AS n FROM responses WHERE status = 'ok'", path=db)[0]["n"]
    assert done == n
    assert not list(journal_dir(db).glob("*"))  # replayed and cleaned up
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path


def test_readers_get_answers_within_5s_while_generate_writes(tmp_path: Path) -> None:
    db = tmp_path / "busy.duckdb"
    n = 300
    synthetic_images(db, n)
    store.ensure_schema(db)
    with start_simulator_process(SimConfig(latency_ms=300, seed=9)) as sim:  # a run of ~12 s
        assert Path(DUCKDB_CLI).exists(), "the duckdb CLI comes with the dev extra: pip install -e '.[dev]'"
        writer = _generate(db, sim.base_url, "--concurrency", "8", "--flush-interval", "1")
        try:
            wait_for(lambda: any(journal_dir(db).glob("*.lock")), 60, "generate to start")
            timings: list[float] = []
            counts: list[int] = []
            cli_answers: list[int] = []
            while writer.poll() is None and len(timings) < 6:
                start = time.monotonic()
                # `--timeout 5`: the reader gives up (exit 1) if the writer keeps it out for 5 s,
                # so success proves the database answered within 5 s whatever Python's start-up costs.
                reader = subprocess.run(
                    [*CLI, "sql", "SELECT count(*) AS n FROM responses", "--db", str(db), "--format", "csv",
                     "--timeout", "5"], cwd=REPO, capture_output=True, text=True, timeout=60,
                )
                timings.append(time.monotonic() - start)
                assert reader.returncode == 0, reader.stderr
                counts.append(int(reader.stdout.strip().splitlines()[-1]))
                cli_answers.append(_duckdb_cli_count(db))
        finally:
            out, _ = writer.communicate(timeout=240)
        assert writer.returncode == 0, out
    assert len(timings) >= 2, "generate finished before two readers ran: make the run longer"
    assert counts == sorted(counts)  # readers see committed progress, never a rollback
    assert counts[-1] > 0  # and they see it while the run is going
    assert len(cli_answers) == len(counts)
    assert store.query("SELECT count(*) AS n FROM responses WHERE status = 'ok'", path=db)[0]["n"] == n


@pytest.mark.parametrize("command", ["estimate"])
def test_estimate_cli_prints_online_and_batch_costs(tmp_path: Path, command: str) -> None:
    db = tmp_path / "est.duckdb"
    synthetic_images(db, 3)
    result = subprocess.run([*CLI, command, "--db", str(db), "--model", "gpt-4o"], cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "requests to send" in result.stdout and "cost with --mode batch" in result.stdout
    assert "9" in result.stdout  # 3 images x 3 types
    assert store.query("SELECT count(*) AS n FROM requests", path=db)[0]["n"] == 0
