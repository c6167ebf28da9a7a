"""What the `vistune` commands print besides their own lines: consoles, help metavars, third-party noise."""

from __future__ import annotations

from rich.console import Console


def silence_known_noise() -> None:
    """Known-harmless third-party messages off in vistune's commands, targeted by logger name and message
    (the table is `training.cli.HARMLESS_LOG_MESSAGES`, shared with the training processes); real warnings stay.
    Hugging Face progress bars are off when stderr is no terminal (they would be empty lines in a log)."""
    from training.cli import silence_known_noise as silence  # argparse/logging only: cheap to import

    silence()


def make_console(*, stderr: bool = False) -> Console:
    """A rich console that does not wrap long lines (paths, commands) when the output is no terminal.

    Rich assumes 80 columns for a pipe or file; `soft_wrap` keeps each printed line whole there, so a
    path in a log or CI output can be copied. Tables still fit the width."""
    console = Console(stderr=stderr)
    if not console.is_terminal:
        console.soft_wrap = True
    return console


_CLICK_NAMES = {"str": "TEXT", "int": "INTEGER", "float": "FLOAT", "path": "PATH", "file": "FILE",
                "directory": "DIRECTORY", "bool": "BOOLEAN"}


def conventional_metavars() -> None:
    """Help shows click's conventional metavars: `--db PATH`, `--limit INTEGER`, flags bare (no `<bool>`).

    Typer renders every option's type as `<type>`, flags included; an explicit `metavar=` still wins."""
    import typer.core

    def option_type(self: typer.core.TyperOption, ctx: object) -> str | None:
        if self.metavar is not None:
            return self.metavar
        if self.is_flag or self.count:
            return None
        label = (self.display_type(ctx) or "").strip("<>")  # typer's `<int>`, `<list[str]>`, `<a|b>`
        repeated = label.startswith("list[")
        label = label.removeprefix("list[").removesuffix("]")
        name = _CLICK_NAMES.get(label, label if "|" in label else label.upper())
        return f"{name}..." if repeated else name

    def argument_type(self: typer.core.TyperArgument, ctx: object) -> str | None:
        return None  # the argument's name (its metavar) is already shown in the first column

    def argument_usage(self: typer.core.TyperArgument) -> str:
        # click's convention: `QUERY` for a required argument, `[FILE]` for an optional one (typer: `{query}`)
        name = self.metavar or (self.name or "").upper()
        name = name if self.required else f"[{name}]"
        return f"{name}..." if self.nargs != 1 else name

    typer.core.TyperArgument._usage_display_name = argument_usage  # type: ignore[method-assign]
    typer.core.TyperOption.display_type_rich = option_type  # type: ignore[method-assign]
    typer.core.TyperArgument.display_type_rich = argument_type  # type: ignore[method-assign]
