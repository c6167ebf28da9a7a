"""The `evaluate` flow under a temporary Prefect server: it judges and reports, attaches its report (with a
chart the UI renders) to its own run, and a rerun asks for nothing."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from flows.evaluate import REPORT_KEY, SCORES_KEY, evaluate_flow
from schemas.flow_params import EvaluateParams
from tasks import store
from tasks.eval import answers
from tests.sim import SimConfig, start_simulator
from tests.test_eval_sets import write_bench
from tests.test_flows import latest_run

pytestmark = pytest.mark.usefixtures("prefect_harness")


def test_evaluate_flow_reports_on_its_own_run(db_path: Path, sample_coco: Path, tmp_path: Path) -> None:
    files = write_bench(tmp_path / "bench", sample_coco, answers=False)  # references written by the LLM
    params = EvaluateParams(name="bench", db_path=str(db_path), questions=str(files["questions"]),
                            context=str(files["context"]), image_root=str(sample_coco / "train2017"),
                            model="gpt-4o-mini", judge_model="judge-llm", swap=True)
    with start_simulator(SimConfig(judge_scoring="fixed", judge_score_1=8, judge_score_2=4)) as sim:
        params = params.model_copy(update={"base_url": sim.base_url})
        first = evaluate_flow(params.model_copy(update={"checkpoints": []}))  # the set, nothing to judge yet
        assert first["set"]["references"] == 6 and first["judge"]["pairs"] == 0
        lines = [json.dumps({"question_id": q, "text": f"candidate {q}"}) for q in range(6)]
        (tmp_path / "m.jsonl").write_text("\n".join(lines) + "\n")
        answers.import_answers(db_path, "bench", tmp_path / "m.jsonl", model_id="m")
        done = evaluate_flow(params)
        served = len(sim.log)
        again = evaluate_flow(params)
        assert len(sim.log) == served  # nothing stored is asked for again
    assert done["judge"]["new_reviews"] == 12 and again["judge"]["already_reviewed"] == 12
    scores = done["report"]["models"]["m"]
    # Assistant 1 always gets 8, Assistant 2 gets 4: over both orders each answer averages 6 (100 %), and being
    # shown first is worth 4 points
    assert scores["all"] == 100.0 and scores["position_bias"] == 4.0
    assert store.table_counts(db_path)["eval_reviews"] == 12

    artifacts, _ = asyncio.run(latest_run("evaluate"))
    markdown = str(artifacts[REPORT_KEY])
    assert "| all | 100.0 [" in markdown and "data:image/png;base64," in markdown and "█" in markdown
    table = artifacts[SCORES_KEY]
    rows = json.loads(table) if isinstance(table, str) else table
    assert {r["category"] for r in rows} == {"conv", "detail", "complex", "all"}
