"""Thin Prefect `@task` wrappers around the plain task functions: retries and caching only.

The work itself lives in the plain modules (`tasks.ingest.coco`, `tasks.prompting.plan`,
`tasks.llm.engine`, `tasks.curation.validate`, `tasks.curation.dedup`, `tasks.curation.export`,
`tasks.curation.report`, `tasks.train_launch`), which import without Prefect. Every wrapper here
uses `NO_CACHE` and does not persist its result: DuckDB is the system of record and every step is
idempotent against it (a rerun sends no request that already has a good response and adds no row),
so a Prefect result cache could only hide new data. Retries are on the steps that talk to the
network or to a child process.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from schemas.generation import GenerateConfig, GenerateStats
from tasks.llm.ratelimit import RateLimiter

_PLAIN = {"cache_policy": NO_CACHE, "persist_result": False}


@task(name="ingest-split", **_PLAIN)
def ingest_split(coco_dir: str, split: str, db_path: str | None, strict: bool) -> Any:
    """`tasks.ingest.coco.ingest` for one split."""
    from tasks.ingest.coco import ingest

    return ingest(coco_dir, split, db_path, strict=strict)


@task(name="plan-requests", **_PLAIN)
def plan(db_path: str | None, **kwargs: Any) -> Any:
    """`tasks.prompting.plan.plan_requests`: the requests that still lack a good sample."""
    from tasks.prompting.plan import plan_requests

    return plan_requests(db_path, **kwargs)


@task(name="generate-shard", retries=2, retry_delay_seconds=[2, 10], **_PLAIN)
def generate_shard(
    request_ids: Sequence[str],
    db_path: str,
    config: GenerateConfig,
    limiter: RateLimiter | None = None,
    on_progress: Callable[[GenerateStats], None] | None = None,
) -> GenerateStats:
    """One shard (hundreds of requests) sent concurrently by `tasks.llm.engine.run_requests_sync`.

    A retry re-runs the whole shard; requests answered well before the failure are skipped
    by the engine, so nothing is paid twice and no sample is duplicated.
    """
    from tasks.llm.engine import run_requests_sync

    return run_requests_sync(
        list(request_ids), db_path=db_path, config=config, limiter=limiter, on_progress=on_progress
    )


@task(name="generate-batch", retries=2, retry_delay_seconds=[30, 120], **_PLAIN)
def generate_batch(
    request_ids: Sequence[str],
    db_path: str,
    config: GenerateConfig,
    on_progress: Callable[[GenerateStats], None] | None = None,
) -> GenerateStats:
    """`tasks.llm.batch.run_batch`: OpenAI Batch API jobs, polled until done. Batch ids live in DuckDB,
    so a retry (or a new run) resumes polling instead of submitting again."""
    from tasks.llm.batch import run_batch

    return run_batch(db_path, list(request_ids), config, on_progress=on_progress)


@task(name="validate", **_PLAIN)
def validate(db_path: str | None) -> Any:
    """`tasks.curation.validate.validate_pending`: parse and check every response not yet validated."""
    from tasks.curation.validate import validate_pending

    return validate_pending(db_path)


@task(name="dedup", **_PLAIN)
def dedup(db_path: str | None, threshold: float, scope: str) -> Any:
    """`tasks.curation.dedup.dedup`: exact and near-duplicate removal in DuckDB."""
    from tasks.curation.dedup import dedup as run_dedup

    return run_dedup(db_path, threshold=threshold, scope=scope)


@task(name="export", **_PLAIN)
def export(db_path: str | None, out_dir: str, image_root: str, seed: int) -> Any:
    """`tasks.curation.export.export`: LLaVA json, per-type files, stage-1 pairs, parquet."""
    from tasks.curation.export import export as run_export

    return run_export(db_path, out_dir, image_root, seed=seed)


@task(name="report", **_PLAIN)
def report(db_path: str | None, out_dir: str) -> Any:
    """`tasks.curation.report.build_report`: markdown, tables and plots of the dataset."""
    from tasks.curation.report import build_report

    return build_report(db_path, out_dir)


@task(name="train-stage", retries=0, **_PLAIN)
def train_stage(
    stage: str,
    config: str | Path,
    overrides: Sequence[str] = (),
    *,
    on_line: Callable[[str], None] = print,
    launcher: Sequence[str] | None = None,
    timeout_s: float | None = None,
) -> list[str]:
    """`tasks.train_launch.launch_training`: a failed stage is a failed task (not retried: it
    would repeat hours of work; resume from its checkpoint with a new run instead)."""
    from tasks.train_launch import launch_training

    return launch_training(stage, config, overrides, on_line=on_line, launcher=launcher, timeout_s=timeout_s)
