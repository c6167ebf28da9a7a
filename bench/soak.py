"""Soak: two `vistune generate` processes on one database against a faulty simulator, SIGKILLed at random.

For a bounded time (`--seconds`, default 600) the soak runs, all on 127.0.0.1:

- the simulator as its own process (`python -m tests.sim`), with a served-request log, a rate limit
  and faults at the rates below (FAULTS);
- two `vistune generate` processes on one DuckDB file and one plan, each restarted when it exits
  other than cleanly (given up after 3 such exits in a row), until both finished a run (the plan is
  done) or the time is up;
- every 30-90 s (random, seeded) a SIGKILL of one of them, followed at once by a restart;
- a `vistune sql` reader every second, one at a time (its failures and latency are counted).

When the time is up, generators still running are SIGKILLed too (counted as final kills) and their
journals replayed. Then it checks, from the simulator's log and the database:

- no paid answer lost: every chat completion the simulator answered with HTTP 200 is a stored
  `responses` row (matched per request, by time), except answers lost with a kill (calls in flight:
  each is attributed to the first kill after it, at most `--concurrency` per kill);
- none paid twice: no request was sent again after a good (`ok`/`parse_error`) answer to it was
  journaled; the attempts of two runs at one request never overlap in time; every request answered
  with 200 more than once was re-sent either after a stored bad answer (a retry: malformed,
  truncated, filtered, refused) or after its earlier answer was lost with a kill; at most one `ok`
  row per request;
- every request that was sent ended `ok`, or failed with a reason (its last row is not `ok` and has
  an error); with the plan done, every planned request has a stored attempt;
- no claim, no journal file and no unexpected exit of a generator; no API key in any file; the
  readers' `ok` count never went down.

It prints a table and writes `--json FILE`; the exit code is 1 if an invariant failed.

    python bench/soak.py                               # 10 minutes
    python bench/soak.py --seconds 60 --requests 90 --kill-every 6 10 --max-kills 3 --rpm 360 --json /tmp/soak.json
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from bisect import bisect_left
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from itertools import pairwise
from pathlib import Path
from typing import Any

from bench.gen_scale import synthetic_images
from tasks import store
from tasks.store.journal import journal_dir, replay_orphans
from tests.sim import SimConfig, start_simulator_process

REPO = Path(__file__).resolve().parents[1]
KEY = "sk-vistune-soak-SECRET-5d1c0a9e"
MODEL = "gpt-4o-mini"
TYPES = ("conversation", "detail_description", "complex_reasoning")
# Fault rates per admitted request: docs/SIMULATOR.md's example and tests/test_generate_online.py
# (429 10 %, 5xx 5 %, hang 2 %, malformed 3 %) plus the 200-status faults at rates a provider shows
# now and then (length 1 %, content_filter 0.5 %, refusal 0.5 %): 22 % of attempts fail in all.
FAULTS = {"fault_429": 0.10, "fault_5xx": 0.05, "fault_hang": 0.02, "fault_malformed": 0.03,
          "fault_length": 0.01, "fault_content_filter": 0.005, "fault_refusal": 0.005}
GOOD = ("ok", "parse_error")  # answers the engine never sends again
MAX_CRASHES = 3  # unclean exits in a row after which a slot is not restarted any more
CLOCK_SLACK_S = 0.5  # the simulator logs a 200 just before writing it; a kill can race that write
# `vistune generate` with a smaller claim chunk (no CLI flag for it, as in tests/test_reliability_claims.py):
# with the default 1,000 the first process would claim the whole plan and the second would only wait.
LAUNCHER = ("import schemas.generation as g\n"
            "g.GenerateConfig.model_fields['claim_chunk'].default = {chunk}\n"
            "g.GenerateConfig.model_rebuild(force=True)\n"
            "from flows.cli import main\n"
            "main()")


@dataclass
class SoakConfig:
    """What one soak does. `requests` None: sized to about 85 % of the time at the rate limit."""

    seconds: float = 600.0
    requests: int | None = None
    seed: int = 1
    concurrency: int = 8  # per process: the most answers one SIGKILL may lose
    kill_every: tuple[float, float] = (30.0, 90.0)
    max_kills: int | None = None  # then no more kills: the plan can finish (the short CI soak)
    rpm: int = 600  # the simulator's limit, shared by the two processes (each sends at rpm / 2)
    latency_ms: float = 400.0  # lognormal mean
    timeout_s: float = 5.0  # per attempt: what a hang costs
    max_attempts: int = 3  # fewer than the default 5, so that some requests fail for good (with a reason)
    flush_interval_s: float = 10.0
    claim_chunk: int = 32
    reader_every_s: float = 1.0
    processes: int = 2
    workdir: Path | None = None

    def planned_requests(self) -> int:
        """Requests to plan: a multiple of the sample types."""
        if self.requests is not None:
            return self.requests
        attempts_per_request = 1 / (1 - sum(FAULTS.values()))
        return max(30, int(self.seconds * self.rpm / 60 * 0.85 / attempts_per_request))


@dataclass
class Proc:
    """One `vistune generate` process of a slot."""

    slot: int
    popen: subprocess.Popen[bytes]
    log_path: Path
    started: float
    ended: float | None = None
    rc: int | None = None
    killed: bool = False


@dataclass
class Kill:
    """A SIGKILL sent by the soak (`final`: at time-up, not followed by a restart)."""

    at: float  # unix time
    slot: int
    pid: int
    age_s: float
    final: bool = False
    lost_answers: list[str] = field(default_factory=list)


@dataclass
class ReaderStats:
    """The `vistune sql` reader's runs."""

    latencies_s: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    ok_counts: list[int] = field(default_factory=list)


