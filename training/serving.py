"""Serving form of a `linear` projector: the same map under an activation every Llava loader accepts.

vistune's `linear` projector (the paper's) is transformers' `linear_1 -> act -> linear_2` with act `linear`
(identity) and linear_2 pinned to the identity, so it computes z = W x + b. vLLM's activation registry has no
`linear` and refuses the checkpoint. No stock activation is the identity, but relu splits a number exactly:
x = relu(x) - relu(-x). With the layout's fixed widths (linear_1: D -> H, linear_2: H -> H, where D is the
vision width and H the LLM width) and 2D <= H:

    linear_1 = rows (e_1, -e_1, e_2, -e_2, ..., e_D, -e_D, 0, ...), bias 0
        -> u = (relu(x_1), relu(-x_1), ..., relu(x_D), relu(-x_D), 0, ...)   (exact: one nonzero term per row)
    act = relu
    linear_2 = columns (W_1, -W_1, ..., W_D, -W_D, 0, ...), bias b
        -> each pair adds exactly W_j x_j, the other term is an exact zero

In real arithmetic the output is W x + b for every x. In floating point the pairs are interleaved so that a
GEMM accumulating along k in order (FMA by FMA) performs the original additions one by one, plus exact
zeros: the test finds the output bitwise equal on CPU (fp32 and bf16). A GEMM that reorders its reduction (GPU
tensor cores, split-K) is only guaranteed equal within float rounding of that one matmul, as any change of
kernel or batch size would be. The cost is D x H more multiply-adds in linear_1 and nothing in the layout.

When 2D > H (e.g. several concatenated feature layers) no exact form exists in the HF Llava layout: the
conversion refuses, and such a model should be trained with `mlp2x_gelu` to be served by vLLM.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from transformers import AutoProcessor, LlavaConfig, LlavaForConditionalGeneration
from transformers.models.llava.modeling_llava import LlavaMultiModalProjector

from training.templates import TEMPLATE_RECORD, record_template, recorded_template

log = logging.getLogger(__name__)

SERVING_ACT = "relu"  # in every Llava loader's registry (transformers, vLLM, SGLang)


def warn_if_linear(config: LlavaConfig, path: Path) -> None:
    """Log that a `linear`-projector checkpoint needs `convert-for-serving` before vLLM can load it."""
    if config.projector_hidden_act == "linear":
        log.warning(
            "%s has the paper's `linear` projector (activation `linear`): transformers and SGLang load it, vLLM "
            "does not. Run `python -m training convert-for-serving %s OUT_DIR` for an exact vLLM-loadable copy.",
            path,
            path,
        )


def split_linear_projector(projector: LlavaMultiModalProjector) -> None:
    """Rewrite a `linear` projector (identity act, identity linear_2) in place into the exact relu form."""
    linear_1, linear_2 = projector.linear_1, projector.linear_2
    hidden, width = linear_1.weight.shape  # H (LLM width) x D (vision width)
    if 2 * width > hidden:
        raise ValueError(
            f"no exact relu form: the projector's input width {width} is more than half its output width {hidden}; "
            "train with projector=mlp2x_gelu to serve with vLLM"
        )
    eye = torch.eye(hidden, dtype=linear_2.weight.dtype, device=linear_2.weight.device)
    if not torch.equal(linear_2.weight, eye) or (linear_2.bias is not None and bool(linear_2.bias.any())):
        raise ValueError(
            "the `linear` projector's linear_2 is not the identity (weight I, bias 0) that vistune pins; "
            "this checkpoint was not trained by vistune and has no exact relu form here"
        )
    with torch.no_grad():
        weight, bias = linear_1.weight.clone(), None if linear_1.bias is None else linear_1.bias.clone()
        index = torch.arange(width, device=weight.device)
        first = torch.zeros_like(linear_1.weight)
        first[2 * index, index] = 1
        first[2 * index + 1, index] = -1
        second = torch.zeros_like(linear_2.weight)
        second[:, 2 * index] = weight
        second[:, 2 * index + 1] = -weight
        linear_1.weight.copy_(first)
        linear_2.weight.copy_(second)
        if linear_1.bias is not None:
            linear_1.bias.zero_()
            linear_2.bias.copy_(bias)
    projector.act = torch.nn.ReLU()


def convert_for_serving(src: Path | str, dst: Path | str) -> Path:
    """Copy the checkpoint at `src` to `dst` with its `linear` projector in the exact relu form vLLM loads.

    A checkpoint whose projector is already servable (e.g. `mlp2x_gelu`) is refused: there is nothing to do.
    """
    src, dst = Path(src), Path(dst)
    if not (src / "config.json").exists():
        raise FileNotFoundError(f"{src} holds no Llava checkpoint (config.json); give a stage final/ or merged/ dir")
    if (src / "adapter_config.json").exists():
        raise ValueError(f"{src} is a LoRA adapter; run `python -m training merge` first and convert merged/")
    model = LlavaForConditionalGeneration.from_pretrained(src, dtype="auto")
    if model.config.projector_hidden_act != "linear":
        raise ValueError(
            f"{src}: projector_hidden_act is {model.config.projector_hidden_act!r}, not 'linear'; it loads in vLLM "
            "as it is"
        )
    split_linear_projector(model.model.multi_modal_projector)
    model.config.projector_hidden_act = SERVING_ACT
    model.save_pretrained(dst)
    AutoProcessor.from_pretrained(src).save_pretrained(dst)
    if (src / TEMPLATE_RECORD).exists():  # the served copy renders prompts as the source was trained
        record_template(dst, recorded_template(src))
    return dst
