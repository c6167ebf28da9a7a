"""Before training starts on a machine (issue 18): every path it needs is checked and named, the device is logged,
and a machine that must have a GPU and has none fails at once unless `allow_cpu` is set. No Prefect server."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import pytest

from flows.train import check_machine
from schemas.flow_params import PipelineParams, TrainParams
from tasks import train_paths
from tasks.train_paths import (
    Device,
    NoGpuVisible,
    TrainingPathsMissing,
    check_training_paths,
    missing_training_paths,
    require_device,
)
from training.tiny import write_tiny_config


@pytest.fixture
def layout(tmp_path: Path) -> dict[str, Path]:
    """Everything a tiny training config names, present: base model folders, images, data, an output folder."""
    paths = {name: tmp_path / name for name in ("vision", "llm", "images")}
    for path in paths.values():
        path.mkdir()
    for name in ("pretrain.json", "instruct.json"):
        paths[name] = tmp_path / name
        paths[name].write_text(json.dumps([]))
    paths["config"] = write_tiny_config(
        tmp_path / "train.yaml", paths["vision"], paths["llm"], image_root=paths["images"],
        output_dir=tmp_path / "runs", stage1={"data": str(paths["pretrain.json"])},
        stage2={"data": str(paths["instruct.json"])})
    return paths


def test_a_complete_layout_has_nothing_missing(layout: dict[str, Path]) -> None:
    assert missing_training_paths(layout["config"]) == []
    assert (layout["config"].parent / "runs").is_dir()  # the output folder is created by the write check


def test_each_missing_path_is_named_once_with_what_it_is(layout: dict[str, Path]) -> None:
    layout["instruct.json"].unlink()
    layout["images"].rmdir()
    layout["llm"].rmdir()
    problems = missing_training_paths(layout["config"])
    assert problems == [  # stage 1's first, then what only stage 2 lacks
        f"image_root {layout['images']} does not exist",  # read by both stages, named once
        f"llm {layout['llm']} does not exist",
        f"stage2.data {layout['instruct.json']} does not exist",
    ], problems


def test_a_relative_path_resolves_against_this_machines_folder(layout: dict[str, Path], tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    # the classic two-machine mistake: `export/...` exists where the data was made, not where training runs
    elsewhere = tmp_path / "other-machine"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    with pytest.raises(TrainingPathsMissing) as info:
        check_training_paths(layout["config"], {"stage2": ["stage2.data=export/llava_instruct.json", "--flag"]})
    message = str(info.value)
    assert f"stage2.data {elsewhere / 'export' / 'llava_instruct.json'} does not exist" in message
    assert f"training cannot start on {train_paths.machine()}" in message
    assert "stage1.data" not in message  # the override moved stage 2's data only


def test_config_files_folders_and_the_output_folder(layout: dict[str, Path], tmp_path: Path) -> None:
    missing_config = tmp_path / "nope.yaml"
    assert missing_training_paths(missing_config) == [f"training config {missing_config} does not exist"]
    (tmp_path / "blocked").write_text("a file where the output folder should be")
    problems = missing_training_paths(layout["config"], {
        "stage1": [f"image_root={layout['pretrain.json']}", f"output_dir={tmp_path / 'blocked'}"],
        "stage2": [f"stage2.data={layout['images']}", f"stage2.init_from={tmp_path / 'no-stage1'}"]})
    assert f"image_root {layout['pretrain.json']} is not a folder" in problems
    assert any(p.startswith(f"output_dir {tmp_path / 'blocked'} is not writable") for p in problems), problems
    assert f"stage2.data {layout['images']} is not a file" in problems
    assert f"stage2.init_from {tmp_path / 'no-stage1'} does not exist" in problems


def test_hub_model_ids_are_not_paths(layout: dict[str, Path]) -> None:
    # `org/name` is downloaded by the training process, not a folder to look for; a path-like one is checked
    hub = ["llm=lmsys/vicuna-7b-v1.5"]
    assert missing_training_paths(layout["config"], {"stage1": hub, "stage2": hub}) == []
    assert missing_training_paths(layout["config"], {"stage1": ["llm=./lmsys/vicuna-7b-v1.5"]}) == [
        f"llm {Path.cwd() / 'lmsys' / 'vicuna-7b-v1.5'} does not exist"]


def test_the_device_line_and_the_gpu_requirement() -> None:
    gpu = Device(torch="2.5.0", cuda_build="12.4", gpus=({"name": "NVIDIA H200", "total": 150 * 1024**3,
                                                          "free": 149 * 1024**3},))
    assert gpu.describe() == ("device cuda: 1 GPU(s): 0 NVIDIA H200 (150.0 GiB, 149.0 free); torch 2.5.0, CUDA 12.4")
    cpu_build = Device(torch="2.5.0+cpu", cuda_build=None, gpus=())
    assert "torch built without CUDA" in cpu_build.describe()
    assert "no GPU visible" in Device(torch="2.5.0", cuda_build="12.4", gpus=()).describe()
    require_device(gpu, require_gpu=True, allow_cpu=False)
    require_device(cpu_build, require_gpu=False, allow_cpu=False)  # not required: trains where it is
    require_device(cpu_build, require_gpu=True, allow_cpu=True)
    with pytest.raises(NoGpuVisible, match=r"needs a GPU and .* has none: device cpu: torch built without CUDA"):
        require_device(cpu_build, require_gpu=True, allow_cpu=False)


def test_the_probe_asks_torch_in_a_child_process() -> None:
    import torch

    device = train_paths.probe_device()
    assert device.error is None and device.torch == torch.__version__
    assert device.has_gpu == torch.cuda.is_available()


def test_the_train_flow_checks_paths_before_the_device_and_fails_in_seconds(
        layout: dict[str, Path], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    probes: list[str] = []
    cpu = Device(torch="2.5.0+cpu", cuda_build=None, gpus=())
    monkeypatch.setattr(train_paths, "probe_device", lambda: probes.append("probe") or cpu)
    logger = logging.getLogger("test-train-machine")
    monkeypatch.setenv("VISTUNE_REQUIRE_GPU", "true")
    layout["instruct.json"].unlink()
    started = time.monotonic()
    with pytest.raises(TrainingPathsMissing, match=r"stage2\.data .*instruct\.json does not exist"):
        check_machine(TrainParams(config=str(layout["config"]), allow_cpu=True), logger)
    assert time.monotonic() - started < 5 and probes == []  # no torch asked, no model loaded
    layout["instruct.json"].write_text("[]")
    with pytest.raises(NoGpuVisible, match="allow_cpu=true"):
        check_machine(TrainParams(config=str(layout["config"])), logger)
    with caplog.at_level(logging.INFO, logger="test-train-machine"):
        check_machine(TrainParams(config=str(layout["config"]), allow_cpu=True), logger)
    assert "device cpu: torch built without CUDA" in caplog.text and "GPU required; allow_cpu set" in caplog.text
    monkeypatch.setenv("VISTUNE_REQUIRE_GPU", "false")  # today's behaviour where no GPU is required
    check_machine(TrainParams(config=str(layout["config"])), logger)


def test_allow_cpu_does_not_change_the_dataset_fingerprint(tmp_path: Path) -> None:
    from flows.pipeline import dataset_fingerprint

    config = tmp_path / "c.yaml"
    config.write_text("seed: 1\n")
    assert dataset_fingerprint(tmp_path, TrainParams(config=str(config))) == dataset_fingerprint(
        tmp_path, TrainParams(config=str(config), allow_cpu=True))
    assert PipelineParams().train_on == "local"  # today's behaviour unless asked


def test_prefect_yaml_puts_each_role_on_the_pool_its_setting_names(monkeypatch: pytest.MonkeyPatch) -> None:
    import yaml
    from prefect.utilities.templating import apply_values

    from flows.pools import REPO, main, pool_environment

    monkeypatch.setenv("VISTUNE_GPU_POOL", "a100s")  # a setting read from the environment
    monkeypatch.delenv("VISTUNE_CPU_POOL", raising=False)
    env = pool_environment()
    assert env == {"VISTUNE_CPU_POOL": "vistune", "VISTUNE_GPU_POOL": "a100s"}
    for key, value in env.items():  # what `python -m flows.pools deploy` hands `prefect deploy`
        monkeypatch.setenv(key, value)
    deployments = {d["name"]: d for d in yaml.safe_load((REPO / "prefect.yaml").read_text())["deployments"]}
    pools = {name: apply_values(d["work_pool"], {}, remove_notset=False) for name, d in deployments.items()}
    for name in ("train", "evaluate-infer"):  # the GPU work: training and evaluation's inference
        assert pools[name]["name"] == "a100s", name
        assert pools[name]["job_variables"]["env"]["VISTUNE_REQUIRE_GPU"] == "true", name
    for name in ("pipeline", "ingest", "generate", "curate", "evaluate"):  # evaluate judges on the CPU pool
        assert pools[name]["name"] == "vistune", name
        assert "VISTUNE_REQUIRE_GPU" not in pools[name]["job_variables"]["env"], name
    assert main(["nonsense"]) == 2
