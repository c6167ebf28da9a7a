"""Prefect's share of wall time in a large `generate` run: the flow vs the same plain functions.

Both sides do the same work on their own copy of one planned database, against one zero-latency
simulator process: plan (all requests already planned, so this re-derives the pending ids), then
the same shards, `--max-workers` at a time, each sent by `tasks.llm.engine.run_requests_sync`.
- plain: a `ThreadPoolExecutor` over the shards, no Prefect anywhere;
- flow:  `flows.generate.generate_flow` on a temporary Prefect server (started before timing):
         one task run per shard, retries armed, live progress artifact.
Overhead = (flow wall - plain wall) / flow wall, also given against the sending part alone (the
flow's wall minus the plain side's planning time). Goal: <= 5% at 158,000 requests.

    python -m bench.prefect_overhead --requests 158000      # the issue's figure
    python -m bench.prefect_overhead --requests 5000        # quick look
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench.gen_scale import synthetic_images
from schemas.generation import GenerateConfig, GenerateStats
from tasks.llm.engine import run_requests_sync
from tasks.prompting.plan import plan_requests, shard
from tests.sim import SimConfig, start_simulator_process

SAMPLE_TYPE = "complex_reasoning"
MODEL = "gpt-4o-mini"


def run_plain(
    db: Path, base_url: str, shard_size: int, max_workers: int, concurrency: int
) -> tuple[float, float, int]:
    """Plan + shards in a thread pool, no Prefect. Returns (wall seconds, of which planning, good responses)."""
    start = time.perf_counter()
    ids = plan_requests(db, sample_types=[SAMPLE_TYPE], model=MODEL).request_ids
    plan_s = time.perf_counter() - start
    config = GenerateConfig(model=MODEL, base_url=base_url, api_key="sk-bench", concurrency=concurrency,
                            timeout=60, max_attempts=3)
    with ThreadPoolExecutor(max_workers) as pool:
        results: list[GenerateStats] = list(pool.map(
            lambda part: run_requests_sync(part, db_path=db, config=config), shard(ids, shard_size)))
    return time.perf_counter() - start, plan_s, sum(r.done for r in results)


def run_flow(db: Path, base_url: str, shard_size: int, max_workers: int, concurrency: int) -> tuple[float, int]:
    """The `generate` flow with the same shards (server already up). Returns (wall seconds, good responses)."""
    from flows.generate import generate_flow
    from schemas.flow_params import GenerateParams

    os.environ["OPENAI_API_KEY"] = "sk-bench"  # read by the flow's settings; never a parameter
    params = GenerateParams(db_path=str(db), sample_types=[SAMPLE_TYPE], model=MODEL, base_url=base_url,
                            shard_size=shard_size, max_workers=max_workers, concurrency=concurrency,
                            timeout_s=60, max_attempts=3)
    start = time.perf_counter()
    stats = generate_flow(params)
    return time.perf_counter() - start, stats.done


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=158_000)
    parser.add_argument("--shard-size", type=int, default=500)
    parser.add_argument("--max-workers", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=64, help="requests in flight per shard")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--reuse", action="store_true", help="reuse workdir/planned.duckdb from an earlier run")
    parser.add_argument("--flow-first", action="store_true", help="run the flow side first (order effects)")
    args = parser.parse_args()
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")  # 300+ task-run lines would time the terminal

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="vistune-overhead-"))
    planned = workdir / "planned.duckdb"
    if not (args.reuse and planned.exists()):
        synthetic_images(planned, args.requests)
        plan_requests(planned, sample_types=[SAMPLE_TYPE], model=MODEL)
    dbs = {side: workdir / f"{side}.duckdb" for side in ("plain", "flow")}
    for db in dbs.values():
        shutil.copy(planned, db)

    from prefect.testing.utilities import prefect_test_harness

    sim_config = SimConfig(latency_ms=0, token_counter="approx", log_in_memory=False)
    shape = (args.shard_size, args.max_workers, args.concurrency)
    with start_simulator_process(sim_config) as sim, prefect_test_harness(server_startup_timeout=120):
        sides = ["flow", "plain"] if args.flow_first else ["plain", "flow"]
        for side in sides:
            if side == "plain":
                plain_s, plan_s, plain_done = run_plain(dbs["plain"], sim.base_url, *shape)
                print(f"plain: {plain_s:.1f} s (plan {plan_s:.1f} s), {plain_done} done", flush=True)
            else:
                flow_s, flow_done = run_flow(dbs["flow"], sim.base_url, *shape)
                print(f"flow:  {flow_s:.1f} s, {flow_done} done", flush=True)
    result = {
        "requests": args.requests,
        "order": " then ".join(sides),
        "shards": -(-args.requests // args.shard_size),
        "shard_size": args.shard_size,
        "max_workers": args.max_workers,
        "concurrency_per_shard": args.concurrency,
        "plain_wall_s": round(plain_s, 1),
        "plain_plan_s": round(plan_s, 1),
        "flow_wall_s": round(flow_s, 1),
        "plain_done": plain_done,
        "flow_done": flow_done,
        "prefect_share_pct": round(100 * (flow_s - plain_s) / flow_s, 2),
        # The same difference against the sending part only (the flow's wall minus planning).
        "prefect_share_of_sending_pct": round(100 * (flow_s - plain_s) / (flow_s - plan_s), 2),
    }
    print(json.dumps(result, indent=1))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
