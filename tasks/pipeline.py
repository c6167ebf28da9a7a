"""The pipeline, composed once: a readable list of steps (datatrove's manner), no Prefect here.

    STEPS    = [Ingest, Generate, HoldOut, Validate, Dedup, Export, Report, Train, Evaluate]
    CURATE   = [Validate, Dedup, Export, Report]
    EVALUATE = [HoldOut, Evaluate]

`HoldOut` builds (or imports) the eval set before export, so its images never reach the training data on any
path (the pipeline flow, `vistune run`, the demo); `Evaluate` after train only answers, judges and reports.

Each step is a `Step`: a name, its config model (`schemas/flow_params.py`, the same model the CLI
flags and the Prefect flow parameters fill) and a `run(ctx, config) -> result` function. The data
between steps is the DuckDB store (`ctx.db`), the system of record: every step reads what it needs
from it and writes its rows back, so a step's contract is "this config and that database in, these
rows and this summary out", and any step can be rerun alone.

*What* a step does is here; *where* its units of work run is the `Runner` in the context:
`Runner` runs them in this process one after another (`vistune curate`, `vistune generate`, the
demo); `flows/` subclasses it so each unit is a Prefect task and generation shards fan out over a
task runner, and runs groups of steps as subflows. Callers:
`run_steps(CURATE, CurateParams(...), Context(db))`.

The generate step runs rounds: plan -> send -> validate, again while the plan holds requests not
sent yet in this run (rejected answers are planned again as regenerations), at most
1 + `max_regenerations` rounds, so one run leaves no hole a regeneration could fill.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel, SecretStr

from schemas.flow_params import (
    CurateParams,
    EvaluateParams,
    GenerateParams,
    IngestParams,
    PipelineParams,
    TrainParams,
)
from schemas.generation import GenerateConfig, GenerateStats
from schemas.settings import get_settings
from tasks import store
from tasks.llm.ratelimit import RateLimiter
from tasks.store.request_ids import RequestIds

ProgressCallback = Callable[[GenerateStats], None]
# api.openai.com never answers without a key: no key and this host fails at once, before any request.
OPENAI_HOST = "api.openai.com"


class StepFailed(RuntimeError):
    """A step ran but produced nothing where something was expected; the message says which step and why."""


def generate_problem(stats: GenerateStats) -> str | None:
    """Why a generate step that sent requests and got not one good answer failed, else None."""
    problem = stats.all_failed()
    return None if problem is None else f"generate: {problem}"


def ingest_problem(summary: dict[str, Any]) -> str | None:
    """Why an ingest step that kept not one image failed (every record skipped), else None."""
    if summary.get("images", 1):
        return None
    skipped = ", ".join(f"{reason}={n}" for reason, n in sorted(summary.get("skipped", {}).items()))
    return (f"ingest: no usable image in {', '.join(summary.get('splits', [])) or 'the splits'} "
            f"(skipped: {skipped or 'none listed'}); see `vistune sql \"SELECT * FROM ingest_errors\"`")


def export_problem(db: Path, exported: Any) -> str | None:
    """Why an export that wrote no sample while samples were expected failed, else None.

    Samples are expected when the dataset view holds some (then every one was skipped), or when the
    store holds good answers (then every one was rejected). A store without answers expects nothing.
    """
    from tasks.curation.export import INSTRUCT_FILE

    if exported.counts.get(INSTRUCT_FILE, 0):
        return None
    with store.read(db) as con:
        in_dataset = con.execute("SELECT count(*) FROM dataset").fetchone()[0]
        answers = con.execute("SELECT count(*) FROM responses WHERE status = 'ok'").fetchone()[0]
        rejected = con.execute("SELECT count(DISTINCT response_id) FROM rejects").fetchone()[0]
    if in_dataset:
        first = exported.skipped[0].message() if exported.skipped else "no reason recorded"
        return f"export: 0 of {in_dataset} samples written, every one skipped (first: {first})"
    if answers:
        return (f"export: 0 samples from {answers} good answer(s): {rejected} rejected by validation. Why: "
                'vistune sql "SELECT code, count(*) FROM rejects GROUP BY 1"')
    return None


def send_requests(
    request_ids: Sequence[str],
    db_path: str | Path,
    config: GenerateConfig,
    *,
    limiter: RateLimiter | None = None,
    on_progress: ProgressCallback | None = None,
) -> GenerateStats:
    """Send planned requests through the LLM engine (online, or the Batch API when `config.mode == "batch"`)."""
    from tasks.llm.engine import send  # imported here: openai is slow to import

    return send(request_ids, db_path=db_path, config=config, limiter=limiter, on_progress=on_progress)


def total_of(*parts: GenerateStats) -> GenerateStats:
    """The counts of several sends (rounds, shards) together."""
    total = GenerateStats()
    for part in parts:
        total.add(part)
    return total


class Runner:
    """Where units of work run: here, in this process, one after another.

    `flows/` subclasses it: `call` becomes a Prefect task named `name`, `send` fans shards out
    over a task runner, `log`/`warn` go to the flow run's log.
    """

    def __init__(
        self,
        *,
        log: Callable[[str], None] | None = None,
        warn: Callable[[str], None] | None = None,
        on_progress: ProgressCallback | None = None,
        limiter: RateLimiter | None = None,
    ) -> None:
        self._log = log
        self._warn = warn
        self.on_progress = on_progress
        self.limiter = limiter
        self._sent = GenerateStats()  # earlier rounds, so a progress bar keeps counting up across rounds

    def call(self, name: str, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        """Run one unit of work (`name` is what a UI would call it)."""
        return fn(*args, **kwargs)

    def send(self, request_ids: Sequence[str], db: Path, config: GenerateConfig, *, round_no: int) -> GenerateStats:
        """Send one round's requests; returns the round's counts."""
        earlier = self._sent
        progress = None if self.on_progress is None else (lambda s: self.on_progress(total_of(earlier, s)))
        stats = send_requests(request_ids, db, config, limiter=self.limiter, on_progress=progress)
        self._sent = total_of(earlier, stats)
        return stats

    def log(self, message: str) -> None:
        """Say what a step did."""
        if self._log is not None:
            self._log(message)

    def warn(self, message: str) -> None:
        """Say something the user must know (e.g. costs not counted)."""
        (self._warn or self._log or (lambda _: None))(message)

    def infer_elsewhere(self, db: Path, params: EvaluateParams) -> list[dict[str, Any]]:
        """`infer_on="deployment"`: the checkpoints answer on another machine's work pool; returns each one's
        answer summary. Only Prefect hands work to a pool (`flows/evaluate.py`); in this process it cannot."""
        raise StepFailed("evaluate: infer_on=deployment hands inference to a GPU work pool, which only the "
                         "`evaluate` flow (Prefect) can do; use infer_on=local here")


@dataclass
class Context:
    """What every step of one run shares."""

    db: Path  # the one database of the run
    runner: Runner = field(default_factory=Runner)
    api_key: SecretStr | None = None  # from the environment or a Secret block: never a parameter
    base_url: SecretStr | None = None  # an endpoint URL holding `user:password@` (CLI flag): never a parameter
    run_id: str = field(default_factory=lambda: store.stable_hash("pipeline", time.time_ns(), length=16))
    warnings: list[str] = field(default_factory=list)

    def warn(self, message: str) -> None:
        """Warn once per message and keep it for the run's summary."""
        if message not in self.warnings:
            self.warnings.append(message)
            self.runner.warn(message)


