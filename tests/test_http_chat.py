"""Both chat transports (lean aiohttp, the openai SDK's `post`): same headers, same classified outcomes."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from schemas.generation import LlmRequest
from tasks.llm import client as llm_client
from tasks.llm.transport import TRANSPORTS, chat_url, env_proxy, make_sender, request_headers
from tests.sim import SimConfig, start_simulator

SECRET = "sk-transport-test-0123456789abcdef"
ANSWER = "Question:\nWhat is the man holding?\n===\nAnswer:\nHe is holding a red umbrella over his head."


async def _attempt(base_url: str, transport: str, timeout: float = 5.0) -> llm_client.Attempt:
    client = llm_client.make_client(base_url=base_url, api_key=SECRET, timeout=timeout)
    sender = make_sender(client, transport, timeout)
    try:
        request = LlmRequest(
            request_id="req-abc", kind="complex_reasoning/llava-text", model="gpt-4o-mini",
            messages=[{"role": "user", "content": "Caption: a man holds a red umbrella."}],
            params={"max_tokens": 256, "output_format": "llava-text"}, est_input_tokens=20,
        )
        return await llm_client.attempt(sender, request, api_key=SECRET)
    finally:
        await sender.close()
        await client.close()


@pytest.fixture
async def echo_server() -> AsyncIterator[tuple[str, list]]:
    """A local OpenAI-shaped endpoint that records each request's headers, query and body."""
    seen: list = []

    async def chat(request: web.Request) -> web.Response:
        seen.append({"headers": dict(request.headers), "query": dict(request.query), "body": await request.json()})
        body = {
            "choices": [{"message": {"role": "assistant", "content": ANSWER}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 40, "completion_tokens": 20, "prompt_tokens_details": {"cached_tokens": 0}},
        }
        return web.json_response(body, headers={"x-ratelimit-limit-requests": "600"})

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield f"http://127.0.0.1:{port}/v1", seen
    await runner.cleanup()


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_transports_send_the_sdk_headers_and_body(echo_server, transport: str) -> None:
    base_url, seen = echo_server
    result = await _attempt(base_url, transport)
    assert (result.status, result.http_status, result.prompt_tokens) == ("ok", 200, 40)
    assert result.headers["x-ratelimit-limit-requests"] == "600"  # case-insensitive lookups work
    [request] = seen
    headers = {k.lower(): v for k, v in request["headers"].items()}
    assert headers["authorization"] == f"Bearer {SECRET}"
    assert headers["user-agent"].startswith("AsyncOpenAI/Python")
    assert headers["x-vistune-request-id"] == "req-abc"
    assert headers["content-type"] == "application/json"
    assert "openai-organization" not in headers  # unset SDK headers are not sent as junk
    # our bookkeeping key stays home; the API params travel
    assert request["body"] == {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": "Caption: a man holds a red umbrella."}],
        "max_tokens": 256,
    }


def test_aiohttp_sender_takes_organization_project_and_query_from_the_client() -> None:
    import openai

    client = openai.AsyncOpenAI(
        base_url="https://example.test/openai/v1/", api_key=SECRET, organization="org-1", project="proj-2",
        default_query={"api-version": "2025-04-01"},
    )
    headers = request_headers(client)
    assert headers["OpenAI-Organization"] == "org-1" and headers["OpenAI-Project"] == "proj-2"
    assert headers["Authorization"] == f"Bearer {SECRET}"
    assert chat_url(client) == "https://example.test/openai/v1/chat/completions?api-version=2025-04-01"


def test_proxy_comes_from_the_environment_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.internal:3128")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    assert env_proxy("https://api.openai.com/v1/chat/completions")[0] == "http://proxy.internal:3128"
    monkeypatch.setenv("NO_PROXY", "api.openai.com")
    assert env_proxy("https://api.openai.com/v1/chat/completions") == (None, None)


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize(
    ("fault", "status", "http_status"),
    [
        ("fault_429", "rate_limited", 429),
        ("fault_5xx", "server_error", None),
        ("fault_malformed", "bad_output", 200),
        ("fault_length", "truncated", 200),
        ("fault_content_filter", "content_filter", 200),
        # LLaVA text has no `refusal` field (OpenAI sets it for structured outputs only): the text
        # "I'm sorry..." fails the parser here, and curation's refusal rule names it later
        ("fault_refusal", "bad_output", 200),
    ],
)
async def test_transports_classify_faults_alike(transport: str, fault: str, status: str, http_status: int) -> None:
    with start_simulator(SimConfig(seed=3, fault_retry_after_ms=1500, **{fault: 1.0})) as sim:
        result = await _attempt(sim.base_url, transport)
    assert result.status == status, result.error
    assert result.error and SECRET not in result.error
    if http_status is not None:
        assert result.http_status == http_status
    else:
        assert result.http_status in (500, 503)
    if status == "rate_limited":
        assert result.retry_after_s == pytest.approx(1.5)
        assert "HTTP 429" in result.error and "Rate limit reached" in result.error  # the provider's message
    if status == "bad_output":
        assert result.content is not None  # the paid-for content is kept, even when empty


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_transports_report_hangs_as_timeouts(transport: str) -> None:
    with start_simulator(SimConfig(fault_hang=1.0, hang_s=10)) as sim:
        result = await _attempt(sim.base_url, transport, timeout=0.5)
    assert result.status == "timeout"
    assert 0.4 < result.latency_s < 5


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_transports_report_refused_connections(transport: str) -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = await _attempt(f"http://127.0.0.1:{port}/v1", transport, timeout=2.0)
    assert result.status == "connection_error"
    assert result.error and SECRET not in result.error


async def test_unknown_transport_is_refused() -> None:
    client = llm_client.make_client(base_url="http://127.0.0.1:9/v1", api_key=SECRET, timeout=1)
    with pytest.raises(ValueError, match="unknown transport 'curl'"):
        make_sender(client, "curl", 1)
    await client.close()


def test_reply_body_that_is_not_json_is_kept() -> None:
    body = b"<html>gateway</html>"

    class Broken:
        async def send(self, body_, headers):
            from tasks.llm.transport import Reply

            return Reply(200, {}, body)

        async def close(self) -> None:
            pass

    result = asyncio.run(
        llm_client.attempt(Broken(), LlmRequest("r", "complex_reasoning/llava-text", "m", [], {}, 0))
    )
    assert result.status == "bad_output" and result.content == body.decode()
    assert "not JSON" in (result.error or "")
    json.dumps(result.error)  # storable
