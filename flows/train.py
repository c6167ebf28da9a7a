"""The `train` flow: the pipeline's train step (`tasks.pipeline.Train`): stage 1, then stage 2 (then
merge), each `python -m training` in a subprocess and a Prefect task.

The child's log lines go to the Prefect logger as they are printed, so the UI shows training
live; a non-zero exit fails the task and the flow. While stage 1 and stage 2 run, a watcher
(`flows.train_artifacts`) publishes artifacts of the flow run from the stage directory:
`train-<stage>-progress` (step, loss, held-out loss, ETA), `train-<stage>-preflight` (the
preflight report) and `train-<stage>-loss` (the loss table, refreshed at each checkpoint).

Before anything starts, the flow checks this machine (`tasks.train_paths`): every path the stages read exists
and is readable here and the output folder is writable (else it fails in seconds, naming each path), and it
logs the device; where a GPU is required (`VISTUNE_REQUIRE_GPU`) and none is visible, it fails unless
`allow_cpu` is set.
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


def check_machine(params: TrainParams, logger: logging.Logger | logging.LoggerAdapter[Any]) -> None:
    """Fail in seconds, before any model loads, when this machine cannot run the training: a path it needs is
    missing or unreadable here (named), or a GPU is required (`VISTUNE_REQUIRE_GPU`, set by the `train`
    deployment) and torch sees none while `allow_cpu` is off. Logs the machine and its device."""
    from schemas.settings import get_settings
    from tasks.train_paths import check_training_paths, machine, probe_device, require_device

    check_training_paths(params.config, {"stage1": params.stage1_overrides, "stage2": params.stage2_overrides})
    device = probe_device()
    require_gpu = get_settings().require_gpu
    logger.info("training on %s: %s%s", machine(), device.describe(),
                " (GPU required; allow_cpu set)" if require_gpu and params.allow_cpu and not device.has_gpu else "")
    require_device(device, require_gpu=require_gpu, allow_cpu=params.allow_cpu)


@flow(name="train")
def train_flow(params: TrainParams) -> dict[str, list[str]]:
    """Check the machine (paths, GPU), then run the stages in order; returns the last log lines of each."""
    logger = get_run_logger()
    check_machine(params, logger)
    ctx = pipeline.Context(db=resolve_db(None), runner=TrainRunner(logger, params))
    return pipeline.Train.run(ctx, params)
