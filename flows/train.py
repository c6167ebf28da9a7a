"""The `train` flow: stage 1, then stage 2 (then merge), each `python -m training` in a subprocess.

The child's log lines go to the Prefect logger as they are printed, so the UI shows training
live; a non-zero exit fails the task and the flow.
"""

from __future__ import annotations

from prefect import flow, get_run_logger

from schemas.flow_params import TrainParams
from tasks import prefect_tasks


@flow(name="train")
def train_flow(params: TrainParams) -> dict[str, list[str]]:
    """Run the stages in order; returns the last log lines of each."""
    logger = get_run_logger()
    stages = [("stage1", params.stage1_overrides), ("stage2", params.stage2_overrides)]
    if params.merge:
        stages.append(("merge", params.merge_overrides))
    tails: dict[str, list[str]] = {}
    for stage, overrides in stages:
        logger.info("starting %s with %s %s", stage, params.config, " ".join(overrides))
        tails[stage] = prefect_tasks.train_stage.with_options(name=f"train-{stage}")(
            stage, params.config, overrides,
            on_line=lambda line, stage=stage: logger.info("[%s] %s", stage, line),
            launcher=params.launcher, timeout_s=params.timeout_s,
        )
    return tails
