"""The pipeline holds the eval set out before export and ends with evaluate: the set's images never reach the
export, the evaluate step after train answers, judges and reports on the pipeline's database, and evaluates the
checkpoint the run trains when none is named."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from flows.evaluate import in_pipeline
from schemas.flow_params import CurateParams, EvaluateParams, GenerateParams, IngestParams, PipelineParams, TrainParams
from tasks import pipeline, store
from tests.sim import SimConfig, start_simulator
from training.tiny import write_tiny_config


def exported_images(export_dir: Path) -> set[str]:
    """Every image a training file of the export names (instruction data and stage-1 caption pairs)."""
    return {record["image"] for name in ("llava_instruct.json", "llava_pretrain.json")
            for record in json.loads((export_dir / name).read_text())}


def eval_images(db: Path) -> set[str]:
    return {r["image"] for r in store.query(
        "SELECT i.split || '/' || i.file_name AS image FROM eval_images e JOIN images i USING (image_id)", path=db)}


def test_the_pipeline_holds_the_set_out_before_export_and_ends_with_evaluate(
        db_path: Path, sample_coco: Path, tmp_path: Path) -> None:
    with start_simulator(SimConfig(judge_scoring="fixed", judge_score_1=8, judge_score_2=6)) as sim:
        params = PipelineParams(
            ingest=IngestParams(coco_dir=str(sample_coco), db_path=str(db_path)),
            generate=GenerateParams(db_path=str(db_path), base_url=sim.base_url, model="gpt-4o-mini"),
            curate=CurateParams(db_path=str(db_path), export_dir=str(tmp_path / "export")),
            evaluate=EvaluateParams(name="p", split="train2017", per_category=1, model="gpt-4o-mini",
                                    base_url=sim.base_url, backend="openai", checkpoints=["vision=gpt-4o"],
                                    judge_model="judge-llm"),
        )
        logged: list[str] = []
        done = pipeline.run_steps(pipeline.STEPS, params, pipeline.Context(
            db=db_path, runner=pipeline.Runner(log=logged.append), api_key=None))
    scores = done["evaluate"]["report"]["models"]["vision"]
    assert scores["all"] == 75.0 and scores["n_reviews"] == 3
    assert "relative score of vision: 75.0% overall (conv 75.0, detail 75.0, complex 75.0)" in logged
    assert store.table_counts(db_path)["eval_answers"] == 3
    held_out = eval_images(db_path)
    assert len(held_out) == 1 and done["eval-set"].images == 1
    exported = exported_images(tmp_path / "export")
    assert exported and not held_out & exported  # generated for, but never exported
    assert done["export"].eval_images_left_out == 1
    order = [next(i for i, line in enumerate(logged) if line.startswith(prefix))
             for prefix in ("eval set p:", "export to", "relative score of vision")]
    assert order == sorted(order)  # built before export, judged after


def test_without_a_model_under_test_the_set_is_held_out_and_evaluate_skipped() -> None:
    held = EvaluateParams(name="x")
    params = PipelineParams(evaluate=held)
    assert pipeline.config_of(pipeline.HoldOut, params) is held
    assert pipeline.config_of(pipeline.Evaluate, params) is None  # nothing to answer it
    named = PipelineParams(evaluate=EvaluateParams(name="x", checkpoints=["a=ckpt"]))
    assert pipeline.config_of(pipeline.Evaluate, named) is named.evaluate
    assert pipeline.config_of(pipeline.HoldOut, PipelineParams()) is None
    assert pipeline.config_of(pipeline.Evaluate, held) is held  # the evaluate flow alone: judges stored answers


def test_evaluate_only_answers_judges_and_reports_a_set_built_before(db_path: Path) -> None:
    with store.write(db_path):
        pass  # an empty store: no eval set
    with pytest.raises(ValueError, match="no eval set 'missing'"):  # it never builds one after export
        pipeline.Evaluate.run(pipeline.Context(db=db_path), EvaluateParams(name="missing", db_path=str(db_path)))


def test_in_pipeline_the_step_uses_the_pipeline_database_and_its_trained_checkpoint(tmp_path: Path) -> None:
    config = write_tiny_config(tmp_path / "train.yaml", tmp_path / "vision", tmp_path / "llm",
                               output_dir=tmp_path / "runs")
    params = PipelineParams(train=TrainParams(config=str(config)), evaluate=EvaluateParams(name="x"))
    filled = in_pipeline(params, "/data/v.duckdb")
    assert filled is not None and filled.db_path == "/data/v.duckdb"
    assert filled.checkpoints == [str(tmp_path / "runs" / "stage2" / "final")]
    named = params.model_copy(update={"evaluate": EvaluateParams(name="x", checkpoints=["a=ckpt"], db_path="o")})
    assert in_pipeline(named, "/data/v.duckdb").checkpoints == ["a=ckpt"]  # type: ignore[union-attr]
    assert in_pipeline(PipelineParams(), None) is None
    # the generation's endpoint when the eval set names none (the LLM the run has a key for)
    gen = params.model_copy(update={"generate": GenerateParams(base_url="http://sim/v1")})
    assert in_pipeline(gen, None).base_url == "http://sim/v1"  # type: ignore[union-attr]


def test_the_judge_has_its_own_endpoint_and_key(monkeypatch: pytest.MonkeyPatch) -> None:
    from tasks.eval import run

    monkeypatch.setenv("JUDGE_KEY", "sk-judge-0123456789")
    params = EvaluateParams(base_url="http://gen.example/v1", judge_base_url="http://judge.example/v1",
                            judge_model="other-judge", judge_api_key_env="JUDGE_KEY")
    config = run.judge_config(params)
    assert (config.model, config.base_url) == ("other-judge", "http://judge.example/v1")
    assert config.api_key is not None and config.api_key.get_secret_value() == "sk-judge-0123456789"
    assert run.writer_config(params).base_url == "http://gen.example/v1"
    monkeypatch.delenv("JUDGE_KEY")
    with pytest.raises(ValueError, match="judge_api_key_env names JUDGE_KEY, which is not set"):
        run.judge_config(params)
    with pytest.raises(ValueError, match="judge_base_url holds credentials"):
        EvaluateParams(judge_base_url="http://user:secret@judge.example/v1")


@pytest.mark.usefixtures("prefect_harness")
@pytest.mark.timeout(600)
def test_the_pipeline_flow_holds_out_then_reports_the_scores_in_its_summary(
        db_path: Path, sample_coco: Path, tmp_path: Path) -> None:
    import asyncio

    from flows.pipeline import pipeline_flow
    from tests.test_pipeline_summary import pipeline_artifacts

    with start_simulator(SimConfig(judge_scoring="fixed", judge_score_1=8, judge_score_2=6)) as sim:
        params = PipelineParams(
            ingest=IngestParams(coco_dir=str(sample_coco), db_path=str(db_path)),
            generate=GenerateParams(base_url=sim.base_url, model="gpt-4o-mini"),
            curate=CurateParams(export_dir=str(tmp_path / "export")),
            # no base_url: the writer and the judge use the generation's endpoint
            evaluate=EvaluateParams(name="flow", split="train2017", per_category=1, model="gpt-4o-mini",
                                    backend="openai", checkpoints=["vision=gpt-4o"], judge_model="judge-llm"),
        )
        done = pipeline_flow(params)
    assert done["eval-set"]["images"] == 1 and done["evaluate"]["report"]["models"]["vision"]["all"] == 75.0
    held_out = eval_images(db_path)
    assert len(held_out) == 1 and not held_out & exported_images(tmp_path / "export")
    summary = asyncio.run(pipeline_artifacts())["pipeline-summary"]
    assert "**Eval set** `flow`: 1 image(s) held out of the export, 3 questions, 3 references" in summary, summary
    assert "**Evaluation** on `flow`, judged by `judge-llm`" in summary
    assert "| model | conv | detail | complex | all | reviews |" in summary
    assert "| `vision` | 75.0% | 75.0% | 75.0% | 75.0% | 3 |" in summary
    table = summary.split("## Subflow runs and their artifacts", 1)[1].splitlines()
    subflows = [line.split(" | ")[0].lstrip("| ") for line in table if "/runs/flow-run/" in line]
    assert subflows == ["ingest", "generate", "eval-set", "curate", "evaluate"], summary


def test_inference_elsewhere_first_checks_the_paths_on_its_machine(db_path: Path, sample_coco: Path,
                                                                    tmp_path: Path) -> None:
    import shutil

    from tasks.eval import run as eval_run
    from tasks.eval import sets
    from tests.test_eval_sets import write_bench

    images = tmp_path / "images"  # on "machine A" only: gone below
    shutil.copytree(sample_coco / "train2017", images)
    files = write_bench(tmp_path / "bench", sample_coco)
    sets.import_llava_bench(db_path, "b", image_root=images, **files)
    checkpoint = tmp_path / "ckpt"
    checkpoint.mkdir()
    params = EvaluateParams(name="b", db_path=str(db_path), checkpoints=[f"m={checkpoint}", "n=elsewhere/final"],
                            infer_on="deployment")
    assert eval_run.missing_inference_paths(db_path, params) == [
        f"checkpoint {Path('elsewhere/final').resolve()} does not exist"]
    shutil.rmtree(images)
    with pytest.raises(eval_run.InferencePathsMissing, match=r"inference cannot start on [^:]+:.*: checkpoint .*"
                       r"elsewhere/final does not exist; image root .*images of eval set 'b' does not exist"):
        eval_run.check_inference_paths(db_path, params)
    assert eval_run.missing_inference_paths(tmp_path / "none.duckdb", params) == [
        f"database {tmp_path / 'none.duckdb'} does not exist"]
    # in this process (no Prefect) a handoff to a pool cannot happen: said at once, nothing answered
    with pytest.raises(pipeline.StepFailed, match="infer_on=deployment hands inference to a GPU work pool"):
        pipeline.Evaluate.run(pipeline.Context(db=db_path), params)
    assert store.table_counts(db_path)["eval_answers"] == 0


@pytest.mark.usefixtures("prefect_harness")
def test_the_infer_flow_requires_a_gpu_where_its_pool_says_so(db_path: Path, sample_coco: Path, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from flows.evaluate import infer_flow
    from tasks import train_paths
    from tasks.eval import sets
    from tests.test_eval_sets import write_bench

    sets.import_llava_bench(db_path, "g", image_root=sample_coco / "train2017", **write_bench(tmp_path, sample_coco))
    (tmp_path / "ckpt").mkdir()
    params = EvaluateParams(name="g", db_path=str(db_path), checkpoints=[f"m={tmp_path / 'ckpt'}"])
    cpu_only = train_paths.Device(torch="2.x", cuda_build=None, gpus=())
    monkeypatch.setattr(train_paths, "probe_device", lambda: cpu_only)
    monkeypatch.setenv("VISTUNE_REQUIRE_GPU", "true")  # what the GPU pool's job env sets
    with pytest.raises(train_paths.NoGpuVisible, match=r"inference needs a GPU and .* has none: device cpu: torch "
                                                       r"built without CUDA.*allow_cpu=true"):
        infer_flow(params)
    assert store.table_counts(db_path)["eval_answers"] == 0  # refused before any inference
