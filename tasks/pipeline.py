"""The pipeline, composed once: a readable list of steps (datatrove's manner), no Prefect here.

    STEPS  = [Ingest, Generate, Validate, Dedup, Export, Report, Train]
    CURATE = [Validate, Dedup, Export, Report]

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

from schemas.flow_params import CurateParams, GenerateParams, IngestParams, PipelineParams, TrainParams
from schemas.generation import GenerateConfig, GenerateStats
from schemas.settings import get_settings
from tasks import store
from tasks.llm.ratelimit import RateLimiter

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

    return send(list(request_ids), db_path=db_path, config=config, limiter=limiter, on_progress=on_progress)


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
        or settings.openai_base_url,
        # One budget for the whole run: every shard and round spends from the same `max_cost_usd`.
        budget_id=params.budget_id or ctx.run_id,
    )
    if config.api_key is None and config.base_url_credentials is None and (
            config.base_url is None or urlsplit(config.base_url).hostname == OPENAI_HOST):
        raise ValueError(f"no API key for {config.base_url or 'api.openai.com'}: set OPENAI_API_KEY (or "
                         "--base-url for a local server that needs none)")
    if not pricing.known(config.model):
        ctx.warn(f"no price for model {config.model!r}: costs are not counted (recorded as $0); "
                 f"add a [models.\"{config.model}\"] entry to {pricing.PRICES_FILE}")
    return config


def run_generate(ctx: Context, params: GenerateParams) -> GenerateStats:  # type: ignore[valid-type]
    """Rounds of plan -> send -> validate until the plan holds nothing new; returns the counts of every round."""
    from tasks.curation.validate import validate_pending
    from tasks.prompting.plan import plan_requests

    config = engine_config(ctx, params)
    max_regen = get_settings().max_regenerations if params.max_regenerations is None else params.max_regenerations
    rounds: list[GenerateStats] = []
    sent: set[str] = set()
    for round_no in range(1, max_regen + 2):
        plan = ctx.runner.call(
            "plan-requests", plan_requests, ctx.db, sample_types=config.types, model=config.model,
            output_format=config.format, limit_images=config.limit, temperature=config.temperature,
            max_tokens=config.max_tokens, max_regenerations=max_regen, run_id=ctx.run_id,
            prompt_set=params.prompt_set,
        )
        # Requests sent earlier in this run and still unanswered failed after every retry: a rerun tries them.
        if plan.images_unavailable:
            ctx.warn(f"{plan.images_unavailable} image(s) could not be read for an image-grounded prompt and were "
                     f"skipped, e.g. {plan.unavailable[0]}")
        ids = [rid for rid in plan.request_ids if rid not in sent]
        if not ids:
            break
        ctx.runner.log(f"generate round {round_no}: {len(ids)} requests to send ({plan.regenerations} of them "
                       f"regenerate a rejected answer) with {config.model} at {config.base_url or 'api.openai.com'}")
        rounds.append(ctx.runner.send(ids, ctx.db, config, round_no=round_no))
        sent.update(ids)
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
Train = Step("train", TrainParams, run_train, "train")

CURATE = [Validate, Dedup, Export, Report]
STEPS = [Ingest, Generate, *CURATE, Train]


def run_steps(steps: Sequence[Step], config: BaseModel, ctx: Context) -> dict[str, Any]:
    """Run `steps` in order, each with `config` (its own model, or a `PipelineParams` holding one per section).

    Returns each step's result by name. A `PipelineParams` without `train` skips the train step.
    """
    results: dict[str, Any] = {}
    for step in steps:
        step_config = getattr(config, step.section) if isinstance(config, PipelineParams) else config
        if step_config is None:
            continue
        if not isinstance(step_config, step.config):
            raise TypeError(f"step {step.name!r} takes {step.config.__name__}, got {type(step_config).__name__}")
        results[step.name] = step.run(ctx, step_config)
    return results


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
    """Consecutive steps grouped by section (how the `pipeline` flow maps them onto subflows)."""
    groups: list[tuple[str, list[Step]]] = []
    for step in steps:
        if groups and groups[-1][0] == step.section:
            groups[-1][1].append(step)
        else:
            groups.append((step.section, [step]))
    return groups
