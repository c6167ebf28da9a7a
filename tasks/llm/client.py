"""One HTTP attempt at a chat completion, classified into a `responses` row.

The client is `openai.AsyncOpenAI` against any OpenAI-compatible `base_url` (OpenAI, Azure's
v1 endpoint, vLLM, Ollama, the test simulator) with `max_retries=0`: retries, backoff and rate
limits are ours (`tasks/llm/engine.py`, `tasks/llm/ratelimit.py`) so every attempt is recorded. How
the POST travels (lean aiohttp, or the SDK's `post`) is `tasks/llm/transport.py`.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import openai

from schemas.generation import LOCAL_PARAM_KEYS, LlmRequest
from tasks.llm import parsers
from tasks.llm.ratelimit import retry_after_s
from tasks.llm.transport import ChatSender, Reply, SendFailed, SendTimeout

_KEY_PATTERN = re.compile(r"sk-[A-Za-z0-9_\-*]{8,}")
MAX_ERROR_CHARS = 2000
REQUEST_ID_HEADER = "X-Vistune-Request-Id"
MAX_BAD_BODY_CHARS = 20000


def make_client(
    *, base_url: str | None, api_key: str | None, timeout: float, default_headers: dict[str, str] | None = None
) -> openai.AsyncOpenAI:
    """An AsyncOpenAI with our timeout and no built-in retries (we retry, so every attempt is recorded).

    Its own HTTP client is the SDK's aiohttp one (`openai[aiohttp]`, a dependency), used by
    `--transport sdk`: measured here at ~1.0 ms of client CPU per call against ~1.8 ms for httpx.
    `default_headers` override the SDK's (e.g. `Authorization` for Basic auth).
    """
    return openai.AsyncOpenAI(
        base_url=base_url,
        api_key=api_key or "not-needed",  # local servers accept any key; the SDK insists on one
        max_retries=0,
        timeout=timeout,
        http_client=openai.DefaultAioHttpClient(timeout=timeout),
        default_headers=default_headers,
    )


def redact(text: str, secret: str | Sequence[str] | None) -> str:
    """Remove the API key (or each of several secrets), and anything shaped like an OpenAI key, from a message."""
    text = redact_exact(text, secret)
    return _KEY_PATTERN.sub("sk-[redacted]", text)


def redact_exact(text: str, secret: str | Sequence[str] | None) -> str:
    """Replace each secret by `[redacted]`, also as it reads inside a JSON string; nothing else changes.

    For model content: the `sk-` pattern of `redact` would also eat ordinary words ("task-oriented").
    """
    for one in ([secret] if isinstance(secret, str) or secret is None else secret):
        if not one:
            continue
        for form in {one, json.dumps(one, ensure_ascii=False)[1:-1], json.dumps(one)[1:-1]}:
            if form in text:
                text = text.replace(form, "[redacted]")
    return text


def api_params(params: dict[str, Any]) -> dict[str, Any]:
    """The request's stored params minus our own bookkeeping keys (not sent to the API)."""
    return {k: v for k, v in params.items() if k not in LOCAL_PARAM_KEYS}


# Content parts stored as a small reference and materialised at send time (e.g. an image id + hash in
# `requests.messages` instead of a 60 KB data URL). A domain registers the function for its part type, the
# way it registers parsers (tasks/llm/parsers.py); modules named here register theirs when imported.
PartMaterializer = Callable[[dict[str, Any]], dict[str, Any]]
PART_MODULES: list[str] = ["tasks.prompting.images"]
_API_PARTS = frozenset({"text", "image_url", "input_audio", "file", "refusal"})  # sent as they are
_PARTS: dict[str, PartMaterializer] = {}
_parts_loaded = False


def register_part(part_type: str, materialize: PartMaterializer) -> None:
    """Make `materialize` turn every stored content part of `part_type` into the part the API receives."""
    _PARTS[part_type] = materialize


