"""The HTTP face of the simulator: a Starlette app with OpenAI's routes.

Starlette (already installed with Prefect) keeps routing and multipart uploads readable; the hot
path (`POST /v1/chat/completions`) does one orjson parse, memoised token counts and one orjson
dump, so the HTTP server, not the handler, bounds throughput (see docs/SIMULATOR.md).
"""

from __future__ import annotations

import asyncio
import math
import time
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tests.sim.batches import BatchService, NotFound
from tests.sim.core import SERVER_ERRORS, BadRequest, ServedRequest, Simulator, error_body


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(data), status, headers, media_type="application/json")


def _retry_headers(seconds: float) -> dict[str, str]:
    return {"retry-after": str(max(1, math.ceil(seconds))), "retry-after-ms": str(max(1, math.ceil(seconds * 1000)))}


class SimulatorApp:
    """Routes requests to a `Simulator`; `stop_event` releases hanging requests at shutdown."""

    def __init__(self, sim: Simulator) -> None:
        self.sim = sim
        self.batches = BatchService(sim)
        self.stop_event: asyncio.Event | None = None
        self.asgi = Starlette(
            routes=[
                Route("/v1/chat/completions", self.chat, methods=["POST"]),
                Route("/v1/models", self.models, methods=["GET"]),
                Route("/v1/files", self.upload, methods=["POST"]),
                Route("/v1/files", self.list_files, methods=["GET"]),
                Route("/v1/files/{file_id}", self.get_file, methods=["GET"]),
                Route("/v1/files/{file_id}", self.delete_file, methods=["DELETE"]),
                Route("/v1/files/{file_id}/content", self.file_content, methods=["GET"]),
                Route("/v1/batches", self.create_batch, methods=["POST"]),
                Route("/v1/batches", self.list_batches, methods=["GET"]),
                Route("/v1/batches/{batch_id}", self.get_batch, methods=["GET"]),
                Route("/v1/batches/{batch_id}/cancel", self.cancel_batch, methods=["POST"]),
                Route("/sim/stats", self.stats, methods=["GET"]),
            ],
            exception_handlers={BadRequest: self._bad_request, NotFound: self._not_found},
        )

    # --- chat completions -----------------------------------------------------------------------

    async def chat(self, http: Request) -> Response:
        sim = self.sim
        started = time.time()
        request_id = sim.next_id("req_")
        raw = await http.body()
        entry = ServedRequest(started, "POST", "/v1/chat/completions", None, request_id, received=started)
        try:
            request = sim.parse(raw, http.headers.get("x-vistune-request-id"))
        except BadRequest as exc:
            entry.status = 400
            sim.record(entry)
            return _json(
                error_body(str(exc), "invalid_request_error", param=exc.param), 400, {"x-request-id": request_id}
            )
        entry.body_hash, entry.prompt_tokens = request.body_hash, request.prompt_tokens
        entry.client_request_id = request.client_request_id
        wait, kind = sim.limits.admit(request.prompt_tokens + (request.max_tokens or 0))
        headers = {"x-request-id": request_id, **sim.limits.headers()}
        if kind is not None:
            entry.status, entry.fault = 429, f"limit_{kind}"
            sim.record(entry)
            if math.isinf(wait):
                message = (
                    f"Request too large for {request.body['model']} on tokens per min (TPM): "
                    f"Limit {sim.config.tpm} (burst {sim.limits.tokens.capacity:.0f}), "
                    f"Requested {request.prompt_tokens + (request.max_tokens or 0)}."
                )
            else:
                message = (
                    f"Rate limit reached for {request.body['model']} on {kind} per min: "
                    f"Please try again in {wait * 1000:.0f}ms."
                )
                headers.update(_retry_headers(wait))
            return _json(error_body(message, kind, "rate_limit_exceeded"), 429, headers)

        entry.attempt = sim.next_attempt(request)
        entry.fault = fault = sim.dice.fault(request.body_key, entry.attempt)
        if fault == "429":
            entry.status = 429
            sim.record(entry)
            headers.update(_retry_headers(sim.config.fault_retry_after_ms / 1000))
            return _json(
                error_body(
                    "Rate limit reached (simulated fault). Please try again later.", "requests", "rate_limit_exceeded"
                ),
                429,
                headers,
            )
        if fault in SERVER_ERRORS:
            entry.status, message = SERVER_ERRORS[fault]
            sim.record(entry)
            return _json(error_body(message, "server_error"), entry.status, headers)
        if fault == "hang":
            sim.record(entry)  # logged with status None: it is never answered
            await self._hang(http)
            return Response(status_code=504)

        body = sim.completion(request, fault, sim.next_id("chatcmpl-"))
        usage = body["usage"]
        if request.max_tokens is None:
            sim.limits.charge_tokens(usage["completion_tokens"])
        delay = sim.dice.latency_s(request.body_key, entry.attempt)
        if delay > 0:
            await asyncio.sleep(delay)
            if await http.is_disconnected():
                # The client gave up (timeout) before the answer was ready: log it as nginx's 499,
                # so "served with 200" in the log always means an answer was handed over.
                entry.status = 499
                sim.record(entry)
                return Response(status_code=499)
        entry.status = 200
        entry.completion_tokens = usage["completion_tokens"]
        entry.cached_tokens = usage["prompt_tokens_details"]["cached_tokens"]
        headers["openai-processing-ms"] = str(int((time.time() - started) * 1000))
        response = _json(body, 200, headers)
        sim.record(entry)
        return response

    async def _hang(self, http: Request) -> None:
        # Wait until the client gives up (disconnect), the server stops, or hang_s passes.
        waiters = [asyncio.ensure_future(http.receive())]
        if self.stop_event is not None:
            waiters.append(asyncio.ensure_future(self.stop_event.wait()))
        _, pending = await asyncio.wait(waiters, timeout=self.sim.config.hang_s, return_when=asyncio.FIRST_COMPLETED)
        for waiter in pending:
            waiter.cancel()

    # --- models, files, batches -----------------------------------------------------------------

    async def models(self, http: Request) -> Response:
        data = [{"id": m, "object": "model", "created": 0, "owned_by": "vistune-sim"} for m in self.sim.config.models]
        return self._served(http, _json({"object": "list", "data": data}))

    async def upload(self, http: Request) -> Response:
        async with http.form(max_part_size=self.sim.config.max_file_bytes) as form:
            upload, purpose = form.get("file"), form.get("purpose")
            if upload is None or isinstance(upload, str):
                raise BadRequest("multipart field 'file' is required", "file")
            if not isinstance(purpose, str):
                raise BadRequest("multipart field 'purpose' is required", "purpose")
            stored = self.batches.add_file(upload.filename or "upload.jsonl", purpose, await upload.read())
        return self._served(http, _json(stored.to_dict()))

    async def list_files(self, http: Request) -> Response:
        data = [f.to_dict() for f in self.batches.files.values()]
        purpose = http.query_params.get("purpose")
        data = [f for f in data if purpose is None or f["purpose"] == purpose]
        return self._served(http, _json({"object": "list", "data": data, "has_more": False}))

    async def get_file(self, http: Request) -> Response:
        return self._served(http, _json(self.batches.file(http.path_params["file_id"]).to_dict()))

    async def delete_file(self, http: Request) -> Response:
        file_id = http.path_params["file_id"]
        self.batches.file(file_id)
        del self.batches.files[file_id]
        return self._served(http, _json({"id": file_id, "object": "file", "deleted": True}))

    async def file_content(self, http: Request) -> Response:
        data = self.batches.file(http.path_params["file_id"]).data
        return self._served(http, Response(data, media_type="application/octet-stream"))

    async def create_batch(self, http: Request) -> Response:
        try:
            body = orjson.loads(await http.body())
        except orjson.JSONDecodeError:
            raise BadRequest("request body is not valid JSON") from None
        return self._served(http, _json(self.batches.create(body)))

    async def list_batches(self, http: Request) -> Response:
        limit = int(http.query_params.get("limit", 20))
        return self._served(http, _json(self.batches.listing(limit, http.query_params.get("after"))))

    async def get_batch(self, http: Request) -> Response:
        return self._served(http, _json(self.batches.batch(http.path_params["batch_id"])))

    async def cancel_batch(self, http: Request) -> Response:
        return self._served(http, _json(self.batches.cancel(http.path_params["batch_id"])))

    async def stats(self, http: Request) -> Response:
        return _json(dict(self.sim.stats))

    # --- helpers --------------------------------------------------------------------------------

    def _served(self, http: Request, response: Response) -> Response:
        self.sim.record(
            ServedRequest(time.time(), http.method, http.url.path, response.status_code, self.sim.next_id("req_"))
        )
        return response

    async def _bad_request(self, http: Request, exc: Exception) -> Response:
        assert isinstance(exc, BadRequest)
        return self._served(http, _json(error_body(str(exc), "invalid_request_error", param=exc.param), 400))

    async def _not_found(self, http: Request, exc: Exception) -> Response:
        return self._served(http, _json(error_body(str(exc), "invalid_request_error", "not_found"), 404))
