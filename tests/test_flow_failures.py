"""A flow that produced nothing usable ends Failed, with the reason in its state message (issue 13, item 7).

Before: with no key, the pipeline sent 60 attempts to api.openai.com, all `connection_error`, and
still ended Completed with 0 samples. Now each case below is a red run whose message says why,
and `vistune run` exits non-zero with the same message.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from flows.curate import curate_flow
from flows.generate import generate_flow
from flows.ingest import ingest_flow
from flows.pipeline import pipeline_flow
from schemas.flow_params import CurateParams, GenerateParams, IngestParams, PipelineParams
from tasks import store
from tests.sim import SimConfig, start_simulator

pytestmark = pytest.mark.usefixtures("prefect_harness")
OPENAI_URL = "https://api.openai.com/v1"


@pytest.fixture
def no_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """No key anywhere: not in the environment, no Secret block."""
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    monkeypatch.setenv("VISTUNE_SECRET_BLOCK", "vistune-test-no-such-block")


def failed_message(state: Any) -> str:
    """The state's message, after checking the run failed."""
    assert state.is_failed(), (state.type, state.message)
    return state.message or ""


@pytest.mark.parametrize("base_url", [None, OPENAI_URL])
def test_no_key_and_the_default_openai_url_fails_at_once(
    db_path: Path, sample_coco: Path, no_key: None, base_url: str | None
) -> None:
    ingest_flow(IngestParams(coco_dir=str(sample_coco), db_path=str(db_path)))
    state = asyncio.run(generate_flow(GenerateParams(db_path=str(db_path), base_url=base_url, model="gpt-4o-mini"),
                          return_state=True))
    assert "no API key" in failed_message(state) and "OPENAI_API_KEY" in state.message
    assert store.table_counts(db_path)["responses"] == 0  # nothing was sent


def test_generate_where_every_request_failed_fails_its_flow(db_path: Path, sample_coco: Path) -> None:
    ingest_flow(IngestParams(coco_dir=str(sample_coco), db_path=str(db_path)))
    with start_simulator(SimConfig(fault_5xx=1.0)) as sim:
        params = GenerateParams(db_path=str(db_path), base_url=sim.base_url, model="gpt-4o-mini",
                                sample_types=["conversation"], limit_images=2, max_attempts=1)
        state = asyncio.run(generate_flow(params, return_state=True))
    message = failed_message(state)
    assert "failed" in message and ("server_error" in message or "all 2 requests failed" in message), message


def test_ingest_with_no_usable_image_fails_its_flow(db_path: Path, sample_coco: Path, tmp_path: Path) -> None:
    root = tmp_path / "coco"
    shutil.copytree(sample_coco, root)
    for kind in ("captions", "instances"):  # both files agree on the hostile paths
        path = root / "annotations" / f"{kind}_train2017.json"
        data = json.loads(path.read_text())
        for image in data["images"]:
            image["file_name"] = "../../../../etc/passwd"
        path.write_text(json.dumps(data))
    state = ingest_flow(IngestParams(coco_dir=str(root), db_path=str(db_path)), return_state=True)
    message = failed_message(state)
    assert "no usable image" in message and "bad_path" in message, message


def _all_rejected(db_path: Path, tmp_path: Path) -> Callable[[], Any]:
    """A store whose every good answer is rejected by validation (an empty `dataset` view)."""
    from tests.curation_rows import add_images, add_response

    add_images(db_path, tmp_path / "coco", [1, 2])
    for image_id in (1, 2):
        add_response(db_path, image_id=image_id, sample_type="detail_description", content="I can't help with that.")
    return lambda: curate_flow(CurateParams(db_path=str(db_path), export_dir=str(tmp_path / "export")),
                               return_state=True)


def test_export_with_no_record_while_samples_were_expected_fails_curate(db_path: Path, tmp_path: Path) -> None:
    message = failed_message(_all_rejected(db_path, tmp_path)())
    assert "export: 0 samples from 2 good answer(s)" in message and "rejected" in message, message
    assert (tmp_path / "export" / "report.md").exists()  # the report still says what happened


def test_curate_of_a_store_without_answers_still_completes(db_path: Path, tmp_path: Path) -> None:
    from tests.curation_rows import add_images

    add_images(db_path, tmp_path / "coco", [1])
    state = curate_flow(CurateParams(db_path=str(db_path), export_dir=str(tmp_path / "export")), return_state=True)
    assert state.is_completed(), state.message  # nothing was expected: an empty export is right


def test_the_pipeline_fails_with_the_reason_and_vistune_run_exits_non_zero(
    db_path: Path, sample_coco: Path, no_key: None, tmp_path: Path
) -> None:
    from typer.testing import CliRunner

    from flows.cli import get_app

    params = PipelineParams(
        ingest=IngestParams(coco_dir=str(sample_coco), db_path=str(db_path)),
        generate=GenerateParams(base_url=OPENAI_URL, model="gpt-4o-mini"),
        curate=CurateParams(export_dir=str(tmp_path / "export")),
    )
    assert "no API key" in failed_message(pipeline_flow(params, return_state=True))
    result = CliRunner().invoke(get_app(), ["run", "--coco", str(sample_coco), "--db", str(db_path),
                                            "--model", "gpt-4o-mini", "--base-url", OPENAI_URL,
                                            "--export-dir", str(tmp_path / "export")])
    assert result.exit_code == 1, result.output
    assert "no API key" in result.output
    assert "Traceback" not in result.output
    assert store.table_counts(db_path)["responses"] == 0


def test_vistune_generate_exits_non_zero_with_the_same_message(db_path: Path, sample_coco: Path,
                                                                no_key: None) -> None:
    from typer.testing import CliRunner

    from flows.cli import get_app

    ingest_flow(IngestParams(coco_dir=str(sample_coco), db_path=str(db_path)))
    result = CliRunner().invoke(get_app(), ["generate", "--db", str(db_path), "--base-url", OPENAI_URL,
                                            "--no-progress"])
    assert result.exit_code != 0 and "no API key" in result.output, result.output
    assert store.table_counts(db_path)["responses"] == 0
