"""`compile=true`: compiled decoder layers train like eager ones, share one graph, and the loop still saves.

Backend `aot_eager`: it runs dynamo and AOT autograd (the graph capture, the checkpoint region, the
backward wiring) without inductor's C++ compiler, which a fresh CI machine may lack.
"""

from __future__ import annotations

import logging

import pytest
import torch
from torch._dynamo.utils import counters
from transformers import LlavaForConditionalGeneration

from tests.test_training_support import tiny_base, tiny_config_file
from training.compile import compile_layers, decoder_layers
from training.config import load_config
from training.loop import disable_kv_cache, enable_checkpointing
from training.metrics import read_metrics
from training.model import build_base_model
from training.stages import freeze_backbones
from training.tiny import write_tiny_config

BACKEND = "aot_eager"


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()


def stage1_model(tmp_path, checkpointing: bool) -> LlavaForConditionalGeneration:
    """The tiny Llava as the loop prepares it for stage 1 (no cache, projector trains)."""
    vision, llm = tiny_base()
    cfg = load_config(write_tiny_config(tmp_path / "tiny.yaml", vision, llm))
    torch.manual_seed(0)
    model, _ = build_base_model(cfg)
    disable_kv_cache(model)
    if checkpointing:
        enable_checkpointing(model)
    freeze_backbones(model, ("projector",), "full")
    return model.train()


def image_batch(model: LlavaForConditionalGeneration, batch: int, length: int) -> dict[str, torch.Tensor]:
    """Random caption tokens after one image block, the second sample right-padded by 3 tokens."""
    config, generator = model.config, torch.Generator().manual_seed(length)
    image_tokens, size = config.image_seq_length, config.vision_config.image_size
    ids = torch.randint(3, config.text_config.vocab_size - 2, (batch, length), generator=generator)
    ids[:, 0] = 1
    ids[:, 1 : 1 + image_tokens] = config.image_token_index
    mask = torch.ones_like(ids)
    mask[1, -3:] = 0
    labels = ids.masked_fill(mask == 0, -100)
    labels[:, : 1 + image_tokens] = -100
    pixels = torch.randn(batch, 3, size, size, generator=generator)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels, "pixel_values": pixels}


def loss_and_projector_grad(model, batch) -> tuple[torch.Tensor, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    loss = model(**batch).loss
    loss.backward()
    return loss.detach(), model.model.multi_modal_projector.linear_1.weight.grad.clone()


@pytest.mark.parametrize("checkpointing", [False, True], ids=["no-ckpt", "ckpt"])
def test_compiled_layers_give_the_eager_loss_and_projector_gradient(tmp_path, checkpointing):
    model = stage1_model(tmp_path, checkpointing)
    batch = image_batch(model, 2, 40)
    eager_loss, eager_grad = loss_and_projector_grad(model, batch)
    assert eager_grad.abs().sum() > 0

    assert compile_layers(model, BACKEND) == len(decoder_layers(model)) == model.config.text_config.num_hidden_layers
    compiled_loss, compiled_grad = loss_and_projector_grad(model, batch)
    torch.testing.assert_close(compiled_loss, eager_loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(compiled_grad, eager_grad, rtol=1e-4, atol=1e-6)
    assert counters["stats"]["unique_graphs"] >= 1, "nothing was compiled: the layers ran eager"


def test_all_layers_share_one_graph_and_a_new_length_recompiles_once(tmp_path):
    model = stage1_model(tmp_path, checkpointing=False)
    compile_layers(model, BACKEND)
    loss_and_projector_grad(model, image_batch(model, 2, 40))
    # one graph for every layer: a per-layer guard (e.g. a KV cache indexed by layer) would compile each
    assert counters["stats"]["unique_graphs"] == 1
    for length in (33, 47, 29):
        loss_and_projector_grad(model, image_batch(model, 2, length))
    assert counters["stats"]["unique_graphs"] == 2  # the first new length compiles a dynamic-length graph


def test_lora_layers_compile_into_one_graph_with_the_eager_adapter_gradient(tmp_path):
    from training.config import Stage2Config
    from training.lora import apply_lora

    stage = Stage2Config(method="lora", lora_dropout=0.0)  # no dropout: eager and compiled draw no random masks
    model = apply_lora(stage1_model(tmp_path, checkpointing=False), stage, gradient_checkpointing=False)
    freeze_backbones(model, stage.train, stage.method)
    batch = image_batch(model.get_base_model(), 2, 40)

    def loss_and_adapter_grad() -> tuple[torch.Tensor, torch.Tensor]:
        model.zero_grad(set_to_none=True)
        loss = model(**batch).loss
        loss.backward()
        return loss.detach(), next(p.grad for n, p in model.named_parameters() if "lora_B" in n).clone()

    eager_loss, eager_grad = loss_and_adapter_grad()
    assert compile_layers(model, BACKEND) == model.config.text_config.num_hidden_layers
    compiled_loss, compiled_grad = loss_and_adapter_grad()
    torch.testing.assert_close(compiled_loss, eager_loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(compiled_grad, eager_grad, rtol=1e-4, atol=1e-6)
    assert counters["stats"]["unique_graphs"] == 1


def test_4bit_layers_are_left_eager_with_a_warning(tmp_path, caplog):
    from bitsandbytes.nn import Linear4bit

    model = stage1_model(tmp_path, checkpointing=False)
    mlp = decoder_layers(model)[0].mlp
    mlp.down_proj = Linear4bit(mlp.down_proj.in_features, mlp.down_proj.out_features, bias=False)
    with caplog.at_level(logging.WARNING, logger="training.compile"):
        assert compile_layers(model, BACKEND) == 0
    assert "4-bit" in caplog.text


def test_stage1_train_with_compile_matches_eager_losses_and_saves_a_loadable_model(coco_images):
    losses = {}
    for compiled in (False, True):
        cfg = load_config(
            tiny_config_file(coco_images, f"compile-{compiled}"),
            [
                f"compile={str(compiled).lower()}",
                f"compile_backend={BACKEND}",
                "stage1.max_steps=2",
                # the stage's own setting overrides the tiny config's top-level gradient_checkpointing=false
                "stage1.gradient_checkpointing=true",
            ],
        )
        assert cfg.stage("stage1").gradient_checkpointing and not cfg.stage("stage2").gradient_checkpointing
        from training.loop import train

        out = train(cfg, "stage1")
        losses[compiled] = [record["loss"] for record in read_metrics(out / "metrics.jsonl")]
    assert counters["stats"]["unique_graphs"] >= 1
    assert len(losses[True]) == 2
    assert losses[True] == pytest.approx(losses[False], rel=1e-4)

    final = LlavaForConditionalGeneration.from_pretrained(out / "final")
    assert not any("_orig_mod" in name for name in final.state_dict())
    assert final.config.text_config.use_cache  # the saved model serves inference with a KV cache
