"""Stage 1: the projector alone learns; vision tower and LLM stay bit-identical; the result loads and generates."""

from __future__ import annotations

import torch
from transformers import LlavaForConditionalGeneration

from tests.test_training_support import coco_captions, generate_reply, stage1_run
from training.config import load_config
from training.metrics import read_metrics


def test_stage1_overfits_caption_pairs_and_trains_only_the_projector(coco_images):
    config_path, before = stage1_run(coco_images)
    cfg = load_config(config_path)
    out = cfg.stage_dir("stage1")
    losses = [record["loss"] for record in read_metrics(out / "metrics.jsonl")]
    first, last = losses[0], sum(losses[-3:]) / 3
    assert last <= 0.5 * first, f"loss fell only from {first:.3f} to {last:.3f}"
    assert (out / "loss_curve.png").stat().st_size > 0
    assert any((out / "tensorboard").iterdir())

    after = LlavaForConditionalGeneration.from_pretrained(out / "final").state_dict()
    assert set(after) == set(before)
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    assert changed and all("multi_modal_projector" in name for name in changed), sorted(changed)[:5]
    # both projector layers learn (mlp2x_gelu); nothing else moved, bit for bit
    assert {name.rsplit(".", 2)[-2] for name in changed} == {"linear_1", "linear_2"}
    assert (out / "final" / "projector.safetensors").exists()


def test_stage1_result_generates_from_an_image_and_a_question(coco_images):
    config_path, _ = stage1_run(coco_images)
    final = load_config(config_path).stage_dir("stage1") / "final"
    image = coco_images / "train2017" / coco_captions(coco_images, 1)[0][0]
    _, new_tokens = generate_reply(final, image, "What is in the image?")
    assert new_tokens > 0


def test_linear_projector_keeps_its_second_layer_the_identity(coco_images, tmp_path):
    from tests.test_training_support import tiny_config_file
    from training.loop import train

    cfg = load_config(tiny_config_file(coco_images, "linear"), ["projector=linear", "stage1.max_steps=2"])
    train(cfg, "stage1")
    model = LlavaForConditionalGeneration.from_pretrained(cfg.stage_dir("stage1") / "final")
    projector = model.model.multi_modal_projector
    assert model.config.projector_hidden_act == "linear"
    torch.testing.assert_close(projector.linear_2.weight, torch.eye(projector.linear_2.weight.shape[0]))
    assert torch.count_nonzero(projector.linear_2.bias) == 0


def test_batches_whose_replies_were_truncated_away_do_not_poison_training(coco_images):
    from tests.test_training_support import tiny_config_file
    from training.loop import train

    # bos + 16 image tokens fill model_max_length: no caption token survives truncation
    cfg = load_config(tiny_config_file(coco_images, "truncated"), ["model_max_length=17", "stage1.max_steps=2"])
    train(cfg, "stage1")
    assert [record["loss"] for record in read_metrics(cfg.stage_dir("stage1") / "metrics.jsonl")] == [0.0, 0.0]


def test_data_loader_workers_give_the_same_losses_as_the_main_process(coco_images):
    from tests.test_training_support import tiny_config_file
    from training.loop import train

    losses = {}
    for workers in (0, 2):
        cfg = load_config(
            tiny_config_file(coco_images, f"workers-{workers}"), [f"num_workers={workers}", "stage1.max_steps=2"]
        )
        train(cfg, "stage1")
        losses[workers] = [record["loss"] for record in read_metrics(cfg.stage_dir("stage1") / "metrics.jsonl")]
    assert len(losses[0]) == 2 and losses[0] == losses[2]
