"""How one chat-completion POST travels: the lean aiohttp path, or the openai SDK's own `post`.

Both senders are configured by the same `openai.AsyncOpenAI` (base URL, API key, organisation and
project headers, timeout), so the SDK stays the one place a user's endpoint settings live. They
differ only in what runs per call:

- `AiohttpSender` (default): one `aiohttp.ClientSession` posts pre-serialised JSON with headers
  computed once. The SDK's per-call machinery (request options model, httpx request, header
  merging, the httpx-to-aiohttp bridge) cost ~1 ms of client CPU per call here; at a provider's
  pace of 10 calls/s that was half the engine's CPU (docs/BENCHMARKS.md, "Generation").
- `SdkSender` (`--transport sdk`): `AsyncOpenAI.post`, for endpoints that need the SDK's own
  request handling (custom `http_client`, SDK-level hooks).

Either returns a `Reply` for every HTTP status and raises only `SendTimeout` / `SendFailed`, so
`tasks/llm/client.py` classifies one shape whatever travelled.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp
import openai
from aiohttp.helpers import get_env_proxy_for_url
from yarl import URL

try:  # the HTTP library the SDK itself uses: httpx2 in openai 3, httpx before
    import httpx2 as _http
except ImportError:  # pragma: no cover - older openai
    import httpx as _http

TRANSPORTS = ("aiohttp", "sdk")
CHAT_PATH = "chat/completions"


@dataclass(frozen=True)
class Reply:
    """What came back: status, headers (case-insensitive mapping) and the raw body."""

    status: int
    headers: Mapping[str, str]
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")


class SendTimeout(Exception):
    """No complete response within the timeout."""


class SendFailed(Exception):
    """The request never got an HTTP response (refused, reset, DNS, TLS, a body cut short)."""


class ChatSender(Protocol):
    """Posts one chat-completion body; what `llm_client.attempt` needs."""

    async def send(self, body: dict[str, Any], headers: Mapping[str, str]) -> Reply: ...

    async def close(self) -> None: ...


def make_sender(client: openai.AsyncOpenAI, transport: str, timeout: float) -> ChatSender:
    """The sender for `transport` (one of `TRANSPORTS`), configured from `client`."""
    if transport == "aiohttp":
        return AiohttpSender(client, timeout)
    if transport == "sdk":
        return SdkSender(client)
    raise ValueError(f"unknown transport {transport!r}: expected one of {TRANSPORTS}")


def request_headers(client: openai.AsyncOpenAI) -> dict[str, str]:
    """The headers the SDK would send (auth, user agent, organisation/project when set), as plain strings."""
    # as the SDK merges them: headers given to the client (e.g. Basic auth) override its auth headers
    merged = {**client.auth_headers, **client.default_headers}
    return {k: v for k, v in merged.items() if isinstance(v, str)}  # the SDK marks unset ones with `Omit`


def chat_url(client: openai.AsyncOpenAI) -> str:
    """`<base_url>/chat/completions`, with the client's default query (e.g. Azure's api-version)."""
    url = _http.URL(str(client.base_url).rstrip("/") + "/" + CHAT_PATH)
    if client.default_query:
        url = url.copy_merge_params({k: v for k, v in client.default_query.items() if isinstance(v, str)})
    return str(url)


def env_proxy(url: str) -> tuple[str | None, Any]:
    """The proxy for `url` from HTTP(S)_PROXY / NO_PROXY (and its .netrc login), as the SDK's httpx would use.

    Looked up once per run: aiohttp's own `trust_env` repeats the lookup for every request in a
    worker thread, a thread hop per call that cost more client CPU than the rest of the send.
    """
    try:
        proxy, auth = get_env_proxy_for_url(URL(url))
    except LookupError:  # no proxy configured for this host, or NO_PROXY covers it
        return None, None
    return str(proxy), auth


class AiohttpSender:
    """Chat completions over one aiohttp session; the session is made inside the running loop."""

    def __init__(self, client: openai.AsyncOpenAI, timeout: float) -> None:
        self.url = chat_url(client)
        self.headers = request_headers(client)
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self.proxy, self._proxy_auth = env_proxy(self.url)
        self._session: Any = None

    def _open(self) -> Any:
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=0)  # concurrency is the engine's worker count
            self._session = aiohttp.ClientSession(connector=connector, timeout=self._timeout)
        return self._session

    async def send(self, body: dict[str, Any], headers: Mapping[str, str]) -> Reply:
        session = self._open()
        data = json.dumps(body, ensure_ascii=False).encode()
        try:
            async with session.post(
                self.url, data=data, headers={**self.headers, **headers}, proxy=self.proxy, proxy_auth=self._proxy_auth
            ) as response:
                return Reply(response.status, response.headers, await response.read())
        except TimeoutError as exc:
            raise SendTimeout("no response within the timeout") from exc
        except (aiohttp.ClientError, OSError, ValueError) as exc:  # ValueError: aiohttp refusing a URL or header
            raise SendFailed(f"{type(exc).__name__}: {exc}") from exc

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


class SdkSender:
    """Chat completions through `AsyncOpenAI.post` (raw response: no per-call transform of the body)."""

    def __init__(self, client: openai.AsyncOpenAI) -> None:
        self.client = client

    async def send(self, body: dict[str, Any], headers: Mapping[str, str]) -> Reply:
        try:
            raw = await self.client.post(
                "/" + CHAT_PATH, cast_to=_http.Response, body=body, options={"headers": dict(headers)}
            )
        except openai.APITimeoutError as exc:
            if refused := _connection_refused(exc):  # the SDK's aiohttp bridge reports these as ConnectTimeout
                raise SendFailed(f"{type(refused).__name__}: {refused}") from exc
            raise SendTimeout("no response within the timeout") from exc
        except openai.APIConnectionError as exc:
            raise SendFailed(f"{type(exc).__name__}: {exc}") from exc
        except openai.APIStatusError as exc:
            return Reply(exc.status_code, exc.response.headers, exc.response.content)
        return Reply(raw.status_code, raw.headers, raw.content)

    async def close(self) -> None:
        pass  # the client is its owner's to close


def _connection_refused(exc: BaseException) -> OSError | None:
    """The refused/reset connection behind an SDK timeout, if that is what it really was."""
    cause = exc.__cause__ or exc.__context__
    seen = 0
    while cause is not None and seen < 8:
        if isinstance(cause, OSError) and not isinstance(cause, TimeoutError):
            return cause
        cause, seen = cause.__cause__ or cause.__context__, seen + 1
    return None
