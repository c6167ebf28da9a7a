"""Throughput benchmark: vistune vs bespokelabs-curator against the same simulator settings, side by side.

The simulator runs as its own process with a fixed latency and an RPM limit (defaults: 500 ms,
600 RPM, so the best possible rate is 10 requests/s). Each client sends the same N requests
(same messages, llava-text format) to a fresh simulator instance; we report sustained rate
(the middle 80% of answers, from the simulator's log), overall rate, 429s received, and the
client's CPU time per request (process CPU of the generation call, all threads).

    python bench/gen_throughput.py                                   # 3,000 requests, ~11 min
    python bench/gen_throughput.py --requests 300 --skip-curator     # a quick look
    python bench/gen_throughput.py --baseline                        # + the previous engine, ~17 min

curator runs from its own virtual environment (`--curator-python`, default `.venv-curator/bin/python`;
create it with `python -m venv .venv-curator && .venv-curator/bin/pip install bespokelabs-curator`):
its pins (openai 2.x through litellm, datasets < 4, pandas 2.2) conflict with this project's.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.gen_scale import synthetic_images
from schemas.generation import GenerateConfig
from tasks import store
from tasks.llm.engine import run_requests_sync
from tasks.prompting.plan import plan_requests
from tests.sim import SimConfig, start_simulator_process

REPO = Path(__file__).resolve().parents[1]
MODEL = "gpt-4o-mini"
TIKTOKEN_URL = "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken"

CURATOR_RUNNER = r'''
import json, sys, time
from bespokelabs import curator

prompts_file, base_url, rpm, model = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4]
rows = [json.loads(line) for line in open(prompts_file)]


class Generator(curator.LLM):
    def prompt(self, row):
        return row["messages"]

    def parse(self, row, response):
        return {"id": row["id"], "text": response}


llm = Generator(
    model_name=model,
    backend="openai",
    generation_params={"temperature": 0.2, "max_tokens": 2048},
    backend_params={"base_url": base_url, "max_requests_per_minute": rpm, "max_tokens_per_minute": 10**9,
                    "max_retries": 3, "require_all_responses": False, "request_timeout": 60},
)
cpu0, t0 = time.process_time(), time.perf_counter()
result = llm(rows)
wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
dataset = getattr(result, "dataset", result)
print("CURATOR_RESULT " + json.dumps({"wall_s": wall, "cpu_s": cpu, "responses": len(dataset)}), flush=True)
'''


def _sustained_rate(times: list[float]) -> float:
    """Answers per second over the middle 80% of the run (start-up and tail excluded)."""
    times = sorted(times)
    if len(times) < 10:
        return float("nan")
    lo, hi = times[len(times) // 10], times[len(times) * 9 // 10]
    return (len(times) * 8 // 10) / (hi - lo) if hi > lo else float("nan")


def _served(log: list[dict]) -> tuple[list[float], int]:
    chats = [r for r in log if r["path"].endswith("/chat/completions")]
    return [r["time"] for r in chats if r["status"] == 200], sum(1 for r in chats if r["status"] == 429)


BASELINE = {"transport": "sdk", "wakeup_window_ms": 0}  # the engine before the lean transport and batching


def _planned_db(db: Path, n: int):
    """n synthetic images planned as `complex_reasoning` requests in llava-text (the same ids for the same n)."""
    synthetic_images(db, n)
    return plan_requests(db, sample_types=["complex_reasoning"], model=MODEL, output_format="llava-text")


def run_vistune(db: Path, ids: list[str], sim_config: SimConfig, concurrency: int, rpm: float,
                label: str = "vistune", **options: object) -> dict:
    """Send the planned requests with vistune's engine (`options`: GenerateConfig fields); returns the figures."""
    with start_simulator_process(sim_config) as sim:
        config = GenerateConfig(model=MODEL, base_url=sim.base_url, api_key="sk-bench", format="llava-text",
                                concurrency=concurrency, rpm=rpm, timeout=60, **options)
        cpu0 = resource.getrusage(resource.RUSAGE_SELF)
        t0 = time.perf_counter()
        stats = run_requests_sync(ids, db_path=db, config=config)
        wall = time.perf_counter() - t0
        cpu1 = resource.getrusage(resource.RUSAGE_SELF)
        ok_times, n429 = _served(sim.read_log())
    cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    return {"client": label, "done": stats.done, "wall_s": round(wall, 1),
            "overall_req_s": round(stats.done / wall, 2), "sustained_req_s": round(_sustained_rate(ok_times), 2),
            "http_429": n429, "cpu_ms_per_request": round(1000 * cpu / max(stats.done, 1), 3)}


def run_sdk_floor(prompts: Path, n: int, sim_config: SimConfig, rpm: float) -> dict:
    """The openai SDK alone (the same `post` call our client makes, no engine), paced at `rpm`: the CPU floor."""
    import asyncio

    from tasks.llm.client import make_client
    from tasks.llm.transport import make_sender

    bodies = [json.loads(line)["messages"] for line in prompts.open()][:n]

    async def send_all(base_url: str) -> None:
        client = make_client(base_url=base_url, api_key="sk-bench", timeout=60)
        sender = make_sender(client, "sdk", 60)

        async def one(i: int, messages: list) -> None:
            await asyncio.sleep(i * 60 / rpm)
            reply = await sender.send({"model": MODEL, "messages": messages, "max_tokens": 2048}, {})
            json.loads(reply.body)

        await asyncio.gather(*(one(i, m) for i, m in enumerate(bodies)))
        await client.close()

    with start_simulator_process(sim_config) as sim:
        cpu0 = resource.getrusage(resource.RUSAGE_SELF)
        t0 = time.perf_counter()
        asyncio.run(send_all(sim.base_url))
        wall = time.perf_counter() - t0
        cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    return {"client": "openai SDK alone (floor)", "done": len(bodies), "wall_s": round(wall, 1),
            "overall_req_s": round(len(bodies) / wall, 2), "cpu_ms_per_request": round(1000 * cpu / len(bodies), 3)}


