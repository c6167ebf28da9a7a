"""After the README's quick start (`./run demo`), the README's data commands work as printed: no `--db`, no
knowledge of where the demo put things. Also: exports name the records whose image file is missing."""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from flows.cli import get_app
from tests.test_readme_sql import readme_queries

REPO = Path(__file__).resolve().parents[1]
# Common commands that read the store and need nothing the demo does not make (no /data/coco, no API key).
READS_DATA = ("vistune sql ", "vistune status", "vistune estimate ", "vistune prompts show --image-id")


def common_commands() -> list[list[str]]:
    """The README's "Common commands" that only read the store, as argv lists (comments stripped)."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    block = re.search(r"## Common commands\n\n```bash\n(.*?)```", text, re.DOTALL)
    assert block, "README lost its Common commands block"
    return [shlex.split(line, comments=True)[1:] for line in block.group(1).splitlines()
            if line.startswith(READS_DATA)]


@pytest.fixture(scope="module")
def after_demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A fresh folder where `vistune demo` ran as the README runs it (no --out; training skipped: not read)."""
    cwd = tmp_path_factory.mktemp("fresh_clone")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(cwd)
        for name in ("VISTUNE_DB", "OPENAI_API_KEY", "OPENAI_BASE_URL"):
            mp.delenv(name, raising=False)
        result = CliRunner().invoke(get_app(), ["demo", "--no-train"], env={"COLUMNS": "200"})
        assert result.exit_code == 0, result.output[-3000:]
        assert (cwd / "data" / "vistune.duckdb").exists() and (cwd / "data" / "export" / "report.md").exists()
        printed = re.findall(r"^\s*(vistune (?:sql|status).*)$", result.output, re.MULTILINE)
        assert printed and not any("--db" in line for line in printed), printed  # what it prints works as typed
        yield cwd


def run(*args: str) -> str:
    result = CliRunner().invoke(get_app(), list(args), env={"COLUMNS": "200"})
    assert result.exit_code == 0, f"vistune {' '.join(args)}\n{result.output[-2000:]}"
    return result.output


def test_common_commands_work_as_printed(after_demo: Path) -> None:
    commands = common_commands()
    assert {argv[0] for argv in commands} >= {"sql", "status", "prompts", "estimate"}
    for argv in commands:
        run(*argv)
    assert "images" in run("status") and "database: data/vistune.duckdb" in run("status")


def test_sql_block_answers_without_db_flag(after_demo: Path) -> None:
    for sql in readme_queries():
        statement = "\n".join(line for line in sql.splitlines() if not line.startswith("--"))
        run("sql", statement, "--format", "json")
    rows = json.loads(run("sql", "SELECT count(*) AS n FROM dataset", "--format", "json"))
    assert rows[0]["n"] > 0


def test_export_names_missing_images_and_require_images_drops_them(after_demo: Path) -> None:
    empty_root = after_demo / "no_images"
    empty_root.mkdir()
    kept = CliRunner().invoke(get_app(), ["export", "--out", "exp_all", "--image-root", str(empty_root)],
                              env={"COLUMNS": "400"})
    assert kept.exit_code == 0, kept.output
    assert re.search(r"\d+ record\(s\) lack an image file under .*no_images", kept.output), kept.output
    assert "train2017/990000000001.jpg" in kept.output and "--require-images" in kept.output
    assert json.loads((after_demo / "exp_all" / "llava_instruct.json").read_text())

    dropped = CliRunner().invoke(get_app(), ["export", "--out", "exp_req", "--image-root", str(empty_root),
                                             "--require-images"], env={"COLUMNS": "400"})
    assert dropped.exit_code == 0, dropped.output
    assert "left out" in dropped.output
    assert json.loads((after_demo / "exp_req" / "llava_instruct.json").read_text()) == []
    assert json.loads((after_demo / "exp_req" / "llava_pretrain.json").read_text()) == []
    summary = json.loads((after_demo / "exp_req" / "export_summary.json").read_text())  # what the report reads
    assert summary["records_missing_image"] == summary["dropped_missing_image"] > 0
    assert "train2017/990000000001.jpg" in summary["missing_images"] and summary["missing_summary"]