def _generate(cfg: SoakConfig, db: Path, base_url: str, slot: int, n: int, logs: Path) -> Proc:
    env = {**os.environ, "OPENAI_API_KEY": KEY, "VISTUNE_DB": str(db)}
    cmd = [sys.executable, "-c", LAUNCHER.format(chunk=cfg.claim_chunk), "generate", "--db", str(db),
           "--base-url", base_url, "--model", MODEL, "--types", ",".join(TYPES), "--no-progress",
           "--concurrency", str(cfg.concurrency), "--rpm", str(cfg.rpm / cfg.processes),
           "--timeout", str(cfg.timeout_s), "--max-attempts", str(cfg.max_attempts),
           "--flush-interval", str(cfg.flush_interval_s)]
    log_path = logs / f"generate-{n:03d}-slot{slot}.log"
    with log_path.open("wb") as out:  # a file, not a pipe: nobody has to drain it
        popen = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    return Proc(slot, popen, log_path, time.time())


def _reader(db: Path, every_s: float, stop: threading.Event, stats: ReaderStats) -> None:
    cmd = [sys.executable, "-c", "from flows.cli import main; main()", "sql",
           "SELECT count(*) FILTER (WHERE status = 'ok') AS ok FROM responses", "--db", str(db),
           "--format", "csv", "--timeout", "5"]
    while not stop.is_set():
        start = time.monotonic()
        try:
            result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=60)
            elapsed = time.monotonic() - start
            stats.latencies_s.append(elapsed)
            if result.returncode != 0:
                stats.failures.append(f"rc {result.returncode}: {result.stderr.strip()[-300:]}")
            else:
                stats.ok_counts.append(int(result.stdout.strip().splitlines()[-1]))
        except subprocess.TimeoutExpired:
            stats.latencies_s.append(time.monotonic() - start)
            stats.failures.append("no answer within 60 s")
        stop.wait(max(0.0, every_s - (time.monotonic() - start)))


