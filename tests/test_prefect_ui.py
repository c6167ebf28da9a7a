"""The dataset report's plots render in the Prefect UI: a real `prefect server` (UI on), a pipeline run against
the simulator, then headless Chromium (Debian's `chromium`, driven over the DevTools protocol with the
`websockets` package Prefect already depends on) opens the `dataset-report` artifact page and checks that
every `<img>` has loaded (`naturalWidth > 0`). A screenshot is left in the test's tmp folder."""

from __future__ import annotations

import base64
import itertools
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.prefect_server import REPO, free_port, shared_server, stop
from tests.sim import SimConfig, start_simulator

pytestmark = [pytest.mark.prefect_server, pytest.mark.timeout(500)]

PIPELINE = """
import sys
from flows.pipeline import pipeline_flow
from schemas.flow_params import CurateParams, GenerateParams, IngestParams, PipelineParams
coco, db, export, base_url = sys.argv[1:5]
pipeline_flow(PipelineParams(ingest=IngestParams(coco_dir=coco, db_path=db),
                             generate=GenerateParams(base_url=base_url, model="gpt-4o-mini"),
                             curate=CurateParams(export_dir=export)))
"""
IMAGES_JS = ("JSON.stringify(Array.from(document.images).map(i => "
             "({src: i.src.slice(0, 40), complete: i.complete, width: i.naturalWidth})))")


class DevTools:
    """The few DevTools-protocol calls the test needs, over one page's websocket."""

    def __init__(self, ws_url: str) -> None:
        from websockets.sync.client import connect

        self.ws = connect(ws_url, max_size=64 * 2**20, open_timeout=60)
        self.ids = itertools.count(1)

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        call_id = next(self.ids)
        self.ws.send(json.dumps({"id": call_id, "method": method, "params": params}))
        while True:  # skip events until our answer
            message = json.loads(self.ws.recv(timeout=120))
            if message.get("id") == call_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message["result"]

    def evaluate(self, expression: str) -> Any:
        return self.call("Runtime.evaluate", expression=expression, returnByValue=True)["result"].get("value")


def dataset_report_id(api_url: str) -> str:
    response = httpx.post(f"{api_url}/artifacts/filter", json={"artifacts": {"key": {"any_": ["dataset-report"]}}},
                          timeout=30)
    response.raise_for_status()
    return response.json()[0]["id"]


def test_report_plots_are_readable_pngs(db_path: Path, tmp_path: Path) -> None:
    from PIL import Image

    from tasks.curation.dedup import dedup
    from tasks.curation.report import build_report
    from tasks.curation.validate import validate_pending
    from tests.test_report import fill

    fill(db_path, tmp_path / "coco")
    validate_pending(db_path)
    dedup(db_path)
    report = build_report(db_path, tmp_path / "export")
    for plot in report.plots:
        with Image.open(plot) as image:
            assert image.width >= 1000, (plot, image.size)
    embedded = report.embedded_markdown()
    assert embedded.count("](data:image/png;base64,") == len(report.plots)
    assert "](type_mix.png)" in report.markdown  # report.md on disk keeps its relative links


@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs Debian's chromium (.ci/run installs it)")
def test_report_plots_render_in_the_prefect_ui(sample_coco: Path, tmp_path: Path) -> None:
    env = shared_server()
    with start_simulator(SimConfig()) as sim:
        done = subprocess.run([sys.executable, "-c", PIPELINE, str(sample_coco), str(tmp_path / "v.duckdb"),
                               str(tmp_path / "export"), sim.base_url], env=env, cwd=REPO, capture_output=True,
                              text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    page = f"{env['PREFECT_UI_URL']}/artifacts/artifact/{dataset_report_id(env['PREFECT_API_URL'])}"

    port = free_port()
    browser = subprocess.Popen(
        ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
         f"--remote-debugging-port={port}", "--remote-allow-origins=*", f"--user-data-dir={tmp_path / 'chromium'}",
         "--window-size=1400,2400", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                targets = httpx.get(f"http://127.0.0.1:{port}/json", timeout=5).json()
                break
            except (httpx.HTTPError, ValueError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        tools = DevTools(next(t for t in targets if t["type"] == "page")["webSocketDebuggerUrl"])
        tools.call("Page.enable")
        tools.call("Page.navigate", url=page)
        images: list[dict[str, Any]] = []
        deadline = time.monotonic() + 180  # the UI's first load compiles nothing, but a busy CI box is slow
        while time.monotonic() < deadline:
            images = json.loads(tools.evaluate(IMAGES_JS) or "[]")
            if len(images) >= 2 and all(i["complete"] and i["width"] > 0 for i in images):
                break
            time.sleep(1)
        shot = tools.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        (tmp_path / "artifact.png").write_bytes(base64.b64decode(shot["data"]))
    finally:
        stop(browser)
    assert len(images) >= 2, f"no plots on {page}: {images}; screenshot {tmp_path / 'artifact.png'}"
    assert all(i["complete"] and i["width"] > 0 for i in images), images
