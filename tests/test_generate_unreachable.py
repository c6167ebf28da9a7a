"""An endpoint that answers nothing usable makes `vistune generate` fail loudly, with every attempt stored."""

from __future__ import annotations

import socket
from pathlib import Path

from typer.testing import CliRunner

from flows.cli import get_app
from tasks import store
from tasks.ingest.coco import ingest


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_generate_exits_non_zero_when_every_request_fails(db_path: Path, sample_coco: Path) -> None:
    ingest(sample_coco, "train2017", db_path)
    result = CliRunner().invoke(get_app(), [
        "generate", "--db", str(db_path), "--base-url", f"http://127.0.0.1:{_closed_port()}/v1",
        "--types", "conversation", "--limit", "2", "--max-attempts", "2", "--timeout", "2", "--no-progress",
    ], env={"OPENAI_API_KEY": "sk-test-unreachable"})
    assert result.exit_code == 1, result.output
    assert "all 2 requests failed" in result.output
    assert "connection_error=2" in result.output or "timeout=2" in result.output
    attempts = store.query("SELECT status, count(*) AS n FROM responses GROUP BY 1", path=db_path)
    assert sum(r["n"] for r in attempts) == 4  # 2 requests x 2 attempts, each stored with its failure class
    assert all(r["status"] != "ok" for r in attempts)
