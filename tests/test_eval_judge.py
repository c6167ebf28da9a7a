"""The judge through the engine and the simulator's judge mode: both review forms, swap and position bias,
unparseable reviews as rejects with reasons, never a review asked for twice, and a kill mid-judge."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from schemas.generation import GenerateConfig
from tasks import store
from tasks.eval import answers, judge, report, sets
from tasks.store.journal import journal_dir
from tests.fakes import wait_for
from tests.sim import SimConfig, answered_twice, start_simulator, start_simulator_process
from tests.test_eval_sets import write_bench

REPO = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-c", "from flows.cli import main; main()"]


@pytest.fixture
def bench(db_path: Path, sample_coco: Path, tmp_path: Path) -> Path:
    """An imported set of 6 questions with references, and the answers of model `m1` (fixture files)."""
    files = write_bench(tmp_path / "bench", sample_coco)
    sets.import_llava_bench(db_path, "s", image_root=sample_coco / "train2017", **files)
    lines = [json.dumps({"question_id": q, "text": f"candidate answer {q}", "model_id": "m1"}) for q in range(6)]
    (tmp_path / "m1.jsonl").write_text("\n".join(lines) + "\n")
    answers.import_answers(db_path, "s", tmp_path / "m1.jsonl")
    return db_path


def judge_config(base_url: str, fmt: str = "structured", **fields) -> GenerateConfig:
    return GenerateConfig(model="judge-llm", base_url=base_url, format=fmt, concurrency=4, **fields)


@pytest.mark.parametrize("fmt", ["structured", "llava-text"])
def test_judge_scores_both_forms_and_never_asks_twice(bench: Path, fmt: str) -> None:
    with start_simulator(SimConfig(judge_scoring="fixed", judge_score_1=8, judge_score_2=6)) as sim:
        first = judge.judge(bench, "s", config=judge_config(sim.base_url, fmt))
        served = len(sim.log)
        again = judge.judge(bench, "s", config=judge_config(sim.base_url, fmt))
        assert len(sim.log) == served == 6
    assert (first.pairs, first.new_reviews, first.rejects, first.failed) == (6, 6, [], 0)
    assert (again.already_reviewed, again.new_reviews) == (6, 0)
    reviews = store.query("SELECT * FROM eval_reviews ORDER BY question_id", path=bench)
    # forward order: the reference is Assistant 1 (8), the candidate Assistant 2 (6)
    assert {(r["score_reference"], r["score_candidate"], r["pair_order"]) for r in reviews} == {(8, 6, "forward")}
    assert all(r["explanation"] and r["judge_model"] == "judge-llm" for r in reviews)
    request = store.query("SELECT messages, kind FROM requests WHERE request_id = ?", [reviews[0]["request_id"]],
                          path=bench)[0]
    assert request["kind"] == f"eval/review/{fmt}"
    text = request["messages"]
    assert "[Assistant 1]\\nreference 0\\n[End of Assistant 1]" in text and "candidate answer 0" in text
    assert "dog: [0.1, 0.2, 0.5, 0.9]" in text  # the context the judge reads
    scores = report.report(bench, "s")["models"]["m1"]
    assert scores["all"] == 75.0 and scores["n_reviews"] == 6


def test_swap_averages_both_orders_and_reports_position_bias(bench: Path) -> None:
    sim_config = SimConfig(judge_scoring="fixed", judge_score_1=7, judge_score_2=7, judge_position_bias=2)
    with start_simulator(sim_config) as sim:
        judged = judge.judge(bench, "s", config=judge_config(sim.base_url), swap=True)
    assert judged.new_reviews == 12
    scores = report.report(bench, "s")["models"]["m1"]
    # Assistant 1 always gets 9 and Assistant 2 gets 7: averaged over both orders each answer has 8
    assert scores["all"] == 100.0 and scores["position_bias"] == 2.0
    assert scores["candidate_minus_reference"] == {"forward": -2.0, "swapped": 2.0}
    with start_simulator(SimConfig(judge_scoring="fixed")) as sim:  # only the forward order is stored: none new
        assert judge.judge(bench, "s", config=judge_config(sim.base_url)).new_reviews == 0
        assert len(sim.log) == 0


@pytest.mark.parametrize("fmt", ["structured", "llava-text"])
def test_unparseable_reviews_become_rejects_with_reasons(bench: Path, fmt: str) -> None:
    with start_simulator(SimConfig(judge_unparseable=1.0)) as sim:
        judged = judge.judge(bench, "s", config=judge_config(sim.base_url, fmt, max_attempts=2,
                                                             backoff_base_s=0.01))
        assert len(sim.log) == 12  # two attempts each, then given up: no default score
    assert judged.new_reviews == 0 and len(judged.rejects) == 6
    rejects = store.query("SELECT * FROM eval_rejects ORDER BY question_id", path=bench)
    assert [r["question_id"] for r in rejects] == list(range(6))
    assert {r["code"] for r in rejects} == {"bad_output"} and {r["stage"] for r in rejects} == {"review"}
    reason = "assistant_1_score" if fmt == "structured" else "is not two scores 'S1 S2'"
    assert all(reason in r["detail"] for r in rejects), rejects[0]["detail"]
    assert store.table_counts(bench)["eval_reviews"] == 0
    assert report.report(bench, "s")["models"] == {}
    with start_simulator(SimConfig(judge_scoring="fixed")) as sim:  # a rerun asks again for what has no review
        assert judge.judge(bench, "s", config=judge_config(sim.base_url, fmt)).new_reviews == 6


def test_a_kill_during_judge_then_a_rerun_redoes_nothing_stored(db_path: Path, sample_coco: Path,
                                                               tmp_path: Path) -> None:
    files = write_bench(tmp_path / "bench", sample_coco)
    sets.import_llava_bench(db_path, "s", image_root=sample_coco / "train2017", **files)
    lines = [json.dumps({"question_id": q, "text": f"candidate {q}"}) for q in range(6)]
    (tmp_path / "m1.jsonl").write_text("\n".join(lines) + "\n")
    answers.import_answers(db_path, "s", tmp_path / "m1.jsonl", model_id="m1")
    with start_simulator_process(SimConfig(latency_ms=400, judge_scoring="fixed")) as sim:
        def run() -> subprocess.Popen:
            env = {**os.environ, "VISTUNE_DB": str(db_path), "OPENAI_API_KEY": "sk-test"}
            return subprocess.Popen([*CLI, "eval", "run", "--name", "s", "--model", "m1", "--backend", "openai",
                                     "--judge-model", "judge-llm", "--base-url", sim.base_url, "--swap",
                                     "--concurrency", "2", "--json"], cwd=REPO, env=env,
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

        first = run()
        # The simulator logs an answer as it sends it; with 2 calls in flight, 5 logged means >= 3 journaled.
        wait_for(lambda: sum(r["status"] == 200 for r in sim.read_log()) >= 5 or first.poll() is not None, 60,
                 "5 reviews")
        assert first.poll() is None, f"the run ended before the kill: {first.stdout.read()}"
        first.send_signal(signal.SIGKILL)
        first.wait()
        first.stdout.close()
        time.sleep(0.6)  # calls in flight at the kill may still be logged
        log_first = sim.read_log()
        second = run()
        out, _ = second.communicate(timeout=120)
        assert second.returncode == 0, out
        log_second = sim.read_log()[len(log_first):]
        third = run()
        out3, _ = third.communicate(timeout=120)
        assert third.returncode == 0, out3
        assert len(sim.read_log()) == len(log_first) + len(log_second)  # all stored: nothing sent at all
    stored_first = {r["request_id"] for r in store.query(
        "SELECT request_id FROM responses WHERE status = 'ok' AND run_id = (SELECT run_id FROM runs "
        "ORDER BY started_at LIMIT 1)", path=db_path)}
    assert len(stored_first) >= 3  # the killed run's answers came back from its journal
    resent = [r["client_request_id"] for r in log_second if r["client_request_id"] in stored_first]
    assert resent == []
    assert store.table_counts(db_path)["eval_reviews"] == 12
    assert not list(journal_dir(db_path).glob("*.jsonl"))
    printed = json.loads(out3[out3.index("{"):])
    assert printed["models"]["m1"]["n_reviews"] == 12 and not answered_twice(log_second)


def test_batch_mode_judges_through_the_batch_api(bench: Path) -> None:
    with start_simulator(SimConfig(judge_scoring="fixed", batch_delay_s=0.2)) as sim:
        judged = judge.judge(bench, "s", config=judge_config(sim.base_url, mode="batch", batch_poll_s=0.1,
                                                             api_key="sk-test"))
        assert {r.path for r in sim.log if r.path.startswith("batch:")} == {"batch:/v1/chat/completions"}
    assert judged.new_reviews == 6
    modes = store.query("SELECT DISTINCT mode FROM responses", path=bench)
    assert modes == [{"mode": "batch"}]


def test_the_budget_cap_stops_judging_without_a_default_score(bench: Path) -> None:
    with start_simulator(SimConfig(judge_scoring="fixed")) as sim:
        config = GenerateConfig(model="gpt-4o", base_url=sim.base_url, concurrency=1, max_cost_usd=0.0)
        judged = judge.judge(bench, "s", config=config)
        assert len(sim.log) == 0  # the cap was reached before the first call: nothing sent
    assert judged.new_reviews == 0 and judged.failed == 6 and judged.rejects == []
    statuses = store.query("SELECT DISTINCT status FROM responses", path=bench)
    assert statuses == [{"status": "budget_exceeded"}]
    assert store.table_counts(bench)["eval_reviews"] == 0
