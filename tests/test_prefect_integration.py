"""End to end through a real Prefect server: deploy from prefect.yaml, a process worker runs `pipeline`.

Starts `prefect server start` on a free loopback port with its own PREFECT_HOME, creates the
process pools and runs `prefect deploy --all` from the repo root (`python -m flows.pools deploy`),
starts a worker, triggers the `pipeline` deployment on three coco-mini images against the simulator,
waits for Completed, then checks the artifacts through the Prefect API and the tables through DuckDB. Server and
worker are stopped by PID (their process groups) at the end.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tasks import store
from tests.prefect_server import start_server, stop

REPO = Path(__file__).resolve().parents[1]
PREFECT = [sys.executable, "-m", "prefect"]

pytestmark = [pytest.mark.prefect_server, pytest.mark.coco_mini, pytest.mark.timeout(300)]


@pytest.fixture
def prefect_server(tmp_path: Path) -> Iterator[dict[str, str]]:
    """A real Prefect server on a loopback port; yields the environment that points at it."""
    server, env = start_server(tmp_path, ui=False)
    try:
        yield env
    finally:
        stop(server)


async def run_and_wait(env: dict[str, str], parameters: dict[str, object], timeout_s: float) -> tuple[str, str]:
    """Trigger the pipeline deployment; return (final state name, flow run id)."""
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: env["PREFECT_API_URL"]}):
        flow_run = await run_deployment("pipeline/pipeline", parameters=parameters, timeout=0)
        async with get_client() as client:
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline:
                run = await client.read_flow_run(flow_run.id)
                if run.state is not None and run.state.is_final():
                    return run.state.name, str(flow_run.id)
                await asyncio.sleep(1)
    return "timed out", str(flow_run.id)


async def artifact_keys(env: dict[str, str]) -> set[str]:
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: env["PREFECT_API_URL"]}):
        async with get_client() as client:
            return {a.key for a in await client.read_artifacts() if a.key}


def test_pipeline_deployment_runs_on_a_process_worker(prefect_server: dict[str, str], coco_mini: Path,
                                                      tmp_path: Path) -> None:
    from tests.sim import SimConfig, start_simulator

    env = prefect_server
    db = tmp_path / "vistune.duckdb"
    export_dir = tmp_path / "export"
    # both pools (CPU `vistune`, GPU `vistune-gpu`) and every deployment of prefect.yaml, as the docs say
    deployed = subprocess.run([sys.executable, "-m", "flows.pools", "deploy"], env=env, cwd=REPO, capture_output=True,
                              text=True, timeout=300)
    assert deployed.returncode == 0, f"flows.pools deploy failed:\n{deployed.stdout[-3000:]}\n{deployed.stderr[-3000:]}"
    worker_log = tmp_path / "worker.log"
    with start_simulator(SimConfig()) as sim, worker_log.open("wb") as out:
        worker = subprocess.Popen([*PREFECT, "worker", "start", "--pool", "vistune", "--limit", "1"],
                                  env={**env, "VISTUNE_DB": str(db)}, cwd=REPO, stdout=out,
                                  stderr=subprocess.STDOUT, start_new_session=True)
        try:
            parameters = {"params": {
                "ingest": {"coco_dir": str(coco_mini), "splits": ["train2017"], "db_path": str(db)},
                "generate": {"limit_images": 3, "model": "gpt-4o-mini", "base_url": sim.base_url,
                             "shard_size": 4, "max_workers": 2, "rpm": 6000},
                "curate": {"export_dir": str(export_dir)},
            }}
            state, run_id = asyncio.run(run_and_wait(env, parameters, timeout_s=180))
        finally:
            stop(worker)
    assert state == "Completed", f"flow run {run_id} ended {state}; worker log:\n{worker_log.read_text()[-4000:]}"

    keys = asyncio.run(artifact_keys(env))
    assert {"generation-progress", "generation-summary", "dataset-report", "dataset-exports"} <= keys, keys

    counts = store.table_counts(db)
    assert counts["images"] == 80 and counts["captions"] >= 400
    assert counts["requests"] == 9  # 3 images x 3 sample types
    ok = store.query("SELECT count(DISTINCT request_id) AS n FROM responses WHERE status = 'ok'", path=db)[0]["n"]
    assert ok == 9
    assert counts["samples"] + store.query("SELECT count(DISTINCT response_id) AS n FROM rejects", path=db)[0]["n"] >= 9
    assert (export_dir / "llava_instruct.json").exists()
