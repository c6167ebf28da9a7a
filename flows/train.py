"""The `train` flow: the pipeline's train step (`tasks.pipeline.Train`): stage 1, then stage 2 (then
merge), each `python -m training` in a subprocess and a Prefect task.

The child's log lines go to the Prefect logger as they are printed, so the UI shows training
live; a non-zero exit fails the task and the flow. While stage 1 and stage 2 run, a watcher
(`flows.train_artifacts`) publishes artifacts of the flow run from the stage directory:
`train-<stage>-progress` (step, loss, held-out loss, ETA), `train-<stage>-preflight` (the
preflight report) and `train-<stage>-loss` (the loss table, refreshed at each checkpoint).
"""

from __future__ import annotations

import logging
from typing import Any

from prefect import flow, get_run_logger

from flows.runner import PrefectRunner
from flows.train_artifacts import WATCHED_STAGES, TrainArtifacts, stage_dir_of
from schemas.flow_params import TrainParams
from tasks import pipeline
from tasks.store import resolve_db

ARTIFACT_INTERVAL_S = 3.0  # the progress artifact is pushed at most this often


class TrainRunner(PrefectRunner):
    """A `PrefectRunner` that watches each training stage's directory while the stage's task runs."""

    def __init__(self, logger: logging.Logger | logging.LoggerAdapter[Any], params: TrainParams) -> None:
        super().__init__(logger)
        self.train_params = params

    def call(self, name: str, fn: Any, /, *args: Any, **kwargs: Any) -> Any:
        """`train-stage1` / `train-stage2` run inside a `TrainArtifacts` watcher; anything else as usual."""
        stage = name.removeprefix("train-")
        if not name.startswith("train-") or stage not in WATCHED_STAGES:
            return super().call(name, fn, *args, **kwargs)
        overrides = getattr(self.train_params, f"{stage}_overrides")
        stage_dir = stage_dir_of(self.train_params.config, stage, overrides)
        if stage_dir is None:  # the stage itself will say what is wrong with the config
            return super().call(name, fn, *args, **kwargs)
        with TrainArtifacts(stage, stage_dir, interval_s=ARTIFACT_INTERVAL_S):
            return super().call(name, fn, *args, **kwargs)


@flow(name="train")
def train_flow(params: TrainParams) -> dict[str, list[str]]:
    """Run the stages in order; returns the last log lines of each."""
    ctx = pipeline.Context(db=resolve_db(None), runner=TrainRunner(get_run_logger(), params))
    return pipeline.Train.run(ctx, params)