@dataclass(frozen=True)
class Step:
    """One step: its name, the config model it takes, and what it does."""

    name: str
    config: type[BaseModel]
    run: Callable[[Context, Any], Any]
    section: str  # the field of `PipelineParams` holding its config (several curate steps share one)
    group: str = ""  # the consecutive steps `sections` puts together (a subflow of `pipeline`); empty = section


# ---------------------------------------------------------------- ingest
def run_ingest(ctx: Context, params: IngestParams) -> dict[str, Any]:
    """COCO captions and instances of every split -> images, captions, objects. Returns rows added and skips."""
    from tasks.ingest.coco import ingest

    summary: dict[str, Any] = {"added": {}, "skipped": {}}
    for split in params.splits:
        stats = ctx.runner.call("ingest-split", ingest, params.coco_dir, split, ctx.db, strict=params.strict,
                                check_images=params.check_images)
        for table, n in stats.added.items():
            summary["added"][table] = summary["added"].get(table, 0) + n
        for reason, n in stats.skipped.items():
            summary["skipped"][reason] = summary["skipped"].get(reason, 0) + n
        summary["images"] = summary.get("images", 0) + stats.images  # valid images (a rerun adds none)
        summary.setdefault("splits", []).append(split)
        ctx.runner.log(f"ingest {split}: {stats.images} images read, new rows {stats.added}, "
                       f"skipped {dict(stats.skipped) or 'nothing'}")
    return summary


