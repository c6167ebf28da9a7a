"""Prefect's share of wall time in a large `generate` run: the flow vs the same step without Prefect.

Every side does the same work on its own copy of one planned database, against one zero-latency
simulator process: the pipeline's generate step (`tasks.pipeline.Generate`: plan, which re-derives
the pending ids since all are planned already, then the shards, `--max-workers` at a time, then
validate, then plan again and find nothing new).
- plain:      `pipeline.Generate.run` with a runner that sends the shards in a `ThreadPoolExecutor`,
              no Prefect anywhere;
- flow:       `flows.generate.generate_flow` on a temporary Prefect server (started before timing):
              one task run per shard, retries armed, live progress artifact; shards sized from the
              plan and the worker count (`plan.shard_size_for`) unless `--shard-size` is given;
- flow-500:   the same flow with the former fixed shards of 500 requests;
- flow-sync:  the same flow body as a synchronous flow, as it was before: Prefect's sync engine joins its
              heartbeat thread, which sleeps in 1 s steps, when each run ends.
Both plain and flow use the same shard sizes. Overhead = (flow wall - plain wall) / flow wall, per
round and over all rounds (`--rounds`, every other one in reverse order). Goal (issue 16): <= 3% at
20,000 and at 158,000 requests.

    python -m bench.prefect_overhead --requests 20000 --sides plain flow flow-sync --rounds 8 --fixed-runs 12
    python -m bench.prefect_overhead --requests 20000 --sides plain flow flow-500 --rounds 4
    python -m bench.prefect_overhead --requests 158000 --sides plain flow --rounds 2
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from bench.gen_scale import synthetic_images
from schemas.flow_params import GenerateParams
from schemas.generation import GenerateConfig, GenerateStats
from tasks import pipeline
from tasks.prompting.plan import plan_requests, shard, shard_size_for
from tests.sim import SimConfig, start_simulator_process

SAMPLE_TYPE = "complex_reasoning"
MODEL = "gpt-4o-mini"
SIDES = ("plain", "flow", "flow-500", "flow-sync")
FLOW_SIDES = SIDES[1:]
OLD_SHARD_SIZE = 500


class ThreadShardRunner(pipeline.Runner):
    """The generate step's shards in a thread pool: what the Prefect runner does, without Prefect."""

    def __init__(self, shard_size: int | None, max_workers: int) -> None:
        super().__init__()
        self.shard_size, self.max_workers = shard_size, max_workers
        self.shards = 0

    def send(self, request_ids: Sequence[str], db: Path, config: GenerateConfig, *, round_no: int) -> GenerateStats:
        size = shard_size_for(len(request_ids), self.max_workers, self.shard_size)
        parts = shard(list(request_ids), size)
        self.shards += len(parts)
        with ThreadPoolExecutor(self.max_workers) as pool:
            results = list(pool.map(lambda part: pipeline.send_requests(part, db, config), parts))
        return pipeline.total_of(*results)


def params_for(db: Path, base_url: str, shard_size: int | None, max_workers: int, concurrency: int) -> GenerateParams:
    return GenerateParams(db_path=str(db), sample_types=[SAMPLE_TYPE], model=MODEL, base_url=base_url,
                          shard_size=shard_size, max_workers=max_workers, concurrency=concurrency,
                          timeout_s=60, max_attempts=3)


def run_plain(db: Path, base_url: str, shard_size: int | None, max_workers: int, concurrency: int
              ) -> tuple[float, int, int]:
    """The generate step without Prefect. Returns (wall seconds, good responses, shards)."""
    runner = ThreadShardRunner(shard_size, max_workers)
    ctx = pipeline.Context(db=db, runner=runner, api_key=SecretStr("sk-bench"))
    start = time.perf_counter()
    stats = pipeline.Generate.run(ctx, params_for(db, base_url, shard_size, max_workers, concurrency))
    return time.perf_counter() - start, stats.done, runner.shards


@functools.cache
def sync_generate_flow() -> Any:
    """The generate flow as it was before it became async: the same body under Prefect's sync engine."""
    from prefect import flow

    from flows.generate import _generate

    @flow(name="generate", log_prints=True)
    def generate_sync(params: GenerateParams) -> GenerateStats:  # type: ignore[valid-type]
        return _generate(params)

    return generate_sync


def run_flow(db: Path, base_url: str, shard_size: int | None, max_workers: int, concurrency: int,
             *, side: str = "flow") -> tuple[float, int]:
    """The `generate` flow (server already up) as `side` runs it. Returns (wall seconds, good responses)."""
    from flows.generate import generate_flow

    os.environ["OPENAI_API_KEY"] = "sk-bench"  # read by the flow's settings; never a parameter
    params = params_for(db, base_url, shard_size, max_workers, concurrency)
    start = time.perf_counter()
    stats = sync_generate_flow()(params) if side == "flow-sync" else asyncio.run(generate_flow(params))
    return time.perf_counter() - start, stats.done


