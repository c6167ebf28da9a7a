"""The pipeline run's own summary artifact, and a second (scheduled) run on an unchanged database doing no work.

One temporary Prefect server (`prefect_harness`), the simulator as the endpoint and a fake training launcher
that records each launch and leaves a `stage2/final` checkpoint.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from flows.pipeline import SUMMARY_KEY, already_trained, dataset_fingerprint, pipeline_flow, record_trained
from schemas.flow_params import CurateParams, GenerateParams, IngestParams, PipelineParams, TrainParams
from tests.sim import SimConfig, start_simulator

# argv: -c training STAGE --config FILE ...; the checkpoint goes where the config's output_dir says.
FAKE_TRAINING = """
import sys
from pathlib import Path
stage, config = sys.argv[2], Path(sys.argv[4])
with open(config.parent / "launches.txt", "a") as out:
    out.write(stage + "\\n")
(config.parent / "runs" / stage / "final").mkdir(parents=True, exist_ok=True)
print(f"{stage}: saved checkpoint", flush=True)
"""


@pytest.fixture
def sim() -> Iterator[object]:
    with start_simulator(SimConfig()) as handle:
        yield handle


def chat_calls(sim: object) -> int:
    return sum(1 for r in list(sim.log) if r.path == "/v1/chat/completions")  # type: ignore[attr-defined]


async def pipeline_artifacts() -> dict[str, str]:
    """Artifacts (key -> markdown) of the latest `pipeline` flow run (not of its subflows)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, FlowFilter, FlowFilterName
    from prefect.client.schemas.sorting import FlowRunSort

    async with get_client() as client:
        runs = await client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=["pipeline"])),
                                           sort=FlowRunSort.START_TIME_DESC, limit=1)
        artifacts = await client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[runs[0].id])))
    return {a.key: str(a.data) for a in artifacts if a.key}


@pytest.mark.usefixtures("prefect_harness")
@pytest.mark.timeout(600)
def test_summary_artifact_and_an_unchanged_rerun_sends_nothing_and_does_not_retrain(
    db_path: Path, sample_coco: Path, sim: object, tmp_path: Path
) -> None:
    config = tmp_path / "train.yaml"
    config.write_text(f"output_dir: {tmp_path / 'runs'}\n")
    launches = tmp_path / "launches.txt"
    export_dir = tmp_path / "export"
    params = PipelineParams(
        ingest=IngestParams(coco_dir=str(sample_coco), db_path=str(db_path)),
        generate=GenerateParams(base_url=sim.base_url, model="gpt-4o-mini", shard_size=6),  # type: ignore[attr-defined]
        curate=CurateParams(export_dir=str(export_dir)),
        train=TrainParams(config=str(config), launcher=[sys.executable, "-c", FAKE_TRAINING]),
    )
    pipeline_flow(params)
    calls = chat_calls(sim)
    assert calls == 12 and launches.read_text().split() == ["stage1", "stage2"]
    summary = asyncio.run(pipeline_artifacts())[SUMMARY_KEY]
    for expected in ("Pipeline summary", "Cost", "Rejects", "duplicates", str(export_dir), "llava_instruct.json",
                     f"checkpoint `{tmp_path / 'runs' / 'stage2' / 'final'}`"):
        assert expected in summary, (expected, summary)
    # every subflow run is listed with its artifacts
    for flow_name in ("ingest", "generate", "curate", "train"):
        assert f"| {flow_name} |" in summary, summary
    assert "generation-summary" in summary and "dataset-report" in summary

    pipeline_flow(params)  # what the nightly schedule does when nothing is new
    assert chat_calls(sim) == calls  # no request
    assert launches.read_text().split() == ["stage1", "stage2"]  # no training
    assert "skipped: dataset and parameters unchanged" in asyncio.run(pipeline_artifacts())[SUMMARY_KEY]


def test_the_fingerprint_changes_with_the_dataset_and_the_parameters(tmp_path: Path) -> None:
    export_dir = tmp_path / "export"
    export_dir.mkdir()
    (export_dir / "llava_instruct.json").write_text("[]\n")
    params = TrainParams(config=str(tmp_path / "train.yaml"))
    checkpoint = tmp_path / "runs" / "stage2" / "final"
    first = dataset_fingerprint(export_dir, params)
    assert not already_trained(checkpoint, first)  # no checkpoint yet
    checkpoint.mkdir(parents=True)
    record_trained(checkpoint, first, export_dir)
    assert already_trained(checkpoint, first)
    assert dataset_fingerprint(export_dir, params.model_copy(update={"merge": True})) != first
    (export_dir / "llava_instruct.json").write_text('[{"id": "1"}]\n')
    assert not already_trained(checkpoint, dataset_fingerprint(export_dir, params))
