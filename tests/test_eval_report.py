"""The report's arithmetic on fixtures computed by hand: relative scores, swap averaging, position bias, bootstrap."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from schemas.eval import EvalReviewRow, EvalSetRow
from tasks import store
from tasks.eval.report import bootstrap_interval, position_bias, relative_score, report, summarize


def row(qid: int, category: str, ref: int, cand: int, order: str = "forward", model: str = "m") -> dict:
    return {"model_id": model, "question_id": qid, "category": category, "pair_order": order,
            "score_reference": ref, "score_candidate": cand}


# conv: q0 (8, 4), q1 (6, 3) -> 3.5 / 7 = 50 %; detail: q2 (10, 10) -> 100 %; complex: q3 (5, 10) -> 200 %;
# all: candidate mean 27 / 4 = 6.75, reference mean 29 / 4 = 7.25 -> 6.75 / 7.25 = 93.10 %
FIXTURE = [row(0, "conv", 8, 4), row(1, "conv", 6, 3), row(2, "detail", 10, 10), row(3, "complex", 5, 10)]


def test_relative_score_per_category_and_overall_by_hand() -> None:
    out = summarize(FIXTURE, n_boot=200)
    assert (out["conv"], out["detail"], out["complex"], out["all"]) == (50.0, 100.0, 200.0, 93.1)
    assert out["n_reviews"] == 4 and out["n_questions"] == {"conv": 2, "detail": 1, "complex": 1, "all": 4}
    assert out["mean_scores"]["conv"] == {"reference": 7.0, "candidate": 3.5}
    assert relative_score([], []) is None and relative_score([0, 0], [1, 2]) is None


def test_swapped_orders_are_averaged_per_question_and_bias_is_measured() -> None:
    # q0 forward: reference 8, candidate 4; swapped (candidate shown first): reference 6, candidate 6
    # per question: reference (8 + 6) / 2 = 7, candidate (4 + 6) / 2 = 5 -> 5 / 7 = 71.43 %
    # gain of Assistant 1: reference 8 - 6 = 2 (first vs second), candidate 6 - 4 = 2 -> +2 points
    rows = [row(0, "conv", 8, 4, "forward"), row(0, "conv", 6, 6, "swapped")]
    out = summarize(rows, n_boot=200)
    assert out["conv"] == 71.43 and out["all"] == 71.43 and out["n_reviews"] == 2
    assert out["position_bias"] == 2.0
    assert out["candidate_minus_reference"] == {"forward": -4.0, "swapped": 0.0}
    bias, by_order = position_bias([row(0, "conv", 8, 4)])  # one order only: no bias measurable
    assert bias is None and by_order == {"forward": -4.0, "swapped": None}


def test_bootstrap_interval_by_hand() -> None:
    assert bootstrap_interval([], []) is None
    assert bootstrap_interval([8], [4]) == (50.0, 50.0)  # one question: every resample is the same
    assert bootstrap_interval([8, 4], [4, 2]) == (50.0, 50.0)  # every question has the same ratio
    # two questions, reference 10 each, candidate 2 and 8: a resample takes (2, 2) with p 1/4 -> 20 %,
    # (2, 8) or (8, 2) with p 1/2 -> 50 %, (8, 8) with p 1/4 -> 80 %: the 2.5 and 97.5 percentiles are 20 and 80
    assert bootstrap_interval([10, 10], [2, 8], n_boot=4000) == (20.0, 80.0)
    # the same seed gives the same interval; the interval holds the point estimate
    ref, cand = [7, 8, 9, 6, 5, 8], [3, 9, 4, 6, 2, 7]
    low, high = bootstrap_interval(ref, cand, seed=3)
    assert bootstrap_interval(ref, cand, seed=3) == (low, high)
    assert low <= relative_score(ref, cand) <= high


def test_report_json_from_the_store(db_path) -> None:
    from flows.cli import get_app

    now = store.utcnow()
    with store.write(db_path) as con:
        store.insert_rows(con, EvalSetRow, [EvalSetRow(name="s", source="build", created_at=now)])
        reviews = [EvalReviewRow(request_id=f"{m}{r['question_id']}", set_name="s", model_id=m,
                                 question_id=r["question_id"], category=r["category"], pair_order="forward",
                                 judge_model="judge", score_reference=r["score_reference"],
                                 score_candidate=r["score_candidate"], explanation="x", response_id="r",
                                 created_at=now) for m in ("a", "b") for r in FIXTURE]
        reviews[-1] = reviews[-1].model_copy(update={"score_candidate": 5})  # b, complex: 5 / 5 = 100 %
        store.insert_rows(con, EvalReviewRow, reviews)
    result = report(db_path, "s", n_boot=100)
    assert result["models"]["a"]["complex"] == 200.0 and result["models"]["b"]["complex"] == 100.0
    done = CliRunner().invoke(get_app(), ["eval", "report", "--name", "s", "--json", "--db", str(db_path)])
    assert done.exit_code == 0, done.output
    printed = json.loads(done.stdout)
    assert set(printed["models"]) == {"a", "b"}
    for key in ("conv", "detail", "complex", "all", "n_reviews"):
        assert key in printed["models"]["a"]
    assert printed["models"]["a"]["all"] == 93.1 and printed["models"]["b"]["n_reviews"] == 4
    text = CliRunner().invoke(get_app(), ["eval", "report", "--name", "s", "--db", str(db_path)])
    assert text.exit_code == 0 and "93.1" in text.stdout
    missing = CliRunner().invoke(get_app(), ["eval", "report", "--name", "nope", "--db", str(db_path)])
    assert missing.exit_code == 2 and "no eval set 'nope'" in missing.output


def test_summary_has_every_category_even_without_reviews() -> None:
    out = summarize([row(0, "conv", 8, 4)], n_boot=50)
    assert out["detail"] is None and out["ci95"]["detail"] is None and out["conv"] == 50.0