def api_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The messages as sent: registered reference parts materialised (new lists; the stored ones are untouched).

    Text-only messages come back as the same object. A part type nobody registered is sent as is (the API
    answers 400). A materialiser's error (e.g. a missing image file) propagates.
    """
    global _parts_loaded
    if not any(isinstance(m.get("content"), list) for m in messages):
        return messages
    out = []
    for message in messages:
        content = message.get("content")
        if isinstance(content, list):
            parts = []
            for part in content:
                kind = part.get("type") if isinstance(part, dict) else None
                if kind is not None and kind not in _API_PARTS and kind not in _PARTS and not _parts_loaded:
                    _parts_loaded = True
                    for name in PART_MODULES:
                        importlib.import_module(name)
                parts.append(_PARTS[kind](part) if kind in _PARTS else part)
            message = {**message, "content": parts}
        out.append(message)
    return out


@dataclass
class Attempt:
    """The outcome of one HTTP attempt, before it becomes a `ResponseRow`."""

    status: str
    http_status: int | None = None
    content: str | None = None
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    latency_s: float = 0.0
    error: str | None = None
    retry_after_s: float | None = None  # set for 429
    headers: Mapping[str, str] = field(default_factory=dict)


async def attempt(
    sender: ChatSender, request: LlmRequest, *, api_key: str | None = None, secrets: Sequence[str] = ()
) -> Attempt:
    """Send one chat completion and classify what came back (never raises for API trouble).

    The request id travels as the `X-Vistune-Request-Id` header (providers ignore it; the simulator
    logs it, so tests can tell which request each served call was). The content is checked by the
    parser registered for `request.kind`. The key and `secrets` are cut out of the content and the
    error text (an endpoint may echo them), so they never reach the journal.
    """
    secret = [s for s in (api_key, *secrets) if s]
    result = await _attempt(sender, request, secret)
    if secret and result.content:
        result.content = redact_exact(result.content, secret)
    if result.error:
        result.error = redact(result.error, secret)
    return result


async def _attempt(sender: ChatSender, request: LlmRequest, api_key: list[str]) -> Attempt:
    start = time.perf_counter()
    headers = {REQUEST_ID_HEADER: request.request_id} if request.request_id else {}
    try:
        messages = request.messages
        if any(isinstance(m.get("content"), list) for m in messages):  # off the loop: an image takes 3-12 ms
            messages = await asyncio.to_thread(api_messages, messages)
    except Exception as exc:  # e.g. an image file gone since planning: this request cannot be sent, the rest can
        return Attempt("client_error", error=f"could not build the request: {exc}"[:MAX_ERROR_CHARS])
    payload = {"model": request.model, "messages": messages, **api_params(request.params)}
    try:
        reply = await sender.send(payload, headers)
    except SendTimeout:
        return Attempt("timeout", latency_s=time.perf_counter() - start, error="no response within the timeout")
    except SendFailed as exc:
        return Attempt("connection_error", latency_s=time.perf_counter() - start,
                       error=redact(f"connection failed: {exc}", api_key)[:MAX_ERROR_CHARS])
    latency = time.perf_counter() - start
    if reply.status != 200:
        return _status_error(reply, latency, api_key)
    try:
        body = json.loads(reply.body)
    except ValueError as exc:  # a 200 whose body is not JSON: keep the body
        return Attempt("bad_output", http_status=200, content=reply.text[:MAX_BAD_BODY_CHARS],
                       latency_s=latency, headers=reply.headers,
                       error=redact(f"response body is not JSON: {exc}", api_key)[:MAX_ERROR_CHARS])
    result = classify(body, request.kind)
    result.http_status, result.latency_s, result.headers = 200, latency, reply.headers
    if result.status == "bad_output" and result.content is None:
        result.content = reply.text[:MAX_BAD_BODY_CHARS]
    return result


def classify(body: dict[str, Any], kind: str) -> Attempt:
    """Status, content and usage of a chat completion body (online or from a batch output file).

    Read from the JSON dict, not a pydantic model, so providers that add or omit fields still work.
    The content goes through `parsers.parser_for(kind)`: an `OutputError` is the model's fault
    (`bad_output`, retried); any other exception is ours (`parse_error`, kept, never re-sent).
    """
    try:
        choice = body["choices"][0]
        message = choice.get("message") or {}
        content = message.get("content")
        usage = body.get("usage") or {}
        details = usage.get("prompt_tokens_details") or {}
        result = Attempt(
            "ok",
            http_status=200,
            content=content if isinstance(content, str) or content is None else json.dumps(content),
            finish_reason=choice.get("finish_reason"),
            prompt_tokens=int(usage.get("prompt_tokens") or 0),
            completion_tokens=int(usage.get("completion_tokens") or 0),
            cached_tokens=int(details.get("cached_tokens") or 0),
        )
    except (KeyError, IndexError, TypeError, AttributeError, ValueError) as exc:
        return Attempt("bad_output", http_status=200, error=f"response is not a chat completion: {exc!r}")
    refusal = message.get("refusal")
    if refusal:
        result.status, result.error = "refusal", f"model refused: {str(refusal)[:500]}"
    elif result.finish_reason == "length":
        result.status, result.error = "truncated", "finish_reason=length: raise max_tokens or shorten the prompt"
    elif result.finish_reason == "content_filter":
        result.status, result.error = "content_filter", "finish_reason=content_filter"
    else:
        try:
            parsers.parser_for(kind)(result.content)
        except parsers.OutputError as exc:
            result.status, result.error = "bad_output", str(exc)[:MAX_ERROR_CHARS]
        except Exception as exc:  # our bug: paying again would not fix it; the content stays for validate
            result.status, result.error = "parse_error", f"parser for {kind!r} failed: {exc!r}"[:MAX_ERROR_CHARS]
    return result


def status_for_http(code: int) -> str:
    """The response status of a non-200 HTTP code."""
    if code == 429:
        return "rate_limited"
    if code >= 500:
        return "server_error"
    if code == 408:
        return "timeout"
    return "client_error"


def _status_error(reply: Reply, latency: float, api_key: str | Sequence[str] | None) -> Attempt:
    code = reply.status
    return Attempt(
        status_for_http(code),
        http_status=code,
        latency_s=latency,
        error=redact(f"HTTP {code}: {_error_message(reply)}", api_key)[:MAX_ERROR_CHARS],
        retry_after_s=retry_after_s(reply.headers) if code == 429 else None,
        headers=reply.headers,
    )


def _error_message(reply: Reply) -> str:
    """The provider's `error.message` when the body is OpenAI-shaped, else the start of the body."""
    try:
        error = json.loads(reply.body).get("error")
        if isinstance(error, dict) and error.get("message"):
            kind = f" ({error['type']})" if error.get("type") else ""
            return f"{error['message']}{kind}"
    except (ValueError, AttributeError):
        pass
    return reply.text[:500] or "(empty body)"
