"""The evaluation flows: the pipeline's eval steps (`tasks.pipeline.HoldOut`, `tasks.pipeline.Evaluate`).

- `evaluate` (deployment, CPU pool): build or import the eval set, answer it with each checkpoint
  (`python -m training infer` in a subprocess, as `train` runs training), judge every answer without a review,
  report. Inside `pipeline` the set is built before export (the `eval-set` subflow), so there it only answers,
  judges and reports. Each unit is a Prefect task; the report belongs to the flow run itself: `eval-report`
  (markdown: the table, a table-based bar chart and the PNG chart inlined) and `eval-scores` (a table).
- `eval-set`: the `HoldOut` step alone, the pipeline's subflow before export.
- `evaluate-infer` (deployment, GPU pool): only the answers. With `infer_on="deployment"`, `evaluate` hands
  inference to it (`flows.handoff.run_on_pool`): a worker of the GPU pool answers on its machine (after checking
  it sees the database, checkpoints and image roots, and has a GPU unless `allow_cpu`), the answers go into the
  database on storage both machines see, and the judging stays on the CPU worker. The report links that run.
"""

from __future__ import annotations

import logging
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from flows.runner import PrefectRunner
from schemas.flow_params import EvaluateParams, PipelineParams
from tasks import pipeline, store
from tasks.eval.report import markdown_report, table_rows
from tasks.store import resolve_db

REPORT_KEY = "eval-report"
SCORES_KEY = "eval-scores"


def publish(result: dict[str, Any], inference: str | None = None) -> None:
    """The eval report of this flow run: markdown (with the chart, and where inference ran) and one table row per
    model and category."""
    where = f"Answers: {inference}\n\n" if inference else ""
    create_markdown_artifact(key=REPORT_KEY, markdown=where + markdown_report(result, embed_chart=True),
                             description=f"relative scores on eval set {result['set']}")
    if rows := table_rows(result):
        create_table_artifact(key=SCORES_KEY, table=rows, description=f"scores on eval set {result['set']}")


def in_pipeline(params: PipelineParams, db: str | None) -> EvaluateParams | None:
    """The eval steps' params inside `pipeline`: the pipeline's database; the generation's endpoint when none is
    named (the LLM the run has a key for); the checkpoint it trains when no checkpoint is named."""
    if params.evaluate is None:
        return None
    checkpoints = params.evaluate.checkpoints
    if not checkpoints and params.train is not None:
        from flows.pipeline import checkpoint_of  # the pipeline imports this module: resolved at call time

        trained = checkpoint_of(params.train)
        checkpoints = [str(trained)] if trained is not None else []
    return params.evaluate.model_copy(update={
        "db_path": params.evaluate.db_path or db, "checkpoints": checkpoints,
        "base_url": params.evaluate.base_url or params.generate.base_url})


class EvaluateRunner(PrefectRunner):
    """Units as Prefect tasks; `infer_on="deployment"` hands the answering to the `evaluate-infer` deployment."""

    def __init__(self, logger: logging.Logger | logging.LoggerAdapter[Any]) -> None:
        super().__init__(logger)
        self.inference: str | None = None  # where the answers were made, for the report (a link to the child run)

    def infer_elsewhere(self, db: Any, params: EvaluateParams) -> list[dict[str, Any]]:
        """Run `params.infer_deployment` (a worker of its pool answers every checkpoint), wait, sum up the answers."""
        from flows.handoff import ChildRun, run_on_pool
        from tasks.eval import run as eval_run

        before = eval_run.answer_counts(db, params)

        def linked(child: ChildRun) -> None:  # linked even if it never ends
            self.inference = f"{child.deployment} run {child.link()} on pool `{child.pool}`"
            self.log(f"inference handed to {child.deployment} run {child.name} (pool {child.pool})")

        timeout = params.infer_timeout_s * len(params.checkpoints) if params.infer_timeout_s else None
        child = run_on_pool(params.infer_deployment, {"params": params.model_dump(mode="json")},
                            params.start_timeout_s, timeout, on_created=linked)
        self.inference = f"{child.deployment} run {child.link()} on {child.where()}"
        after = eval_run.answer_counts(db, params)
        questions = store.query("SELECT count(*) AS n FROM eval_questions WHERE set_name = ?", [params.name],
                                path=db)[0]["n"]
        return [{"model_id": model_id, "backend": params.backend, "questions": questions,
                 "already_answered": before[model_id], "new_answers": after[model_id] - before[model_id],
                 "failed": questions - after[model_id], "run": child.summary()} for model_id in after]