def run_soak(cfg: SoakConfig) -> dict[str, Any]:
    """Run one soak and return its figures and checks (`result["violations"]` empty = every invariant held)."""
    own_dir = cfg.workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="vistune-soak-")) if own_dir else Path(cfg.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        return _run(cfg, workdir)
    finally:
        if own_dir:
            shutil.rmtree(workdir, ignore_errors=True)


def _run(cfg: SoakConfig, workdir: Path) -> dict[str, Any]:
    db, logs = workdir / "soak.duckdb", workdir / "logs"
    logs.mkdir(exist_ok=True)
    planned = cfg.planned_requests()
    synthetic_images(db, -(-planned // len(TYPES)))
    store.ensure_schema(db)
    rng = random.Random(cfg.seed)
    sim_config = SimConfig(seed=cfg.seed, latency="lognormal", latency_ms=cfg.latency_ms, rpm=cfg.rpm,
                           rate_window_s=1, token_counter="approx", hang_s=60, log_path=workdir / "served.jsonl",
                           **FAULTS)
    procs: list[Proc] = []
    kills: list[Kill] = []
    reader = ReaderStats()
    stop = threading.Event()
    with start_simulator_process(sim_config) as sim:
        t0 = time.time()
        deadline = time.monotonic() + cfg.seconds
        reader_thread = threading.Thread(target=_reader, args=(db, cfg.reader_every_s, stop, reader), daemon=True)
        reader_thread.start()
        current = {s: _generate(cfg, db, sim.base_url, s, s, logs) for s in range(cfg.processes)}
        procs += current.values()
        finished: set[int] = set()
        crashes: Counter[int] = Counter()  # unclean exits of its own in a row, per slot
        next_kill = time.monotonic() + rng.uniform(*cfg.kill_every)
        try:
            while len(finished) < cfg.processes and time.monotonic() < deadline:
                for slot, proc in current.items():
                    if slot in finished or proc.popen.poll() is None:
                        continue
                    proc.rc, proc.ended = proc.popen.returncode, time.time()
                    crashes[slot] = 0 if proc.rc == 0 else crashes[slot] + 1
                    if proc.rc == 0:
                        finished.add(slot)  # a run that ended cleanly finished the plan it saw
                    elif crashes[slot] >= MAX_CRASHES:  # crash-looping: give the slot up (reported)
                        finished.add(slot)
                    else:  # an exit of its own that is not clean: restart it, and report it
                        current[slot] = _generate(cfg, db, sim.base_url, slot, len(procs), logs)
                        procs.append(current[slot])
                if time.monotonic() >= next_kill and (cfg.max_kills is None or len(kills) < cfg.max_kills):
                    running = [s for s, p in current.items() if s not in finished and p.popen.poll() is None]
                    if running:
                        victim = current[rng.choice(running)]
                        if (kill := _kill(victim)) is None:
                            continue
                        kills.append(kill)
                        current[victim.slot] = _generate(cfg, db, sim.base_url, victim.slot, len(procs), logs)
                        procs.append(current[victim.slot])
                    next_kill = time.monotonic() + rng.uniform(*cfg.kill_every)
                time.sleep(0.1)
        finally:
            for proc in current.values():  # time is up (or an error): stop what still runs
                if (kill := _kill(proc, final=True)) is not None:
                    kills.append(kill)
            stop.set()
            reader_thread.join(timeout=90)
        wall = time.time() - t0
        time.sleep(CLOCK_SLACK_S)  # answers handed over at the last kill are logged by now
        served = [r for r in sim.read_log() if r["path"] == "/v1/chat/completions"]
    replayed = replay_orphans(db)  # the journals of processes killed at time-up
    result = check_invariants(cfg, db, served, procs, kills, reader, planned)
    result["figures"].update(wall_s=round(wall, 1), rows_replayed_at_end=replayed)
    leaked = [str(p.relative_to(workdir)) for p in workdir.rglob("*") if p.is_file() and KEY.encode() in p.read_bytes()]
    if leaked:
        result["violations"].append(f"the API key is in {leaked}")
    return result


def _kill(proc: Proc, *, final: bool = False) -> Kill | None:
    if proc.popen.poll() is not None:  # it ended by itself just now: the main loop looks at it
        return None
    now = time.time()
    proc.popen.send_signal(signal.SIGKILL)
    proc.popen.wait()
    proc.rc, proc.ended, proc.killed = proc.popen.returncode, time.time(), True
    return Kill(at=now, slot=proc.slot, pid=proc.popen.pid, age_s=round(now - proc.started, 1), final=final)


def _epoch(value: datetime) -> float:
    return value.replace(tzinfo=UTC).timestamp()  # the store keeps naive UTC


def check_invariants(cfg: SoakConfig, db: Path, served: list[dict[str, Any]], procs: list[Proc], kills: list[Kill],
           reader: ReaderStats, planned: int) -> dict[str, Any]:
    """The invariants, from the simulator's log and the database (after every journal was replayed)."""
    violations: list[str] = []
    rows = store.query("SELECT request_id, status, http_status, error, created_at, latency_s, run_id "
                       "FROM responses", path=db)
    completed = {r["run_id"] for r in store.query("SELECT run_id FROM runs WHERE status = 'completed'", path=db)}
    request_ids = [r["request_id"] for r in store.query("SELECT request_id FROM requests", path=db)]
    claims_left = store.query("SELECT count(*) AS n FROM claims", path=db)[0]["n"]
    by_request: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        r["t"] = _epoch(r["created_at"])
        by_request[r["request_id"]].append(r)
    for attempts in by_request.values():
        attempts.sort(key=lambda r: r["t"])
    sends: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for s in served:
        sends[s["client_request_id"]].append(s)

    # 1. Every 200 is a stored row: match each stored 200 to the latest unmatched 200 served before it.
    lost: list[tuple[float, str]] = []  # (served at, request id)
    for rid, events in sends.items():
        answered = sorted(s["time"] for s in events if s["status"] == 200)
        matched = [False] * len(answered)
        for row in (r for r in by_request.get(rid, []) if r["http_status"] == 200):
            i = next((i for i in range(bisect_left(answered, row["t"] + CLOCK_SLACK_S) - 1, -1, -1)
                      if not matched[i]), None)
            if i is None:
                violations.append(f"{rid}: a stored 200 the simulator never served")
            else:
                matched[i] = True
        lost += [(t, rid) for t, m in zip(answered, matched, strict=True) if not m]
    kills.sort(key=lambda k: k.at)
    lost_gaps: list[float] = []  # seconds from a lost answer to the kill that lost it
    for t, rid in sorted(lost):
        kill = next((k for k in kills if k.at >= t - CLOCK_SLACK_S), None)
        if kill is None:
            violations.append(f"{rid}: answered with 200 at {t:.3f}, never stored, and no kill came after it")
        else:
            kill.lost_answers.append(rid)
            lost_gaps.append(kill.at - t)
    for kill in kills:
        if len(kill.lost_answers) > cfg.concurrency:
            violations.append(f"the kill of pid {kill.pid} lost {len(kill.lost_answers)} answers "
                              f"(> concurrency {cfg.concurrency}): {kill.lost_answers}")

    # Claims are exclusive: the attempts of two runs at one request never overlap in time.
    overlapping: list[str] = []
    for rid, attempts in by_request.items():
        spans: dict[str, list[float]] = {}
        for r in attempts:
            start = r["t"] - (r["latency_s"] or 0.0)
            span = spans.setdefault(r["run_id"], [start, r["t"]])
            span[0], span[1] = min(span[0], start), max(span[1], r["t"])
        ordered = sorted(spans.values())
        if any(b[0] < a[1] - 0.05 for a, b in pairwise(ordered)):
            overlapping.append(rid)
    if overlapping:
        violations.append(f"{len(overlapping)} request(s) sent by two runs at once: {overlapping[:5]}")

    # 2. Nothing sent after a good answer was journaled; every 200 served twice is a retry or a re-send of a lost one.
    resent_after_good: list[str] = []
    twice = retried_after_bad = resent_after_lost = 0
    lost_ids = Counter(rid for _, rid in lost)
    for rid, events in sends.items():
        good = [r["t"] for r in by_request.get(rid, []) if r["status"] in GOOD]
        if good and any(s["received"] > min(good) for s in events):
            resent_after_good.append(rid)
        n200 = sum(1 for s in events if s["status"] == 200)
        if n200 > 1:
            twice += 1
            bad_200 = sum(1 for r in by_request.get(rid, []) if r["http_status"] == 200 and r["status"] not in GOOD)
            retried_after_bad += bad_200 > 0
            resent_after_lost += lost_ids[rid] > 0
            if n200 - 1 > bad_200 + lost_ids[rid]:
                violations.append(f"{rid}: answered {n200} times, {bad_200} bad answers, {lost_ids[rid]} lost")
    if resent_after_good:
        violations.append(f"{len(resent_after_good)} request(s) sent after a good answer was journaled: "
                          f"{resent_after_good[:5]}")
    ok_rows = Counter(r["request_id"] for r in rows if r["status"] == "ok")
    if doubled := [rid for rid, n in ok_rows.items() if n > 1]:
        violations.append(f"{len(doubled)} request(s) with more than one ok row: {doubled[:5]}")

    # 3. Every request sent ended ok or failed with a reason; with the plan done, every request was sent.
    final: Counter[str] = Counter()
    for rid in request_ids:
        attempts = by_request.get(rid)
        if not attempts:
            final["no attempt"] += 1
        elif rid in ok_rows:
            final["ok"] += 1
        elif attempts[-1]["status"] != "ok" and attempts[-1]["error"]:
            # a run that completed gave up on it; a killed one was stopped mid-retry (at time-up)
            done = "failed" if attempts[-1]["run_id"] in completed else "interrupted"
            final[f"{done}: {attempts[-1]['status']}"] += 1
        else:
            final["no reason"] += 1
            violations.append(f"{rid}: its last row ({attempts[-1]['status']}) gives no reason")
    last = {p.slot: p for p in procs}  # procs are in start order
    plan_done = bool(last) and all(p.rc == 0 for p in last.values())  # every slot's last run ended cleanly
    interrupted = sum(n for k, n in final.items() if k.startswith("interrupted"))
    if plan_done and (final["no attempt"] or interrupted):
        violations.append(f"the plan is done but {final['no attempt']} request(s) have no stored attempt and "
                          f"{interrupted} ended in a killed run")
    unknown = set(by_request) - set(request_ids)
    if unknown:
        violations.append(f"{len(unknown)} response row(s) name no planned request")
    leftovers = [p.name for p in journal_dir(db).glob("*")] if journal_dir(db).exists() else []
    if claims_left or leftovers:
        violations.append(f"left behind: {claims_left} claim(s), journal files {leftovers[:5]}")
    unexpected = [p for p in procs if p.rc not in (0, None) and not p.killed]
    for p in unexpected:
        tail = p.log_path.read_text(errors="replace")[-500:]
        violations.append(f"generate pid {p.popen.pid} exited with {p.rc} by itself: {tail}")
    went_down = sum(1 for a, b in pairwise(reader.ok_counts) if b < a)
    if went_down:
        violations.append(f"the readers' ok count went down {went_down} time(s)")

    lat = sorted(reader.latencies_s)
    served_status = Counter(str(s["status"]) for s in served)
    figures = {
        "requests_planned": len(request_ids),
        "requests_ok": final["ok"],
        "requests_failed_with_reason": sum(n for k, n in final.items() if k.startswith("failed")),
        "requests_interrupted_at_time_up": interrupted,
        "requests_without_attempts": final["no attempt"],
        "final_failures": {k.removeprefix("failed: "): n for k, n in final.items() if k.startswith("failed")},
        "plan_done": plan_done,
        "generate_processes": len(procs),
        "sigkills": sum(1 for k in kills if not k.final),
        "sigkills_at_time_up": sum(1 for k in kills if k.final),
        "unexpected_exits": len(unexpected),
        "http_calls_served": len(served),
        "served_by_status": dict(sorted(served_status.items())),
        "faults_injected": dict(sorted(Counter(s["fault"] for s in served if s["fault"]).items())),
        "rows_stored": len(rows),
        "rows_by_status": dict(sorted(Counter(r["status"] for r in rows).items())),
        "answers_200": sum(1 for s in served if s["status"] == 200),
        "answers_lost_at_kills": len(lost),
        "max_lost_per_kill": max((len(k.lost_answers) for k in kills), default=0),
        "max_seconds_lost_answer_to_kill": round(max(lost_gaps, default=0.0), 3),
        "requests_answered_200_twice": twice,
        "of_which_retried_after_bad_answer": retried_after_bad,
        "of_which_resent_after_lost_answer": resent_after_lost,
        "resent_after_good_answer": len(resent_after_good),
        "requests_sent_by_two_runs_at_once": len(overlapping),
        "requests_with_two_ok_rows": len(doubled),
        "reader_runs": len(lat),
        "reader_failures": len(reader.failures),
        "reader_latency_s": {"p50": round(statistics.median(lat), 2) if lat else None,
                             "p95": round(lat[int(0.95 * (len(lat) - 1))], 2) if lat else None,
                             "max": round(lat[-1], 2) if lat else None},
        "reader_ok_count_went_down": went_down,
        "claims_left": claims_left,
        "journal_files_left": len(leftovers),
    }
    config = {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items() if k != "workdir"}
    return {"config": config | {"faults": FAULTS, "requests": planned},
            "figures": figures, "kills": [asdict(k) for k in kills], "reader_failure_messages": reader.failures[:10],
            "violations": violations}


def print_table(result: dict[str, Any]) -> None:
    """The figures as a two-column table, then the kills and the verdict."""
    figures = result["figures"]
    width = max(len(k) for k in figures)
    print(f"{'figure':<{width}}  value")
    for name, value in figures.items():
        print(f"{name:<{width}}  {json.dumps(value) if isinstance(value, dict) else value}")
    print("\nkills: " + ", ".join(f"slot {k['slot']} after {k['age_s']}s ({len(k['lost_answers'])} lost)"
                                  + (" [time up]" if k["final"] else "") for k in result["kills"]))
    if result["violations"]:
        print(f"\nFAILED: {len(result['violations'])} violation(s)")
        for line in result["violations"][:20]:
            print("  " + line)
    else:
        print("\nall invariants held: no paid answer lost beyond calls in flight at a kill, none paid twice, "
              "every request ended ok or failed with a reason")


def _stop_on_sigterm(signum: int, frame: object) -> None:
    # SIGTERM (and SIGINT, which a background job ignores) stops the soak through its `finally`: no orphans
    raise KeyboardInterrupt


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=600.0, help="how long the soak runs (default 10 minutes)")
    parser.add_argument("--requests", type=int, default=None, help="default: about 85%% of the time at --rpm")
    parser.add_argument("--seed", type=int, default=1, help="the simulator's faults and the kill schedule")
    parser.add_argument("--concurrency", type=int, default=8, help="requests in flight per generate process")
    parser.add_argument("--kill-every", type=float, nargs=2, default=(30.0, 90.0), metavar=("MIN", "MAX"))
    parser.add_argument("--max-kills", type=int, default=None, help="stop killing after this many")
    parser.add_argument("--rpm", type=int, default=600, help="the simulator's rate limit (both processes)")
    parser.add_argument("--latency-ms", type=float, default=400.0)
    parser.add_argument("--max-attempts", type=int, default=3, help="per request, in each generate run")
    parser.add_argument("--workdir", type=Path, default=None, help="keep the database and logs here")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()
    cfg = SoakConfig(seconds=args.seconds, requests=args.requests, seed=args.seed, concurrency=args.concurrency,
                     kill_every=tuple(args.kill_every), max_kills=args.max_kills, rpm=args.rpm,
                     latency_ms=args.latency_ms, max_attempts=args.max_attempts, workdir=args.workdir)
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    result = run_soak(cfg)
    print_table(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1, default=str))
    sys.exit(1 if result["violations"] else 0)


if __name__ == "__main__":
    main()
