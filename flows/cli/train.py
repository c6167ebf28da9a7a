"""`vistune train`: stage 1, stage 2 (and merge) of `python -m training`, directly or as the Prefect flow."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Annotated

import typer

from flows.cli import app
from flows.cli.output import make_console
from tasks.train_launch import training_command

console = make_console()


@app.command("train")
def train_command(
    config: Annotated[
        Path, typer.Option("--config", metavar="FILE", help="training config (YAML or TOML), see training/config.py")
    ],
    stage: Annotated[
        list[str] | None, typer.Option("--stage", metavar="STAGE", help="stage1|stage2|merge; default 1 then 2")
    ] = None,
    merge: Annotated[bool, typer.Option("--merge", help="then merge adapters + projector")] = False,
    override: Annotated[
        list[str] | None, typer.Option("--set", metavar="KEY=VALUE", help="override, e.g. stage2.method=qlora")
    ] = None,
    prefect: Annotated[bool, typer.Option("--prefect", help="run as the Prefect `train` flow")] = False,
) -> None:
    """Train: each stage runs as `python -m training STAGE --config FILE KEY=VALUE...` in its own process."""
    if not config.exists():
        raise typer.BadParameter(f"{config} does not exist", param_hint="--config")
    stages = stage or ["stage1", "stage2"]
    if merge and "merge" not in stages:
        stages.append("merge")
    overrides = list(override or [])
    if prefect:
        from flows.train import train_flow
        from schemas.flow_params import TrainParams

        if stages[:2] != ["stage1", "stage2"]:
            raise typer.BadParameter("--prefect runs stage1, stage2 (, merge): drop --stage", param_hint="--stage")
        train_flow(TrainParams(config=str(config), stage1_overrides=overrides, stage2_overrides=overrides,
                               merge="merge" in stages, merge_overrides=overrides))
        return
    for name in stages:
        command = training_command(name, config, overrides)
        console.rule(f"{name}: {' '.join(command[1:])}")
        # The child owns the terminal, so its own progress bar renders as usual.
        returncode = subprocess.run(command).returncode
        if returncode != 0:
            console.print(f"[red]{name} failed (exit code {returncode})[/red]; later stages not started")
            raise typer.Exit(returncode)
