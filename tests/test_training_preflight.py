"""Preflight, the bad-sample policy, samples failing at training time, and held-out loss (issue 19, items 1, 2, 4)."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest

from tests.test_training_support import coco_captions, tiny_base
from training import loop
from training.cli import main
from training.config import load_config
from training.loop import RANK_TRACE_DIR, TooManyBadSamples, train
from training.metrics import read_metrics
from training.model import processor_for_stage
from training.preflight import PreflightFailed, check_records
from training.tiny import write_tiny_config


def _turns(question: str, answer: str = "A photo.") -> list[dict]:
    return [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]


@pytest.fixture(scope="module")
def images(coco_images, tmp_path_factory) -> tuple[Path, list[str]]:
    """A private image root (tests corrupt files in it): 8 coco images and one truncated JPEG."""
    root = tmp_path_factory.mktemp("images")
    names = []
    for name, _ in coco_captions(coco_images, 8):
        shutil.copy(coco_images / "train2017" / name, root / name)
        names.append(name)
    whole = (root / names[0]).read_bytes()
    (root / "truncated.jpg").write_bytes(whole[: len(whole) // 2])  # header intact, half the pixels gone
    return root, names


def _good(images: tuple[Path, list[str]]) -> list[dict]:
    _, names = images
    return [{"id": f"ok-{i}", "image": name, "conversations": _turns("<image>\nDescribe.", f"Picture {i}.")}
            for i, name in enumerate(names)]


# (id, record, problem) - one per kind of bad record
BAD = [
    ("missing", {"image": "nowhere.jpg", "conversations": _turns("<image>\nHi")}, "image_missing"),
    ("corrupt", {"image": "truncated.jpg", "conversations": _turns("<image>\nHi")}, "image_unreadable"),
    ("escapes", {"image": "../secret.jpg", "conversations": _turns("<image>\nHi")}, "image_path"),
    ("two-images", {"image": "IMG", "conversations": _turns("<image>\n<image> Hi")}, "placeholder"),
    ("late-image", {"image": "IMG", "conversations": [*_turns("Hi"), *_turns("<image> and?")]}, "placeholder"),
    ("no-image", {"conversations": _turns("<image>\nHi")}, "placeholder"),
    ("roles", {"conversations": [{"from": "gpt", "value": "Hi"}, {"from": "human", "value": "Yo"}]}, "conversation"),
    ("no-reply", {"conversations": [{"from": "human", "value": "Hi"}]}, "conversation"),
    ("no-turns", {"conversations": []}, "json"),
    ("bad-turn", {"conversations": [{"from": "human", "value": 3}, {"from": "gpt", "value": "x"}]}, "json"),
]


def _records(images: tuple[Path, list[str]]) -> list:
    records = _good(images)
    for sample_id, record, _ in BAD:
        image = {"image": images[1][0]} if record.get("image") == "IMG" else {}
        records.append({"id": sample_id, **record, **image})
    records.append("not an object")
    records.append({"id": "text-only", "conversations": _turns("Name a colour.", "Blue.")})
    records.append({"id": "added", "image": images[1][1], "conversations": _turns("Describe.")})  # note, not bad
    records.append({"id": "long", "image": images[1][2], "conversations": _turns("<image>\nTalk.", "word " * 600)})
    records.append({"id": "ok-0", "conversations": _turns("Again.")})  # a duplicate id
    return records


def _config(images, tmp_path: Path, records: list, **fields) -> Path:
    vision, llm = tiny_base()
    data = tmp_path / "data.json"
    data.write_text(json.dumps(records))
    stage1 = {"data": str(data), "batch_size": 4, "per_device_batch_size": 4, **fields.pop("stage1", {})}
    fields.setdefault("image_root", images[0])
    return write_tiny_config(tmp_path / "tiny.yaml", vision, llm, output_dir=tmp_path / "run", stage1=stage1,
                             **fields)


@pytest.fixture(scope="module")
def processor(images, tmp_path_factory):
    cfg = load_config(_config(images, tmp_path_factory.mktemp("processor"), []))
    return processor_for_stage(cfg, cfg.stage("stage1"))


def test_preflight_counts_every_problem_with_record_ids(images, processor):
    records = _records(images)
    report = check_records(records, images[0], processor, "vicuna_v1", 512, images="decode", workers=1)
    expected: dict[str, int] = {}
    for _, _, problem in BAD:
        expected[problem] = expected.get(problem, 0) + 1
    expected["json"] += 1  # "not an object"
    assert report.problems == expected
    bad_ids = {finding.id for finding in report.bad}
    assert bad_ids == {sample_id for sample_id, _, _ in BAD} | {str(len(records) - 5)}
    assert report.notes == {"placeholder_added": 1, "truncated": 1, "duplicate_id": 2}
    assert report.truncated_tokens > 0 and report.examples["image_missing"][0]["id"] == "missing"
    assert len(report.bad_indices) == len(BAD) + 1 and not report.ok
    # By header only, the truncated JPEG passes: its pixels are never read.
    header = check_records(records, images[0], processor, "vicuna_v1", 512, images="header", workers=1)
    assert "image_unreadable" not in header.problems and header.problems["image_missing"] == 1
    # The image tokens alone (16 + bos) do not fit in 10.
    short = check_records(_good(images), images[0], processor, "plain", 10, workers=1)
    assert short.problems == {"image_tokens_too_long": 8}


def test_a_parallel_check_finds_exactly_what_a_serial_one_does(images, processor):
    records = _records(images) * 150  # 3,300 records: past the in-process threshold
    serial = check_records(records, images[0], processor, "vicuna_v1", 512, images="decode", workers=1)
    parallel = check_records(records, images[0], processor, "vicuna_v1", 512, images="decode", workers=2)
    assert parallel.workers == 2
    assert (parallel.problems, parallel.notes, parallel.bad_indices, parallel.lengths) == (
        serial.problems, serial.notes, serial.bad_indices, serial.lengths)


def test_check_command_saves_the_report_and_exits_1_on_bad_records(images, tmp_path, capsys):
    config = _config(images, tmp_path, _records(images))
    with pytest.raises(SystemExit) as exit_info:
        main(["check", "--config", str(config), "--stage", "stage1", "--images", "decode"])
    assert exit_info.value.code == 1
    report_dir = load_config(config).stage_dir("stage1") / "preflight"
    listed = [json.loads(line)["id"] for line in (report_dir / "bad_records.jsonl").read_text().splitlines()]
    assert {sample_id for sample_id, _, _ in BAD} <= set(listed)
    assert json.loads((report_dir / "report.json").read_text())["bad_records"] == len(BAD) + 1
    assert (report_dir / "lengths.png").stat().st_size > 0
    assert "image_missing" in capsys.readouterr().out


def test_a_stage_fails_before_loading_weights_listing_every_bad_record(images, tmp_path, monkeypatch):
    def no_weights(*args, **kwargs):
        raise AssertionError("weights loaded before preflight failed")

    monkeypatch.setattr(loop, "prepare_model", no_weights)
    cfg = load_config(_config(images, tmp_path, _records(images)))
    with pytest.raises(PreflightFailed) as error:
        train(cfg, "stage1")
    for sample_id, _, problem in BAD:
        assert f"id {sample_id} " in str(error.value) and problem in str(error.value)


def test_skip_drops_bad_records_before_training_and_counts_them(images, tmp_path):
    cfg = load_config(_config(images, tmp_path, _records(images), rank_trace=True, data={"on_bad_sample": "skip"},
                              stage1={"max_steps": 3}))
    out = train(cfg, "stage1")
    assert read_metrics(out / "metrics.jsonl")[0]["preflight_skipped"] == len(BAD) + 1
    trained = {i for t in read_metrics(out / RANK_TRACE_DIR / "rank-0.jsonl") for i in t["ids"]}
    assert trained and not trained & {sample_id for sample_id, _, _ in BAD}


def _corrupting_run(images, tmp_path, monkeypatch, max_bad_fraction: float):
    root, names = images
    image_root = tmp_path / "images"
    shutil.copytree(root, image_root)
    cfg = load_config(_config(images, tmp_path, _good(images), rank_trace=True, image_root=image_root,
                              data={"max_bad_fraction": max_bad_fraction}, stage1={"epochs": 2}))
    calls = []
    real_step = loop.train_step

    def corrupt_after_first_step(run, batch):
        calls.append(1)
        if len(calls) == 1:  # preflight passed long ago; now one image goes bad
            (image_root / names[3]).write_bytes(b"\xff\xd8 not a jpeg any more")
        return real_step(run, batch)

    monkeypatch.setattr(loop, "train_step", corrupt_after_first_step)
    return cfg


def test_an_image_corrupted_mid_run_is_replaced_and_logged_with_its_id(images, tmp_path, monkeypatch, caplog):
    cfg = _corrupting_run(images, tmp_path, monkeypatch, max_bad_fraction=0.2)  # 1 of 8 allowed
    with caplog.at_level(logging.WARNING):
        out = train(cfg, "stage1")
    metrics = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in metrics] == [1, 2, 3, 4] and metrics[-1]["bad_samples"] == 1
    assert "ok-3" in caplog.text and "replaced" in caplog.text
    epoch_1 = [i for t in read_metrics(out / RANK_TRACE_DIR / "rank-0.jsonl") if t["epoch"] == 1 for i in t["ids"]]
    assert len(epoch_1) == 8 and "ok-3" not in epoch_1  # another sample took its place
    assert (out / "final" / "model.safetensors").exists()


def test_training_stops_once_bad_samples_pass_max_bad_fraction(images, tmp_path, monkeypatch):
    cfg = _corrupting_run(images, tmp_path, monkeypatch, max_bad_fraction=0.0)
    with pytest.raises(TooManyBadSamples, match="ok-3"):
        train(cfg, "stage1")


@pytest.mark.parametrize("split", ["fraction", "file"])
def test_held_out_loss_is_logged_every_n_steps_and_drawn(images, tmp_path, split):
    records = _good(images)
    eval_split: object = 0.25
    if split == "file":
        held = tmp_path / "held_out.json"
        held.write_text(json.dumps(records[6:]))
        records, eval_split = records[:6], str(held)
    cfg = load_config(_config(images, tmp_path, records, rank_trace=True,
                              stage1={"eval_split": eval_split, "eval_every": 2, "max_steps": 4,
                                      "batch_size": 2, "per_device_batch_size": 2}))
    out = train(cfg, "stage1")
    metrics = read_metrics(out / "metrics.jsonl")
    held_out = [(r["step"], r["eval_loss"]) for r in metrics if "eval_loss" in r]
    assert [step for step, _ in held_out] == [2, 4] and all(loss > 0 for _, loss in held_out)
    trained = {i for t in read_metrics(out / RANK_TRACE_DIR / "rank-0.jsonl") for i in t["ids"]}
    assert len(trained) == 6  # the two held-out records never train
    assert (out / "loss_curve.png").stat().st_size > 0
    assert any((out / "tensorboard").iterdir())
