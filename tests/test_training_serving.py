"""`convert-for-serving` (`training/serving.py`): the paper's `linear` projector rewritten into a relu form that
vLLM loads, with the same outputs.

On CPU: the tiny model's logits and greedy tokens are bitwise equal in fp32 and bf16; at 7B projector shapes
the projector output is equal within float rounding. With vLLM and a GPU: the converted checkpoint loads and
generates what transformers generates (skipped elsewhere).
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import pytest
import torch
from PIL import Image
from transformers import (
    AutoProcessor,
    CLIPVisionConfig,
    LlamaConfig,
    LlamaForCausalLM,
    LlavaConfig,
    LlavaForConditionalGeneration,
)
from transformers.models.llava.modeling_llava import LlavaMultiModalProjector

from tests.test_training_support import tiny_base
from training.cli import main
from training.config import load_config
from training.model import build_base_model, projector_type
from training.serving import convert_for_serving, split_linear_projector, warn_if_linear
from training.templates import VICUNA_SYSTEM
from training.tiny import build_tokenizer, save_tiny_clip, tiny_llama_config, write_tiny_config

IMAGE = Path(__file__).parent / "assets" / "nonsquare_48x24.png"
PROMPT = f"{VICUNA_SYSTEM} USER: <image>\nWhat is in the image? ASSISTANT:"


def _linear_checkpoint(out: Path, vision: Path | None = None, llm: Path | None = None) -> Path:
    """A tiny Llava with the paper's `linear` projector (random linear_1, identity linear_2), saved."""
    base_vision, base_llm = tiny_base()
    cfg = load_config(write_tiny_config(out / "tiny.yaml", vision or base_vision, llm or base_llm, projector="linear"))
    torch.manual_seed(0)
    model, processor = build_base_model(cfg)
    model.save_pretrained(out / "linear")
    processor.save_pretrained(out / "linear")
    return out / "linear"


def _outputs(path: Path, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    model = LlavaForConditionalGeneration.from_pretrained(path, dtype=dtype).eval()
    inputs = AutoProcessor.from_pretrained(path)(images=Image.open(IMAGE), text=PROMPT, return_tensors="pt")
    inputs["pixel_values"] = inputs["pixel_values"].to(dtype)
    with torch.no_grad():
        logits = model(**inputs).logits
        tokens = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    return logits, tokens


def test_converted_checkpoint_gives_bitwise_equal_outputs(tmp_path, capsys):
    src = _linear_checkpoint(tmp_path)
    main(["convert-for-serving", str(src), str(tmp_path / "served")])
    dst = Path(capsys.readouterr().out.split()[-1])
    config = LlavaForConditionalGeneration.from_pretrained(dst).config
    assert config.projector_hidden_act == "relu"  # in vLLM's activation registry; `linear` is not
    for dtype in (torch.float32, torch.bfloat16):
        (logits, tokens), (served_logits, served_tokens) = _outputs(src, dtype), _outputs(dst, dtype)
        assert torch.equal(logits, served_logits), dtype
        assert torch.equal(tokens, served_tokens), dtype
    with pytest.raises(ValueError, match="for serving only"):
        projector_type(config)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_split_at_7b_projector_shapes_is_equal_within_rounding(dtype):
    # CLIP ViT-L (1024) -> Vicuna-7B (4096): the GEMM's reduction order changes with its depth, so not bitwise.
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(hidden_size=1024, num_attention_heads=16),
        text_config=LlamaConfig(hidden_size=4096, num_attention_heads=32),
        projector_hidden_act="linear",
    )
    torch.manual_seed(0)
    projector = LlavaMultiModalProjector(config).to(dtype).eval()
    with torch.no_grad():
        projector.linear_2.weight.copy_(torch.eye(4096))
        projector.linear_2.bias.zero_()
        features = torch.randn(1, 64, 1024, dtype=dtype) * 3
        before = projector(features)
        split_linear_projector(projector)
        after = projector(features)
    torch.testing.assert_close(after, before)  # fp32: ~1e-6 relative; bf16: one rounding step at most


