"""`python -m flows.automations apply` against a real Prefect server: the automation is created, and a failing
vistune flow run makes the server POST a notification to a local HTTP listener (the webhook block's URL)."""

from __future__ import annotations

import json
import queue
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from flows.automations import AUTOMATION_NAME
from tests.prefect_server import REPO, shared_server

pytestmark = [pytest.mark.prefect_server, pytest.mark.timeout(400)]


@pytest.fixture
def listener() -> Iterator[tuple[str, queue.Queue[dict[str, object]]]]:
    """A local HTTP server that queues every JSON body POSTed to it."""
    received: queue.Queue[dict[str, object]] = queue.Queue()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            received.put(json.loads(body or b"{}"))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hook", received
    finally:
        server.shutdown()
        server.server_close()


def run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], env=env, cwd=REPO, capture_output=True, text=True, timeout=180)


def test_the_failure_automation_is_created_and_notifies_on_a_failing_flow_run(
    listener: tuple[str, queue.Queue[dict[str, object]]], tmp_path: Path
) -> None:
    env = shared_server()
    url, received = listener
    applied = run(env, "-m", "flows.automations", "apply", "--webhook-url", url)
    assert applied.returncode == 0, applied.stderr[-3000:]
    again = run(env, "-m", "flows.automations", "apply", "--webhook-url", url)  # replaces, never duplicates
    assert again.returncode == 0, again.stderr[-3000:]

    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: env["PREFECT_API_URL"]}), get_client(sync_client=True) as client:
        automations = client.read_automations_by_name(AUTOMATION_NAME)
    assert len(automations) == 1 and automations[0].enabled
    assert automations[0].trigger.expect == {"prefect.flow-run.Failed", "prefect.flow-run.Crashed"}

    # a `train` flow run whose stage exits 3 (no training needed to fail; the config passes the path check)
    (tmp_path / "train.yaml").write_text(f"output_dir: {tmp_path / 'runs'}\n")
    failing = run(env, "-c", "import sys; from flows.train import train_flow; from schemas.flow_params import "
                             f"TrainParams; train_flow(TrainParams(config={str(tmp_path / 'train.yaml')!r}, "
                             "launcher=[sys.executable, '-c', 'raise SystemExit(3)']))")
    assert failing.returncode != 0  # the flow run failed
    try:
        note = received.get(timeout=240)  # the server's triggers and actions services run every few seconds
    except queue.Empty:
        pytest.fail("no notification within 240 s; server log:\n" + Path(env["VISTUNE_SERVER_LOG"]).read_text()[-4000:])
    assert "train" in str(note["subject"]) and "Failed" in str(note["subject"]), note
    assert "exited with code 3" in str(note["body"]), note
