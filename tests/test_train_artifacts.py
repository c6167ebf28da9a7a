"""The train flow publishes live artifacts of its flow run (issue 19, item 4): progress with ETA, the preflight
report and the loss table, from the stage directory the tiny model trains into (`prefect_harness`)."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import pytest

from flows import train as train_module
from flows import train_artifacts
from flows.train import train_flow
from flows.train_artifacts import TrainArtifacts, artifact_keys, format_eta, stage_dir_of
from schemas.flow_params import TrainParams
from tests.test_training_support import coco_captions, tiny_base
from training.tiny import write_tiny_config


async def flow_run_artifacts(flow_name: str) -> dict[str, list[object]]:
    """Every artifact version (key -> list of (created, data, description)) of the latest run of `flow_name`."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, FlowFilter, FlowFilterName
    from prefect.client.schemas.sorting import FlowRunSort

    async with get_client() as client:
        runs = await client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=[flow_name])),
                                           sort=FlowRunSort.START_TIME_DESC, limit=1)
        artifacts = await client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[runs[0].id])))
    found: dict[str, list[object]] = {}
    for artifact in sorted(artifacts, key=lambda a: a.created):
        found.setdefault(artifact.key, []).append(artifact)
    return found


def test_eta_and_keys() -> None:
    assert [format_eta(s) for s in (None, float("nan"), 45.2, 200, 3725)] == ["?", "?", "45s", "3m 20s", "1h 02m"]
    assert artifact_keys("stage2") == {"progress": "train-stage2-progress", "preflight": "train-stage2-preflight",
                                       "loss": "train-stage2-loss"}


def test_the_stage_dir_follows_the_config_and_its_overrides(tmp_path: Path) -> None:
    vision, llm = tiny_base()
    config = write_tiny_config(tmp_path / "tiny.yaml", vision, llm, output_dir=tmp_path / "run")
    assert stage_dir_of(config, "stage1") == tmp_path / "run" / "stage1"
    assert stage_dir_of(config, "stage2", [f"output_dir={tmp_path / 'other'}", "--flag"]) == tmp_path / "other/stage2"
    assert stage_dir_of(tmp_path / "missing.yaml", "stage1") is None  # the stage reports the error itself


@pytest.mark.usefixtures("prefect_harness")
def test_the_train_flow_publishes_progress_preflight_and_loss(coco_images: Path, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    for name, _ in coco_captions(coco_images, 6):
        (tmp_path / "images").mkdir(exist_ok=True)
        (tmp_path / "images" / name).write_bytes((coco_images / "train2017" / name).read_bytes())
    records = [{"id": f"r{i}", "image": name, "conversations": [
        {"from": "human", "value": "<image>\nDescribe the picture."}, {"from": "gpt", "value": caption}]}
        for i, (name, caption) in enumerate(coco_captions(coco_images, 6))]
    data = tmp_path / "data.json"
    data.write_text(json.dumps(records))
    vision, llm = tiny_base()
    stage = {"data": str(data), "batch_size": 2, "per_device_batch_size": 2, "eval_split": 0.34, "eval_every": 5}
    config = write_tiny_config(tmp_path / "tiny.yaml", vision, llm, output_dir=tmp_path / "run",
                               image_root=tmp_path / "images", save_every=5,
                               stage1={**stage, "max_steps": 16}, stage2={**stage, "max_steps": 2})
    pushes: list[tuple[float, str]] = []
    real_update = train_artifacts.update_progress_artifact

    def spy(artifact_id: object, progress: float, description: str | None = None) -> object:
        pushes.append((progress, description or ""))
        return real_update(artifact_id, progress, description=description)

    monkeypatch.setattr(train_artifacts, "update_progress_artifact", spy)
    monkeypatch.setattr(train_module, "ARTIFACT_INTERVAL_S", 0.2)
    train_flow(TrainParams(config=str(config)))

    found = asyncio.run(flow_run_artifacts("train"))
    for stage_name, steps in (("stage1", 16), ("stage2", 2)):
        keys = artifact_keys(stage_name)
        progress = found[keys["progress"]][-1]
        assert progress.data == 100.0
        assert progress.description.startswith(f"{stage_name}: step {steps}/{steps} · loss ")
        assert "held-out" in progress.description and progress.description.endswith("done")
        preflight = str(found[keys["preflight"]][-1].data)
        assert f"preflight {stage_name}: 6 records" in preflight and "ok: 6   bad: 0" in preflight
        loss = str(found[keys["loss"]][-1].data)
        assert "| step | loss | held-out loss |" in loss
        assert f"\n| {steps} | " in loss and "ETA" in loss
    table = str(found["train-stage1-loss"][-1].data)
    held_out_rows = [row for row in table.splitlines() if row.startswith(("| 5 |", "| 10 |", "| 15 |", "| 16 |"))]
    assert len(held_out_rows) == 4 and all(row.rstrip(" |")[-1].isdigit() for row in held_out_rows)
    # Updated while stage 1 ran, not only at its end.
    stage1 = [line for _, line in pushes if line.startswith("stage1: step")]
    assert len(stage1) >= 2 and any(not line.endswith("done") for line in stage1), pushes


def test_a_stale_file_is_not_published_and_a_failure_is_marked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    created: list[tuple[str, str]] = []
    monkeypatch.setattr(train_artifacts, "create_progress_artifact", lambda **kw: "id")
    monkeypatch.setattr(train_artifacts, "update_progress_artifact",
                        lambda _id, progress, description=None: created.append(("progress", description)))
    monkeypatch.setattr(train_artifacts, "create_markdown_artifact",
                        lambda markdown, key, description=None: created.append((key, markdown)))
    (tmp_path / "preflight").mkdir()
    (tmp_path / "preflight" / "report.txt").write_text("old report")
    (tmp_path / "metrics.jsonl").write_text(json.dumps({"step": 9, "loss": 1.0}) + "\n")
    os.utime(tmp_path / "preflight" / "report.txt", (1, 1))
    os.utime(tmp_path / "metrics.jsonl", (1, 1))
    with pytest.raises(RuntimeError), TrainArtifacts("stage1", tmp_path, interval_s=0.1):
        raise RuntimeError("training failed")
    assert created == [("progress", "FAILED · stage1: no step logged yet")]
