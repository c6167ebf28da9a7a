"""Every `vistune` command answers a missing database, a missing file or a bad flag with one clear line and a
non-zero exit, never a traceback; and the known-harmless third-party messages are silenced, real ones kept."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from flows.cli import get_app

VISTUNE = shutil.which("vistune", path=str(Path(sys.executable).parent)) or "vistune"
MISSING_DB = "missing/vistune.duckdb"
# The likely mistakes per command, beyond the generic ones every command gets (unknown flag, bad numbers).
# Paths are relative to the test's empty cwd, so none of them exists.
CASES: dict[str, list[list[str]]] = {
    "status": [["--db", MISSING_DB]],
    "sql": [["SELECT 1", "--db", MISSING_DB], ["SELECT 1", "--format", "xml", "--db", MISSING_DB]],
    "estimate": [["--db", MISSING_DB], ["--types", "bogus", "--db", MISSING_DB]],
    "generate": [["--db", MISSING_DB], ["--db", MISSING_DB, "--base-url", "http://127.0.0.1:9/v1"]],
    "export": [["--out", "exp", "--db", MISSING_DB], ["--out", "exp", "--image-root", ".", "--db", MISSING_DB]],
    "curate": [["--out", "exp", "--db", MISSING_DB], ["--scope", "bogus", "--db", MISSING_DB]],
    "validate-text": [["missing.txt", "--type", "conversation"]],
    "ingest": [["--coco", "no_coco", "--db", "new.duckdb"]],
    "run": [["--coco", "no_coco"]],
    "demo": [["--coco", "no_coco", "--out", "demo"]],
    "train": [["--config", "missing.yaml"]],
    "prompts show": [["--image-id", "1", "--type", "conversation", "--db", MISSING_DB],
                     ["--image-id", "1", "--type", "bogus", "--db", MISSING_DB]],
    "prompts list": [["--prompt-set", "no_prompt_set"]],
    "coco download": [["--split", "bogus", "--dest", "dl"]],
}


def leaf_commands() -> dict[str, Any]:
    """`name` (e.g. "prompts show") -> the click command, for every command of the app."""
    found: dict[str, Any] = {}

    def walk(prefix: str, command: Any) -> None:
        if hasattr(command, "commands"):
            for name, sub in command.commands.items():
                walk(f"{prefix} {name}".strip(), sub)
        else:
            found[prefix] = command

    walk("", typer.main.get_command(get_app()))
    return found


def generic_cases(command: Any) -> list[list[str]]:
    """An unknown flag, and a non-number for every numeric option: click refuses these before the command runs."""
    cases = [["--no-such-flag"]]
    for param in command.params:
        if param.param_type_name == "option" and not param.is_flag:
            label = (param.display_type(None) or "").strip("<>")  # typer's `<int>` / `<float>`
            if label in ("int", "float"):
                cases.append([param.opts[0], "not-a-number"])
    return cases


def all_cases() -> list[tuple[str, list[str]]]:
    commands = leaf_commands()
    out = [(name, args) for name, command in sorted(commands.items()) for args in generic_cases(command)]
    out += [(name, args) for name, cases in CASES.items() if name in commands for args in cases]
    return out


@pytest.fixture
def empty_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    for name in ("VISTUNE_DB", "OPENAI_API_KEY", "OPENAI_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path


def test_every_command_has_its_cases() -> None:
    missing = set(CASES) - set(leaf_commands())
    assert not missing, f"CASES names commands the app does not have: {missing}"


@pytest.mark.parametrize(("name", "args"), all_cases(), ids=[f"{n}:{' '.join(a)}" for n, a in all_cases()])
def test_a_mistake_is_one_clear_line_and_a_nonzero_exit(name: str, args: list[str], empty_cwd: Path) -> None:
    result = CliRunner().invoke(get_app(), [*name.split(), *args], env={"COLUMNS": "200"})
    assert result.exit_code != 0, result.output
    # An exception other than the exit itself is what the console script would print as a traceback.
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    assert result.output.strip(), "a non-zero exit needs a reason"
    if MISSING_DB in args and "--format" not in args and "bogus" not in args and "--base-url" not in args:
        assert "no vistune database" in result.output and MISSING_DB in result.output, result.output


def test_the_console_script_prints_one_line_for_a_missing_database(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "VISTUNE_DB"}
    done = subprocess.run([VISTUNE, "status"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert "Traceback" not in done.stdout + done.stderr
    lines = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    assert lines == ["error: no vistune database at data/vistune.duckdb: run `vistune ingest` (or set VISTUNE_DB)"]


def test_output_that_is_no_terminal_keeps_long_paths_on_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    from flows.cli.output import make_console

    console = make_console()  # pytest captures stdout: no terminal, so rich would assume 80 columns
    path = "/very/long/" + "folder/" * 30 + "vistune.duckdb"
    console.print(f"database: {path}", markup=False, highlight=False)
    assert capsys.readouterr().out == f"database: {path}\n"


def test_known_harmless_messages_are_dropped_and_real_warnings_kept(caplog: pytest.LogCaptureFixture) -> None:
    from flows.cli.output import silence_known_noise

    silence_known_noise()
    messages = {
        "bitsandbytes.backends.cpu.ops": "Failed to load CPU gemm_4bit_forward from kernels-community: No module "
                                         "named 'kernels'. Please make sure you already `pip install kernels`",
        "transformers.utils.import_utils": "`LlavaImageProcessor` requires torchvision (not installed); falling "
                                           "back to `LlavaImageProcessorPil` for backward compatibility.",
        "transformers.modeling_utils": "The new embeddings will be initialized from a multivariate normal "
                                       "distribution that has old embeddings' mean and covariance.",
    }
    with caplog.at_level(logging.WARNING):
        for name, message in messages.items():
            logging.getLogger(name).warning(message)
            logging.getLogger(name).warning("a real problem: %s", name)  # same logger, another message: kept
    assert [r.getMessage() for r in caplog.records] == [f"a real problem: {name}" for name in messages]
