"""One definition of "done": rejected answers are regenerated (new seed, new request), then given up.

The rule lives in tasks/store/queries.py; the plan uses it and README query 7 reads the same view.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.gen_scale import synthetic_images
from schemas.curation import ContentThresholds
from schemas.generation import GenerateConfig
from tasks import store
from tasks.curation.validate import validate_pending
from tasks.llm.engine import run_requests_sync
from tasks.prompting.plan import plan_requests
from tests.sim import SimConfig, start_simulator
from tests.test_readme_sql import readme_queries

TYPE = "complex_reasoning"
# Every complex-reasoning answer is "too short" under this threshold: a way to reject real answers.
REJECT_ALL = ContentThresholds(min_answer_words={"conversation": 2, "detail_description": 25, TYPE: 100_000})


def _config(sim) -> GenerateConfig:
    return GenerateConfig(base_url=sim.base_url, api_key="sk-test", model="gpt-4o-mini", concurrency=4,
                          timeout=5.0, flush_interval_s=0.2)


def _round(db: Path, sim, thresholds: ContentThresholds | None = None, **plan_kwargs) -> tuple:
    plan = plan_requests(db, sample_types=[TYPE], model="gpt-4o-mini", **plan_kwargs)
    run_requests_sync(plan.request_ids, db_path=db, config=_config(sim))
    return plan, validate_pending(db, thresholds)


def test_a_rejected_answer_is_regenerated_with_a_new_seed_then_done(db_path: Path) -> None:
    synthetic_images(db_path, 3)
    with start_simulator(SimConfig(seed=3)) as sim:
        first, checked = _round(db_path, sim, REJECT_ALL)
        assert (first.pending, first.regenerations, checked.rejected) == (3, 0, 3)

        second, checked = _round(db_path, sim)  # default thresholds: the new answers pass
        assert second.pending == 3 and second.regenerations == 3
        assert not set(second.request_ids) & set(first.request_ids)  # new requests, not re-sends
        assert checked.samples == 3

        third = plan_requests(db_path, sample_types=[TYPE], model="gpt-4o-mini")
        assert (third.pending, third.already_ok) == (0, 3)
        assert len([r for r in sim.log if r.path.endswith("/chat/completions")]) == 6

    rows = store.query("SELECT regeneration, params FROM requests ORDER BY regeneration", path=db_path)
    assert [r["regeneration"] for r in rows] == [0, 0, 0, 1, 1, 1]
    assert [json.loads(r["params"]).get("seed") for r in rows] == [None, None, None, 1, 1, 1]


def test_answers_rejected_past_max_regenerations_are_given_up(db_path: Path) -> None:
    synthetic_images(db_path, 2)
    with start_simulator(SimConfig(seed=4)) as sim:
        for _ in range(2):  # the first answer and one regeneration, both rejected
            _round(db_path, sim, REJECT_ALL, max_regenerations=1)
        done = plan_requests(db_path, sample_types=[TYPE], model="gpt-4o-mini", max_regenerations=1)
        assert (done.pending, done.given_up, done.already_ok) == (0, 2, 0)
        # a larger allowance (the setting) plans the next regeneration of each
        more = plan_requests(db_path, sample_types=[TYPE], model="gpt-4o-mini", dry_run=True)
        assert (more.pending, more.regenerations) == (2, 2)


def test_an_answer_awaiting_validation_is_not_planned_again(db_path: Path) -> None:
    synthetic_images(db_path, 2)
    with start_simulator(SimConfig(seed=5)) as sim:
        plan = plan_requests(db_path, sample_types=[TYPE], model="gpt-4o-mini")
        run_requests_sync(plan.request_ids, db_path=db_path, config=_config(sim))
    again = plan_requests(db_path, sample_types=[TYPE], model="gpt-4o-mini")
    assert (again.pending, again.already_ok) == (0, 2)


def test_readme_query_7_agrees_with_the_plan(db_path: Path) -> None:
    synthetic_images(db_path, 4)
    with start_simulator(SimConfig(seed=6)) as sim:
        plan = plan_requests(db_path, sample_types=["conversation", TYPE], model="gpt-4o-mini")
        run_requests_sync(plan.request_ids, db_path=db_path, config=_config(sim))
    validate_pending(db_path, REJECT_ALL)  # conversations accepted, complex reasoning rejected once
    query = next(q for q in readme_queries() if q.lstrip().startswith("-- 7."))
    with store.read(db_path) as con:
        from_readme = dict(con.execute(query).fetchall())
    planned = plan_requests(db_path, sample_types=["conversation", "detail_description", TYPE],
                            model="gpt-4o-mini", dry_run=True)
    assert planned.by_type == {"detail_description": 4, TYPE: 4}
    assert {t: n for t, n in from_readme.items() if n} == planned.by_type


@pytest.mark.parametrize("bad", [-1])
def test_a_negative_allowance_is_refused(db_path: Path, bad: int) -> None:
    synthetic_images(db_path, 1)
    with pytest.raises(ValueError, match="max_regenerations"):
        plan_requests(db_path, sample_types=[TYPE], model="gpt-4o-mini", max_regenerations=bad)
