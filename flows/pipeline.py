"""The `pipeline` flow: `tasks.pipeline.STEPS` (ingest -> generate -> validate, dedup, export, report
-> train), each section of steps as its subflow, so the UI shows each (and its artifacts) on its own page."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prefect import flow

from flows.curate import curate_flow
from flows.generate import generate_flow
from flows.ingest import ingest_flow
from flows.train import train_flow
from schemas.flow_params import PipelineParams
from tasks import pipeline

# Where each section of `pipeline.STEPS` runs: its own subflow (which runs that section's steps).
SUBFLOWS: dict[str, Callable[[Any], Any]] = {
    "ingest": ingest_flow,
    "generate": generate_flow,
    "curate": curate_flow,
    "train": train_flow,
}


@flow(name="pipeline")
def pipeline_flow(params: PipelineParams | None = None) -> dict[str, Any]:
    """Run every section of the pipeline as a subflow; `train` only when `params.train` is set.

    The steps share one database: `db_path` of the ingest step is used everywhere it is unset.
    """
    params = params or PipelineParams()
    db = params.ingest.db_path
    params = params.model_copy(update={
        "generate": params.generate.model_copy(update={"db_path": params.generate.db_path or db}),
        "curate": params.curate.model_copy(update={"db_path": params.curate.db_path or db}),
    })
    result: dict[str, Any] = {}
    for section, _steps in pipeline.sections(pipeline.STEPS):
        config = getattr(params, section)
        if config is None:
            continue
        out = SUBFLOWS[section](config)
        result[section] = out.model_dump() if section == "generate" else out
    return result
