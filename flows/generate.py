"""The `generate` flow: the pipeline's generate step (`tasks.pipeline.Generate`) run under Prefect.

The flow fails (state Failed, the reason in its message) when there is no API key for api.openai.com
(before anything is sent) or when requests were sent and not one got a good answer.

The step runs rounds of plan -> send -> validate (rejected answers planned again as regenerations);
`flows.runner.PrefectRunner` sends each round as one Prefect task per shard, shards running
concurrently, never one task per request (DESIGN.md: ~14 ms of Prefect bookkeeping each). Prefect
retries a failed shard, and the engine skips what the failed attempt already answered. Incremental
by construction: the plan only holds requests without a good response, so the nightly schedule
sends only what is new. `max_cost_usd` is one budget for the whole flow run (`budget_id` = the
flow run's id), shared by every shard and round.

The flow is `async` only for Prefect's engine: the sync engine waits for its heartbeat thread, which sleeps in
1 s steps, at the end of every run (0-1 s; bench/prefect_overhead.py), and the async one does not. The work
itself is synchronous and runs in a worker thread that carries the flow run's context, so Prefect's dual
sync/async calls made there (blocks, artifacts) must say `_sync=True`, or they return a coroutine. From Python:
`asyncio.run(generate_flow(params))`.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.context import SyncClientContext
from prefect.runtime import flow_run
from pydantic import SecretStr

from flows.progress import GenerationProgress
from flows.runner import PrefectRunner, ShardsFailed, build_limiter, build_task_runner
from schemas.flow_params import GenerateParams
from schemas.generation import GenerateStats
from schemas.settings import get_settings
from tasks import pipeline
from tasks.llm.shared_limiter import SharedRateLimiter
from tasks.store import resolve_db

__all__ = ["ShardsFailed", "build_limiter", "build_task_runner", "generate_flow", "resolve_api_key"]
_log = logging.getLogger(__name__)


class SecretBlockError(RuntimeError):
    """The Prefect Secret block with the API key exists but could not be read."""


def resolve_api_key(secret_block: str | None, logger: Any = None) -> SecretStr | None:
    """OPENAI_API_KEY if set, else the Prefect Secret block named by the parameter or the
    `prefect_secret_block` setting, else None (fine for local servers such as the simulator).

    A block that does not exist means "no key" (with a warning naming the block); any other
    failure (server unreachable, a value that is not a string) raises `SecretBlockError`.
    """
    logger = logger or _log
    settings = get_settings()
    if settings.openai_api_key is not None:
        return settings.openai_api_key
    block_name = secret_block or settings.prefect_secret_block
    import prefect.exceptions
    from prefect.blocks.system import Secret

    try:
        block = Secret.load(block_name, _sync=True)  # also inside the async flow's thread
    except ValueError as exc:
        # Prefect raises ValueError from ObjectNotFound for a missing block; other ValueErrors (a
        # document that does not validate as a Secret) are real failures.
        if not isinstance(exc.__cause__, prefect.exceptions.ObjectNotFound):
            raise SecretBlockError(f"the Prefect Secret block {block_name!r} could not be loaded: {exc}") from exc
        logger.warning("no OPENAI_API_KEY and no Prefect Secret block %r: sending without an API key "
                       "(fine for a local server; set OPENAI_API_KEY or create the block for a real endpoint)",
                       block_name)
        return None
    except Exception as exc:  # server unreachable, auth, ...: do not silently run without the key
        raise SecretBlockError(
            f"could not read the Prefect Secret block {block_name!r} ({type(exc).__name__}: {exc}). Check "
            "PREFECT_API_URL and the server, or set OPENAI_API_KEY in the worker's environment instead."
        ) from exc
    value = block.get()
    if not isinstance(value, str) or not value.strip():
        raise SecretBlockError(f"the Prefect Secret block {block_name!r} holds a {type(value).__name__}, not an API "
                               "key string: save it again with Secret(value='sk-...').save(...)")
    return SecretStr(value)


def _limiter(params: GenerateParams, db: Path) -> SharedRateLimiter | None:  # type: ignore[valid-type]
    """`build_limiter`'s bucket file; with an endpoints file, one bucket per endpoint in it (`for_endpoint`).

    Shards run concurrently (threads or Dask workers): an in-process limiter each would multiply every limit.
    """
    limiter = build_limiter(params, db)
    if limiter is None and params.endpoints_file:  # its rpm/tpm are per endpoint: the file holds no overall one
        limiter = SharedRateLimiter(Path(params.limiter_path) if params.limiter_path
                                    else db.with_suffix(".ratelimit.sqlite"), name="endpoints")
    return limiter


@flow(name="generate", log_prints=True)
async def generate_flow(params: GenerateParams | None = None) -> GenerateStats:  # type: ignore[valid-type]
    """Send every planned request that lacks a good response, in rounds; progress is a live artifact."""
    return await asyncio.to_thread(_generate, params or GenerateParams())


def _generate(params: GenerateParams) -> GenerateStats:  # type: ignore[valid-type]
    """The flow's body, in a worker thread (`asyncio.to_thread` copies the flow run's context into it)."""
    # One sync API client for every Prefect call made from here: task runs, artifacts, progress pushes. The async
    # engine leaves none for this thread, and each call would open its own (~25 ms of CPU: it builds an SSL context).
    with SyncClientContext.get_or_create():
        logger = get_run_logger()
        db = resolve_db(params.db_path)
        ctx = pipeline.Context(db=db, api_key=resolve_api_key(params.secret_block, logger))
        if run_id := flow_run.get_id():
            ctx.run_id = str(run_id)  # also the budget id: every shard and round of this run shares max_cost_usd
        progress = GenerationProgress()
        try:
            with PrefectRunner(logger, params=params, progress=progress, limiter=_limiter(params, db)) as runner:
                ctx.runner = runner
                stats = pipeline.Generate.run(ctx, params)
        finally:
            totals = progress.finish(model=params.model, warnings=ctx.warnings)
        logger.info("generation finished: %d done, %d already done, %d failed, $%.4f",
                    totals.done, totals.already_ok, totals.failed, totals.cost_usd)
        if problem := pipeline.generate_problem(stats):  # sent, and not one good answer: the run failed
            raise pipeline.StepFailed(problem)
        return totals

