"""One config model for the whole two-stage recipe: loaded from YAML or TOML, overridable from the CLI.

Stage defaults are data (the two `StageConfig` subclasses), following the LLaVA paper: stage 1 trains
the projector on image/caption pairs with the `plain` template, stage 2 trains projector + LLM on
instruction data with the `vicuna_v1` template.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator

Group = Literal["vision", "projector", "llm"]
Method = Literal["full", "lora", "qlora"]
Template = Literal["plain", "vicuna_v1"]
StageName = Literal["stage1", "stage2"]
STAGE_NAMES: tuple[StageName, ...] = ("stage1", "stage2")


class StageConfig(BaseModel):
    """Hyperparameters and data of one training stage."""

    model_config = ConfigDict(extra="forbid")

    data: Path | None = Field(None, description="LLaVA-format json for this stage")
    template: Template
    train: tuple[Group, ...] = Field(description="module groups that train (LoRA methods train the LLM via adapters)")
    method: Method = "full"
    init_from: Path | None = Field(None, description="checkpoint to start from; None builds from the base models")
    learning_rate: float
    projector_learning_rate: float | None = Field(None, description="projector lr if different (LLaVA-1.5 LoRA: 2e-5)")
    batch_size: int = Field(description="global batch size = per_device x accumulation x processes")
    per_device_batch_size: int = 4
    epochs: float = 1.0
    max_steps: int | None = Field(None, description="optimizer steps; overrides epochs when set")
    warmup_ratio: float = 0.03
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    lora_r: int = 64
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    fp32_trainable: bool = Field(True, description="keep trainable weights in fp32 (turn off for 7B full on one GPU)")
    gradient_checkpointing: bool | None = Field(
        None, description="activation checkpointing for this stage; None follows the top-level gradient_checkpointing"
    )
    eval_split: float | Path | None = Field(
        None, description="held-out data: a fraction (0-1) of `data` set aside by seed, or a LLaVA json file"
    )
    eval_every: int | None = Field(
        None, ge=1, description="optimizer steps between held-out evaluations (also one at the end); None: end only"
    )

    @field_validator("eval_split")
    @classmethod
    def _fraction_in_range(cls, value: float | Path | None) -> float | Path | None:
        if isinstance(value, float) and not 0.0 < value < 1.0:
            raise ValueError(f"eval_split {value} must be a fraction between 0 and 1 (exclusive), or a json path")
        return value


class Stage1Config(StageConfig):
    """Paper stage 1: feature alignment, projector only."""

    template: Template = "plain"
    train: tuple[Group, ...] = ("projector",)
    learning_rate: float = 2e-3
    batch_size: int = 128
    epochs: float = 1.0


class Stage2Config(StageConfig):
    """Paper stage 2: visual instruction tuning, projector + LLM, starting from the stage-1 result."""

    template: Template = "vicuna_v1"
    train: tuple[Group, ...] = ("projector", "llm")
    learning_rate: float = 2e-5
    batch_size: int = 32
    epochs: float = 3.0


class DataConfig(BaseModel):
    """How a stage's data is checked before training and what a bad sample does (training/preflight.py)."""

    model_config = ConfigDict(extra="forbid")

    preflight: bool = Field(True, description="check every record before any model weights load")
    preflight_images: Literal["header", "decode"] = Field(
        "decode", description="decode: PIL verify then a full decode; header: open and read the header only"
    )
    preflight_workers: int | None = Field(None, ge=1, description="processes for the check; None: all CPU cores")
    on_bad_sample: Literal["fail", "skip"] = Field(
        "fail", description="fail: stop listing every bad record; skip: drop them before training (counted)"
    )
    max_bad_fraction: float = Field(
        0.001, ge=0.0, le=1.0,
        description="samples that fail at training time are replaced; stop once more than this fraction of "
        "the stage's records failed",
    )


