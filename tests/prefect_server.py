"""One real `prefect server start` (UI included) shared by the UI and automation tests of a session.

Started on first use, on a free loopback port with its own PREFECT_HOME, and stopped (its process
group, by PID) when the test process exits: a fixture imported into two modules would start two.
"""

from __future__ import annotations

import atexit
import functools
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from tests.test_prefect_integration import free_port, stop, wait_healthy

REPO = Path(__file__).resolve().parents[1]


@functools.cache
def shared_server() -> dict[str, str]:
    """The environment (PREFECT_API_URL, PREFECT_HOME, ...) of the shared server, started once."""
    home = Path(tempfile.mkdtemp(prefix="vistune-prefect-"))
    port = free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")},
        "PREFECT_HOME": str(home / "prefect-home"),
        "PREFECT_API_URL": api_url,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_API_HOST": "127.0.0.1",
        "PREFECT_SERVER_API_PORT": str(port),
        "PREFECT_UI_ENABLED": "true",
        "PYTHONPATH": str(REPO),
    }
    log = home / "server.log"
    with log.open("wb") as out:
        server = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                                   "--port", str(port)], env=env, stdout=out, stderr=subprocess.STDOUT,
                                  start_new_session=True)
    atexit.register(stop, server)
    wait_healthy(api_url, server, log, timeout_s=180)
    return {**env, "PREFECT_UI_URL": f"http://127.0.0.1:{port}", "VISTUNE_SERVER_LOG": str(log)}
