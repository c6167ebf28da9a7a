"""The `python -m training` command line on the tiny config (the demo's path), and the shipped configs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from transformers import AutoProcessor, LlavaForConditionalGeneration

from tests.conftest import REPO
from tests.test_training_support import tiny_config_file
from training.cli import main
from training.config import load_config

CONFIGS = REPO / "training" / "configs"


def test_cli_runs_stage1_stage2_lora_and_merge(coco_images, capsys):
    config = str(tiny_config_file(coco_images, "cli"))
    main(["stage1", "--config", config, "stage1.max_steps=2"])
    main(["stage2", "--config", config, "stage2.method=lora", "stage2.max_steps=2"])
    main(["merge", "--config", config])
    stage1_final, stage2_final, merged = (Path(line) for line in capsys.readouterr().out.split())
    assert (stage1_final / "model.safetensors").exists()
    assert (stage2_final / "adapter_config.json").exists()
    assert LlavaForConditionalGeneration.from_pretrained(merged).config.model_type == "llava"
    assert AutoProcessor.from_pretrained(merged).image_token == "<image>"
    cfg = load_config(config)
    assert merged == cfg.merged_dir and stage1_final == cfg.stage_dir("stage1") / "final"
    assert yaml.safe_load((cfg.stage_dir("stage2") / "config.yaml").read_text())["stage2"]["method"] == "lora"


def test_cli_rejects_a_malformed_override_or_a_missing_config_in_one_line(tmp_path, capsys):
    (tmp_path / "c.yaml").write_text("seed: 1\n")
    with pytest.raises(SystemExit) as exited:
        main(["stage1", "--config", str(tmp_path / "c.yaml"), "stage1.learning_rate"])
    assert exited.value.code == 2 and "key=value" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exited:
        main(["check", "--config", str(tmp_path / "missing.yaml")])
    err = capsys.readouterr().err
    assert exited.value.code == 2 and "missing.yaml does not exist" in err and "Traceback" not in err


def test_shipped_recipe_holds_the_paper_defaults():
    cfg = load_config(CONFIGS / "llava_v1_7b.yaml")
    assert (cfg.projector, cfg.vision_feature_layer, cfg.vision_feature_select_strategy) == ("linear", -2, "default")
    assert cfg.image_preprocessing == "crop"
    s1, s2 = cfg.stage("stage1"), cfg.stage("stage2")
    assert (s1.learning_rate, s1.batch_size, s1.epochs, s1.template) == (2e-3, 128, 1, "plain")
    assert (s2.learning_rate, s2.batch_size, s2.epochs, s2.template) == (2e-5, 32, 3, "vicuna_v1")
    assert (s2.lora_r, s2.lora_alpha, s1.warmup_ratio) == (64, 16, 0.03)
    for stage in (2, 3):
        deepspeed = json.loads((CONFIGS / f"zero{stage}.json").read_text())
        assert deepspeed["zero_optimization"]["stage"] == stage
        launch = yaml.safe_load((CONFIGS / f"accelerate_zero{stage}.yaml").read_text())
        assert (REPO / launch["deepspeed_config"]["deepspeed_config_file"]).exists()


def test_llava_v1_5_recipe_holds_table_9():
    cfg = load_config(CONFIGS / "llava_v1_5_7b.yaml")
    assert (cfg.vision_model, cfg.projector, cfg.image_preprocessing) == (
        "openai/clip-vit-large-patch14-336",
        "mlp2x_gelu",
        "pad",
    )
    s1, s2 = cfg.stage("stage1"), cfg.stage("stage2")
    assert (s1.learning_rate, s1.batch_size, s1.epochs, s1.template) == (1e-3, 256, 1, "plain")
    assert (s2.learning_rate, s2.batch_size, s2.epochs, s2.template) == (2e-5, 128, 1, "vicuna_v1")
    assert (s1.warmup_ratio, s1.weight_decay, s2.warmup_ratio, s2.weight_decay) == (0.03, 0.0, 0.03, 0.0)
    assert s1.batch_size % s1.per_device_batch_size == 0 and s2.batch_size % s2.per_device_batch_size == 0


@pytest.mark.parametrize("name", ["llava_v1_7b.yaml", "llava_v1_5_7b.yaml"])
def test_every_recipe_value_carries_its_source(name):
    for line in (CONFIGS / name).read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#") and not line.rstrip().endswith(":"):
            assert "# [" in line or "# (vistune)" in line, f"{name}: no source for {line.split('#')[0].strip()!r}"