def fixed_costs(db: Path, base_url: str, sides: Sequence[str], runs: int, max_workers: int, concurrency: int
                ) -> dict[str, float]:
    """Median wall seconds per side of `runs` runs on an answered database (plan, nothing to send, validate)."""
    walls: dict[str, list[float]] = {side: [] for side in sides}
    for run_no in range(runs):
        for side in sides if run_no % 2 == 0 else list(reversed(sides)):
            if side == "plain":
                walls[side].append(run_plain(db, base_url, None, max_workers, concurrency)[0])
            else:
                walls[side].append(run_flow(db, base_url, None, max_workers, concurrency, side=side)[0])
    return {side: round(statistics.median(w), 3) for side, w in walls.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=158_000)
    parser.add_argument("--shard-size", type=int, default=None, help="default: from the plan (shard_size_for)")
    parser.add_argument("--max-workers", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=64, help="requests in flight per shard")
    parser.add_argument("--sides", nargs="+", choices=SIDES, default=["plain", "flow"], help="run in this order")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--reuse", action="store_true", help="reuse workdir/planned.duckdb from an earlier run")
    parser.add_argument("--rounds", type=int, default=1, help="repeat the sides, every other round in reverse order")
    parser.add_argument("--fixed-runs", type=int, default=0,
                        help="also time this many runs per side on the warm-up database once all is answered: the "
                             "fixed cost of a run that sends nothing (steadier than the ratio on a shared machine)")
    args = parser.parse_args()
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")  # one line per task run would time the terminal

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="vistune-overhead-"))
    workdir.mkdir(parents=True, exist_ok=True)
    planned = workdir / "planned.duckdb"
    if not (args.reuse and planned.exists()):
        planned.unlink(missing_ok=True)
        synthetic_images(planned, args.requests)
        plan_requests(planned, sample_types=[SAMPLE_TYPE], model=MODEL)
    from prefect.testing.utilities import prefect_test_harness

    sim_config = SimConfig(latency_ms=0, token_counter="approx", log_in_memory=False)
    auto = shard_size_for(args.requests, args.max_workers, args.shard_size)
    result: dict[str, object] = {"requests": args.requests, "max_workers": args.max_workers,
                                 "concurrency_per_shard": args.concurrency, "shard_size": auto,
                                 "shards": -(-args.requests // auto), "rounds": []}
    walls: dict[str, list[float]] = {side: [] for side in args.sides}
    with start_simulator_process(sim_config) as sim, prefect_test_harness(server_startup_timeout=120):
        # Warm up both paths on a small database first (imports, tokenizer, the server's first flow run),
        # so the first side timed does not pay for them.
        warm = workdir / "warmup.duckdb"
        warm.unlink(missing_ok=True)
        synthetic_images(warm, 200)
        run_plain(warm, sim.base_url, None, args.max_workers, args.concurrency)
        run_flow(warm, sim.base_url, None, args.max_workers, args.concurrency)
        if "flow-sync" in args.sides:
            warm = workdir / "warmup-sync.duckdb"  # not yet answered: a real run
            warm.unlink(missing_ok=True)
            synthetic_images(warm, 200)
            run_flow(warm, sim.base_url, None, args.max_workers, args.concurrency, side="flow-sync")
        if args.fixed_runs:
            result["fixed_cost_s"] = fixed_costs(warm, sim.base_url, args.sides, args.fixed_runs,
                                                 args.max_workers, args.concurrency)
            print("fixed cost of a run with nothing to send, median s:", result["fixed_cost_s"], flush=True)
        for round_no in range(args.rounds):
            # Odd rounds reverse the order, so a drift in the machine's load favours no side.
            order = list(args.sides) if round_no % 2 == 0 else list(reversed(args.sides))
            figures: dict[str, object] = {"order": " then ".join(order)}
            for side in order:
                db = workdir / f"{side}.duckdb"
                shutil.copy(planned, db)
                size = OLD_SHARD_SIZE if side == "flow-500" else args.shard_size
                if side == "plain":
                    wall, done, _ = run_plain(db, sim.base_url, size, args.max_workers, args.concurrency)
                else:
                    wall, done = run_flow(db, sim.base_url, size, args.max_workers, args.concurrency,
                                          side=side)
                walls[side].append(wall)
                figures[f"{side}_wall_s"], figures[f"{side}_done"] = round(wall, 1), done
                figures[f"{side}_load"] = round(os.getloadavg()[0], 1)
                print(f"round {round_no + 1} {side}: {wall:.1f} s, {done} done, load average "
                      f"{os.getloadavg()[0]:.1f}", flush=True)
            for side in FLOW_SIDES:
                if "plain" in order and side in order:
                    figures[f"{side}_prefect_share_pct"] = round(
                        100 * (figures[f"{side}_wall_s"] - figures["plain_wall_s"]) / figures[f"{side}_wall_s"], 2)
            result["rounds"].append(figures)  # type: ignore[union-attr]
    if "plain" in walls:
        for side in FLOW_SIDES:
            if walls.get(side):
                # The sum over rounds: each round's two sides ran back to back under about the same load.
                result[f"{side}_prefect_share_pct"] = round(
                    100 * (sum(walls[side]) - sum(walls["plain"])) / sum(walls[side]), 2)
    print(json.dumps(result, indent=1))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