# ---------------------------------------------------------------- generate
def engine_config(ctx: Context, params: GenerateParams) -> GenerateConfig:  # type: ignore[valid-type]
    """The engine's config for this run: the step's fields, the key, endpoint defaults and the run's budget."""
    from tasks.llm import pricing

    settings = get_settings()
    config = params.engine_config(
        api_key=ctx.api_key or settings.openai_api_key,
        base_url=(ctx.base_url.get_secret_value() if ctx.base_url else None) or params.base_url
        or (None if params.endpoints_file else settings.openai_base_url),  # the file names every endpoint's URL
        # One budget for the whole run: every shard and round spends from the same `max_cost_usd`.
        budget_id=params.budget_id or ctx.run_id,
    )
    if config.endpoints_file:  # each endpoint names its key variable: read the file now, so a bad one sends nothing
        from tasks.llm.pool import load_endpoints

        priced = {e.spec.price_model or e.spec.model or config.model for e in load_endpoints(config.endpoints_file)}
    else:
        if config.api_key is None and config.base_url_credentials is None and (
                config.base_url is None or urlsplit(config.base_url).hostname == OPENAI_HOST):
            raise ValueError(f"no API key for {config.base_url or 'api.openai.com'}: set OPENAI_API_KEY (or "
                             "--base-url for a local server that needs none)")
        priced = {config.model}
    for model in sorted(priced):
        if not pricing.known(model):
            ctx.warn(f"no price for model {model!r}: costs are not counted (recorded as $0); "
                     f"add a [models.\"{model}\"] entry to {pricing.PRICES_FILE}")
    return config


def run_generate(ctx: Context, params: GenerateParams) -> GenerateStats:  # type: ignore[valid-type]
    """Rounds of plan -> send -> validate until the plan holds nothing new; returns the counts of every round."""
    from tasks.curation.validate import validate_pending
    from tasks.prompting.plan import plan_requests

    config = engine_config(ctx, params)
    max_regen = get_settings().max_regenerations if params.max_regenerations is None else params.max_regenerations
    rounds: list[GenerateStats] = []
    sent = RequestIds()  # packed, as the plan's ids are: a set of 1.58M str took ~200 MB
    for round_no in range(1, max_regen + 2):
        plan = ctx.runner.call(
            "plan-requests", plan_requests, ctx.db, sample_types=config.types, model=config.model,
            output_format=config.format, limit_images=config.limit, temperature=config.temperature,
            max_tokens=config.max_tokens, max_regenerations=max_regen, run_id=ctx.run_id,
            prompt_set=params.prompt_set, mix=params.mix,
        )
        # Requests sent earlier in this run and still unanswered failed after every retry: a rerun tries them.
        if plan.images_unavailable:
            ctx.warn(f"{plan.images_unavailable} image(s) could not be read for an image-grounded prompt and were "
                     f"skipped, e.g. {plan.unavailable[0]}")
        ids = plan.request_ids.without(sent)
        if not ids:
            break
        ctx.runner.log(f"generate round {round_no}: {len(ids)} requests to send ({plan.regenerations} of them "
                       f"regenerate a rejected answer) with {config.model} at "
                       f"{config.base_url or config.endpoints_file or 'api.openai.com'}")
        rounds.append(ctx.runner.send(ids, ctx.db, config, round_no=round_no))
        sent += ids
        # Validate now: a rejected answer is what the next round's plan asks for again.
        checked = ctx.runner.call("validate", validate_pending, ctx.db)
        ctx.runner.log(f"generate round {round_no}: {checked.samples} samples, {checked.rejected} rejected "
                       f"{checked.reject_codes or ''}")
    totals = total_of(*rounds)
    totals.wall_s = sum(r.wall_s for r in rounds)  # rounds run one after another (shards of a round overlap)
    if not rounds:
        ctx.runner.log("generate: nothing new to send (rerun: all answered)")
    else:
        ctx.runner.log(f"generate: {totals.done} new good responses, {totals.failed} failed, {totals.attempts} calls, "
                       f"${totals.cost_usd:.4f} in {len(rounds)} round(s)")
    return totals