class TrainConfig(BaseModel):
    """Everything a training run needs; every value has a paper default or must be given."""

    model_config = ConfigDict(extra="forbid")

    vision_model: str = Field(
        "openai/clip-vit-large-patch14", description="vision tower checkpoint; its model_type must be registered"
    )
    llm: str = "lmsys/vicuna-7b-v1.5"
    projector: Literal["linear", "mlp2x_gelu"] = "linear"
    vision_feature_layer: int = -2
    vision_feature_select_strategy: Literal["default", "full"] | None = Field(
        None, description="None follows the vision tower (training/vision.py): CLIP default (drop CLS), SigLIP full"
    )
    image_preprocessing: Literal["resize", "pad", "crop"] | None = Field(
        None,
        description="non-square images: crop (CLIP's processor, the paper), resize (SigLIP's), pad (LLaVA-1.5); "
        "None follows the tower's own processor (training/preprocess.py)",
    )
    image_root: Path = Path(".")
    output_dir: Path = Path("runs/llava")
    model_max_length: int = 2048
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    attn_implementation: Literal["auto", "sdpa", "eager", "flash_attention_2"] = "auto"
    gradient_checkpointing: bool = Field(True, description="default for stages that leave theirs unset")
    compile: bool = Field(
        False,
        description="torch.compile each LLM decoder layer in place (one graph for all layers; skipped under qlora)",
    )
    compile_backend: str = Field("inductor", description="torch.compile backend; aot_eager needs no C++ compiler")
    group_by_length: bool = True
    num_workers: int = 2
    seed: int = 42
    save_every: int = Field(500, ge=1, description="optimizer steps between resumable checkpoints")
    keep_checkpoints: int = 2
    log_every: int = 1
    progress_bar: bool = True
    cpu_threads: int | None = Field(
        None, description="torch threads on CPU; 1 is fastest for tiny models on busy hosts"
    )
    resume: bool = Field(True, description="continue from the newest checkpoint of the stage when one exists")
    rank_trace: bool = Field(
        False, description="each process writes the sample ids it trains on and its final trainable weights "
        "under <stage>/rank_trace/ (the distributed tests read them)",
    )
    data: DataConfig = Field(default_factory=DataConfig)
    stage1: Stage1Config = Field(default_factory=Stage1Config)
    stage2: Stage2Config = Field(default_factory=Stage2Config)

    def stage(self, name: StageName) -> StageConfig:
        """The config of one stage with its defaults resolved: `init_from` (stage 2 starts from stage 1's result)
        and `gradient_checkpointing` (the top-level value when the stage leaves it unset)."""
        stage = getattr(self, name)
        update: dict = {}
        if name == "stage2" and stage.init_from is None:
            update["init_from"] = self.stage_dir("stage1") / "final"
        if stage.gradient_checkpointing is None:
            update["gradient_checkpointing"] = self.gradient_checkpointing
        return stage.model_copy(update=update) if update else stage

    def stage_dir(self, name: StageName) -> Path:
        """Where a stage writes checkpoints, logs and its `final/` result."""
        return self.output_dir / name

    @property
    def merged_dir(self) -> Path:
        """Where `merge` writes the single loadable checkpoint."""
        return self.output_dir / "merged"


def _set_dotted(raw: dict, dotted_key: str, value: object) -> None:
    node = raw
    *parents, leaf = dotted_key.split(".")
    for key in parents:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ValueError(f"override {dotted_key!r}: {key!r} is not a section")
    node[leaf] = value


def parse_overrides(overrides: list[str]) -> dict:
    """`["stage2.method=qlora", "seed=1"]` -> nested dict; values parsed as YAML scalars/lists."""
    raw: dict = {}
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"override {item!r} must look like key=value (e.g. stage2.method=lora)")
        _set_dotted(raw, key.strip(), yaml.safe_load(value))
    return raw


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def load_config(path: Path | str | None = None, overrides: list[str] | None = None) -> TrainConfig:
    """Read a YAML (.yaml/.yml) or TOML (.toml) config file and apply `key=value` overrides."""
    raw: dict = {}
    if path is not None:
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"training config {path} does not exist")
        text = path.read_text()
        raw = tomllib.loads(text) if path.suffix == ".toml" else (yaml.safe_load(text) or {})
        if not isinstance(raw, dict):
            raise ValueError(f"training config {path} must hold a mapping at the top level")
    raw = _merge(raw, parse_overrides(overrides or []))
    return TrainConfig.model_validate(raw)


def dump_config(cfg: TrainConfig, path: Path) -> None:
    """Write the resolved config (what actually ran) as YAML."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
