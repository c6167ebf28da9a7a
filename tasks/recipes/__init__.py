"""Recipes: named presets of a whole run, one TOML file each in this folder (`vistune recipe list`).

`load("llava-instruct-158k", ["generate.model=gpt-4o"])` reads a recipe (a name here, or the path of
a user's own file), applies `section.field=value` overrides and checks it (`schemas/recipes.py`).
`pipeline_values(recipe)` is what it sets in `PipelineParams`: `vistune run --recipe`, the pipeline flow's
`recipe` parameter and `vistune demo` all go through it, so a recipe means the same everywhere.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from schemas.recipes import Recipe

RECIPES_DIR = Path(__file__).resolve().parent
REPO = RECIPES_DIR.parents[1]  # config paths in recipes (training/configs/...) are relative to it
TINY = "tiny"  # the demo's training: a tiny random model built on the spot, no config file


class RecipeError(ValueError):
    """A recipe that cannot be found, read or validated; the message names the file and the field."""


def names() -> list[str]:
    """The recipes shipped with vistune, sorted."""
    return sorted(p.stem for p in RECIPES_DIR.glob("*.toml"))


def recipe_path(name: str) -> Path:
    """The file of a shipped recipe, or `name` itself when it is a path to a .toml / .yaml file."""
    if name in names():
        return RECIPES_DIR / f"{name}.toml"
    path = Path(name).expanduser()
    if path.suffix in (".toml", ".yaml", ".yml") and path.is_file():
        return path
    raise RecipeError(f"no recipe {name!r}: choose one of {', '.join(names())} (vistune recipe list) "
                      "or give the path of a .toml / .yaml recipe file")


def _read(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
        return tomllib.loads(text) if path.suffix == ".toml" else (yaml.safe_load(text) or {})
    except (tomllib.TOMLDecodeError, yaml.YAMLError, UnicodeDecodeError) as exc:
        raise RecipeError(f"{path}: cannot be read ({str(exc).splitlines()[0]})") from None


def apply_overrides(raw: dict[str, Any], overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """`["generate.model=gpt-4o", "mix.conversation=500"]` set into a copy of the raw recipe (YAML scalars)."""
    out = {key: dict(value) if isinstance(value, dict) else value for key, value in raw.items()}
    for item in overrides:
        key, sep, text = item.partition("=")
        parts = key.strip().split(".")
        if not sep or not all(parts):
            raise RecipeError(f"override {item!r} must look like section.field=value (e.g. generate.model=gpt-4o)")
        node = out
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise RecipeError(f"override {item!r}: {part!r} is not a section")
        node[parts[-1]] = yaml.safe_load(text)
    return out


def load(name: str, overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    """Read, override and check a recipe; raises `RecipeError` naming the file and the first bad field."""
    path = recipe_path(name)
    raw = apply_overrides(_read(path), overrides)
    try:
        return Recipe.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = "".join(f"{p}: " for p in [".".join(map(str, err["loc"]))] if p)
        raise RecipeError(f"{path}: {where}{err['msg'].removeprefix('Value error, ')}") from None
    except ValueError as exc:  # a flow parameter the recipe sets wrongly (GenerateParams / CurateParams)
        raise RecipeError(f"{path}: {exc}") from None


def prompt_set(recipe: Recipe) -> str | None:
    """The prompt set folder a run of the recipe uses: LLaVA's when the user has it, else the recipe's or ours."""
    if recipe.prompts.llava_folder and Path(recipe.prompts.llava_folder).expanduser().is_dir():
        return recipe.prompts.llava_folder
    return recipe.prompts.folder


def train_config(recipe: Recipe) -> str | None:
    """The training config file (resolved against the repo when relative), or None for the demo's tiny model."""
    if recipe.train.config == TINY:
        return None
    path = Path(recipe.train.config).expanduser()
    return str(path if path.is_absolute() or path.exists() else REPO / path)


def pipeline_values(recipe: Recipe) -> dict[str, Any]:
    """The recipe as `PipelineParams` values: one dict per section (train only when `train.in_pipeline`)."""
    ingest: dict[str, Any] = {}
    if recipe.coco.dir is not None:
        ingest["coco_dir"] = recipe.coco.dir
    if recipe.coco.split is not None:
        ingest["splits"] = [recipe.coco.split]
    generate = dict(recipe.generate)
    if recipe.mix is not None:
        generate["mix"] = recipe.mix
    if (folder := prompt_set(recipe)) is not None:
        generate["prompt_set"] = folder
    values: dict[str, Any] = {"ingest": ingest, "generate": generate, "curate": dict(recipe.curate)}
    config = train_config(recipe)
    if recipe.train.in_pipeline and config is not None:
        values["train"] = {"config": config, "stage1_overrides": recipe.train.stage1_overrides,
                           "stage2_overrides": recipe.train.stage2_overrides}
    if recipe.eval.params:  # held out before export, evaluated after training (tasks/pipeline.py HoldOut)
        values["evaluate"] = dict(recipe.eval.params)
    return values


def under(values: dict[str, Any], given: dict[str, Any]) -> dict[str, Any]:
    """`given` over the recipe's `values`, section by section: a field given replaces the recipe's, the rest stay."""
    merged = dict(values)
    for section, value in given.items():
        base = merged.get(section)
        merged[section] = {**base, **value} if isinstance(base, dict) and isinstance(value, dict) else value
    return merged
