"""Distributed training on CPU (issue 19, item 3): two processes joined over gloo, launched as on GPUs.

`accelerate launch --multi_gpu --num_processes 2` starts torchrun's launcher; on a host without CUDA the loop
makes accelerate join the processes over gloo (MULTI_CPU). (`accelerate launch --cpu --num_processes 2`
starts ONE process: accelerate's multi-CPU path needs mpirun.) One stage-1 run is shared by several tests.

Run as a script (the launch target), this file installs a write probe, then runs `python -m training`: every
path a rank opens for writing (Python `open`/`os.open`, `torch.save`, safetensors) is recorded per rank, so a
test can check that only rank 0 writes.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PROBE_ENV = "VISTUNE_WRITE_PROBE"


def _install_write_probe(directory: Path) -> None:
    """Record, for this rank, every path opened for writing (before torch/transformers bind their savers)."""
    import safetensors.torch
    import torch

    fd = os.open(directory / f"writes-rank{os.environ.get('RANK', '0')}.txt", os.O_WRONLY | os.O_CREAT | os.O_APPEND)

    def record(path: object) -> None:
        if isinstance(path, (str, bytes, os.PathLike)):
            os.write(fd, (os.path.abspath(os.fsdecode(path)) + "\n").encode())

    def hook(event: str, args: tuple) -> None:
        if event == "open" and len(args) == 3:
            path, mode, flags = args
            writing = any(c in mode for c in "wax+") if isinstance(mode, str) else bool(
                (flags or 0) & (os.O_WRONLY | os.O_RDWR | os.O_CREAT))
            if writing:
                record(path)

    sys.addaudithook(hook)
    torch_save, st_save = torch.save, safetensors.torch.save_file

    def probed_torch_save(obj, f, *args, **kwargs):
        record(f)
        return torch_save(obj, f, *args, **kwargs)

    def probed_st_save(tensors, filename, *args, **kwargs):
        record(filename)
        return st_save(tensors, filename, *args, **kwargs)

    torch.save, safetensors.torch.save_file = probed_torch_save, probed_st_save


if __name__ == "__main__":  # the launch target: each rank runs this
    _install_write_probe(Path(os.environ[PROBE_ENV]))
    sys.path.insert(0, str(REPO))
    from training.cli import main

    main()
    sys.exit(0)


import pytest  # noqa: E402 - the script mode above must not need pytest
import torch  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from tests.test_training_support import coco_captions, tiny_base  # noqa: E402
from training.config import load_config  # noqa: E402
from training.loop import RANK_TRACE_DIR, train  # noqa: E402
from training.metrics import read_metrics  # noqa: E402
from training.sampler import ModalityLengthGroupedSampler  # noqa: E402
from training.tiny import write_tiny_config  # noqa: E402

STAGE1 = {"batch_size": 4, "per_device_batch_size": 2, "epochs": 2, "learning_rate": 1e-2}
# 16 caption records, global batch 4: 4 optimizer steps per epoch, 8 in all; checkpoints at steps 4 and 8.
STEPS, SAVE_EVERY = 8, 4


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _launch_cmd(stage: str, config: Path, *overrides: str) -> list[str]:
    accelerate = Path(sys.executable).parent / "accelerate"
    return [
        str(accelerate), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port()),
        __file__, stage, "--config", str(config), *overrides,
    ]


def _env(probe: Path) -> dict[str, str]:
    probe.mkdir(parents=True, exist_ok=True)
    return {**os.environ, "PYTHONPATH": str(REPO), PROBE_ENV: str(probe), "OMP_NUM_THREADS": "1"}


def launch(stage: str, config: Path, *overrides: str, probe: Path) -> subprocess.CompletedProcess:
    """Run a stage on 2 processes; fails the test with the output when the job fails."""
    done = subprocess.run(_launch_cmd(stage, config, *overrides), env=_env(probe), capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]
    return done


@pytest.fixture(scope="module")
def ddp_data(coco_images, tmp_path_factory) -> dict[str, Path]:
    """16 captions (stage 1); 8 instructions with images and 4 text-only (stage 2: a text-only global batch)."""
    root = tmp_path_factory.mktemp("ddp")
    pairs = coco_captions(coco_images, 8)
    captions = [
        {"id": f"cap-{i}", "image": name,
         "conversations": [{"from": "human", "value": "<image>\nDescribe."}, {"from": "gpt", "value": caption}]}
        for i, (name, caption) in enumerate(pairs * 2)
    ]
    instructions = [
        {"id": f"inst-{i}", "image": name,
         "conversations": [{"from": "human", "value": "<image>\nWhat is shown?"}, {"from": "gpt", "value": caption}]}
        for i, (name, caption) in enumerate(pairs)
    ] + [
        {"id": f"text-{i}", "conversations": [{"from": "human", "value": f"Count to {i}."},
                                              {"from": "gpt", "value": " ".join(str(n) for n in range(i + 1))}]}
        for i in range(4)
    ]
    (root / "captions.json").write_text(json.dumps(captions))
    (root / "instruct.json").write_text(json.dumps(instructions))
    return {"root": root, "captions": root / "captions.json", "instruct": root / "instruct.json",
            "images": coco_images / "train2017"}


def ddp_config(data: dict[str, Path], name: str, **fields: object) -> Path:
    vision, llm = tiny_base()
    stage1 = {"data": str(data["captions"]), **STAGE1, **fields.pop("stage1", {})}
    stage2 = {"data": str(data["instruct"]), "batch_size": 4, "per_device_batch_size": 2, "epochs": 1,
              **fields.pop("stage2", {})}
    return write_tiny_config(
        data["root"] / name / "tiny.yaml", vision, llm, image_root=data["images"],
        output_dir=data["root"] / name / "run",
        stage1=stage1, stage2=stage2, rank_trace=True, save_every=SAVE_EVERY, keep_checkpoints=5, **fields,
    )


@pytest.fixture(scope="module")
def ddp_stage1(ddp_data) -> dict:
    """One 2-process stage-1 run (8 steps, 2 epochs) whose outputs several tests read."""
    config = ddp_config(ddp_data, "stage1")
    probe = ddp_data["root"] / "stage1-probe"
    launch("stage1", config, probe=probe)
    out = load_config(config).stage_dir("stage1")
    return {"config": config, "out": out, "probe": probe}


def _trace(out: Path, rank: int) -> list[dict]:
    return read_metrics(out / RANK_TRACE_DIR / f"rank-{rank}.jsonl")


def _losses(out: Path) -> list[tuple[int, float]]:
    return [(r["step"], r["loss"]) for r in read_metrics(out / "metrics.jsonl") if "loss" in r]


def test_each_rank_sees_a_disjoint_shard_in_the_samplers_per_epoch_order(ddp_stage1, ddp_data):
    out = ddp_stage1["out"]
    traces = {rank: _trace(out, rank) for rank in (0, 1)}
    records = json.loads(ddp_data["captions"].read_text())
    lengths = [len(" ".join(t["value"] for t in r["conversations"]).split()) + 16 for r in records]
    orders = []
    for epoch in (0, 1):
        seen = {rank: [i for t in traces[rank] if t["epoch"] == epoch for i in t["ids"]] for rank in (0, 1)}
        assert len(seen[0]) == len(seen[1]) == 8
        assert not set(seen[0]) & set(seen[1]), f"epoch {epoch}: ranks share samples"
        assert set(seen[0]) | set(seen[1]) == {r["id"] for r in records}
        # The length-grouped sampler's order for (seed, epoch), dealt out per-device batch by batch.
        sampler = ModalityLengthGroupedSampler(lengths, STAGE1["batch_size"], seed=42)
        sampler.set_epoch(epoch)
        expected = [records[i]["id"] for i in sampler]
        batches = [expected[i : i + 2] for i in range(0, len(expected), 2)]
        assert seen[0] == [i for batch in batches[0::2] for i in batch]
        assert seen[1] == [i for batch in batches[1::2] for i in batch]
        orders.append(expected)
    assert orders[0] != orders[1], "each epoch must shuffle anew"


def test_gradients_are_synchronised_so_both_ranks_hold_bit_identical_weights(ddp_stage1):
    out = ddp_stage1["out"]
    ranks = [load_file(out / RANK_TRACE_DIR / f"rank-{rank}.safetensors") for rank in (0, 1)]
    assert ranks[0].keys() == ranks[1].keys() and ranks[0]
    for name in ranks[0]:
        assert torch.equal(ranks[0][name], ranks[1][name]), name
    final = load_file(out / "final" / "projector.safetensors")
    for name, value in final.items():
        assert torch.equal(value, ranks[0][name]), name
    assert [step for step, _ in _losses(out)] == list(range(1, STEPS + 1))


def test_only_rank_0_writes_checkpoints_metrics_and_the_final_model(ddp_stage1):
    out, probe = ddp_stage1["out"], ddp_stage1["probe"]
    writes = {rank: set((probe / f"writes-rank{rank}.txt").read_text().split()) for rank in (0, 1)}
    run_dir = str(out.resolve())
    mine = {rank: {p for p in paths if p.startswith(run_dir) and f"/{RANK_TRACE_DIR}/" not in p}
            for rank, paths in writes.items()}
    assert mine[1] == set(), sorted(mine[1])[:5]
    wrote = {Path(p).relative_to(run_dir).as_posix() for p in mine[0]}
    for expected in ("metrics.jsonl", "config.yaml", "final/model.safetensors", "final/projector.safetensors",
                     "loss_curve.png", "checkpoints/step-00000004/trainer_state.pt", "preflight/report.json"):
        assert expected in wrote, f"rank 0 did not write {expected}: {sorted(wrote)}"
    assert len(_losses(out)) == STEPS  # one metrics line per step, not one per rank


def test_resume_from_a_ddp_checkpoint_reproduces_the_two_process_loss_curve(ddp_stage1, ddp_data):
    source = ddp_stage1["out"]
    config = ddp_config(ddp_data, "resumed")
    target = load_config(config).stage_dir("stage1")
    shutil.copytree(source, target)
    # As if the job died after the step-4 checkpoint: later checkpoints, the result and the traces are gone.
    for path in [target / "final", target / RANK_TRACE_DIR, *sorted((target / "checkpoints").glob("step-*"))[1:]]:
        shutil.rmtree(path)
    launch("stage1", config, probe=ddp_data["root"] / "resumed-probe")
    assert [t["epoch"] for t in _trace(target, 0)] == [1] * 4  # only the second epoch ran again
    reference, resumed = _losses(source), _losses(target)
    assert [s for s, _ in resumed] == [s for s, _ in reference]
    torch.testing.assert_close(torch.tensor([v for _, v in resumed]), torch.tensor([v for _, v in reference]),
                               rtol=0, atol=1e-6)
    final = {k: load_file(d / "final" / "projector.safetensors") for k, d in (("ref", source), ("new", target))}
    for name in final["ref"]:
        torch.testing.assert_close(final["new"][name], final["ref"][name], rtol=0, atol=1e-6)


def test_the_two_process_result_equals_one_process_with_the_same_global_batch(ddp_stage1, ddp_data):
    # One process accumulates 2 micro-batches of 2 where two processes each take one: the same 4 samples per
    # step (the sampler groups by the global batch), so only float summation order differs.
    cfg = load_config(ddp_config(ddp_data, "single"))
    train(cfg, "stage1")
    single = load_file(cfg.stage_dir("stage1") / "final" / "projector.safetensors")
    ddp = load_file(ddp_stage1["out"] / "final" / "projector.safetensors")
    for name in single:
        torch.testing.assert_close(ddp[name], single[name], rtol=1e-4, atol=1e-5)
    ddp_losses = torch.tensor([v for _, v in _losses(ddp_stage1["out"])])
    torch.testing.assert_close(ddp_losses, torch.tensor([v for _, v in _losses(cfg.stage_dir("stage1"))]),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("method", ["full", "lora"])
def test_stage2_trains_on_two_processes_including_a_text_only_batch(ddp_stage1, ddp_data, method):
    init = ddp_stage1["out"] / "final"
    config = ddp_config(ddp_data, f"stage2-{method}", stage2={"init_from": str(init), "method": method})
    launch("stage2", config, probe=ddp_data["root"] / f"stage2-{method}-probe")
    out = load_config(config).stage_dir("stage2")
    traces = [_trace(out, rank) for rank in (0, 1)]
    ids = [i for trace in traces for t in trace for i in t["ids"]]
    assert sorted(ids) == sorted({*ids}) and len(ids) == 12  # disjoint, all 12 seen once
    assert any(all(i.startswith("text-") for i in t["ids"]) for t in traces[0])  # a batch without images ran
    ranks = [load_file(out / RANK_TRACE_DIR / f"rank-{rank}.safetensors") for rank in (0, 1)]
    assert all(torch.equal(ranks[0][name], ranks[1][name]) for name in ranks[0])
    assert any("lora_" in name for name in ranks[0]) == (method == "lora")
    assert (out / "final" / ("adapter_model.safetensors" if method == "lora" else "model.safetensors")).exists()


def test_killing_one_rank_fails_the_whole_job_naming_the_rank(ddp_data):
    config = ddp_config(ddp_data, "killed", stage1={"max_steps": 100000})
    probe = ddp_data["root"] / "killed-probe"
    proc = subprocess.Popen(_launch_cmd("stage1", config), env=_env(probe), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    trace = load_config(config).stage_dir("stage1") / RANK_TRACE_DIR / "rank-1.jsonl"
    deadline = time.monotonic() + 180
    try:
        while not (trace.exists() and len(read_metrics(trace)) >= 2):
            assert proc.poll() is None and time.monotonic() < deadline, "the job never reached step 2"
            time.sleep(0.2)
        os.kill(read_metrics(trace)[0]["pid"], signal.SIGKILL)
        output, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode != 0
    assert "rank      : 1" in output and "Signal 9 (SIGKILL)" in output, output[-3000:]
    assert not (load_config(config).stage_dir("stage1") / "final").exists()
