"""Planning: idempotent request rows, skipping what already has a good response, re-planning on a new prompt."""

from __future__ import annotations

from pathlib import Path

import pytest

from schemas.tables import ResponseRow
from tasks import store
from tasks.ingest.coco import ingest
from tasks.prompting.plan import plan_requests, shard

TYPES = ["conversation", "detail_description", "complex_reasoning"]


@pytest.fixture
def ingested(db_path: Path, sample_coco: Path) -> Path:
    ingest(sample_coco, "train2017", db_path, check_images=False)
    return db_path


def _mark_ok(db: Path, request_ids: list[str]) -> None:
    with store.write(db) as con:
        store.insert_rows(con, ResponseRow, [
            ResponseRow(response_id=f"r-{rid}", request_id=rid, attempt=1, status="ok", created_at=store.utcnow())
            for rid in request_ids
        ])


def test_plan_is_idempotent_and_counts_tokens(ingested: Path) -> None:
    n_images = store.query("SELECT count(*) AS n FROM images", path=ingested)[0]["n"]
    first = plan_requests(ingested, sample_types=TYPES, model="gpt-4o")
    assert first.images == n_images
    assert first.planned_new == first.pending == n_images * len(TYPES)
    assert first.by_type == {t: n_images for t in TYPES}
    assert first.est_input_tokens > 100 * first.pending  # system prompt + few-shot examples per request
    rows = store.query("SELECT request_id, params, est_input_tokens FROM requests", path=ingested)
    assert {r["request_id"] for r in rows} == set(first.request_ids)
    assert all(r["est_input_tokens"] > 0 for r in rows)

    again = plan_requests(ingested, sample_types=TYPES, model="gpt-4o")
    assert again.planned_new == 0
    assert again.request_ids == first.request_ids  # still pending: nothing answered yet


def test_plan_skips_good_samples_and_replans_for_new_model_or_prompt(
    ingested: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    plan = plan_requests(ingested, sample_types=["conversation"], model="gpt-4o", limit_images=2)
    assert plan.pending == 2
    _mark_ok(ingested, plan.request_ids[:1])

    rerun = plan_requests(ingested, sample_types=["conversation"], model="gpt-4o", limit_images=2)
    assert rerun.request_ids == plan.request_ids[1:]
    assert rerun.already_ok == 1 and rerun.planned_new == 0

    other_model = plan_requests(ingested, sample_types=["conversation"], model="gpt-4o-mini", limit_images=2)
    assert other_model.planned_new == 2

    import tasks.prompting.prompts

    real_build = tasks.prompting.prompts.build_messages

    def edited_prompt(ctx, type_name, output_format, prompt_set=None):  # an edited template has a new version
        messages, version = real_build(ctx, type_name, output_format, prompt_set)
        messages[0] = {**messages[0], "content": messages[0]["content"] + "\nBe concise."}
        return messages, version + "-edited"

    monkeypatch.setattr(tasks.prompting.prompts, "build_messages", edited_prompt)
    new_prompt = plan_requests(ingested, sample_types=["conversation"], model="gpt-4o", limit_images=2)
    assert new_prompt.planned_new == 2 and new_prompt.already_ok == 0


def test_dry_run_writes_nothing(ingested: Path) -> None:
    plan = plan_requests(ingested, sample_types=TYPES, model="gpt-4o", dry_run=True)
    assert plan.pending > 0
    assert store.query("SELECT count(*) AS n FROM requests", path=ingested)[0]["n"] == 0


def test_structured_params_carry_the_schema(ingested: Path) -> None:
    plan_requests(ingested, sample_types=["complex_reasoning"], model="gpt-4o", limit_images=1, max_tokens=512)
    plan_requests(ingested, sample_types=["complex_reasoning"], model="gpt-4o", limit_images=1,
                  output_format="llava-text")
    rows = store.query("SELECT output_format, params FROM requests ORDER BY output_format", path=ingested)
    import json

    params = {r["output_format"]: json.loads(r["params"]) for r in rows}
    assert params["structured"]["response_format"]["json_schema"]["name"] == "complex_reasoning"
    assert params["structured"]["max_tokens"] == 512
    assert "response_format" not in params["llava-text"]


def test_shard_covers_every_id_once() -> None:
    ids = [str(i) for i in range(10)]
    shards = shard(ids, 4)
    assert [len(s) for s in shards] == [4, 4, 2]
    assert [i for s in shards for i in s] == ids
    with pytest.raises(ValueError):
        shard(ids, 0)


def test_a_replan_reads_the_answered_slots_one_step_of_images_at_a_time(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A re-plan of a large answered store must not hold every slot's state at once: each step of images
    reads only its own slots, and what counts as answered is the same."""
    from bench.gen_scale import synthetic_images
    from tasks.prompting import plan as plan_module

    synthetic_images(db_path, 30)
    first = plan_requests(db_path, sample_types=["conversation"], model="gpt-4o-mini")
    _mark_ok(db_path, first.request_ids[:25])  # images 1-25 answered, 26-30 not
    monkeypatch.setattr(plan_module, "IMAGE_CHUNK", 10)
    monkeypatch.setattr(plan_module, "PLAN_STEPS", 1000)
    ranges: list[tuple[int, int]] = []
    real = plan_module.slot_states

    def spy(con, model, image_range=None):  # type: ignore[no-untyped-def]
        ranges.append(image_range)
        return real(con, model, image_range)

    monkeypatch.setattr(plan_module, "slot_states", spy)
    again = plan_requests(db_path, sample_types=["conversation"], model="gpt-4o-mini")
    assert ranges == [(1, 10), (11, 20), (21, 30)]
    assert again.already_ok == 25 and again.request_ids == first.request_ids[25:] and again.planned_new == 0
