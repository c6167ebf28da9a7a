"""Build or load the transformers `LlavaForConditionalGeneration` and its processor.

Projector choice: transformers' `LlavaMultiModalProjector` is always linear_1 -> act -> linear_2.
`mlp2x_gelu` (LLaVA-1.5) is exactly that with GELU. `linear` (the paper) uses the `linear` (identity)
activation and pins linear_2 to the identity (weight I, bias 0, never trained, see `stages.py`), so the
map is one trained Linear while the checkpoint keeps the standard layout that `from_pretrained`,
transformers and SGLang load. vLLM has no `linear` activation: `training/serving.py` rewrites such a checkpoint
exactly into a `relu` form it loads. Cost: one extra hidden x hidden matmul per image token.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import torch
from accelerate import PartialState
from transformers import (
    AutoImageProcessor,
    AutoModelForCausalLM,
    AutoProcessor,
    AutoTokenizer,
    BitsAndBytesConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
)
from transformers.models.llava.modeling_llava import LlavaMultiModalProjector

from schemas.llava import IMAGE_PLACEHOLDER
from training.config import StageConfig, TrainConfig
from training.preprocess import image_processor_for, preprocessing_of
from training.templates import vicuna_v1_chat_template
from training.vision import VisionTower, select_strategy, vision_tower_of

log = logging.getLogger(__name__)

PAD_TOKEN = "<pad>"
PROJECTOR_ACT = {"linear": "linear", "mlp2x_gelu": "gelu"}
# Modules bitsandbytes must leave in full precision under QLoRA (prefixes of module names, or suffixes).
QLORA_SKIP_MODULES = ["model.vision_tower", "model.multi_modal_projector", "lm_head"]


def projector_type(config: LlavaConfig) -> str:
    """`linear` or `mlp2x_gelu`, read back from a Llava config."""
    for kind, act in PROJECTOR_ACT.items():
        if config.projector_hidden_act == act:
            return kind
    raise ValueError(
        f"projector_hidden_act {config.projector_hidden_act!r} is not a projector vistune trains ({PROJECTOR_ACT}); "
        "a checkpoint written by `python -m training convert-for-serving` is for serving only: train from the "
        "checkpoint it was converted from"
    )


def resolve_dtype(name: str) -> torch.dtype:
    """`auto` is bf16 on CUDA and fp32 on CPU."""
    if name == "auto":
        return torch.bfloat16 if torch.cuda.is_available() else torch.float32
    return getattr(torch, name)


def resolve_attention(name: str) -> str:
    """`auto` is flash-attention 2 when installed on CUDA, else PyTorch SDPA."""
    if name != "auto":
        return name
    if torch.cuda.is_available() and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return "sdpa"


def num_image_tokens(processor: LlavaProcessor) -> int:
    """Image tokens the processor inserts per image (= vision features the model produces)."""
    image_processor = processor.image_processor
    # CLIP resizes then center-crops; SigLIP resizes straight to `size`.
    size = image_processor.crop_size if getattr(image_processor, "do_center_crop", False) else image_processor.size
    count = (size["height"] // processor.patch_size) * (size["width"] // processor.patch_size)
    count += processor.num_additional_image_tokens
    return count - 1 if processor.vision_feature_select_strategy == "default" else count


def build_processor(
    cfg: TrainConfig, patch_size: int, tower: VisionTower | None = None, image_size: int | None = None
) -> LlavaProcessor:
    """Tokenizer of the LLM (+ `<image>` and a pad token) and image processor of the vision tower, doing
    `cfg.image_preprocessing` (unset: what the tower's own processor does) at the tower's `image_size`.

    `tower` defaults to the registry entry of `cfg.vision_model`, `image_size` to its config's."""
    tower = tower or vision_tower_of(cfg.vision_model)
    if image_size is None:
        image_size = tower.model_class.config_class.from_pretrained(cfg.vision_model).image_size
    tokenizer = AutoTokenizer.from_pretrained(cfg.llm)
    extra: dict = {}
    if tokenizer.pad_token is None:
        extra["pad_token"] = PAD_TOKEN
    if IMAGE_PLACEHOLDER not in tokenizer.get_vocab():
        extra["additional_special_tokens"] = [IMAGE_PLACEHOLDER]
    if extra:
        tokenizer.add_special_tokens(extra)
    tokenizer.model_max_length = cfg.model_max_length
    tokenizer.padding_side = "right"
    mode = cfg.image_preprocessing or tower.native_preprocessing
    image_processor = image_processor_for(AutoImageProcessor.from_pretrained(cfg.vision_model), mode, image_size)
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=patch_size,
        vision_feature_select_strategy=select_strategy(tower, cfg.vision_feature_select_strategy),
        # CLIP prepends a CLS token ("default" drops it again, so tokens == patches); SigLIP has none.
        num_additional_image_tokens=tower.prefix_tokens,
        image_token=IMAGE_PLACEHOLDER,
        chat_template=vicuna_v1_chat_template(tokenizer.eos_token),
    )


def _init_projector(projector: LlavaMultiModalProjector, kind: str) -> None:
    if kind == "linear":
        with torch.no_grad():
            projector.linear_2.weight.copy_(torch.eye(projector.linear_2.weight.shape[0]))
            if projector.linear_2.bias is not None:
                projector.linear_2.bias.zero_()