# ---------------------------------------------------------------- curate
def run_validate(ctx: Context, params: CurateParams) -> Any:
    """Responses not yet validated -> samples or rejects (reason codes)."""
    from tasks.curation.validate import validate_pending

    checked = ctx.runner.call("validate", validate_pending, ctx.db)
    ctx.runner.log(f"validate: {checked.checked:,} responses checked, {checked.samples:,} new samples, "
                   f"{checked.rejected:,} rejected {checked.reject_codes or ''}")
    return checked


def run_dedup(ctx: Context, params: CurateParams) -> Any:
    """Samples -> duplicates (exact and near), so the `dataset` view holds the survivors."""
    from tasks.curation.dedup import dedup

    deduped = ctx.runner.call("dedup", dedup, ctx.db, threshold=params.dedup_threshold, scope=params.dedup_scope)
    ctx.runner.log(f"dedup ({params.dedup_scope}, threshold {params.dedup_threshold}): "
                   f"{deduped.exact_duplicates:,} exact + {deduped.near_duplicates:,} near duplicates of "
                   f"{deduped.samples:,} samples; {deduped.survivors:,} kept ({deduped.seconds:.1f} s)")
    return deduped


def run_export(ctx: Context, params: CurateParams) -> Any:
    """The `dataset` view -> LLaVA json (all types and one file per type), stage-1 pairs, parquet."""
    from tasks.curation.export import default_image_root, export

    image_root = params.image_root or str(default_image_root(ctx.db))
    exported = ctx.runner.call("export", export, ctx.db, params.export_dir, image_root, seed=params.seed,
                               require_images=params.require_images)
    ctx.runner.log(f"export to {params.export_dir}: {exported.counts} records, "
                   f"{len(exported.skipped)} bad record(s) skipped")
    if missing := exported.missing_summary():
        ctx.warn(missing)
    if held_out := exported.eval_summary():
        ctx.runner.log(f"export: {held_out}")
    return exported


def run_report(ctx: Context, params: CurateParams) -> Any:
    """The dataset report (markdown, tables, plots) beside the exports."""
    from tasks.curation.report import build_report

    report = ctx.runner.call("report", build_report, ctx.db, params.export_dir)
    ctx.runner.log(f"report: {report.path}")
    return report


# ---------------------------------------------------------------- train
def run_train(ctx: Context, params: TrainParams) -> dict[str, list[str]]:
    """Stage 1, stage 2 (then merge), each `python -m training` in its own process; returns each one's last lines."""
    from tasks.train_launch import launch_training

    stages = [("stage1", params.stage1_overrides), ("stage2", params.stage2_overrides)]
    if params.merge:
        stages.append(("merge", params.merge_overrides))
    tails: dict[str, list[str]] = {}
    for stage, overrides in stages:
        ctx.runner.log(f"starting {stage} with {params.config} {' '.join(overrides)}")
        tails[stage] = ctx.runner.call(
            f"train-{stage}", launch_training, stage, params.config, overrides,
            on_line=lambda line, stage=stage: ctx.runner.log(f"[{stage}] {line}"),
            launcher=params.launcher, timeout_s=params.timeout_s,
        )
    return tails


