"""`tasks/pipeline.py`: the one composition of the steps, run in-process (no Prefect) against the simulator."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from schemas.curation import Reject, RejectCode, ValidationResult
from schemas.flow_params import NOT_A_PARAMETER, PARAM_NAMES, CurateParams, GenerateParams, IngestParams, PipelineParams
from schemas.generation import GenerateConfig
from tasks import pipeline, store
from tasks.curation import validate as validate_module
from tests.sim import SimConfig, start_simulator


@pytest.fixture
def sim() -> Iterator[Any]:
    with start_simulator(SimConfig()) as handle:
        yield handle


def chat_calls(sim: Any) -> int:
    return sum(1 for r in list(sim.log) if r.path == "/v1/chat/completions")


def params_for(db: Path, sim: Any, tmp_path: Path, **generate: Any) -> PipelineParams:
    return PipelineParams(
        ingest=IngestParams(coco_dir=str(Path(pipeline.__file__).parent / "ingest" / "sample_coco"), db_path=str(db)),
        generate=GenerateParams(db_path=str(db), base_url=sim.base_url, model="gpt-4o-mini", **generate),
        curate=CurateParams(db_path=str(db), export_dir=str(tmp_path / "export")),
    )


def test_the_pipeline_is_a_readable_list_of_steps() -> None:
    assert [s.name for s in pipeline.STEPS] == ["ingest", "generate", "eval-set", "validate", "dedup", "export",
                                               "report", "train", "evaluate"]
    assert [pipeline.Validate, pipeline.Dedup, pipeline.Export, pipeline.Report] == pipeline.CURATE
    assert [pipeline.HoldOut, pipeline.Evaluate] == pipeline.EVALUATE
    # the eval set is held out before export; each group is a subflow of `pipeline`
    assert [section for section, _ in pipeline.sections(pipeline.STEPS)] == [
        "ingest", "generate", "eval-set", "curate", "train", "evaluate"]
    for step in pipeline.STEPS:  # every step's config model is a section of the pipeline's parameters
        assert PipelineParams.model_fields[step.section].annotation in (step.config, step.config | None)


def test_every_engine_field_but_the_key_is_a_generate_parameter() -> None:
    assert {"api_key"} == NOT_A_PARAMETER  # the key is a secret: never a parameter (Prefect shows them)
    missing = [name for name in GenerateConfig.model_fields
               if name not in NOT_A_PARAMETER and PARAM_NAMES.get(name, name) not in GenerateParams.model_fields]
    assert missing == [], f"GenerateConfig fields missing from GenerateParams: {missing}"
    assert "api_key" not in GenerateParams.model_fields
    for name, field in GenerateConfig.model_fields.items():  # same defaults as the engine
        if name not in NOT_A_PARAMETER:
            param = GenerateParams.model_fields[PARAM_NAMES.get(name, name)]
            assert param.get_default(call_default_factory=True) == field.get_default(call_default_factory=True), name
    # and back: every engine field survives the round trip
    config = GenerateConfig(transport="sdk", temperature=0.7, max_tokens=300, types=["conversation"], limit=2,
                            timeout=9, format="llava-text", flush_rows=7)
    assert GenerateParams.from_config(config).engine_config() == config


def test_steps_in_process_then_a_rerun_sends_nothing(db_path: Path, sim: Any, tmp_path: Path) -> None:
    params = params_for(db_path, sim, tmp_path)
    logs: list[str] = []
    ctx = pipeline.Context(db=db_path, runner=pipeline.Runner(log=logs.append))
    done = pipeline.run_steps(pipeline.STEPS, params, ctx)  # no train config: the train step is skipped
    assert list(done) == ["ingest", "generate", "validate", "dedup", "export", "report"]
    assert done["generate"].done == 12 and chat_calls(sim) == 12
    assert (tmp_path / "export" / "llava_instruct.json").exists()
    assert store.table_counts(db_path)["dataset"] > 0
    assert any(line.startswith("generate round 1: 12 requests") for line in logs)

    again = pipeline.run_steps(pipeline.STEPS, params, pipeline.Context(db=db_path, runner=pipeline.Runner(
        log=logs.append)))
    assert again["generate"].requests == 0 and chat_calls(sim) == 12
    assert "generate: nothing new to send (rerun: all answered)" in logs


def reject_first(n: int, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Make validation reject the first `n` answers it sees (as if the model had refused)."""
    seen: list[str] = []
    real = validate_module.validate_response

    def fake(row: dict[str, Any], thresholds: Any = None) -> ValidationResult:
        seen.append(row["request_id"])
        if len(seen) <= n:
            return ValidationResult(rejects=[Reject(code=RejectCode.REFUSAL, detail="injected by the test")])
        return real(row, thresholds)

    monkeypatch.setattr(validate_module, "validate_response", fake)
    return seen


