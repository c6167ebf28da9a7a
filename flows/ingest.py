"""The `ingest` flow: the pipeline's ingest step (`tasks.pipeline.Ingest`), one Prefect task per split.

Fails when no usable image was found (every record skipped), naming the reasons."""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger

from flows.runner import PrefectRunner
from schemas.flow_params import IngestParams
from tasks import pipeline
from tasks.store import resolve_db


@flow(name="ingest")
def ingest_flow(params: IngestParams | None = None) -> dict[str, Any]:
    """Ingest every split in `params.splits` (default: every split found under `coco_dir`); returns rows added per
    table and skips per reason."""
    params = params or IngestParams()
    ctx = pipeline.Context(db=resolve_db(params.db_path), runner=PrefectRunner(get_run_logger()))
    summary = pipeline.Ingest.run(ctx, params)
    if problem := pipeline.ingest_problem(summary):  # every record skipped: nothing for the next steps
        raise pipeline.StepFailed(problem)
    return summary
