"""One real `prefect server start` (UI included) shared by the UI and automation tests of a session.

Started on first use, on a free loopback port with its own PREFECT_HOME, and stopped (its process
group, by PID) when the test process exits: a fixture imported into two modules would start two.
"""

from __future__ import annotations

import atexit
import functools
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the process group we started (worker children included), SIGKILL if it lingers."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def wait_healthy(api_url: str, server: subprocess.Popen[bytes], log: Path, timeout_s: float = 90) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"prefect server exited with {server.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{api_url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    pytest.fail(f"prefect server not healthy after {timeout_s} s:\n{log.read_text()[-3000:]}")


def start_server(home: Path, *, ui: bool) -> tuple[subprocess.Popen[bytes], dict[str, str]]:
    """`prefect server start` on a free loopback port with its own PREFECT_HOME under `home`, once healthy.

    Returns the process (stop it with `stop`) and the environment that points at it.
    """
    port = free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")},
        "PREFECT_HOME": str(home / "prefect-home"),
        "PREFECT_API_URL": api_url,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_API_HOST": "127.0.0.1",
        "PREFECT_SERVER_API_PORT": str(port),
        "PREFECT_UI_ENABLED": "true" if ui else "false",
        "PYTHONPATH": str(REPO),
    }
    log = home / "server.log"
    with log.open("wb") as out:
        server = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                                   "--port", str(port)], env=env, stdout=out, stderr=subprocess.STDOUT,
                                  start_new_session=True)
    try:
        wait_healthy(api_url, server, log, timeout_s=180)
    except BaseException:
        stop(server)
        raise
    return server, {**env, "PREFECT_UI_URL": f"http://127.0.0.1:{port}", "VISTUNE_SERVER_LOG": str(log)}


@functools.cache
def shared_server() -> dict[str, str]:
    """The environment (PREFECT_API_URL, PREFECT_HOME, ...) of the shared server, started once."""
    server, env = start_server(Path(tempfile.mkdtemp(prefix="vistune-prefect-")), ui=True)
    atexit.register(stop, server)
    return env
