"""Measure the simulator's own throughput: `python -m tests.sim.loadtest --requests 20000`.

Starts the simulator as a separate process at zero latency, sends chat completions shaped like
vistune's (a ~1,300-token static prefix of system prompt and few-shot examples, then a per-image
user message; every body distinct) from a few client processes, and reports requests per second
and the server's CPU time per request (psutil). The server is one process on one core, so
1 / (CPU per request) is the rate it can sustain with a core to itself; wall-clock rates depend
on what else the machine runs. Clients: `httpx` (asyncio, like the openai SDK; costs more CPU
than the server) or `raw` (pre-encoded HTTP/1.1 keep-alive requests over asyncio streams, a
wrk-style generator so that the client is not the bottleneck).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import re
import time
from urllib.parse import urlsplit

import httpx
import orjson
import psutil

from tests.sim.config import SimConfig
from tests.sim.server import start_simulator_process

SYSTEM = (
    "You are an AI visual assistant looking at one image. You receive several captions and object boxes. "
    "Write a conversation between a person asking about the image and an assistant answering as if it sees "
    "the image. Ask diverse questions and give detailed answers. "
) * 20
EXAMPLE_USER = "A man riding a brown horse on a sandy beach.\nperson: [0.1, 0.2, 0.3, 0.4]\nhorse: [0.2, 0.3, 0.5, 0.9]"
EXAMPLE_ANSWER = "Question:\nWhat is the man riding?\n===\nAnswer:\nThe man is riding a brown horse along the beach."


def request_body(i: int, structured: bool) -> dict:
    """A vistune-like chat request for synthetic image `i`."""
    user = (
        f"A group of {i % 7 + 2} people stand near a red bus number {i} on a city street.\n"
        f"A bus parked at a stop while people wait, photo {i}.\n"
        f"person: [0.{i % 9}, 0.2, 0.3, 0.8]\nbus: [0.4, 0.1, 0.9, 0.7]"
    )
    body = {
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": EXAMPLE_USER},
            {"role": "assistant", "content": EXAMPLE_ANSWER},
            {"role": "user", "content": user},
        ],
        "temperature": 0.2,
    }
    if structured:
        from tasks.prompting.formats import json_schema

        body["response_format"] = {"type": "json_schema", "json_schema": json_schema("conversation")}
    return body


async def _client(base_url: str, start: int, count: int, concurrency: int, structured: bool) -> int:
    ok = 0
    queue = iter(range(start, start + count))
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=60) as client:

        async def worker() -> None:
            nonlocal ok
            for i in queue:
                r = await client.post("/chat/completions", json=request_body(i, structured))
                ok += r.status_code == 200

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return ok


_CONTENT_LENGTH = re.compile(rb"content-length:\s*(\d+)", re.IGNORECASE)


async def _raw_client(base_url: str, start: int, count: int, concurrency: int, structured: bool) -> int:
    ok = 0
    queue = iter(range(start, start + count))
    url = urlsplit(base_url)
    head = f"POST {url.path}/chat/completions HTTP/1.1\r\nHost: {url.netloc}\r\nContent-Type: application/json\r\n"

    async def connection() -> None:
        nonlocal ok
        reader, writer = await asyncio.open_connection(url.hostname, url.port)
        for i in queue:
            body = orjson.dumps(request_body(i, structured))
            writer.write(f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body)
            response_head = await reader.readuntil(b"\r\n\r\n")
            match = _CONTENT_LENGTH.search(response_head)
            await reader.readexactly(int(match.group(1)) if match else 0)
            ok += response_head.startswith(b"HTTP/1.1 200")
        writer.close()

    await asyncio.gather(*(connection() for _ in range(concurrency)))
    return ok


def _client_process(args: tuple[str, str, int, int, int, bool]) -> int:
    kind, *rest = args
    return asyncio.run((_raw_client if kind == "raw" else _client)(*rest))


def run(requests: int, clients: int, concurrency: int, structured: bool, token_counter: str, client: str) -> dict:
    """Send `requests` requests and return the measured figures."""
    with start_simulator_process(SimConfig(token_counter=token_counter)) as sim:
        server = psutil.Process(sim.pid)
        per_client = requests // clients
        jobs = [(client, sim.base_url, k * per_client, per_client, concurrency, structured) for k in range(clients)]
        cpu_before = sum(server.cpu_times()[:2])
        started = time.perf_counter()
        with multiprocessing.get_context("spawn").Pool(clients) as pool:
            ok = sum(pool.map(_client_process, jobs))
        wall = time.perf_counter() - started
        cpu = sum(server.cpu_times()[:2]) - cpu_before
        served = len(sim.read_log())
    return {
        "requests": per_client * clients,
        "ok": ok,
        "served_in_log": served,
        "client": f"{clients}x{client}",
        "structured": structured,
        "token_counter": token_counter,
        "wall_s": round(wall, 2),
        "req_per_s": round(ok / wall, 1),
        "server_cpu_ms_per_req": round(cpu * 1000 / max(ok, 1), 3),
        "server_req_per_cpu_s": round(ok / cpu, 1) if cpu else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--clients", type=int, default=2, help="client processes")
    parser.add_argument("--concurrency", type=int, default=32, help="in-flight requests per client")
    parser.add_argument("--structured", action="store_true", help="ask for json_schema output")
    parser.add_argument("--token-counter", choices=["tiktoken", "approx"], default="tiktoken")
    parser.add_argument("--client", choices=["httpx", "raw"], default="raw")
    args = parser.parse_args()
    figures = run(args.requests, args.clients, args.concurrency, args.structured, args.token_counter, args.client)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
