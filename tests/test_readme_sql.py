"""The README's "Inspect the dataset with SQL" queries run as printed, in vistune sql and the duckdb CLI."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from flows.cli import get_app
from tasks import store

REPO = Path(__file__).resolve().parents[1]


def readme_queries() -> list[str]:
    """Every statement of the README's SQL block, with its comment line, as a user would paste it."""
    text = (REPO / "README.md").read_text()
    section = text.split("## Inspect the dataset with SQL", 1)[1]
    block = re.search(r"```sql\n(.*?)```", section, re.DOTALL)
    assert block, "README lost its SQL block"
    return [s.strip() + ";" for s in block.group(1).split(";") if s.strip()]


@pytest.fixture(scope="module")
def demo_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A database filled by the demo's generation and curation (no training: not needed here)."""
    out = tmp_path_factory.mktemp("readme") / "demo"
    result = CliRunner().invoke(get_app(), ["demo", "--out", str(out), "--no-train"],
                                env={"OPENAI_API_KEY": "", "OPENAI_BASE_URL": ""})
    assert result.exit_code == 0, result.output[-3000:]
    return out / "vistune.duckdb"


def test_readme_has_at_least_five_queries() -> None:
    assert len(readme_queries()) >= 5


def test_each_readme_query_answers_with_vistune_sql(demo_db: Path) -> None:
    assert store.table_counts(demo_db)["dataset"] > 0
    runner = CliRunner()
    answered = []
    for sql in readme_queries():
        statement = "\n".join(line for line in sql.splitlines() if not line.startswith("--"))
        result = runner.invoke(get_app(), ["sql", statement, "--db", str(demo_db), "--format", "json"])
        assert result.exit_code == 0, f"{sql}\n{result.output}"
        answered.append(result.output.strip() != "[]")
    # type mix, cost, statuses and the end-to-end image have rows on the demo's data; rejects,
    # duplicates and missing images are legitimately empty after a fault-free simulated run
    assert answered[0] and answered[1] and answered[2] and answered[4], answered


def test_each_readme_query_runs_in_the_duckdb_cli(demo_db: Path) -> None:
    cli = Path(sys.executable).parent / "duckdb"
    assert cli.exists(), "the duckdb CLI comes with the dev extra: pip install -e '.[dev]'"
    for sql in readme_queries():  # pasted into the CLI's prompt, comment and all
        result = subprocess.run([str(cli), "-readonly", str(demo_db)], input=sql, capture_output=True, text=True,
                                timeout=60)
        assert result.returncode == 0, f"{sql}\n{result.stderr}"
