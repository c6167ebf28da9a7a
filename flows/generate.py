"""The `generate` flow: plan -> shards -> one Prefect task per shard, shards running concurrently.

Never one task per request (DESIGN.md: ~14 ms of Prefect bookkeeping each, and the server
drops events at 10K tasks). A shard of hundreds of requests runs them concurrently with asyncio
inside `tasks.llm.engine.run_requests_sync`; Prefect retries a failed shard, and the engine skips
what the failed attempt already answered. Incremental by construction: the plan only holds
requests without a good response, so the nightly schedule sends only what is new.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.futures import as_completed
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner
from pydantic import SecretStr

from flows.progress import GenerationProgress
from schemas.flow_params import GenerateParams
from schemas.generation import GenerateConfig, GenerateStats
from schemas.settings import get_settings
from tasks import prefect_tasks
from tasks.llm.shared_limiter import SharedRateLimiter
from tasks.prompting.plan import shard
from tasks.store import resolve_db


def build_task_runner(kind: str, max_workers: int) -> TaskRunner[Any]:
    """Threads with a bounded pool (default) or a local Dask cluster (`pip install 'vistune[dask]'`)."""
    if kind == "threads":
        return ThreadPoolTaskRunner(max_workers=max_workers)
    if kind == "dask":
        try:
            from prefect_dask import DaskTaskRunner
        except ImportError as exc:
            raise RuntimeError("task_runner='dask' needs prefect-dask: pip install 'vistune[dask]'") from exc
        return DaskTaskRunner(cluster_kwargs={"n_workers": max_workers, "threads_per_worker": 1})
    raise ValueError(f"unknown task_runner {kind!r}: use 'threads' or 'dask'")


def resolve_api_key(secret_block: str | None) -> SecretStr | None:
    """OPENAI_API_KEY if set, else the Prefect Secret block named by the parameter or the
    `prefect_secret_block` setting, else None (fine for local servers such as the simulator)."""
    settings = get_settings()
    if settings.openai_api_key is not None:
        return settings.openai_api_key
    block_name = secret_block or settings.prefect_secret_block
    try:
        from prefect.blocks.system import Secret

        return SecretStr(str(Secret.load(block_name).get()))
    except (ValueError, ImportError):  # no such block: run without a key
        return None


def build_limiter(params: GenerateParams, db: Path) -> SharedRateLimiter | None:
    """One bucket file shared by every shard, thread and worker process on this machine."""
    if params.rpm is None and params.tpm is None:
        return None  # each shard's engine learns the limits from the server's headers
    path = Path(params.limiter_path) if params.limiter_path else db.with_suffix(".ratelimit.sqlite")
    return SharedRateLimiter(path, rpm=params.rpm, tpm=params.tpm, name=f"{params.base_url or 'openai'}|{params.model}")


def generate_config(params: GenerateParams) -> GenerateConfig:
    """The engine's config from the flow's parameters (the API key never enters the parameters)."""
    return GenerateConfig(
        model=params.model,
        base_url=params.base_url or get_settings().openai_base_url,
        api_key=resolve_api_key(params.secret_block),
        format=params.output_format,
        mode=params.mode,
        batch_poll_s=params.batch_poll_s,
        concurrency=params.concurrency,
        rpm=params.rpm,
        tpm=params.tpm,
        max_cost_usd=params.max_cost_usd,
        timeout=params.timeout_s,
        max_attempts=params.max_attempts,
        types=list(params.sample_types),
        limit=params.limit_images,
    )


def _run_shards(
    params: GenerateParams, db: Path, config: GenerateConfig, shards: list[list[str]], progress: GenerationProgress
) -> None:
    """One task per shard on the chosen task runner; each shard reports its snapshots to `progress`."""
    limiter = build_limiter(params, db)
    shard_task = prefect_tasks.generate_shard.with_options(retries=params.shard_retries)
    in_process = params.task_runner == "threads"  # a callback cannot cross into Dask worker processes
    with build_task_runner(params.task_runner, params.max_workers) as runner:
        futures = {}
        for index, ids in enumerate(shards):
            on_progress = (lambda stats, i=index: progress.report(i, stats)) if in_process else None
            future = runner.submit(shard_task, parameters={
                "request_ids": ids, "db_path": str(db), "config": config, "limiter": limiter,
                "on_progress": on_progress,
            })
            futures[future] = index
        for future in as_completed(list(futures)):
            progress.report(futures[future], future.result())


@flow(name="generate", log_prints=True)
def generate_flow(params: GenerateParams | None = None) -> GenerateStats:
    """Send every planned request that lacks a good response; progress is a live artifact."""
    params = params or GenerateParams()
    logger = get_run_logger()
    db = resolve_db(params.db_path)
    config = generate_config(params)
    planned = prefect_tasks.plan(
        str(db), sample_types=list(params.sample_types), limit_images=params.limit_images,
        model=params.model, output_format=params.output_format,
    )
    request_ids = list(planned.request_ids)
    shards = shard(request_ids, params.shard_size)
    logger.info("%d requests to finish in %d shard(s) of <= %d against %s", len(request_ids), len(shards),
                params.shard_size, config.base_url or "api.openai.com")
    if params.max_cost_usd is not None and shards and params.mode == "online":
        # Each shard's engine enforces its own cap; an even split keeps the total under the budget.
        config = config.model_copy(update={"max_cost_usd": params.max_cost_usd / len(shards)})
    progress = GenerationProgress(len(request_ids))
    try:
        if params.mode == "batch":
            # One task: the Batch API job does the fan-out; polling resumes from DuckDB on a retry.
            progress.report("batch", prefect_tasks.generate_batch(
                request_ids, str(db), config, on_progress=lambda stats: progress.report("batch", stats)))
        else:
            _run_shards(params, db, config, shards, progress)
    finally:
        totals = progress.finish(model=params.model)
    logger.info("generation finished: %d done, %d already done, %d failed, $%.4f",
                totals.done, totals.already_ok, totals.failed, totals.cost_usd)
    return totals