def test_conversion_refuses_what_it_cannot_convert_exactly(tmp_path):
    narrow = LlavaConfig(
        vision_config=CLIPVisionConfig(hidden_size=64, num_attention_heads=2),
        text_config=LlamaConfig(hidden_size=96, num_attention_heads=2),
        projector_hidden_act="linear",
    )
    projector = LlavaMultiModalProjector(narrow)
    with pytest.raises(ValueError, match="more than half"):
        split_linear_projector(projector)
    square = LlavaConfig(
        vision_config=CLIPVisionConfig(hidden_size=32, num_attention_heads=2),
        text_config=LlamaConfig(hidden_size=64, num_attention_heads=2),
        projector_hidden_act="linear",
    )
    with pytest.raises(ValueError, match="not the identity"):
        split_linear_projector(LlavaMultiModalProjector(square))  # random linear_2: not vistune's pinned identity
    with pytest.raises(FileNotFoundError, match="no Llava checkpoint"):
        convert_for_serving(tmp_path / "missing", tmp_path / "out")


def test_mlp2x_gelu_needs_no_conversion_and_linear_saves_warn(tmp_path, caplog):
    base_vision, base_llm = tiny_base()
    cfg = load_config(write_tiny_config(tmp_path / "tiny.yaml", base_vision, base_llm, projector="mlp2x_gelu"))
    model, _ = build_base_model(cfg)
    model.save_pretrained(tmp_path / "gelu")
    with pytest.raises(ValueError, match="loads in vLLM as it is"):
        convert_for_serving(tmp_path / "gelu", tmp_path / "out")
    with caplog.at_level(logging.WARNING, logger="training.serving"):
        warn_if_linear(model.config, tmp_path / "gelu")
        assert not caplog.records
        model.config.projector_hidden_act = "linear"
        warn_if_linear(model.config, tmp_path / "gelu")
    assert "convert-for-serving" in caplog.text


@pytest.mark.skipif(
    importlib.util.find_spec("vllm") is None or not torch.cuda.is_available(), reason="needs vLLM and a GPU"
)
def test_vllm_loads_the_converted_checkpoint_and_generates_like_transformers(tmp_path):
    from vllm import LLM, SamplingParams

    # vLLM's attention kernels want head sizes such as 64: a 256-wide, 4-head Llama instead of the 16-wide one.
    tokenizer = build_tokenizer()
    llm_config = tiny_llama_config(tokenizer, hidden_size=256, heads=4, kv_heads=4)
    torch.manual_seed(0)
    LlamaForCausalLM(llm_config).save_pretrained(tmp_path / "llm")
    tokenizer.save_pretrained(tmp_path / "llm")
    src = _linear_checkpoint(tmp_path, vision=save_tiny_clip(tmp_path / "clip"), llm=tmp_path / "llm")
    dst = convert_for_serving(src, tmp_path / "served")

    model = LlavaForConditionalGeneration.from_pretrained(src, dtype=torch.bfloat16).cuda().eval()
    processor = AutoProcessor.from_pretrained(src)
    inputs = processor(images=Image.open(IMAGE), text=PROMPT, return_tensors="pt").to("cuda")
    inputs["pixel_values"] = inputs["pixel_values"].to(torch.bfloat16)
    expected = model.generate(**inputs, max_new_tokens=4, do_sample=False)[0, inputs["input_ids"].shape[1] :]

    engine = LLM(model=str(dst), dtype="bfloat16", max_model_len=512, gpu_memory_utilization=0.3, enforce_eager=True)
    out = engine.generate(
        {"prompt": PROMPT, "multi_modal_data": {"image": Image.open(IMAGE).convert("RGB")}},
        SamplingParams(max_tokens=4, temperature=0.0),
    )
    assert list(out[0].outputs[0].token_ids) == expected.tolist()
