"""The soak in short (bench/soak.py): faults, SIGKILLs, two generators, a reader; nothing lost, none paid twice."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

from bench.soak import FAULTS, Kill, ReaderStats, SoakConfig, check_invariants, run_soak
from schemas.tables import ResponseRow, RunRow
from tasks import store
from tests.fakes import plan_stand_ins

# Under 60 s: 90 requests at 360 RPM (6/s for both processes) take at least 15 s of sending after
# the processes start, so the first kills (every 6-10 s, three in all) land while the plan is sent;
# then the plan can finish.
SHORT = SoakConfig(seconds=50, requests=90, seed=3, concurrency=6, kill_every=(6.0, 10.0), max_kills=3, rpm=360,
                   latency_ms=300, flush_interval_s=3, claim_chunk=12)


def test_short_soak_loses_no_paid_answer_and_pays_none_twice(tmp_path: Path) -> None:
    result = run_soak(replace(SHORT, workdir=tmp_path))
    f = result["figures"]

    assert result["violations"] == [], result["violations"]  # every invariant, as bench/soak.py checks it
    assert f["sigkills"] >= 2 and f["unexpected_exits"] == 0
    assert f["generate_processes"] >= 2 + f["sigkills"]  # every kill was followed by a restart
    # Faults of the simulator did happen, and answers were both served and stored.
    assert set(f["faults_injected"]) & {"429", "500", "503", "hang", "malformed"}
    assert f["answers_200"] > 0 and f["requests_ok"] > 0
    assert sum(FAULTS.values()) < 0.25

    # No paid answer lost but the calls in flight at a kill: at most `concurrency` per kill.
    kills = f["sigkills"] + f["sigkills_at_time_up"]
    assert f["max_lost_per_kill"] <= SHORT.concurrency
    assert f["answers_lost_at_kills"] <= SHORT.concurrency * kills
    assert all(len(k["lost_answers"]) <= SHORT.concurrency for k in result["kills"])
    # None paid twice: nothing sent after a good answer was journaled, never by two runs at once, one ok
    # row per request, and every request answered twice was a retry of a bad answer or a re-send of one
    # lost with a kill.
    assert f["resent_after_good_answer"] == f["requests_sent_by_two_runs_at_once"] == 0
    assert f["requests_with_two_ok_rows"] == 0
    assert f["requests_answered_200_twice"] <= (f["of_which_retried_after_bad_answer"]
                                                + f["of_which_resent_after_lost_answer"])
    # Every request ended ok or failed with a reason (or was still being sent when the time was up).
    assert (f["requests_ok"] + f["requests_failed_with_reason"] + f["requests_interrupted_at_time_up"]
            + f["requests_without_attempts"]) == f["requests_planned"]
    if f["plan_done"]:
        assert f["requests_interrupted_at_time_up"] == f["requests_without_attempts"] == 0
    assert f["claims_left"] == 0 and f["journal_files_left"] == 0
    # The reader ran through it all and never saw the count of good answers go down.
    assert f["reader_runs"] > 0 and f["reader_ok_count_went_down"] == 0


def test_the_checks_catch_a_lost_answer_a_resend_an_overlap_and_a_failure_without_reason(db_path: Path) -> None:
    """The soak's checks are not vacuous: a made-up log and database that break each promise once."""
    store.ensure_schema(db_path)
    plan_stand_ins(db_path, "r1", "r2", "r3", "r4")
    t = 1_700_000_000.0

    def row(rid: str, at: float, status: str, http: int | None, run: str, error: str | None = None) -> ResponseRow:
        return ResponseRow(response_id=f"{rid}-{at}", request_id=rid, attempt=1, status=status, http_status=http,
                           error=error, latency_s=0.2, run_id=run,
                           created_at=datetime.fromtimestamp(at, UTC).replace(tzinfo=None))

    with store.write(db_path) as con:
        store.insert_rows(con, RunRow, [RunRow(run_id=r, kind="generate", started_at=store.utcnow(),
                                               status="completed") for r in ("A", "B")])
        store.insert_rows(con, ResponseRow, [row("r1", t + 0.01, "ok", 200, "A"), row("r2", t + 3.21, "ok", 200, "B"),
                                             row("r4", t + 3.9, "server_error", 503, "A", "HTTP 503"),
                                             row("r4", t + 4, "server_error", 503, "B")])  # r4: no reason given

    def served(rid: str, at: float, status: int) -> dict:
        return {"client_request_id": rid, "time": at, "received": at - 0.2, "status": status, "fault": None}

    log = [served("r1", t, 200),
           served("r2", t + 1, 200), served("r2", t + 3.2, 200),  # lost with the kill at t + 1.2, then sent again
           served("r3", t + 5, 200),  # never stored, and no kill after it: lost
           served("r1", t + 6, 503),  # sent again after its ok answer was stored
           served("r4", t + 3.9, 503), served("r4", t + 4, 503)]  # by two runs at once
    kill = Kill(at=t + 1.2, slot=0, pid=1, age_s=1.0)
    result = check_invariants(SHORT, db_path, log, [], [kill], ReaderStats(ok_counts=[1, 2, 1]), 4)

    assert kill.lost_answers == ["r2"]
    text = "\n".join(result["violations"])
    assert "r3: answered with 200" in text and "no kill came after it" in text
    assert "1 request(s) sent after a good answer was journaled: ['r1']" in text
    assert "r4: its last row (server_error) gives no reason" in text
    assert "the readers' ok count went down 1 time(s)" in text
    assert "1 request(s) sent by two runs at once: ['r4']" in text
    assert len(result["violations"]) == 5
    assert result["figures"]["requests_without_attempts"] == 1  # r3: its answer was lost
    assert result["figures"]["of_which_resent_after_lost_answer"] == 1