def _evaluate(params: EvaluateParams, steps: list[pipeline.Step]) -> dict[str, Any]:
    runner = EvaluateRunner(get_run_logger())
    ctx = pipeline.Context(db=resolve_db(params.db_path), runner=runner)
    done = pipeline.run_steps(steps, params, ctx)
    result = {"set": done["eval-set"].as_dict()} if "eval-set" in done else {}
    result.update(done["evaluate"])
    if runner.inference:
        result["inference"] = runner.inference
    publish(result["report"], runner.inference)
    return result


@flow(name="evaluate")
def evaluate_flow(params: EvaluateParams | None = None) -> dict[str, Any]:
    """Eval set -> answers per checkpoint -> judge -> report; resumable (nothing stored is asked for again)."""
    return _evaluate(params or EvaluateParams(), pipeline.EVALUATE)


@flow(name="evaluate")  # the same flow name as above: the UI lists both as `evaluate` runs
def answer_and_judge_flow(params: EvaluateParams) -> dict[str, Any]:
    """`pipeline`'s evaluate subflow: the set was held out before export (`eval-set`), so only answers, judging
    and the report."""
    return _evaluate(params, [pipeline.Evaluate])


@flow(name="eval-set")
def eval_set_flow(params: EvaluateParams) -> dict[str, Any]:
    """Build (or import) the eval set: `pipeline` runs it before export, so its images stay out of the export."""
    ctx = pipeline.Context(db=resolve_db(params.db_path), runner=PrefectRunner(get_run_logger()))
    return pipeline.HoldOut.run(ctx, params).as_dict()


@flow(name="evaluate-infer")
def infer_flow(params: EvaluateParams) -> list[dict[str, Any]]:
    """Answer the set with each local checkpoint on this machine (a worker of the GPU pool): check the paths and the
    device first, then `python -m training infer` per checkpoint; the answers go into the shared database."""
    from schemas.settings import get_settings
    from tasks.eval import run as eval_run
    from tasks.train_paths import NoGpuVisible, machine, probe_device, require_device

    logger = get_run_logger()
    db = resolve_db(params.db_path)
    eval_run.check_inference_paths(db, params)
    device = probe_device()
    require_gpu = get_settings().require_gpu
    logger.info("inference on %s: %s%s", machine(), device.describe(),
                " (GPU required; allow_cpu set)" if require_gpu and params.allow_cpu and not device.has_gpu else "")
    try:
        require_device(device, require_gpu=require_gpu, allow_cpu=params.allow_cpu)
    except NoGpuVisible:  # the training rule, in inference's words
        raise NoGpuVisible(f"inference needs a GPU and {machine()} has none: {device.describe()}. Run it on a worker "
                           "of the GPU pool, or set the evaluate parameter allow_cpu=true (tiny models only)") from None
    ctx = pipeline.Context(db=db, runner=PrefectRunner(logger))
    answered = []
    for spec in params.checkpoints:
        done = ctx.runner.call("eval-answers", eval_run.answer_model, db, params, spec, budget_id=ctx.run_id,
                               on_line=ctx.runner.log)
        logger.info("answers of %s: %s new, %s stored before, %s missing", done.model_id, done.new_answers,
                    done.already_answered, done.failed)
        answered.append(done.as_dict())
    return answered
