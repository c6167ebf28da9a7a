"""Several endpoints at once (issue 16, goal 6): three simulator processes at different RPM limits, side by side.

1. **Throughput.** Three simulator processes (zero latency) allow 600, 1,200 and 1,800 RPM (60 requests/s
   together); vistune sends `--seconds` worth of requests through one endpoints file. Reported: the sustained
   rate (middle 80% of the answers, from the simulators' logs) and the overall rate against the sum of the
   limits, each endpoint's share against its limit's share, 429s, double sends (a request answered 200 more
   than once across the simulators, and requests with more than one `ok` row in the store), client CPU per
   request.
2. **Kill.** The same with a fresh plan; the 1,800-RPM simulator is SIGKILLed `--kill-after` seconds in. The
   run must finish on the other two: every request answered, the dead endpoint cut out by its breaker.
3. **LiteLLM Router** (the anchor), when `--litellm-python` exists (`python -m venv /tmp/litellm-venv &&
   /tmp/litellm-venv/bin/pip install litellm`: its pins conflict with ours): the same three simulators and
   limits in a `Router` model list, driven at the limits' sum (LiteLLM paces nothing itself), once per
   `--litellm-strategies`. Reported as above; client CPU per request side by side with vistune's.

    python -m bench.multi_endpoint                                     # 90 s + 40 s + 2 x 60 s, ~6 min
    python -m bench.multi_endpoint --seconds 20 --kill-seconds 20 --litellm-seconds 10   # a quick look
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from bench.gen_scale import synthetic_images
from schemas.generation import GenerateConfig, GenerateStats
from tasks import store
from tasks.llm.engine import run_requests_sync
from tasks.prompting.plan import plan_requests
from tests.sim import SimConfig, start_simulator_process
from tests.sim.server import SimProcess

MODEL = "gpt-4o-mini"
LIMITS = {"small": 600, "medium": 1200, "large": 1800}  # RPM per simulator; the endpoints file says the same

LITELLM_RUNNER = r'''
import asyncio, json, sys, time
import litellm
from litellm import Router

prompts_file, endpoints, strategy, rate, concurrency = (sys.argv[1], json.loads(sys.argv[2]), sys.argv[3],
                                                        float(sys.argv[4]), int(sys.argv[5]))
litellm.telemetry = False
rows = [json.loads(line) for line in open(prompts_file)]
model_list = [{"model_name": "bench", "litellm_params": {"model": "openai/" + e["model"], "api_base": e["base_url"],
               "api_key": "sk-bench", "rpm": e["rpm"]}, "model_info": {"id": e["name"]}} for e in endpoints]
router = Router(model_list=model_list, routing_strategy=strategy, num_retries=3, retry_after=0,
                enable_pre_call_checks=True)


async def main():
    gate = asyncio.Semaphore(concurrency)
    errors = {}

    async def one(row):
        async with gate:
            try:
                await router.acompletion(model="bench", messages=row["messages"], max_tokens=2048, temperature=0.2,
                                         extra_headers={"X-Vistune-Request-Id": row["id"]})
                return True
            except Exception as exc:  # counted, like vistune's failed requests
                errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
                return False

    tasks = []
    start = time.perf_counter()
    for i, row in enumerate(rows):  # paced at the sum of the limits: the Router only chooses, it never waits
        delay = start + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(row)))
    results = await asyncio.gather(*tasks)
    return sum(results), errors

cpu0, t0 = time.process_time(), time.perf_counter()
ok, errors = asyncio.run(main())
wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
print("LITELLM_RESULT " + json.dumps({"wall_s": wall, "cpu_s": cpu, "ok": ok, "errors": errors}), flush=True)
'''


def sustained_rate(times: list[float]) -> float:
    """Answers per second over the middle 80% of the run (start-up and tail excluded)."""
    times = sorted(times)
    if len(times) < 10:
        return float("nan")
    lo, hi = times[len(times) // 10], times[len(times) * 9 // 10]
    return (len(times) * 8 // 10) / (hi - lo) if hi > lo else float("nan")


def busiest_window(times: list[float], window_s: float) -> int:
    """The most events in any sliding window of `window_s` (what a provider's limit counts over that window)."""
    times = sorted(times)
    best, lo = 0, 0
    for hi, t in enumerate(times):
        while t - times[lo] >= window_s:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


def served(logs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """What the simulators saw: 200s and 429s per endpoint, answer times, and requests answered more than once."""
    chats = {name: [r for r in log if r["path"].endswith("/chat/completions")] for name, log in logs.items()}
    ok = {name: [r for r in rows if r["status"] == 200] for name, rows in chats.items()}
    per_request = Counter(r["client_request_id"] for rows in ok.values() for r in rows)
    return {"ok_by_endpoint": {name: len(rows) for name, rows in ok.items()},
            # > 1: an endpoint got more than its limit in some sliding minute, or 10 s (a provider that counts
            # over shorter windows, as Azure OpenAI does over 1 or 10 s, answers the excess with 429s)
            "busiest_minute_vs_rpm": {name: round(busiest_window([r["received"] or r["time"] for r in rows], 60.0)
                                                  / LIMITS[name], 3) for name, rows in chats.items()},
            "busiest_10s_vs_rpm": {name: round(busiest_window([r["received"] or r["time"] for r in rows], 10.0)
                                               / (LIMITS[name] / 6), 3) for name, rows in chats.items()},
            "http_429": sum(1 for rows in chats.values() for r in rows if r["status"] == 429),
            "ok_times": [r["time"] for rows in ok.values() for r in rows],
            "double_sends": sum(n - 1 for n in per_request.values() if n > 1)}


def start_sims(seed: int) -> dict[str, SimProcess]:
    """One simulator process per endpoint, each enforcing its own RPM (a minute's burst, as OpenAI does)."""
    return {name: start_simulator_process(SimConfig(rpm=rpm, latency_ms=0, token_counter="approx", seed=seed + i))
            for i, (name, rpm) in enumerate(LIMITS.items())}


def endpoints_file(path: Path, sims: dict[str, SimProcess]) -> Path:
    """The endpoints file for the simulators: each one's URL and its limit."""
    path.write_text("".join(f'[endpoints.{name}]\nbase_url = "{sims[name].base_url}"\nrpm = {rpm}\n\n'
                            for name, rpm in LIMITS.items()))
    return path


def planned(db: Path, n: int) -> list[str]:
    """n synthetic images planned as llava-text `complex_reasoning` requests."""
    synthetic_images(db, n)
    return plan_requests(db, sample_types=["complex_reasoning"], model=MODEL, output_format="llava-text").request_ids


def store_double_oks(db: Path) -> int:
    """Requests with more than one `ok` row: paid twice."""
    return store.query("SELECT count(*) AS n FROM (SELECT request_id FROM responses WHERE status = 'ok' "
                       "GROUP BY 1 HAVING count(*) > 1)", path=db)[0]["n"]


def run_vistune(workdir: Path, n: int, concurrency: int, kill_after: float | None = None) -> dict[str, Any]:
    """Send n requests through the three simulators; with `kill_after`, SIGKILL the largest one that far in."""
    label = "kill" if kill_after is not None else "throughput"
    db = workdir / f"{label}.duckdb"
    ids = planned(db, n)
    sims = start_sims(seed=0 if kill_after is None else 10)
    killed_at: list[float] = []
    try:
        config = GenerateConfig(model=MODEL, format="llava-text", concurrency=concurrency, timeout=30,
                                endpoints_file=str(endpoints_file(workdir / f"{label}.toml", sims)))
        t0 = time.perf_counter()
        if kill_after is not None:
            def kill() -> None:
                time.sleep(kill_after)
                sims["large"].process.kill()  # SIGKILL: no goodbye, connections reset mid-flight
                killed_at.append(time.perf_counter() - t0)

            threading.Thread(target=kill, daemon=True).start()
        cpu0 = resource.getrusage(resource.RUSAGE_SELF)
        stats: GenerateStats = run_requests_sync(ids, db_path=db, config=config)
        wall = time.perf_counter() - t0
        cpu1 = resource.getrusage(resource.RUSAGE_SELF)
        seen = served({name: sim.read_log() for name, sim in sims.items()})
    finally:
        for sim in sims.values():
            sim.cleanup()
    cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    ideal = sum(LIMITS.values()) / 60
    result = {
        "client": f"vistune ({label})", "requests": n, "done": stats.done, "failed": stats.failed,
        "wall_s": round(wall, 1), "overall_req_s": round(stats.done / wall, 2),
        "sustained_req_s": round(sustained_rate(seen["ok_times"]), 2),
        "ok_by_endpoint": seen["ok_by_endpoint"], "busiest_minute_vs_rpm": seen["busiest_minute_vs_rpm"],
        "busiest_10s_vs_rpm": seen["busiest_10s_vs_rpm"],
        "http_429": seen["http_429"], "double_sends_sim": seen["double_sends"],
        "double_oks_store": store_double_oks(db),
        "cpu_ms_per_request": round(1000 * cpu / max(stats.done, 1), 3),
        "by_endpoint": {name: c.model_dump() for name, c in stats.by_endpoint.items()},
    }
    if kill_after is None:
        result["sustained_vs_sum_of_limits"] = round(result["sustained_req_s"] / ideal, 3)
        result["overall_vs_sum_of_limits"] = round(result["overall_req_s"] / ideal, 3)
        total_ok = sum(seen["ok_by_endpoint"].values()) or 1
        result["share_vs_limit_share"] = {name: round(seen["ok_by_endpoint"][name] / total_ok
                                                      / (rpm / sum(LIMITS.values())), 3)
                                          for name, rpm in LIMITS.items()}
    else:
        result["killed_at_s"] = round(killed_at[0], 1) if killed_at else None
    return result


def run_litellm(python: str, workdir: Path, n: int, strategy: str, concurrency: int) -> dict[str, Any]:
    """The same prompts through LiteLLM's Router in its own environment; the figures, or why not."""
    db = workdir / f"litellm-{strategy}.duckdb"
    planned(db, n)
    prompts = workdir / f"litellm-{strategy}.jsonl"
    with prompts.open("w") as f:
        for row in store.query("SELECT request_id, messages FROM requests", path=db):
            f.write(json.dumps({"id": row["request_id"], "messages": json.loads(row["messages"])}) + "\n")
    runner = workdir / "litellm_runner.py"
    runner.write_text(LITELLM_RUNNER)
    env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_TELEMETRY": "False",
           "LITELLM_LOG": "ERROR"}
    sims = start_sims(seed=20)
    try:
        spec = json.dumps([{"name": name, "base_url": sims[name].base_url, "model": MODEL, "rpm": rpm}
                           for name, rpm in LIMITS.items()])
        proc = subprocess.run([python, str(runner), str(prompts), spec, strategy, str(sum(LIMITS.values()) / 60),
                               str(concurrency)], env=env, capture_output=True, text=True, timeout=1800)
        seen = served({name: sim.read_log() for name, sim in sims.items()})
    finally:
        for sim in sims.values():
            sim.cleanup()
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("LITELLM_RESULT ")]
    if proc.returncode != 0 or not lines:
        return {"client": f"litellm Router ({strategy})", "error": (proc.stderr or proc.stdout)[-3000:]}
    measured = json.loads(lines[-1].removeprefix("LITELLM_RESULT "))
    total_ok = sum(seen["ok_by_endpoint"].values()) or 1
    return {
        "client": f"litellm Router ({strategy})", "requests": n, "done": measured["ok"],
        "failed": n - measured["ok"], "errors": measured["errors"], "wall_s": round(measured["wall_s"], 1),
        "overall_req_s": round(measured["ok"] / measured["wall_s"], 2),
        "sustained_req_s": round(sustained_rate(seen["ok_times"]), 2),
        "ok_by_endpoint": seen["ok_by_endpoint"], "busiest_minute_vs_rpm": seen["busiest_minute_vs_rpm"],
        "busiest_10s_vs_rpm": seen["busiest_10s_vs_rpm"],
        "http_429": seen["http_429"], "double_sends_sim": seen["double_sends"],
        "share_vs_limit_share": {name: round(seen["ok_by_endpoint"][name] / total_ok / (rpm / sum(LIMITS.values())),
                                             3) for name, rpm in LIMITS.items()},
        "cpu_ms_per_request": round(1000 * measured["cpu_s"] / max(measured["ok"], 1), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=90, help="throughput run: this many seconds' worth at the "
                                                                   "sum of the limits")
    parser.add_argument("--kill-seconds", type=float, default=40, help="kill run: seconds' worth at the sum")
    parser.add_argument("--kill-after", type=float, default=10)
    parser.add_argument("--concurrency", type=int, default=GenerateConfig.model_fields["concurrency"].default)
    parser.add_argument("--litellm-python", default="/tmp/litellm-venv/bin/python")
    parser.add_argument("--litellm-seconds", type=float, default=60)
    parser.add_argument("--litellm-strategies", default="usage-based-routing-v2,simple-shuffle")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    rate = sum(LIMITS.values()) / 60
    workdir = Path(tempfile.mkdtemp(prefix="vistune-multi-endpoint-"))
    results = [run_vistune(workdir, int(args.seconds * rate), args.concurrency)]
    print(json.dumps(results[-1]), flush=True)
    if args.kill_seconds:
        results.append(run_vistune(workdir, int(args.kill_seconds * rate), args.concurrency, args.kill_after))
        print(json.dumps(results[-1]), flush=True)
    if args.litellm_seconds and args.litellm_strategies:
        for strategy in args.litellm_strategies.split(","):
            if Path(args.litellm_python).exists():
                results.append(run_litellm(args.litellm_python, workdir, int(args.litellm_seconds * rate), strategy,
                                           args.concurrency))
            else:
                results.append({"client": f"litellm Router ({strategy})",
                                "error": f"no LiteLLM environment at {args.litellm_python}"})
            print(json.dumps(results[-1]), flush=True)
    summary = {"limits_rpm": LIMITS, "sum_of_limits_req_s": rate, "results": results}
    print(json.dumps(summary, indent=1))
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    sys.exit(main())