def run_curator(python: str, prompts: Path, sim_config: SimConfig, rpm: float, workdir: Path) -> dict:
    """Send the same prompts with curator in its own environment; returns the measured figures or why not.

    curator has no concurrency setting: it paces by `max_requests_per_minute` alone.
    """
    cache = workdir / "tiktoken-cache"  # curator counts tokens with cl100k_base; give it the offline copy
    cache.mkdir(exist_ok=True)
    import tiktoken_ext

    offline = Path(tiktoken_ext.__path__[0]) / "data" / "cl100k_base.tiktoken"
    shutil.copy(offline, cache / hashlib.sha1(TIKTOKEN_URL.encode()).hexdigest())
    env = {**os.environ, "OPENAI_API_KEY": "sk-bench", "TELEMETRY_ENABLED": "false",
           "LITELLM_LOCAL_MODEL_COST_MAP": "True", "TIKTOKEN_CACHE_DIR": str(cache),
           "CURATOR_CACHE_DIR": str(workdir / "curator-cache"), "HF_DATASETS_OFFLINE": "1",
           "CURATOR_DISABLE_RICH_DISPLAY": "1"}
    runner = workdir / "curator_runner.py"
    runner.write_text(CURATOR_RUNNER)
    with start_simulator_process(sim_config) as sim:
        proc = subprocess.run([python, str(runner), str(prompts), sim.base_url, str(rpm), MODEL],
                              env=env, capture_output=True, text=True, timeout=3600)
        ok_times, n429 = _served(sim.read_log())
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("CURATOR_RESULT ")]
    if proc.returncode != 0 or not lines:
        return {"client": "curator", "error": (proc.stderr or proc.stdout)[-3000:]}
    measured = json.loads(lines[-1].removeprefix("CURATOR_RESULT "))
    done = len(ok_times)
    return {"client": "curator", "done": measured["responses"], "wall_s": round(measured["wall_s"], 1),
            "overall_req_s": round(done / measured["wall_s"], 2),
            "sustained_req_s": round(_sustained_rate(ok_times), 2),
            "http_429": n429, "cpu_ms_per_request": round(1000 * measured["cpu_s"] / max(done, 1), 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--latency-ms", type=float, default=500)
    parser.add_argument("--rpm", type=float, default=600)
    parser.add_argument("--concurrency", type=int, default=GenerateConfig.model_fields["concurrency"].default,
                        help="vistune's in-flight cap (default: the engine's own default)")
    parser.add_argument("--curator-python", default=str(REPO / ".venv-curator" / "bin" / "python"))
    parser.add_argument("--skip-curator", action="store_true")
    parser.add_argument("--baseline", action="store_true",
                        help="also run vistune with --transport sdk and no wake-up batching (the previous engine)")
    parser.add_argument("--floor-requests", type=int, default=600, help="requests for the SDK-alone row; 0 = skip")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="vistune-throughput-"))
    db = workdir / "throughput.duckdb"
    plan = _planned_db(db, args.requests)
    prompts = workdir / "prompts.jsonl"
    with prompts.open("w") as f:
        for row in store.query("SELECT request_id, messages FROM requests", path=db):
            f.write(json.dumps({"id": row["request_id"], "messages": json.loads(row["messages"])}) + "\n")
    sim_config = SimConfig(latency_ms=args.latency_ms, rpm=int(args.rpm), token_counter="approx", seed=0)

    results = [run_vistune(db, plan.request_ids, sim_config, args.concurrency, args.rpm)]
    print(json.dumps(results[-1]), flush=True)
    if args.baseline:  # the same requests, planned into a fresh database, sent the old way
        baseline_db = workdir / "baseline.duckdb"
        again = _planned_db(baseline_db, args.requests)
        results.append(run_vistune(baseline_db, again.request_ids, sim_config, args.concurrency, args.rpm,
                                   label="vistune, sdk transport, no wake-up batching", **BASELINE))
        print(json.dumps(results[-1]), flush=True)
    if not args.skip_curator:
        if Path(args.curator_python).exists():
            results.append(run_curator(args.curator_python, prompts, sim_config, args.rpm, workdir))
        else:
            results.append({"client": "curator", "error": f"no curator environment at {args.curator_python}"})
        print(json.dumps(results[-1]), flush=True)
    if args.floor_requests:
        results.append(run_sdk_floor(prompts, args.floor_requests, sim_config, args.rpm))
        print(json.dumps(results[-1]), flush=True)
    ideal = args.rpm / 60
    summary = {"requests": args.requests, "latency_ms": args.latency_ms, "rpm": args.rpm, "ideal_req_s": ideal,
               "results": results}
    ours = results[0]
    summary["vistune_sustained_vs_ideal"] = round(ours["sustained_req_s"] / ideal, 3)
    curator = next((r for r in results if r["client"] == "curator" and "error" not in r), None)
    if curator is not None:
        summary["vistune_over_curator_overall"] = round(ours["overall_req_s"] / curator["overall_req_s"], 3)
        summary["curator_cpu_over_vistune_cpu"] = round(curator["cpu_ms_per_request"] / ours["cpu_ms_per_request"], 2)
    print(json.dumps(summary, indent=1))
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    sys.exit(main())
