"""The `pipeline` flow: the whole DAG, ingest -> generate -> curate -> (train), as subflows."""

from __future__ import annotations

from typing import Any

from prefect import flow

from flows.curate import curate_flow
from flows.generate import generate_flow
from flows.ingest import ingest_flow
from flows.train import train_flow
from schemas.flow_params import PipelineParams


@flow(name="pipeline")
def pipeline_flow(params: PipelineParams | None = None) -> dict[str, Any]:
    """Each step is a subflow, so the UI shows it (and its artifacts) on its own page.

    The steps share one database: `db_path` of the ingest step is used everywhere it is unset.
    """
    params = params or PipelineParams()
    db = params.ingest.db_path
    generate = params.generate.model_copy(update={"db_path": params.generate.db_path or db})
    curate = params.curate.model_copy(update={"db_path": params.curate.db_path or db})
    result: dict[str, Any] = {"ingest": ingest_flow(params.ingest)}
    result["generate"] = generate_flow(generate).model_dump()
    result["curate"] = curate_flow(curate)
    if params.train is not None:
        result["train"] = train_flow(params.train)
    return result
