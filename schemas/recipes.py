"""A sample mix (how many images get each sample type) and a recipe (a named preset of a whole run).

`SampleMix` is what `--mix conversation=58000,detail_description=23000,complex_reasoning=77000` (or
`conversation=0.7,...`) parses into; `tasks/prompting/mix.py` draws the images. `Recipe` is one file
under `tasks/recipes/` (`vistune recipe list`): the COCO split, the mix, the prompt set, the generate,
curate and training settings and the eval set of a run. Its sections are checked against the very models the
flows take (`schemas/flow_params.py`), so a recipe can set any parameter a flow has and nothing else.
No I/O here: `tasks/recipes` reads the files.
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from schemas.samples import SAMPLE_TYPES


class SampleMix(BaseModel):
    """Per sample type, how many images get a sample of it: a count (int) or a fraction of the images (float).

    A type the mix does not name gets no image. The images of each type are drawn from `seed`
    (`tasks/prompting/mix.py`), so the same mix over the same images selects the same images.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    targets: dict[str, int | float] = Field(description="sample type -> images (int) or fraction of the images")
    seed: int = Field(default=0, description="seed of the draw: another seed picks other images")

    @model_validator(mode="before")
    @classmethod
    def _from_text_or_table(cls, value: Any) -> Any:
        # `"conversation=0.7,complex_reasoning=0.3,seed=1"` (the CLI) or a flat table (a recipe's [mix]).
        if isinstance(value, str):
            return parse_mix_text(value)
        if isinstance(value, dict) and "targets" not in value:
            table = dict(value)
            seed = table.pop("seed", 0)
            return {"targets": table, "seed": seed}
        return value

    @field_validator("targets", mode="before")
    @classmethod
    def _keep_count_or_fraction(cls, value: Any) -> Any:
        # pydantic would turn 1.0 into 1 (a count); a float is a fraction whatever its value.
        if not isinstance(value, dict):
            return value
        checked: dict[str, int | float] = {}
        for name, target in value.items():
            if isinstance(target, bool) or not isinstance(target, int | float):
                raise ValueError(f"mix {name}={target!r}: expected a count (e.g. 58000) or a fraction (e.g. 0.7)")
            checked[name] = target
        return checked

    @field_validator("targets")
    @classmethod
    def _known_types_sane_values(cls, targets: dict[str, int | float]) -> dict[str, int | float]:
        if not targets:
            raise ValueError("mix names no sample type; e.g. conversation=0.7,complex_reasoning=0.3")
        for name, target in targets.items():
            if name not in SAMPLE_TYPES:
                raise ValueError(f"mix names unknown sample type {name!r}; expected {', '.join(SAMPLE_TYPES)}")
            if target < 0 or (isinstance(target, float) and not math.isfinite(target)):
                raise ValueError(f"mix {name}={target}: must be a count >= 0 or a fraction between 0 and 1")
            if isinstance(target, float) and target > 1:
                raise ValueError(f"mix {name}={target}: a fraction is at most 1.0 (for a count write an integer, "
                                 f"e.g. {name}={int(target)})")
        return {name: targets[name] for name in SAMPLE_TYPES if name in targets}  # registry order, always

    def counts(self, images: int) -> dict[str, int]:
        """Images per type out of `images`; a count above `images` is an error naming the type."""
        out: dict[str, int] = {}
        for name, target in self.targets.items():
            if isinstance(target, float):
                out[name] = math.floor(target * images + 0.5)  # half up: 0.5 of 3 images is 2, as a user reads it
            elif target > images:
                raise ValueError(f"mix {name}={target:,} asks for more images than the {images:,} there are; "
                                 f"lower it or give a fraction (e.g. {name}={min(target / max(images, 1), 1):.2f})")
            else:
                out[name] = target
        return out

    def text(self) -> str:
        """The mix as `--mix` takes it (round-trips through `SampleMix.model_validate`)."""
        items = [f"{name}={target!r}" for name, target in self.targets.items()]
        return ",".join(items + ([f"seed={self.seed}"] if self.seed else []))


