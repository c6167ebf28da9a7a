"""Run the simulator: in a background thread (unit tests) or as its own process (benchmarks).

Both handles are context managers with `.base_url` (ending in `/v1`) and `.stop()`. The in-thread
handle exposes the live `.log` and `.stats`; the process handle reads its JSONL log back with
`.read_log()` and its counters from `GET /sim/stats`.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Self

import httpx
import uvicorn

from tests.sim.app import SimulatorApp
from tests.sim.config import SimConfig
from tests.sim.core import ServedRequest, Simulator

REPO = Path(__file__).resolve().parents[2]


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket; port 0 lets the OS pick a free one."""
    # proto=IPPROTO_TCP matters: asyncio only sets TCP_NODELAY on accepted sockets whose proto says
    # TCP, and without it h11's separate header/body writes meet delayed ACKs (~40 ms per request).
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def uvicorn_server(app: SimulatorApp) -> uvicorn.Server:
    """A quiet uvicorn server; `http`/`loop` "auto" pick httptools/uvloop when installed."""
    config = uvicorn.Config(
        app.asgi,
        log_level="warning",
        access_log=False,
        lifespan="off",
        timeout_graceful_shutdown=2,
        backlog=2048,
        timeout_keep_alive=30,
    )
    return uvicorn.Server(config)


class SimHandle:
    """A simulator serving from a background thread of this process."""

    def __init__(self, config: SimConfig) -> None:
        self.config = config
        self.simulator = Simulator(config)
        self.app = SimulatorApp(self.simulator)
        self._sock = bind_socket(config.host, config.port)
        self.port: int = self._sock.getsockname()[1]
        self.base_url = f"http://{config.host}:{self.port}/v1"
        self._server = uvicorn_server(self.app)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=self._run, name=f"vistune-sim-{self.port}", daemon=True)

    def _run(self) -> None:
        asyncio.run(self._serve())

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.app.stop_event = asyncio.Event()
        await self._server.serve(sockets=[self._sock])

    def start(self, timeout_s: float = 10.0) -> Self:
        """Start serving; returns once the server accepts connections."""
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"simulator on port {self.port} did not start within {timeout_s}s")
            time.sleep(0.005)
        return self

    @property
    def log(self) -> list[ServedRequest]:
        """Every request served so far (live list; copy it before iterating while serving)."""
        return self.simulator.log

    @property
    def stats(self) -> dict[str, int]:
        """Counters: requests, status_<code>, fault_<name>, prompt/completion/cached tokens."""
        return dict(self.simulator.stats)

    def stop(self) -> None:
        """Stop serving (hanging requests are released) and close the log file."""
        if self._loop is not None and self.app.stop_event is not None:
            self._loop.call_soon_threadsafe(self.app.stop_event.set)
        self._server.should_exit = True
        self._thread.join(timeout=15)
        self._sock.close()
        self.simulator.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_simulator(config: SimConfig | None = None) -> SimHandle:
    """Start a simulator in a background thread and return its handle (usable as a context manager)."""
    return SimHandle(config or SimConfig()).start()


class SimProcess:
    """A simulator running as `python -m tests.sim` in its own process."""

    def __init__(self, config: SimConfig, *, timeout_s: float = 30.0) -> None:
        self._tmpdir: tempfile.TemporaryDirectory[str] | None = None
        if config.log_path is None:
            self._tmpdir = tempfile.TemporaryDirectory(prefix="vistune-sim-")
            config = config.model_copy(update={"log_path": Path(self._tmpdir.name) / "served.jsonl"})
        else:  # the child runs in the repo root; a relative path must mean the same file to both
            config = config.model_copy(update={"log_path": config.log_path.resolve()})
        self.config = config
        self.log_path: Path = config.log_path  # type: ignore[assignment]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.sim", "--config-json", config.model_dump_json()],
            stdout=subprocess.PIPE,
            cwd=REPO,
            env=env,
            text=True,
        )
        ready = _read_line(self.process, timeout_s)
        self.base_url: str = ready["base_url"]
        self.port: int = ready["port"]
        self.pid = self.process.pid

    def read_log(self) -> list[dict[str, Any]]:
        """The served-request log so far, one dict per request (fields of `ServedRequest`)."""
        if not self.log_path.exists():
            return []
        records = []
        with self.log_path.open("rb") as f:
            for line in f:
                if line.endswith(b"\n"):  # a line still being written is skipped
                    records.append(json.loads(line))
        return records

    @property
    def stats(self) -> dict[str, int]:
        """The running process's counters (GET /sim/stats)."""
        return httpx.get(self.base_url.removesuffix("/v1") + "/sim/stats", timeout=10).json()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Terminate the process (SIGTERM, then SIGKILL after `timeout_s`)."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()

    def cleanup(self) -> None:
        """Stop, and delete the temporary log if the handle made one."""
        self.stop()
        if self._tmpdir is not None:
            self._tmpdir.cleanup()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.cleanup()


def _read_line(process: subprocess.Popen[str], timeout_s: float) -> dict[str, Any]:
    result: dict[str, Any] = {}

    def read() -> None:
        assert process.stdout is not None
        line = process.stdout.readline()
        if line:
            result.update(json.loads(line))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout_s)
    if "base_url" not in result:
        process.kill()
        raise RuntimeError(f"simulator process did not report ready within {timeout_s}s (exit code {process.poll()})")
    return result


def start_simulator_process(config: SimConfig | None = None, *, timeout_s: float = 30.0) -> SimProcess:
    """Start `python -m tests.sim` with this config; returns once it accepts connections."""
    return SimProcess(config or SimConfig(), timeout_s=timeout_s)
