"""The `vistune` command line (typer). Each area registers its commands from its own module."""

from __future__ import annotations

import importlib
import sys

import typer
from pydantic import ValidationError

app = typer.Typer(
    name="vistune",
    help="Visual instruction tuning, end to end: COCO -> LLM-generated LLaVA data -> training.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,  # locals can hold the API key
)
coco_app = typer.Typer(help="COCO annotation files.", no_args_is_help=True)
prompts_app = typer.Typer(help="Prompt templates for the three sample types.", no_args_is_help=True)
app.add_typer(coco_app, name="coco")
app.add_typer(prompts_app, name="prompts")

# Modules that add commands to `app`; imported lazily so `import flows.cli` stays cheap.
COMMAND_MODULES = (
    "flows.cli.data",
    "flows.cli.prompts",
    "flows.cli.download",
    "flows.cli.generate",
    "flows.cli.curate",
    "flows.cli.train",
    "flows.cli.pipeline",
    "flows.cli.simulator",
    "flows.cli.recipe",
    "flows.cli.eval",
    "flows.cli.infer",
)
_registered = False


def get_app() -> typer.Typer:
    """The app with every command module registered (also for tests with CliRunner)."""
    global _registered
    if not _registered:
        from flows.cli.output import conventional_metavars

        conventional_metavars()
        for name in COMMAND_MODULES:
            try:
                importlib.import_module(name)
            except ModuleNotFoundError as exc:
                if exc.name != name:  # a missing dependency, not a missing command module
                    raise
        _registered = True
    return app


def main() -> None:
    """Console-script entry point."""
    from flows.cli.output import silence_known_noise

    silence_known_noise()  # here, not in get_app(): tests that invoke the app keep their own environment
    try:
        get_app()(standalone_mode=True)
    except FileNotFoundError as exc:  # a last resort: commands report their own missing files in one line
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
    except ValidationError as exc:
        if exc.title != "Settings":  # a bug, not the user's input: keep the traceback
            raise
        for error in exc.errors():  # a bad environment variable, `.env` or `vistune.toml` value: one line each
            name = ".".join(map(str, error["loc"])) or "settings"
            print(f"error: setting {name}: {error['msg'].removeprefix('Value error, ')} "
                  f"(from the environment, .env or vistune.toml)", file=sys.stderr)
        sys.exit(2)
