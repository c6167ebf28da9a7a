"""Help text: every option of every `vistune` command says what it is for, with conventional metavars."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from flows.cli import get_app


def commands() -> Iterator[tuple[str, Any]]:
    """(`vistune a b`, command) for every leaf command of the app, sub-groups included."""
    root = typer.main.get_command(get_app())

    def walk(prefix: str, group: Any) -> Iterator[tuple[str, Any]]:
        if hasattr(group, "commands"):  # a group (typer vendors its own click: no isinstance on click's classes)
            for name, sub in sorted(group.commands.items()):
                yield from walk(f"{prefix} {name}", sub)
        else:
            yield prefix, group

    yield from walk("vistune", root)


ALL = list(commands())


def test_the_app_has_its_commands() -> None:
    names = {name for name, _ in ALL}
    assert {"vistune sql", "vistune status", "vistune train", "vistune prompts show"} <= names


@pytest.mark.parametrize(("name", "command"), ALL, ids=[name for name, _ in ALL])
def test_every_option_has_a_one_line_description(name: str, command: Any) -> None:
    assert (command.help or "").strip(), f"{name} has no docstring"
    for param in command.params:
        if param.param_type_name == "option" and param.name != "help":
            text = (param.help or "").strip()
            assert text, f"{name} {param.opts[0]} has no help text"
            assert "\n" not in text, f"{name} {param.opts[0]}: help should be one line"


@pytest.mark.parametrize(("name", "command"), ALL, ids=[name for name, _ in ALL])
def test_help_shows_conventional_metavars(name: str, command: Any) -> None:
    result = CliRunner().invoke(get_app(), [*name.split()[1:], "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "<bool>" not in result.output and "<str>" not in result.output and "<path>" not in result.output
    usage = next(line for line in result.output.splitlines() if "Usage:" in line)
    assert "{" not in usage, usage  # typer's `{query}`


def test_sql_shows_query_and_train_shows_config_file() -> None:
    runner = CliRunner()
    sql = runner.invoke(get_app(), ["sql", "--help"], env={"COLUMNS": "200"}).output
    assert "[OPTIONS] QUERY" in sql and "{query}" not in sql
    train = runner.invoke(get_app(), ["train", "--help"], env={"COLUMNS": "200"}).output
    assert "--config FILE KEY=VALUE..." in train and "FILE `" not in train  # no markup eaten from the docstring
    assert "--config" in train and "FILE" in train.split("--config", 2)[2].split("\n", 1)[0]
