"""Scale benchmark: N requests (158,000 = LLaVA-Instruct size) against a zero-latency simulator process.

Runs the data path end to end on N synthetic images (one request each): plan, generate (the online
engine against the simulator as its own process), validate, dedup (per image) and export. Reports each
step's seconds and highest RSS (sampled every 0.5 s), generation's client CPU per request, RSS at 10K
requests vs at the end, the process's peak RSS and the database's size after each step.

    python bench/gen_scale.py --requests 158000 --json scale.json
    python bench/gen_scale.py --requests 1580000 --json scale_1580k.json --workdir /tmp/scale1580k
    python bench/gen_scale.py --requests 10000             # quick look
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import psutil

from schemas.generation import GenerateConfig, GenerateStats
from schemas.tables import CaptionRow, ImageRow, ObjectRow
from tasks import store
from tasks.curation.dedup import dedup
from tasks.curation.export import export
from tasks.curation.validate import validate_pending
from tasks.llm.engine import run_requests_sync
from tasks.prompting.plan import plan_requests
from tests.sim import SimConfig, start_simulator_process

T = TypeVar("T")
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
    """Samples this process's RSS every `every_s` and records it against the progress count and the step."""

    def __init__(self, every_s: float = 1.0, on_sample: Callable[[float], None] | None = None) -> None:
        self.every_s = every_s
        self.on_sample = on_sample  # called with each reading (MiB), from the sampler's thread
        self.samples: list[tuple[float, int, float]] = []  # (t, requests finished, rss MiB)
        self.finished = 0
        self.step = ""
        self.step_peak: dict[str, float] = {}  # step -> highest RSS sampled while it ran (MiB)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._proc = psutil.Process()

    def _run(self) -> None:
        start = time.monotonic()
        while not self._stop.wait(self.every_s):
            rss = self._proc.memory_info().rss / 2**20
            self.step_peak[self.step] = max(self.step_peak.get(self.step, 0.0), rss)
            if self.on_sample is not None:
                self.on_sample(rss)
            if self.step == "generate":
                self.samples.append((time.monotonic() - start, self.finished, rss))

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
    parser.add_argument("--json", type=Path, default=None, help="also write the results here (after every step)")
    parser.add_argument("--max-rss-gib", type=float, default=None,
                        help="stop the run (figures so far written) when the process's RSS passes this: a shared "
                             "machine must not run out of memory")
    args = parser.parse_args()

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="vistune-scale-"))
    workdir.mkdir(parents=True, exist_ok=True)
    db = workdir / "scale.duckdb"
    steps: dict[str, dict[str, float]] = {}

    def write_partial(note: str) -> None:
        if args.json:
            args.json.write_text(json.dumps({"requests": args.requests, "incomplete": note, "steps": steps}, indent=1))

    def guard(rss_mib: float) -> None:
        if args.max_rss_gib is not None and rss_mib > args.max_rss_gib * 1024:
            steps[sampler.step] = {"stopped_at_rss_mib": round(rss_mib), "step_peak_rss_mib": round(rss_mib)}
            note = f"stopped during {sampler.step}: RSS {rss_mib:.0f} MiB passed --max-rss-gib {args.max_rss_gib}"
            print(note, flush=True)
            write_partial(note)
            os._exit(3)  # from the sampler's thread: the step itself cannot be interrupted cleanly

    sampler = RssSampler(every_s=0.5, on_sample=guard)

    def step(name: str, fn: Callable[[], T]) -> T:
        sampler.step = name
        started = time.perf_counter()
        out = fn()
        seconds = time.perf_counter() - started
        sampler.step = ""
        # a step shorter than a sampling period still gets one reading: its RSS at the end
        sampler.step_peak[name] = max(sampler.step_peak.get(name, 0.0), psutil.Process().memory_info().rss / 2**20)
        steps[name] = {"seconds": round(seconds, 1), "peak_rss_mib": round(sampler.step_peak.get(name, 0.0)),
                       "rss_after_mib": round(psutil.Process().memory_info().rss / 2**20),
                       "db_mib": round(db.stat().st_size / 2**20)}
        print(f"{name}: {seconds:.1f}s, highest RSS {steps[name]['peak_rss_mib']} MiB, "
              f"db {steps[name]['db_mib']} MiB", flush=True)
        write_partial(f"done up to {name}")
        return out

    with sampler:
        step("images", lambda: synthetic_images(db, args.requests))
        plan = step("plan", lambda: plan_requests(db, sample_types=[args.type], model="gpt-4o-mini"))
        rss_before = psutil.Process().memory_info().rss / 2**20
        print(f"planned {plan.pending} requests, rss {rss_before:.0f} MiB", flush=True)

        sim_config = SimConfig(latency_ms=0, token_counter="approx", log_path=workdir / "served.jsonl")
        with start_simulator_process(sim_config) as sim:
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
            stats = step("generate", lambda: run_requests_sync(plan.request_ids, db_path=db, config=config,
                                                               on_progress=progress))
            cpu1 = resource.getrusage(resource.RUSAGE_SELF)
        plan.request_ids = []  # the pending ids: not needed by the curation steps
        checked = step("validate", lambda: validate_pending(db))
        deduped = step("dedup", lambda: dedup(db, threshold=0.8, scope="image"))
        exported = step("export", lambda: export(db, workdir / "export", "/synthetic", seed=0))
    wall = steps["generate"]["seconds"]
    cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    stored = store.query("SELECT count(*) AS n FROM responses WHERE status = 'ok'", path=db)[0]["n"]
    result = {
        "requests": args.requests,
        "steps": steps,
        "plan_s": steps["plan"]["seconds"],
        "generate_wall_s": wall,
        "req_per_s": round(stats.done / wall, 1) if wall else None,
        "client_cpu_ms_per_request": round(1000 * cpu / max(stats.attempts, 1), 3),
        "done": stats.done,
        "failed": stats.failed,
        "ok_rows_in_duckdb": stored,
        "samples": checked.samples,
        "rejected": checked.rejected,
        "duplicates": deduped.exact_duplicates + deduped.near_duplicates,
        "exported": exported.counts.get("llava_instruct", sum(exported.counts.values())),
        "rss_before_run_mib": round(rss_before),
        "rss_at_10k_mib": round(sampler.rss_at(10_000) or 0),
        "rss_at_end_mib": round(sampler.samples[-1][2]) if sampler.samples else None,
        "peak_rss_mib": round(peak_rss),
        "db_mib": round(db.stat().st_size / 2**20),
        "db_bytes_per_request": round(db.stat().st_size / args.requests),
    }
    print(json.dumps(result, indent=1))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
