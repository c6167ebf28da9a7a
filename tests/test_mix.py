"""The sample mix (issue 17): exact per-type counts, a deterministic draw, reruns that plan nothing, clear errors."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

from bench.gen_scale import synthetic_images
from flows.cli import get_app
from schemas.flow_params import GenerateParams
from schemas.generation import GenerateConfig
from schemas.recipes import SampleMix
from tasks import store
from tasks.prompting.mix import select_images
from tasks.prompting.plan import plan_requests
from tests.sim import SimConfig, start_simulator

TYPES = ["conversation", "detail_description", "complex_reasoning"]
N_IMAGES = 60


@pytest.fixture
def images(db_path: Path) -> Path:
    synthetic_images(db_path, N_IMAGES)
    return db_path


def planned_images(db: Path) -> dict[str, set[int]]:
    rows = store.query("SELECT sample_type, image_id FROM requests", path=db)
    out: dict[str, set[int]] = {}
    for r in rows:
        out.setdefault(r["sample_type"], set()).add(r["image_id"])
    return out


def test_select_images_takes_exact_counts_deterministically_and_grows_by_adding() -> None:
    ids = list(range(1000, 1500))
    mix = SampleMix.model_validate("conversation=58,detail_description=23,complex_reasoning=77")
    chosen = select_images(mix, ids)
    assert {t: len(v) for t, v in chosen.items()} == {"conversation": 58, "detail_description": 23,
                                                      "complex_reasoning": 77}
    shuffled = ids[:]
    random.Random(3).shuffle(shuffled)
    assert select_images(mix, shuffled) == chosen  # the input's order plays no part
    assert chosen["conversation"] != chosen["complex_reasoning"][:58]  # each type draws on its own
    bigger = select_images(SampleMix.model_validate("conversation=100,detail_description=23"), ids)
    assert set(chosen["conversation"]) < set(bigger["conversation"])  # a larger target only adds images
    assert bigger["detail_description"] == chosen["detail_description"]
    other_seed = select_images(SampleMix.model_validate("conversation=58,seed=1"), ids)
    assert other_seed["conversation"] != chosen["conversation"]


def test_fractions_and_counts_select_the_same_images() -> None:
    ids = list(range(1, 201))
    fractions = SampleMix.model_validate("conversation=0.37,detail_description=0.145,complex_reasoning=1.0")
    counts = fractions.counts(len(ids))
    assert counts == {"conversation": 74, "detail_description": 29, "complex_reasoning": 200}
    as_counts = SampleMix.model_validate(",".join(f"{t}={n}" for t, n in counts.items()))
    assert select_images(fractions, ids) == select_images(as_counts, ids)
    assert SampleMix.model_validate(fractions.text()) == fractions  # --mix text round-trips


def test_plan_with_mix_plans_exactly_the_targets_and_a_rerun_plans_nothing(images: Path) -> None:
    mix = SampleMix.model_validate("conversation=25,detail_description=0.2,complex_reasoning=40")
    first = plan_requests(images, sample_types=TYPES, model="gpt-4o", mix=mix)
    assert first.by_type == {"conversation": 25, "detail_description": 12, "complex_reasoning": 40}
    assert first.planned_new == first.pending == 77
    assert {t: len(v) for t, v in planned_images(images).items()} == first.by_type
    assert first.images == len(set().union(*planned_images(images).values()))
    again = plan_requests(images, sample_types=TYPES, model="gpt-4o", mix=mix)
    assert again.planned_new == 0 and sorted(again.request_ids) == sorted(first.request_ids)

    dry = plan_requests(images, sample_types=TYPES, model="gpt-4o", mix=mix, dry_run=True)
    assert dry.by_type == first.by_type  # what `vistune estimate --mix` prices is what generate plans
    limited = plan_requests(images, sample_types=TYPES, model="gpt-4o", mix=mix, limit_images=50, dry_run=True)
    assert limited.by_type["detail_description"] == 10  # fractions are of the images the plan covers


def test_generate_with_a_mix_then_rerun_sends_nothing(images: Path) -> None:
    mix = SampleMix.model_validate("conversation=6,complex_reasoning=0.1")
    with start_simulator(SimConfig(seed=4)) as sim:
        config = GenerateConfig(base_url=sim.base_url, api_key="sk-test", model="gpt-4o-mini", concurrency=8,
                                format="llava-text", flush_interval_s=0.2, types=TYPES)
        params = GenerateParams.from_config(config, mix=mix)
        from tasks import pipeline

        ctx = pipeline.Context(images, api_key=config.api_key)
        stats = pipeline.Generate.run(ctx, params)
        assert stats.requests >= 12 and stats.failed == 0
        served = len(sim.log)
        again = pipeline.Generate.run(pipeline.Context(images, api_key=config.api_key), params)
        assert (again.requests, again.attempts) == (0, 0)
        assert len(sim.log) == served
    assert {t: len(v) for t, v in planned_images(images).items()} == {"conversation": 6, "complex_reasoning": 6}
    after = plan_requests(images, sample_types=TYPES, model="gpt-4o-mini", output_format="llava-text", mix=mix,
                          dry_run=True)
    assert after.pending == 0 and after.already_ok + after.given_up == 12


@pytest.mark.parametrize(("text", "message"), [
    ("conversaton=10", "unknown sample type 'conversaton'"),
    ("conversation=-3", "must be a count >= 0"),
    ("conversation=1.5", "a fraction is at most 1.0"),
    ("conversation", "must look like type=count"),
    ("conversation=ten", "'ten' is not a number"),
    ("conversation=1,conversation=2", "names 'conversation' twice"),
    ("", "names no sample type"),
    ("conversation=1,seed=0.5", "seed=0.5: must be an integer"),
])
def test_bad_mixes_are_one_clear_error(text: str, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        SampleMix.model_validate(text)
    with pytest.raises(ValidationError, match=message):
        GenerateParams(mix=text)


def test_counts_above_the_images_and_types_left_out_are_errors(images: Path) -> None:
    with pytest.raises(ValueError, match=r"conversation=61 asks for more images than the 60 there are"):
        plan_requests(images, sample_types=TYPES, model="gpt-4o", mix=SampleMix.model_validate("conversation=61"))
    with pytest.raises(ValueError, match="asks for complex_reasoning, which the sample types"):
        plan_requests(images, sample_types=["conversation"], model="gpt-4o",
                      mix=SampleMix.model_validate("conversation=1,complex_reasoning=2"))


def test_estimate_and_generate_commands_take_the_mix(images: Path) -> None:
    runner = CliRunner()
    done = runner.invoke(get_app(), ["estimate", "--db", str(images), "--mix", "conversation=7,complex_reasoning=0.5"],
                         env={"COLUMNS": "200"})
    assert done.exit_code == 0, done.output
    assert "conversation " in done.output and "requests to send" in done.output
    assert "37" in done.output  # 7 + 30
    bad = runner.invoke(get_app(), ["estimate", "--db", str(images), "--mix", "conversation=100"],
                        env={"COLUMNS": "200"})
    assert bad.exit_code == 2 and "asks for more images than the 60 there are" in bad.output
    bad = runner.invoke(get_app(), ["generate", "--db", str(images), "--mix", "chat=1"], env={"COLUMNS": "200"})
    assert bad.exit_code == 2 and "unknown sample type 'chat'" in bad.output