def parse_mix_text(text: str) -> dict[str, Any]:
    """`"conversation=58000,complex_reasoning=0.5,seed=3"` -> `{"targets": {...}, "seed": 3}` (values unchecked)."""
    targets: dict[str, int | float] = {}
    seed = 0
    seen: set[str] = set()
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        name, sep, raw = (s.strip() for s in item.partition("="))
        if not sep or not name or not raw:
            raise ValueError(f"mix item {item!r} must look like type=count or type=fraction "
                             "(e.g. conversation=58000 or conversation=0.7)")
        if name in seen:
            raise ValueError(f"mix names {name!r} twice")
        seen.add(name)
        try:
            value: int | float = int(raw) if raw.lstrip("+-").isdigit() else float(raw)
        except ValueError:
            raise ValueError(f"mix item {item!r}: {raw!r} is not a number") from None
        if name == "seed":
            if not isinstance(value, int):
                raise ValueError(f"mix seed={raw}: must be an integer")
            seed = value
        else:
            targets[name] = value
    return {"targets": targets, "seed": seed}


# ---------------------------------------------------------------- recipes
class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CocoSource(_Section):
    """Which COCO images a recipe uses."""

    dir: str | None = Field(default=None, description="COCO root; empty = the bundled 4-image sample")
    split: str | None = Field(default=None, description="e.g. train2014; empty = every split the folder has")
    images: int = Field(ge=1, description="images in that split: what `vistune estimate --recipe` prices")
    note: str = ""


class PromptChoice(_Section):
    """The prompt set: LLaVA's released folder when the user has it, else vistune's own."""

    llava_folder: str | None = Field(
        default=None, description="LLaVA's playground/data/prompts, used when it exists (llava-text answers only)")
    folder: str | None = Field(default=None, description="otherwise this folder; empty = vistune's own set")


class TrainChoice(_Section):
    """The two training stages: a config file of training/configs and the overrides of each stage."""

    config: str = Field(description="training config (path from the repo root), or 'tiny' (the demo's random model)")
    stage1_overrides: list[str] = Field(default_factory=list)
    stage2_overrides: list[str] = Field(default_factory=list)
    stage1_data: str = Field(description="what stage 1 trains on, in words (and where the file comes from)")
    stage2_data: str = Field(description="what stage 2 trains on, in words")
    in_pipeline: bool = Field(
        default=False, description="`vistune run --recipe` trains too (needs the stage-1 files and a GPU)")


class EvalChoice(_Section):
    """The evaluation set the recipe's model is compared on."""

    set: Literal["llava-bench", "held-out", "none"] = "none"
    note: str = ""
    params: dict[str, Any] = Field(
        default_factory=dict, description="EvaluateParams fields: the run holds this set out before export and "
        "evaluates on it after training (`vistune run --recipe`, the demo); empty = no evaluation in the run")

    @model_validator(mode="after")
    def _params_are_evaluate_parameters(self) -> EvalChoice:
        from schemas.flow_params import EvaluateParams  # flow_params imports this module

        try:
            EvaluateParams.model_validate(self.params)
        except ValidationError as exc:
            err = exc.errors()[0]
            raise ValueError(f"eval.params.{'.'.join(map(str, err['loc']))}: {err['msg']}") from None
        return self


class Recipe(_Section):
    """A named preset of a whole run. `tasks/recipes.pipeline_values` turns it into `PipelineParams` values."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]*$")
    description: str
    source: str = Field(default="", description="where the numbers come from (paper, section)")
    coco: CocoSource
    mix: SampleMix | None = Field(default=None, description="empty = every sample type for every image")
    prompts: PromptChoice = Field(default_factory=PromptChoice)
    generate: dict[str, Any] = Field(default_factory=dict, description="GenerateParams fields")
    curate: dict[str, Any] = Field(default_factory=dict, description="CurateParams fields")
    train: TrainChoice
    eval: EvalChoice = Field(default_factory=EvalChoice)

    @model_validator(mode="after")
    def _sections_are_flow_parameters(self) -> Recipe:
        # Checked by the flows' own models: a recipe sets real parameters, with their types and limits.
        from schemas.flow_params import CurateParams, GenerateParams

        owned = {"db_path", "mix", "prompt_set"}  # set by the recipe's own sections or by the run
        for section, model in (("generate", GenerateParams), ("curate", CurateParams)):
            values = getattr(self, section)
            if clash := owned & set(values):
                raise ValueError(f"recipe {self.name}: [{section}] must not set {sorted(clash)} (use [mix] / "
                                 "[prompts], or the run's --db)")
            try:
                model.model_validate(values)
            except ValidationError as exc:
                err = exc.errors()[0]
                raise ValueError(f"{section}.{'.'.join(map(str, err['loc']))}: {err['msg']}") from None
        if self.mix is not None:
            self.mix.counts(self.coco.images)  # a count above the split's images is an error now, not at run time
        return self