def build_base_model(cfg: TrainConfig) -> tuple[LlavaForConditionalGeneration, LlavaProcessor]:
    """Assemble a Llava model from a registered vision tower (`training/vision.py`) and a causal LLM (paths or
    hub ids), with a new projector."""
    dtype = resolve_dtype(cfg.dtype)
    attention = resolve_attention(cfg.attn_implementation)
    tower = vision_tower_of(cfg.vision_model)
    strategy = select_strategy(tower, cfg.vision_feature_select_strategy)
    vision = tower.load(cfg.vision_model, dtype, attention)
    llm = AutoModelForCausalLM.from_pretrained(cfg.llm, dtype=dtype, attn_implementation=attention)
    processor = build_processor(
        cfg, patch_size=vision.config.patch_size, tower=tower, image_size=vision.config.image_size
    )
    image_tokens = tower.image_tokens(vision.config, strategy)
    if num_image_tokens(processor) != image_tokens:
        raise ValueError(
            f"vision_model {cfg.vision_model}: its image processor yields {num_image_tokens(processor)} image tokens "
            f"but the tower ({vision.config.image_size} px, patch {vision.config.patch_size}) gives {image_tokens} "
            "features; check the tower's patch_size and the processor's options"
        )
    tokenizer = processor.tokenizer
    config = LlavaConfig(
        vision_config=vision.config,
        text_config=llm.config,
        image_token_index=tokenizer.convert_tokens_to_ids(IMAGE_PLACEHOLDER),
        image_seq_length=image_tokens,
        projector_hidden_act=PROJECTOR_ACT[cfg.projector],
        vision_feature_layer=cfg.vision_feature_layer,
        vision_feature_select_strategy=strategy,
        tie_word_embeddings=bool(getattr(llm.config, "tie_word_embeddings", False)),
    )
    # Build the shell on the meta device and move the loaded towers in: no second copy of 7B weights.
    with torch.device("meta"):
        model = LlavaForConditionalGeneration(config)
    model.model.vision_tower = vision
    model.model.language_model = llm.model
    model.lm_head = llm.lm_head
    projector = LlavaMultiModalProjector(config).to(dtype)
    _init_projector(projector, cfg.projector)
    model.model.multi_modal_projector = projector
    model.resize_token_embeddings(len(tokenizer))
    model.config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.config._attn_implementation = attention
    return model, processor


def load_model(
    path: Path | str, dtype: torch.dtype, attention: str = "sdpa", quantize_4bit: bool = False
) -> LlavaForConditionalGeneration:
    """Load a saved Llava checkpoint, optionally with the LLM in bitsandbytes NF4 (QLoRA)."""
    quantization = None
    if quantize_4bit:
        quantization = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16,
            llm_int8_skip_modules=QLORA_SKIP_MODULES,
        )
    device_map = None
    if quantize_4bit and torch.cuda.is_available():
        # bitsandbytes quantizes while loading: load straight onto this process's GPU.
        device_map = {"": PartialState().device}
    return LlavaForConditionalGeneration.from_pretrained(
        path, dtype=dtype, attn_implementation=attention, quantization_config=quantization, device_map=device_map
    )


def load_for_stage(cfg: TrainConfig, stage: StageConfig) -> tuple[LlavaForConditionalGeneration, LlavaProcessor]:
    """The model a stage starts from: its `init_from` checkpoint, or a fresh assembly of the base models."""
    if stage.init_from is None:
        if stage.method == "qlora":
            raise ValueError("qlora needs init_from: a saved Llava checkpoint (e.g. the stage-1 final dir)")
        return build_base_model(cfg)
    init = Path(stage.init_from)
    if not (init / "config.json").exists():
        raise FileNotFoundError(f"init_from {init} holds no Llava checkpoint (config.json); run the previous stage")
    model = load_model(
        init, resolve_dtype(cfg.dtype), resolve_attention(cfg.attn_implementation), stage.method == "qlora"
    )
    return model, _checkpoint_processor(cfg, init, model.config.vision_config.image_size)


def _checkpoint_processor(cfg: TrainConfig, init: Path, image_size: int) -> LlavaProcessor:
    processor = AutoProcessor.from_pretrained(init)
    processor.tokenizer.model_max_length = cfg.model_max_length
    wanted = cfg.image_preprocessing
    if wanted is not None and preprocessing_of(processor.image_processor) != wanted:
        # The config wins over the checkpoint's processor, and the stage saves the processor it trained with.
        log.info("image_preprocessing: %s -> %s", preprocessing_of(processor.image_processor), wanted)
        processor.image_processor = image_processor_for(processor.image_processor, wanted, image_size)
    return processor


def processor_for_stage(cfg: TrainConfig, stage: StageConfig) -> LlavaProcessor:
    """The processor a stage will train with, without loading any model weights (for preflight).

    Stage 2 reads it from `init_from` when that checkpoint exists; otherwise (stage 1, or stage 2 checked before
    stage 1 ran) it is built from the base models' configs and tokenizer, as stage 1 builds it.
    """
    init = Path(stage.init_from) if stage.init_from is not None else None
    if init is not None and (init / "config.json").exists():
        image_size = LlavaConfig.from_pretrained(init).vision_config.image_size
        return _checkpoint_processor(cfg, init, image_size)
    tower = vision_tower_of(cfg.vision_model)
    vision_config = tower.model_class.config_class.from_pretrained(cfg.vision_model)
    return build_processor(cfg, vision_config.patch_size, tower, vision_config.image_size)