Ingest = Step("ingest", IngestParams, run_ingest, "ingest")
Generate = Step("generate", GenerateParams, run_generate, "generate")
Validate = Step("validate", CurateParams, run_validate, "curate")
Dedup = Step("dedup", CurateParams, run_dedup, "curate")
Export = Step("export", CurateParams, run_export, "curate")
Report = Step("report", CurateParams, run_report, "curate")
# ---------------------------------------------------------------- evaluate
def run_eval_set(ctx: Context, params: EvaluateParams) -> Any:
    """The eval set, built from held-out images (questions and references written by the LLM through the engine)
    or imported; runs before export, which leaves its images out. Resumes: a stored set is only read again."""
    from tasks.eval import run as eval_run
    from tasks.eval import sets as eval_sets

    db = store.resolve_db(params.db_path) if params.db_path else ctx.db
    key = ctx.api_key or get_settings().openai_api_key
    built = ctx.runner.call("eval-set", eval_run.prepare_set, db, params,
                            eval_run.writer_config(params, key, ctx.run_id))
    ctx.runner.log(f"eval set {params.name}: {built.images} held-out images, {built.questions} questions, "
                   f"{built.references} references ({built.new_questions} questions and {built.new_references} "
                   f"references new, {len(built.rejects)} rejected, {built.failed} without an answer)")
    if built.created and (generated_for := eval_sets.images_in_dataset(db, params.name)):
        # Exports from now on leave them out; only an export (or checkpoint) made before this set existed has them.
        ctx.runner.log(f"eval-set: {generated_for} image(s) of the new eval set {params.name!r} have samples in the "
                       "dataset: the export leaves them out (exports made before the set existed include them)")
    if not built.references:
        raise StepFailed(f"eval-set: eval set {params.name!r} has no reference answers: nothing can be judged"
                         + (f" (first reject: {built.rejects[0]})" if built.rejects else ""))
    return built


def run_evaluate(ctx: Context, params: EvaluateParams) -> dict[str, Any]:
    """Answers of each checkpoint (`python -m training infer` each, here or on a GPU pool) -> judge -> report.

    The set must exist (`HoldOut` built it before export). Every unit resumes: what is stored is not asked for
    again (tasks/eval). Returns each unit's summary and the report (`tasks.eval.report.report`)."""
    from tasks.eval import judge, report
    from tasks.eval import run as eval_run
    from tasks.eval.sets import require_set

    db = store.resolve_db(params.db_path) if params.db_path else ctx.db
    require_set(db, params.name)
    key = ctx.api_key or get_settings().openai_api_key
    answered: list[dict[str, Any]] = []
    if params.checkpoints and params.infer_on == "deployment" and params.backend != "openai":
        answered = ctx.runner.infer_elsewhere(db, params)
    else:
        for spec in params.checkpoints:
            done = ctx.runner.call("eval-answers", eval_run.answer_model, db, params, spec, api_key=key,
                                   budget_id=ctx.run_id, on_line=ctx.runner.log)
            answered.append(done.as_dict())
    for done in answered:
        ctx.runner.log(f"answers of {done['model_id']}: {done['new_answers']} new, {done['already_answered']} "
                       f"stored before, {done['failed']} missing")
    if not params.checkpoints:
        ctx.warn("evaluate: no checkpoints given: reviewing the answers stored before, if any")
    judged = ctx.runner.call("eval-judge", judge.judge, db, params.name,
                             model_ids=eval_run.model_ids(params) or None,
                             config=eval_run.judge_config(params, key, ctx.run_id), swap=params.swap)
    ctx.runner.log(f"judge {judged.judge_model}: {judged.new_reviews} new reviews, {judged.already_reviewed} stored "
                   f"before, {len(judged.rejects)} rejected, {judged.failed} without an answer")
    scores = ctx.runner.call("eval-report", report.report, db, params.name, judge_model=judged.judge_model)
    for model_id, summary in scores["models"].items():
        ctx.runner.log(f"relative score of {model_id}: {summary['all']}% overall (conv {summary['conv']}, "
                       f"detail {summary['detail']}, complex {summary['complex']})")
    return {"answers": answered, "judge": judged.as_dict(), "report": scores}


