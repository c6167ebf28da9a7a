"""No secret on disk: an endpoint that echoes the key, and credentials in the base URL."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp import web
from typer.testing import CliRunner

from bench.gen_scale import synthetic_images
from flows.cli import get_app
from tasks import store
from tests.chat_server import ChatServer

SECRET = "sk-vistune-echo-test-DO-NOT-LEAK-0123456789abcdef"
PASSWORD = "url-pass-DO-NOT-LEAK-98765"


class EchoServer(ChatServer):
    """An OpenAI-shaped endpoint whose answers quote the request's Authorization header (a hostile or buggy proxy)."""

    def __init__(self) -> None:
        self.auth_headers: list[str] = []
        self.reject_key = False  # answer 401 quoting the key, as OpenAI does
        super().__init__()

    async def _chat(self, request: web.Request) -> web.Response:
        auth = request.headers.get("Authorization", "")
        self.auth_headers.append(auth)
        if self.reject_key:
            error = {"message": f"Incorrect API key provided: {auth.removeprefix('Bearer ')}", "type": "invalid_key"}
            return web.json_response({"error": error}, status=401)
        body = {"choices": [{"message": {"content": f"you sent {auth}, key {auth.removeprefix('Bearer ')}"},
                             "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 10, "completion_tokens": 5}}
        return web.json_response(body)


@pytest.fixture
def echo() -> Iterator[EchoServer]:
    with EchoServer() as server:
        yield server


def _leaks(folder: Path, *secrets: str) -> list[str]:
    # Every file the run wrote: the database, its WAL, the journals, anything beside them.
    return [f"{p}: {s}" for p in folder.rglob("*") if p.is_file() for s in secrets if s.encode() in p.read_bytes()]


def _generate(db: Path, base_url: str, env: dict[str, str]) -> object:
    return CliRunner().invoke(get_app(), [
        "generate", "--db", str(db), "--base-url", base_url, "--model", "gpt-4o-mini", "--types", "conversation",
        "--format", "llava-text", "--limit", "2", "--max-attempts", "1", "--max-regenerations", "0",
        "--no-progress"], env=env)


def test_an_echoed_key_never_reaches_disk(tmp_path: Path, echo: EchoServer) -> None:
    db = tmp_path / "echo.duckdb"
    synthetic_images(db, 2)
    result = _generate(db, f"http://127.0.0.1:{echo.port}/v1", {"OPENAI_API_KEY": SECRET})
    assert "Traceback" not in result.output and SECRET not in result.output
    assert echo.auth_headers and all(h == f"Bearer {SECRET}" for h in echo.auth_headers)  # the key was used
    contents = [r["content"] for r in store.query("SELECT content FROM responses", path=db)]
    assert contents and all("[redacted]" in c and SECRET not in c for c in contents)
    shown = CliRunner().invoke(get_app(), ["sql", "SELECT content FROM responses", "--db", str(db)])
    assert "Bearer [redacted]" in shown.output  # printed verbatim: the marker is not eaten as markup
    assert _leaks(tmp_path, SECRET) == []


def test_credentials_in_the_base_url_authenticate_but_are_never_stored(
    tmp_path: Path, echo: EchoServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.chdir(tmp_path)  # no .env / vistune.toml of the repo
    db = tmp_path / "userinfo.duckdb"
    synthetic_images(db, 2)
    result = _generate(db, f"http://vistune:{PASSWORD}@127.0.0.1:{echo.port}/v1", {})
    assert "Traceback" not in result.output and PASSWORD not in result.output, result.output
    basic = base64.b64encode(f"vistune:{PASSWORD}".encode()).decode()
    assert echo.auth_headers and set(echo.auth_headers) == {f"Basic {basic}"}  # used for auth, as Basic
    params = json.loads(store.query("SELECT params FROM runs WHERE kind = 'generate'", path=db)[0]["params"])
    assert params["base_url"] == f"http://127.0.0.1:{echo.port}/v1"
    assert _leaks(tmp_path, PASSWORD, basic) == []


def test_credentials_in_the_url_and_a_key_fail_with_one_clear_message(tmp_path: Path, echo: EchoServer) -> None:
    db = tmp_path / "both.duckdb"
    synthetic_images(db, 1)
    result = _generate(db, f"http://vistune:{PASSWORD}@127.0.0.1:{echo.port}/v1", {"OPENAI_API_KEY": SECRET})
    assert result.exit_code == 2, result.output
    assert "one Authorization header" in result.output and "Traceback" not in result.output
    assert PASSWORD not in result.output and SECRET not in result.output
    assert echo.auth_headers == []  # nothing was sent
    assert _leaks(tmp_path, PASSWORD, SECRET) == []


def test_a_rejected_key_is_reported_once_and_verbatim(tmp_path: Path, echo: EchoServer) -> None:
    echo.reject_key = True
    db = tmp_path / "401.duckdb"
    synthetic_images(db, 2)
    result = _generate(db, f"http://127.0.0.1:{echo.port}/v1", {"OPENAI_API_KEY": SECRET})
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.split())
    assert text.count("HTTP 401") == 1, text  # not "HTTP 401: HTTP 401:"
    assert "Incorrect API key provided: [redacted] (invalid_key)" in text  # the marker is printed, not eaten
    assert SECRET not in result.output and _leaks(tmp_path, SECRET) == []


def test_flow_parameters_refuse_credentials_in_the_url() -> None:
    # Prefect stores and shows parameters: credentials belong in OPENAI_BASE_URL or a Secret block.
    from schemas.flow_params import GenerateParams

    with pytest.raises(ValueError, match="OPENAI_BASE_URL"):
        GenerateParams(base_url="http://user:hunter2@127.0.0.1:9/v1")
    assert GenerateParams(base_url="http://127.0.0.1:9/v1").base_url == "http://127.0.0.1:9/v1"
