"""The SQLite token bucket holds one limit across threads and processes together."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tasks.llm.shared_limiter import SharedRateLimiter

REPO = Path(__file__).resolve().parents[1]

# A worker process: waits for a common start time, then acquires N permits and prints their times.
_WORKER = """
import asyncio, json, sys, time
from tasks.llm.shared_limiter import SharedRateLimiter
path, rpm, n, start_at = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
limiter = SharedRateLimiter(path, rpm=rpm)
time.sleep(max(0.0, start_at - time.time()))
async def main():
    stamps = []
    for _ in range(n):
        await limiter.acquire()
        stamps.append(time.time())
    return stamps
print(json.dumps(asyncio.run(main())))
"""


def max_in_window(stamps: list[float], window_s: float) -> int:
    """The most events inside any window of `window_s` seconds."""
    stamps = sorted(stamps)
    best, lo = 0, 0
    for hi, t in enumerate(stamps):
        while t - stamps[lo] > window_s:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


def test_two_processes_share_one_request_rate(tmp_path: Path) -> None:
    rpm, per_process = 1200.0, 40  # 20 req/s together, capacity 20 (1 s burst)
    bucket = tmp_path / "bucket.sqlite"
    SharedRateLimiter(bucket, rpm=rpm)  # create the file before the workers race for it
    start_at = time.time() + 1.5  # both interpreters are up by then
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _WORKER, str(bucket), str(rpm), str(per_process), str(start_at)],
            cwd=REPO, stdout=subprocess.PIPE, text=True,
        )
        for _ in range(2)
    ]
    stamps: list[float] = []
    for proc in procs:
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0
        stamps += json.loads(out)
    assert len(stamps) == 2 * per_process
    rate_per_s = rpm / 60
    # Alone, each process would finish in (40 - 20) / 20 = 1 s; together they need (80 - 20) / 20 = 3 s.
    elapsed = max(stamps) - start_at
    assert elapsed >= (2 * per_process - rate_per_s) / rate_per_s * 0.9
    # No 2-second window holds more than 2 s of refill plus the 1 s burst (+1 for clock rounding).
    assert max_in_window(stamps, 2.0) <= rate_per_s * 2 + rate_per_s + 1


def test_token_limit_and_penalty_pause_everyone(tmp_path: Path) -> None:
    limiter = SharedRateLimiter(tmp_path / "b.sqlite", rpm=None, tpm=6000)  # 100 tokens/s, burst 100
    assert limiter.try_acquire(tokens=100) == 0
    wait = limiter.try_acquire(tokens=50)
    assert 0.4 < wait <= 0.5  # 50 tokens at 100/s
    other = SharedRateLimiter(tmp_path / "b.sqlite", rpm=None, tpm=6000)  # same file = same bucket
    other.penalize(2.0)
    assert 1.5 < limiter.try_acquire(tokens=1) <= 2.0


def test_threads_with_their_own_event_loops(tmp_path: Path) -> None:
    """The thread-pool task runner runs one event loop per shard; one limiter serves them all."""
    limiter = SharedRateLimiter(tmp_path / "t.sqlite", rpm=3000)  # 50/s, burst 50
    stamps: list[float] = []
    lock = threading.Lock()

    async def take(n: int) -> None:
        for _ in range(n):
            await limiter.acquire()
            with lock:
                stamps.append(time.monotonic())

    threads = [threading.Thread(target=asyncio.run, args=(take(40),)) for _ in range(3)]
    start = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(stamps) == 120
    assert time.monotonic() - start >= (120 - 50) / 50 * 0.9


def test_learns_limits_from_headers(tmp_path: Path) -> None:
    limiter = SharedRateLimiter(tmp_path / "h.sqlite")
    limiter.observe_headers({"X-RateLimit-Limit-Requests": "500", "x-ratelimit-limit-tokens": "oops"})
    assert limiter.rpm == 500 and limiter.tpm is None


@pytest.mark.parametrize("burst_s", [0.5, 2.0])
def test_a_request_bigger_than_the_bucket_still_goes_when_full(tmp_path: Path, burst_s: float) -> None:
    limiter = SharedRateLimiter(tmp_path / "big.sqlite", tpm=600, burst_s=burst_s)  # 10 tokens/s
    assert limiter.try_acquire(tokens=10_000) == 0
    assert limiter.try_acquire(tokens=1) > 0


# A generation worker: sends its share of the planned requests through the shared bucket.
_GENERATE_WORKER = """
import json, sys, time
from schemas.generation import GenerateConfig
from tasks.llm.engine import run_requests_sync
from tasks.llm.shared_limiter import SharedRateLimiter
db, bucket, base_url, ids_file, rpm, start_at = sys.argv[1:7]
limiter = SharedRateLimiter(bucket, rpm=float(rpm))
config = GenerateConfig(model="gpt-4o-mini", base_url=base_url, rpm=float(rpm), concurrency=16)
time.sleep(max(0.0, float(start_at) - time.time()))
stats = run_requests_sync(json.load(open(ids_file)), db_path=db, config=config, limiter=limiter)
print(json.dumps({"done": stats.done, "failed": stats.failed}))
"""


@pytest.mark.coco_mini
def test_two_generation_workers_stay_within_the_limit_together(tmp_path: Path, coco_mini: Path) -> None:
    from tasks.ingest.coco import ingest
    from tasks.prompting.plan import plan_requests
    from tests.sim import SimConfig, start_simulator

    db = tmp_path / "vistune.duckdb"
    ingest(coco_mini, "train2017", db)
    ids = plan_requests(db, sample_types=["conversation", "detail_description", "complex_reasoning"],
                        model="gpt-4o-mini", limit_images=20).request_ids
    assert len(ids) == 60
    rpm = 600.0  # 10 req/s for both workers together; each alone would be allowed all of it
    halves = [ids[0::2], ids[1::2]]
    for i, half in enumerate(halves):
        (tmp_path / f"ids{i}.json").write_text(json.dumps(list(half)))
    bucket = tmp_path / "bucket.sqlite"
    SharedRateLimiter(bucket, rpm=rpm)
    with start_simulator(SimConfig()) as sim:  # no limit at the server: we measure what the clients send
        start_at = time.time() + 6  # both workers have imported openai and duckdb by then
        procs = [
            subprocess.Popen([sys.executable, "-c", _GENERATE_WORKER, str(db), str(bucket), sim.base_url,
                              str(tmp_path / f"ids{i}.json"), str(rpm), str(start_at)],
                             cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for i in range(2)
        ]
        for proc in procs:
            out, err = proc.communicate(timeout=120)
            assert proc.returncode == 0, err[-2000:]
            assert json.loads(out.strip().splitlines()[-1]) == {"done": 30, "failed": 0}
        stamps = [r.time for r in list(sim.log) if r.path == "/v1/chat/completions"]
    assert len(stamps) == 60
    # 10/s with a 1 s burst: any 3-second window holds at most 3 x 10 + 10 requests, plus a few
    # whose arrival a busy machine delayed into the window. Two independent limiters at 600 RPM
    # each would finish all 60 within about 2 s.
    assert max_in_window(stamps, 3.0) <= 48
    assert max(stamps) - min(stamps) >= (60 - 10) / 10 * 0.9