def test_rejected_answers_are_regenerated_in_later_rounds_of_one_run(
    db_path: Path, sim: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reject_first(12 + 12, monkeypatch)  # every answer of rounds 1 and 2 is rejected
    params = params_for(db_path, sim, tmp_path, max_regenerations=2)
    logs: list[str] = []
    ctx = pipeline.Context(db=db_path, runner=pipeline.Runner(log=logs.append))
    pipeline.run_steps([pipeline.Ingest, pipeline.Generate], params, ctx)
    assert chat_calls(sim) == 36  # round 3 answered what rounds 1 and 2 had rejected
    seeds = store.query("SELECT json_extract(params, '$.seed')::INT AS seed, count(*) AS n FROM requests "
                        "GROUP BY 1 ORDER BY 1 NULLS FIRST", path=db_path)
    assert [(r["seed"], r["n"]) for r in seeds] == [(None, 12), (1, 12), (2, 12)]
    assert store.table_counts(db_path)["samples"] == 12  # no hole left
    assert sum(line.startswith("generate round") and "requests to send" in line for line in logs) == 3

    again = pipeline.Generate.run(pipeline.Context(db=db_path), params.generate)
    assert again.requests == 0 and chat_calls(sim) == 36


def test_rounds_stop_after_one_plus_max_regenerations(
    db_path: Path, sim: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reject_first(10_000, monkeypatch)  # the model never gets it right
    params = params_for(db_path, sim, tmp_path, max_regenerations=1, sample_types=["conversation"])
    pipeline.run_steps([pipeline.Ingest, pipeline.Generate], params, pipeline.Context(db=db_path))
    assert chat_calls(sim) == 8  # 4 images x (1 + 1 regeneration), then it gives up
    assert store.table_counts(db_path)["samples"] == 0


def test_an_unpriced_model_warns_once(db_path: Path, sim: Any, tmp_path: Path) -> None:
    params = params_for(db_path, sim, tmp_path).generate.model_copy(update={"model": "my-local-llama",
                                                                             "sample_types": ["conversation"]})
    warnings: list[str] = []
    ctx = pipeline.Context(db=db_path, runner=pipeline.Runner(warn=warnings.append))
    pipeline.run_steps([pipeline.Ingest], params_for(db_path, sim, tmp_path), ctx)
    pipeline.Generate.run(ctx, params)
    assert len(warnings) == 1 and ctx.warnings == warnings
    assert "my-local-llama" in warnings[0] and "not counted" in warnings[0] and "prices.toml" in warnings[0]


def test_cli_generate_passes_transport_temperature_and_max_tokens_to_the_engine(
    db_path: Path, sim: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flows.cli import get_app
    from tasks.ingest.coco import ingest

    ingest(Path(pipeline.__file__).parent / "ingest" / "sample_coco", "train2017", db_path)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    result = CliRunner().invoke(get_app(), [
        "generate", "--db", str(db_path), "--base-url", sim.base_url, "--model", "gpt-4o-mini", "--types",
        "conversation", "--limit", "1", "--transport", "sdk", "--temperature", "0.7", "--max-tokens", "300",
        "--no-progress"])
    assert result.exit_code == 0, result.output
    assert_engine_got(db_path, transport="sdk", temperature=0.7, max_tokens=300)


def assert_engine_got(db: Path, **expected: Any) -> None:
    """The engine's `runs.params` (its whole config) and the requests sent carry the given values."""
    import json

    runs = store.query("SELECT params FROM runs WHERE kind = 'generate'", path=db)
    assert runs
    for run in runs:
        config = json.loads(run["params"]) if isinstance(run["params"], str) else run["params"]
        for name, value in expected.items():
            assert config[name] == value, (name, config)
    for row in store.query("SELECT params FROM requests", path=db):
        sent = json.loads(row["params"]) if isinstance(row["params"], str) else row["params"]
        assert (sent["temperature"], sent["max_tokens"]) == (expected["temperature"], expected["max_tokens"])


def test_status_shows_row_counts_cost_and_pending(db_path: Path, sim: Any, tmp_path: Path) -> None:
    from flows.cli import get_app
    from tasks.prompting.plan import plan_requests

    params = params_for(db_path, sim, tmp_path, sample_types=["conversation"], limit_images=2)
    pipeline.run_steps([pipeline.Ingest, pipeline.Generate], params, pipeline.Context(db=db_path))
    # 3 more planned but never sent: pending
    plan_requests(db_path, sample_types=["detail_description"], model="gpt-4o-mini", limit_images=3)
    spent = store.query("SELECT sum(cost_usd) AS usd FROM responses", path=db_path)[0]["usd"]
    assert spent > 0

    result = CliRunner().invoke(get_app(), ["status", "--db", str(db_path)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    out = result.output
    counts = store.table_counts(db_path)
    for table in ("images", "captions", "requests", "responses", "samples"):
        line = next(row for row in out.splitlines() if f" {table} " in row)
        assert f"{counts[table]:,}" in line, (table, line)
    assert counts["requests"] == 5 and counts["responses"] == 2
    assert f"cost so far: ${spent:,.4f}" in out
    assert "planned requests still unanswered: 3" in out
    # the two conversations were validated by the generate step: accepted, nothing else
    assert "slots (image, type, prompt version, model): 2 accepted, 0 awaiting validation, 0 to regenerate, " \
           "0 given up" in out
    assert "responses ok: 2" in out


def test_status_of_an_empty_database(db_path: Path) -> None:
    from flows.cli import get_app

    store.ensure_schema(db_path)
    result = CliRunner().invoke(get_app(), ["status", "--db", str(db_path)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "cost so far: $0.0000" in result.output and "planned requests still unanswered: 0" in result.output
