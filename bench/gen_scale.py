"""Scale benchmark: N requests (158,000 = LLaVA-Instruct size) against a zero-latency simulator process.

Reports planning time, generation wall time, client CPU per request and the client's peak RSS,
sampled as the run goes, so that memory at 10K requests can be compared with memory at the end.

    python bench/gen_scale.py --requests 158000            # the full run (about 15 min on 2 cores)
    python bench/gen_scale.py --requests 10000             # quick look
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import threading
import time
from pathlib import Path

import psutil

from schemas.generation import GenerateConfig, GenerateStats
from schemas.tables import CaptionRow, ImageRow, ObjectRow
from tasks import store
from tasks.llm.engine import run_requests_sync
from tasks.prompting.plan import plan_requests
from tests.sim import SimConfig, start_simulator_process

CATEGORIES = ("person", "dog", "bicycle", "car", "cup", "umbrella", "bench", "kite", "pizza", "clock")


def synthetic_images(db: Path, n: int, *, start_id: int = 1, chunk: int = 20_000) -> None:
    """Insert n synthetic COCO-like images with two captions and two objects each (fast, no files)."""
    for lo in range(start_id, start_id + n, chunk):
        ids = range(lo, min(lo + chunk, start_id + n))
        images = [ImageRow(image_id=i, split="train2017", file_name=f"{i:012d}.jpg", width=640, height=480,
                           coco_root="/synthetic") for i in ids]
        captions = [CaptionRow(caption_id=i * 10 + k, image_id=i,
                               caption=f"A {CATEGORIES[i % 10]} next to a {CATEGORIES[(i + k + 3) % 10]} "
                                       f"on street number {i}.") for i in ids for k in range(2)]
        objects = [ObjectRow(object_id=i * 10 + k, image_id=i, category=CATEGORIES[(i + 5 * k) % 10],
                             x1=0.1 * k, y1=0.2, x2=0.4 + 0.1 * k, y2=0.9, area=1000.0 + i % 97, iscrowd=False)
                   for i in ids for k in range(2)]
        with store.write(db) as con:
            store.insert_rows(con, ImageRow, images)
            store.insert_rows(con, CaptionRow, captions)
            store.insert_rows(con, ObjectRow, objects)


class RssSampler:
    """Samples this process's RSS every `every_s` and records it against the progress count."""

    def __init__(self, every_s: float = 1.0) -> None:
        self.every_s = every_s
        self.samples: list[tuple[float, int, float]] = []  # (t, requests finished, rss MiB)
        self.finished = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._proc = psutil.Process()

    def _run(self) -> None:
        start = time.monotonic()
        while not self._stop.wait(self.every_s):
            self.samples.append((time.monotonic() - start, self.finished, self._proc.memory_info().rss / 2**20))

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def rss_at(self, finished: int) -> float | None:
        """RSS (MiB) at the first sample with at least `finished` requests done."""
        return next((rss for _, n, rss in self.samples if n >= finished), None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=158_000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--type", default="complex_reasoning", help="sample type of every request")
    parser.add_argument("--workdir", type=Path, default=None, help="default: a temporary folder")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="vistune-scale-"))
    db = workdir / "scale.duckdb"
    t0 = time.perf_counter()
    synthetic_images(db, args.requests)
    t_images = time.perf_counter() - t0
    t0 = time.perf_counter()
    plan = plan_requests(db, sample_types=[args.type], model="gpt-4o-mini")
    t_plan = time.perf_counter() - t0
    rss_before = psutil.Process().memory_info().rss / 2**20
    print(f"images {t_images:.1f}s, plan {plan.pending} requests {t_plan:.1f}s, rss {rss_before:.0f} MiB", flush=True)

    sim_config = SimConfig(latency_ms=0, token_counter="approx", log_path=workdir / "served.jsonl")
    with start_simulator_process(sim_config) as sim, RssSampler() as sampler:
        config = GenerateConfig(model="gpt-4o-mini", base_url=sim.base_url, api_key="sk-bench",
                                concurrency=args.concurrency, timeout=60, max_attempts=3)
        last_print = [0.0]

        def progress(stats: GenerateStats) -> None:
            sampler.finished = stats.done + stats.failed
            if stats.wall_s - last_print[0] >= 30:
                last_print[0] = stats.wall_s
                rss = sampler.samples[-1][2] if sampler.samples else 0
                print(f"  {stats.wall_s:6.0f}s {sampler.finished:7d} done, rss {rss:.0f} MiB", flush=True)

        cpu0 = resource.getrusage(resource.RUSAGE_SELF)
        t0 = time.perf_counter()
        stats = run_requests_sync(plan.request_ids, db_path=db, config=config, on_progress=progress)
        wall = time.perf_counter() - t0
        cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    stored = store.query("SELECT count(*) AS n FROM responses WHERE status = 'ok'", path=db)[0]["n"]
    result = {
        "requests": args.requests,
        "plan_s": round(t_plan, 1),
        "generate_wall_s": round(wall, 1),
        "req_per_s": round(stats.done / wall, 1),
        "client_cpu_ms_per_request": round(1000 * cpu / max(stats.attempts, 1), 3),
        "done": stats.done,
        "failed": stats.failed,
        "ok_rows_in_duckdb": stored,
        "rss_before_run_mib": round(rss_before),
        "rss_at_10k_mib": round(sampler.rss_at(10_000) or 0),
        "rss_at_end_mib": round(sampler.samples[-1][2]) if sampler.samples else None,
        "peak_rss_mib": round(peak_rss),
        "db_mib": round(db.stat().st_size / 2**20),
    }
    print(json.dumps(result, indent=1))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
