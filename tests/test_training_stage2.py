"""Stage 2 full / LoRA / QLoRA from the stage-1 result: what changes, what does not, merge, generate, resume."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from transformers import LlavaForConditionalGeneration

from tests.test_training_support import coco_captions, generate_reply, stage1_run, tiny_config_file
from training import loop
from training.config import load_config
from training.loop import PROJECTOR_FILE, train, train_step
from training.merge import merge
from training.metrics import read_metrics


def _stage2_config(coco_images, name: str, *overrides: str):
    config_path, _ = stage1_run(coco_images)
    stage1_final = load_config(config_path).stage_dir("stage1") / "final"
    return load_config(tiny_config_file(coco_images, name), [f"stage2.init_from={stage1_final}", *overrides])


def _weights(path) -> dict[str, torch.Tensor]:
    return LlavaForConditionalGeneration.from_pretrained(path).state_dict()


def _changed(before: dict, after: dict) -> set[str]:
    assert set(before) == set(after)
    return {name for name in before if not torch.equal(before[name], after[name])}


def _assert_generates(coco_images, model_dir) -> None:
    image = coco_images / "train2017" / coco_captions(coco_images, 2)[1][0]
    _, new_tokens = generate_reply(model_dir, image, "What is shown in the image?")
    assert new_tokens > 0


def test_stage2_full_trains_projector_and_llm_but_not_vision(coco_images):
    cfg = _stage2_config(coco_images, "full", "stage2.max_steps=3", "gradient_checkpointing=true")
    out = train(cfg, "stage2")
    changed = _changed(_weights(cfg.stage("stage2").init_from), _weights(out / "final"))
    assert not any("vision_tower" in name for name in changed)
    assert any("multi_modal_projector" in name for name in changed)
    assert any("language_model.layers" in name for name in changed)
    assert any("lm_head" in name for name in changed)
    merged = merge(cfg)
    assert not _changed(_weights(out / "final"), _weights(merged))
    _assert_generates(coco_images, merged)


@pytest.mark.parametrize("method", ["lora", "qlora"])
def test_stage2_adapters_touch_only_llm_linears_and_the_projector(coco_images, method):
    cfg = _stage2_config(coco_images, method, f"stage2.method={method}", "stage2.max_steps=3")
    out = train(cfg, "stage2")
    adapter = load_file(out / "final" / "adapter_model.safetensors")
    lora_keys = [key for key in adapter if "lora_" in key]
    assert lora_keys and all(".language_model." in key for key in lora_keys)
    assert not any("vision_tower" in key for key in adapter)
    assert any("multi_modal_projector" in key for key in adapter), "projector must be saved with the adapter"

    stage1 = _weights(cfg.stage("stage2").init_from)
    merged_dir = merge(cfg)
    merged = _weights(merged_dir)
    changed = _changed(stage1, merged)
    llm_linears = ("_proj.weight",)
    assert all(
        "multi_modal_projector" in name or (".language_model." in name and name.endswith(llm_linears))
        for name in changed
    ), sorted(changed)[:5]
    assert any("multi_modal_projector" in name for name in changed)
    assert any(".language_model." in name for name in changed)
    for name, value in load_file(out / "final" / PROJECTOR_FILE).items():
        torch.testing.assert_close(merged[name], value)
    _assert_generates(coco_images, merged_dir)


def test_qlora_quantizes_only_llm_linears_to_4bit(coco_images):
    from bitsandbytes.nn import Linear4bit

    from training.lora import apply_lora
    from training.model import load_for_stage

    cfg = _stage2_config(coco_images, "qlora-types", "stage2.method=qlora")
    stage = cfg.stage("stage2")
    model, _ = load_for_stage(cfg, stage)
    model = apply_lora(model, stage, gradient_checkpointing=False)
    quantized = {name for name, module in model.named_modules() if isinstance(module, Linear4bit)}
    assert quantized and all(".language_model." in name for name in quantized)
    llm = model.base_model.model.model.language_model
    assert isinstance(llm.layers[0].self_attn.q_proj.base_layer, Linear4bit)
    assert isinstance(llm.layers[0].mlp.down_proj.base_layer, Linear4bit)
    vision_q = model.base_model.model.model.vision_tower.encoder.layers[0].self_attn.q_proj
    assert type(vision_q) is torch.nn.Linear  # no adapter and no quantization on the vision tower
    projector = model.base_model.model.model.multi_modal_projector.modules_to_save["default"]
    assert projector.linear_1.weight.dtype == torch.float32 and projector.linear_1.weight.requires_grad


class SimulatedCrash(RuntimeError):
    """Raised by the test in place of a killed process."""


def test_resume_continues_the_uninterrupted_loss_trajectory(coco_images, monkeypatch):
    # LoRA dropout draws random numbers, so this also checks that RNG state is restored.
    common = ["stage2.method=lora", "stage2.max_steps=5", "save_every=2"]
    straight = _stage2_config(coco_images, "resume-straight", *common)
    train(straight, "stage2")
    interrupted = _stage2_config(coco_images, "resume-interrupted", *common)

    def crash_during_step_3(run, batch):
        if run.progress.step == 2:
            raise SimulatedCrash("killed after the step-2 checkpoint")
        return train_step(run, batch)

    monkeypatch.setattr(loop, "train_step", crash_during_step_3)
    with pytest.raises(SimulatedCrash):
        train(interrupted, "stage2")
    monkeypatch.undo()
    assert [r["step"] for r in read_metrics(interrupted.stage_dir("stage2") / "metrics.jsonl")] == [1, 2]
    assert [p.name for p in (interrupted.stage_dir("stage2") / "checkpoints").iterdir()] == ["step-00000002"]
    assert not (interrupted.stage_dir("stage2") / "final").exists()
    train(interrupted, "stage2")

    expected = read_metrics(straight.stage_dir("stage2") / "metrics.jsonl")
    resumed = read_metrics(interrupted.stage_dir("stage2") / "metrics.jsonl")
    assert [r["step"] for r in resumed] == [1, 2, 3, 4, 5]
    torch.testing.assert_close([r["loss"] for r in resumed], [r["loss"] for r in expected], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close([r["lr"] for r in resumed], [r["lr"] for r in expected])
    a = load_file(straight.stage_dir("stage2") / "final" / PROJECTOR_FILE)
    b = load_file(interrupted.stage_dir("stage2") / "final" / PROJECTOR_FILE)
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-6)


def test_projector_can_have_its_own_learning_rate(coco_images):
    overrides = ["stage2.method=lora", "stage2.max_steps=2", "stage2.projector_learning_rate=0"]
    cfg = _stage2_config(coco_images, "projector-lr", *overrides)
    out = train(cfg, "stage2")
    stage1_projector = load_file(cfg.stage("stage2").init_from / PROJECTOR_FILE)
    for name, value in load_file(out / "final" / PROJECTOR_FILE).items():
        torch.testing.assert_close(value, stage1_projector[name], rtol=0, atol=0)  # lr 0: frozen in effect
    adapter = load_file(out / "final" / "adapter_model.safetensors")
    assert any("lora_B" in key and value.abs().sum() > 0 for key, value in adapter.items())  # B starts at zero