Train = Step("train", TrainParams, run_train, "train")
# LLM work through the engine like generation, before export: the eval set's images stay out of every export.
HoldOut = Step("eval-set", EvaluateParams, run_eval_set, "evaluate", group="eval-set")
Evaluate = Step("evaluate", EvaluateParams, run_evaluate, "evaluate")

CURATE = [Validate, Dedup, Export, Report]
EVALUATE = [HoldOut, Evaluate]  # the `evaluate` flow run alone
STEPS = [Ingest, Generate, HoldOut, *CURATE, Train, Evaluate]


def run_steps(
    steps: Sequence[Step], config: BaseModel, ctx: Context, *, after: Callable[[Step, Any], None] | None = None
) -> dict[str, Any]:
    """Run `steps` in order, each with `config` (its own model, or a `PipelineParams` holding one per section).

    Returns each step's result by name. Steps `config_of` skips are left out. `after(step, result)` is called
    after each step (e.g. to stop when generation answered nothing).
    """
    results: dict[str, Any] = {}
    for step in steps:
        step_config = config_of(step, config)
        if step_config is None:
            continue
        if not isinstance(step_config, step.config):
            raise TypeError(f"step {step.name!r} takes {step.config.__name__}, got {type(step_config).__name__}")
        results[step.name] = step.run(ctx, step_config)
        if after is not None:
            after(step, results[step.name])
    return results


def config_of(step: Step, config: BaseModel) -> BaseModel | None:
    """The config `step` runs with under `config` (its own model, or a `PipelineParams`), or None: skipped.

    A `PipelineParams` without `train` (or `evaluate`) skips that step; without `evaluate` no eval set is held out
    either. With `evaluate` but no checkpoint (none named, none trained) the set is still held out before export,
    and the evaluate step after training is skipped: there is no model to answer it.
    """
    if not isinstance(config, PipelineParams):
        return config
    own = getattr(config, step.section)
    if step is Evaluate and own is not None and not own.checkpoints:
        return None
    return own


def steps_before(steps: Sequence[Step], stop: Step) -> list[Step]:
    """The steps before `stop` (all of them when it is not among them): what runs before training, say."""
    return list(steps[:steps.index(stop)]) if stop in steps else list(steps)


def generate(
    db_path: str | Path | None,
    config: GenerateConfig,
    *,
    limiter: RateLimiter | None = None,
    on_progress: ProgressCallback | None = None,
    max_regenerations: int | None = None,
) -> GenerateStats:
    """The generate step alone, in this process, from an engine config (for scripts and tests)."""
    params = GenerateParams.from_config(config, max_regenerations=max_regenerations)
    ctx = Context(store.resolve_db(db_path), runner=Runner(on_progress=on_progress, limiter=limiter),
                  api_key=config.api_key)
    return run_steps([Generate], params, ctx)["generate"]


def sections(steps: Sequence[Step]) -> list[tuple[str, list[Step]]]:
    """Consecutive steps grouped by group (default: section): how the `pipeline` flow maps them onto subflows.
    A group's steps share one section, so one config (`getattr(params, steps[0].section)`)."""
    groups: list[tuple[str, list[Step]]] = []
    for step in steps:
        name = step.group or step.section
        if groups and groups[-1][0] == name:
            groups[-1][1].append(step)
        else:
            groups.append((name, [step]))
    return groups
