"""torch.compile per LLM decoder layer, in place (torchtitan style).

Every decoder layer runs the same code on same-shaped weights, and dynamo treats a module's parameters as
graph inputs, so all layers share one compiled graph: compile time is that of one layer, not of a 7B model
(a whole-model compile of an HF Llava is slow and breaks its graph at the data-dependent image merge).
`module.compile()` keeps the module object and its state_dict names, so saving and PEFT are unaffected.

Shapes: the sequence length changes per batch in real training. Compiles start static; the first batch of
another length recompiles once with that dimension dynamic (dynamo's automatic dynamic shapes), and later
lengths reuse that graph. Activation checkpointing composes: transformers checkpoints the layer's
`forward`, which dynamo traces as a checkpoint region inside the compiled graph.
"""

from __future__ import annotations

import logging

import torch
from torch import nn
from transformers.modeling_layers import GradientCheckpointingLayer

log = logging.getLogger(__name__)

# Graph variants per layer: static + dynamic length, smaller last batch, padded vs unpadded mask,
# checkpointed vs not. Dynamo's default of 8 leaves little margin before it silently runs eager.
RECOMPILE_LIMIT = 16


def decoder_layers(model: nn.Module) -> list[nn.Module]:
    """The LLM's decoder layers (of a plain or PEFT-wrapped Llava model), in order."""
    return [
        module
        for name, module in model.named_modules()
        if isinstance(module, GradientCheckpointingLayer) and "language_model" in name
    ]


def _is_4bit(module: nn.Module) -> bool:
    from bitsandbytes.nn import Linear4bit

    return any(isinstance(child, Linear4bit) for child in module.modules())


def compile_layers(model: nn.Module, backend: str = "inductor") -> int:
    """Compile each LLM decoder layer in place; returns how many (0 when skipped for 4-bit layers).

    Call after freezing, LoRA and checkpointing are set up (compiling is lazy; changing `requires_grad`
    later only costs a recompile). The model must not build a KV cache while training (see
    `training.loop.disable_kv_cache`): the cache's per-layer state would give each layer its own graph.
    """
    layers = decoder_layers(model)
    if not layers:
        raise ValueError(
            f"compile: no decoder layers (GradientCheckpointingLayer under language_model) in "
            f"{type(model).__name__}; set compile=false for this model"
        )
    if _is_4bit(layers[0]):
        # Untested: bitsandbytes 4-bit kernels under dynamo need a GPU to check; eager is the known-good path.
        log.warning("compile: skipped, the decoder layers hold bitsandbytes 4-bit weights (qlora); running eager")
        return 0
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)
    for layer in layers:
        layer.compile(backend=backend)
    log.info("compile: %d decoder layers compiled in place (backend %s)", len(layers), backend)
    return len(layers)
