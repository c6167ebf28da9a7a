"""The `train` flow: the pipeline's train step (`tasks.pipeline.Train`): stage 1, then stage 2 (then
merge), each `python -m training` in a subprocess and a Prefect task.

The child's log lines go to the Prefect logger as they are printed, so the UI shows training
live; a non-zero exit fails the task and the flow.
"""

from __future__ import annotations

from prefect import flow, get_run_logger

from flows.runner import PrefectRunner
from schemas.flow_params import TrainParams
from tasks import pipeline
from tasks.store import resolve_db


@flow(name="train")
def train_flow(params: TrainParams) -> dict[str, list[str]]:
    """Run the stages in order; returns the last log lines of each."""
    ctx = pipeline.Context(db=resolve_db(None), runner=PrefectRunner(get_run_logger()))
    return pipeline.Train.run(ctx, params)
