"""The simulator's state and its fake model, independent of HTTP (the app and the batch runner share it)."""

from __future__ import annotations

import hashlib
import itertools
import random
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass
from typing import IO, Any

import orjson

from tests.sim.config import SimConfig
from tests.sim.content import SampleWriter, SchemaFiller, detect_sample_type, last_user_text, llava_text, read_facts
from tests.sim.faults import Dice
from tests.sim.judge import eval_content, eval_kind
from tests.sim.ratelimit import RateLimits
from tests.sim.tokens import REPLY_PRIMING, ImagePartError, PrefixCache, TokenCounter

REFUSAL = "I'm sorry, but I can't help with that request."
FINGERPRINT = "fp_vistune_sim"


class BadRequest(ValueError):
    """The request body is not a chat completion request this simulator understands (HTTP 400)."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


@dataclass(slots=True)
class ServedRequest:
    """One line of the served-request log. `status` is None for a hang that was never answered.

    `time` is when the outcome was logged (the answer handed to the connection, or the refusal);
    `received` when the request arrived (they differ by the simulated latency).
    """

    time: float
    method: str
    path: str
    status: int | None
    request_id: str
    body_hash: str | None = None
    attempt: int = 0
    fault: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    client_request_id: str | None = None
    batch_id: str | None = None
    custom_id: str | None = None
    received: float | None = None


@dataclass(slots=True)
class ChatRequest:
    """A parsed chat completion request with its token counts."""

    body: dict[str, Any]
    body_hash: str
    body_key: int
    prompt_tokens: int
    prefix_tokens: int
    prefix_key: int
    max_tokens: int | None
    client_request_id: str | None


def error_body(message: str, kind: str, code: str | None = None, param: str | None = None) -> dict[str, Any]:
    """An OpenAI-shaped error object."""
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


SERVER_ERRORS = {
    "500": (500, "The server had an error while processing your request. Sorry about that!"),
    "503": (503, "The engine is currently overloaded, please try again later."),
}


class Simulator:
    """Counts tokens, limits rates, rolls faults, writes answers and logs every served request."""

    def __init__(self, config: SimConfig) -> None:
        self.config = config
        self.dice = Dice(config)
        self.limits = RateLimits(config.rpm, config.tpm, config.rate_window_s)
        self.counter = TokenCounter(config.token_counter)
        self.counter.text("warm up")  # load the encoding now, not inside the first timed request
        self.prefix_cache = PrefixCache(config.cache_min_tokens, config.cache_block_tokens)
        self.log: list[ServedRequest] = []
        self.stats: Counter[str] = Counter()
        self._attempts: dict[int, int] = {}
        self._ids = itertools.count(1)
        self._log_lock = threading.Lock()
        self._log_file: IO[bytes] | None = open(config.log_path, "ab") if config.log_path else None  # noqa: SIM115

    def close(self) -> None:
        """Flush and close the log file."""
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def next_id(self, prefix: str) -> str:
        return f"{prefix}{next(self._ids):010d}"

    # --- requests -------------------------------------------------------------------------------

    def parse(self, raw: bytes, client_request_id: str | None = None) -> ChatRequest:
        """Read and check a chat completion body, and count its prompt tokens."""
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise BadRequest(f"request body is not valid JSON: {exc}") from None
        if not isinstance(body, dict):
            raise BadRequest("request body must be a JSON object")
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
            raise BadRequest("'messages' must be a non-empty list of message objects", "messages")
        if not isinstance(body.get("model"), str):
            raise BadRequest("'model' is required", "model")
        if body.get("stream"):
            raise BadRequest("the simulator does not support stream=true", "stream")
        try:
            per_message = [self.counter.message(m, body["model"]) for m in messages]
        except ImagePartError as exc:  # OpenAI answers 400 invalid_request_error for these
            raise BadRequest(str(exc), "messages") from None
        prefix = messages[:-1]
        digest = hashlib.blake2b(raw, digest_size=16).digest()
        metadata = body.get("metadata")
        if client_request_id is None and isinstance(metadata, dict):
            client_request_id = metadata.get("vistune_request_id")
        return ChatRequest(
            body=body,
            body_hash=digest.hex(),
            body_key=int.from_bytes(digest[:8], "big"),
            prompt_tokens=sum(per_message) + REPLY_PRIMING,
            prefix_tokens=sum(per_message[:-1]),
            prefix_key=hash(tuple((m.get("role"), str(m.get("content"))) for m in prefix)),
            max_tokens=body.get("max_completion_tokens") or body.get("max_tokens"),
            client_request_id=client_request_id,
        )

    def next_attempt(self, request: ChatRequest) -> int:
        """Count one more admitted attempt of this exact body (1 for the first)."""
        attempt = self._attempts.get(request.body_key, 0) + 1
        self._attempts[request.body_key] = attempt
        return attempt

    # --- the fake model -------------------------------------------------------------------------

    @staticmethod
    def _sample_content(body: dict[str, Any], rng: random.Random, fmt: dict[str, Any], structured: bool) -> str:
        """A sample of the type the request asks for, in its format (JSON schema, JSON object or LLaVA text)."""
        type_name = detect_sample_type(body)
        writer = SampleWriter(read_facts(last_user_text(body["messages"])), rng)
        sample = writer.sample(type_name)
        if structured:
            schema = (fmt.get("json_schema") or {}).get("schema") or {}
            return orjson.dumps(SchemaFiller(schema, writer).fill(schema, sample)).decode()
        if fmt.get("type") == "json_object":
            return orjson.dumps(sample).decode()
        return llava_text(type_name, sample)

    def completion(self, request: ChatRequest, fault: str | None, request_id: str) -> dict[str, Any]:
        """The chat.completion object for an admitted request (fault is None or a 200-status fault)."""
        body = request.body
        rng = random.Random(f"{self.config.seed}:{request.body_hash}")
        fmt = body.get("response_format") or {}
        structured = fmt.get("type") == "json_schema"
        if kind := eval_kind(body):  # vistune's eval questions, references and judge reviews (tests/sim/judge.py)
            content: str | None = eval_content(kind, body, self.config, rng, structured)
        else:
            content = self._sample_content(body, rng, fmt, structured)
        finish, refusal = "stop", None
        if fault == "malformed":
            content = _malform(content, structured)
        elif fault == "length":
            content, finish = content[: max(1, len(content) // 2)], "length"
        elif fault == "content_filter":
            content, finish = None, "content_filter"
        elif fault == "refusal":
            content, refusal = (None, REFUSAL) if structured else (REFUSAL, None)

        completion_tokens = self.counter.count_once(content or refusal or "")
        if request.max_tokens is not None and completion_tokens > request.max_tokens and content:
            keep = max(1, len(content) * request.max_tokens // completion_tokens)
            content, finish, completion_tokens = content[:keep], "length", request.max_tokens
        cached = self.prefix_cache.cached_tokens(body["model"], request.prefix_key, request.prefix_tokens)
        return {
            "id": request_id,
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body["model"],
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": content, "refusal": refusal, "annotations": []},
                    "logprobs": None,
                    "finish_reason": finish,
                }
            ],
            "usage": {
                "prompt_tokens": request.prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": request.prompt_tokens + completion_tokens,
                "prompt_tokens_details": {"cached_tokens": cached, "audio_tokens": 0},
                "completion_tokens_details": {
                    "reasoning_tokens": 0,
                    "audio_tokens": 0,
                    "accepted_prediction_tokens": 0,
                    "rejected_prediction_tokens": 0,
                },
            },
            "service_tier": "default",
            "system_fingerprint": FINGERPRINT,
        }

    # --- the log --------------------------------------------------------------------------------

    def record(self, entry: ServedRequest) -> None:
        """Count a served request, keep it in memory and append it to the log file."""
        entry.time = time.time()
        if entry.received is None:
            entry.received = entry.time
        self.stats[f"status_{entry.status}"] += 1
        self.stats["requests"] += 1
        if entry.fault:
            self.stats[f"fault_{entry.fault}"] += 1
        self.stats["prompt_tokens"] += entry.prompt_tokens
        self.stats["completion_tokens"] += entry.completion_tokens
        self.stats["cached_tokens"] += entry.cached_tokens
        if self.config.log_in_memory:
            self.log.append(entry)
        if self._log_file is not None:
            line = orjson.dumps(asdict(entry)) + b"\n"
            with self._log_lock:
                # One write per line, unbuffered, so a reader sees every finished request at once.
                self._log_file.write(line)
                self._log_file.flush()


def _malform(content: str, structured: bool) -> str:
    if structured:
        return content[: max(1, len(content) * 2 // 3)]  # JSON cut off mid-object
    if "\n===\nAnswer:\n" in content:
        return content.rsplit("\n===\nAnswer:\n", 1)[0]  # the last question loses its answer
    return ""
