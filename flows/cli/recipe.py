"""`vistune recipe list|show`: the presets of a whole run (tasks/recipes/*.toml), and the recipe estimate's table."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from flows.cli import app
from flows.cli.output import make_console

console = make_console()
err_console = make_console(stderr=True)
recipe_app = typer.Typer(help="Recipes: named presets of a whole run (vistune run --recipe NAME).",
                         no_args_is_help=True)
app.add_typer(recipe_app, name="recipe")

SetOption = Annotated[
    list[str] | None,
    typer.Option("--set", metavar="KEY=VALUE",
                 help="Override one field of the recipe, e.g. generate.model=gpt-4o or mix.conversation=500"),
]


def load_or_exit(name: str, overrides: list[str] | None):  # -> Recipe
    """The recipe, or one error line and exit 2."""
    from tasks.recipes import RecipeError, load

    try:
        return load(name, overrides or [])
    except RecipeError as exc:
        err_console.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False)
        raise typer.Exit(2) from None


@recipe_app.command("list")
def list_command() -> None:
    """The recipes vistune ships: name, images, mix and model."""
    from tasks.recipes import load, names

    table = Table(caption="vistune recipe show NAME: every setting")
    for column in ("recipe", "COCO", "images per type", "model", "mode"):
        table.add_column(column)
    for name in names():
        recipe = load(name)
        mix = (" / ".join(f"{n:,}" for n in recipe.mix.counts(recipe.coco.images).values()) + " ("
               + " / ".join(recipe.mix.targets) + ")") if recipe.mix else "all, every type"
        coco = f"{recipe.coco.split or 'every split'}, {recipe.coco.images:,} images"
        table.add_row(name, coco, mix, recipe.generate.get("model", "$VISTUNE_MODEL"),
                      recipe.generate.get("mode", "online"))
    console.print(table)


@recipe_app.command("show")
def show_command(
    name: Annotated[str, typer.Argument(metavar="NAME", help="A recipe name (vistune recipe list) or a recipe file")],
    overrides: SetOption = None,
) -> None:
    """Every setting of a recipe: COCO split, mix, prompt set, format, model, mode, both training stages, eval set."""
    from tasks.recipes import prompt_set, train_config

    recipe = load_or_exit(name, overrides)
    table = Table(title=f"recipe {recipe.name}", show_header=False)
    table.add_column("setting", style="bold")
    table.add_column("value")
    rows: list[tuple[str, str]] = [("description", recipe.description), ("source", recipe.source or "-")]
    rows += [("COCO folder", recipe.coco.dir or "the bundled sample (tasks/ingest/sample_coco)"),
             ("COCO split", f"{recipe.coco.split or 'every split found'} ({recipe.coco.images:,} images)")]
    if recipe.coco.note:
        rows.append(("", recipe.coco.note))
    if recipe.mix is None:
        rows.append(("mix", "every sample type for every image"))
    else:
        for type_name, n in recipe.mix.counts(recipe.coco.images).items():
            rows.append((f"mix: {type_name}", f"{n:,} images"))
        rows.append(("mix seed", str(recipe.mix.seed)))
    folder = prompt_set(recipe)
    llava = recipe.prompts.llava_folder
    prompts = folder or "vistune's own (tasks/prompting/templates)"
    if llava and folder != llava:
        prompts += f"; LLaVA's released set is used instead once {llava} exists"
    rows += [("prompt set", prompts),
             ("output format", recipe.generate.get("output_format", "structured")),
             ("model", recipe.generate.get("model", "$VISTUNE_MODEL (default gpt-4o)")),
             ("mode", recipe.generate.get("mode", "online"))]
    rows += [(f"generate.{k}", str(v)) for k, v in recipe.generate.items() if k not in ("output_format", "model",
                                                                                          "mode")]
    rows += [(f"curate.{k}", str(v)) for k, v in recipe.curate.items()]
    config = train_config(recipe) or "a tiny random model built on the spot (training/tiny.py)"
    rows += [("training config", config),
             ("stage 1", f"{recipe.train.stage1_data}; " + (" ".join(recipe.train.stage1_overrides) or "no overrides")),
             ("stage 2", f"{recipe.train.stage2_data}; " + (" ".join(recipe.train.stage2_overrides) or "no overrides")),
             ("trains in `vistune run`", "yes" if recipe.train.in_pipeline else "no (train with vistune train)"),
             ("eval set", recipe.eval.set + (f": {recipe.eval.note}" if recipe.eval.note else ""))]
    for key, value in rows:
        table.add_row(key, escape(value))
    console.print(table)
    console.print(f"run it: vistune run --recipe {name}; price it: vistune estimate --recipe {name}",
                  markup=False, highlight=False)


def print_recipe_estimate(name: str, overrides: list[str] | None, images: int | None, db: Path | None) -> None:
    """`vistune estimate --recipe`: requests, tokens and dollars for every priced model, assumptions stated."""
    from tasks.recipes.estimate import estimate_recipe

    recipe = load_or_exit(name, overrides)
    try:
        est = estimate_recipe(recipe, images=images, db=db)
    except ValueError as exc:  # a mix count above --images, a broken prompt set
        err_console.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False)
        raise typer.Exit(2) from None
    mix = ", ".join(f"{t} {n:,}" for t, n in est.requests_by_type.items())
    console.print(f"recipe {est.recipe}: {est.images:,} images; requests: {mix}; format {est.output_format}; "
                  f"prompt set {est.prompt_set}", markup=False, highlight=False)
    per_type = ", ".join(f"{t} {est.prompt_by_type[t]:,} prompt / {est.completion_by_type[t]:,} completion"
                         for t in est.requests_by_type)
    console.print(f"tokens per request ({est.tokens_model}'s tokenizer): {per_type}", markup=False,
                  highlight=False)
    table = Table(title=f"estimate: recipe {est.recipe}")
    for column in ("model", "requests", "prompt tokens", "cached tokens", "completion tokens", "online $",
                   "batch $"):
        table.add_column(column, justify="left" if column == "model" else "right")
    for m in est.models:
        table.add_row(m.model, f"{m.requests:,}", f"{m.prompt_tokens:,}", f"{m.cached_tokens:,}",
                      f"{m.completion_tokens:,}", f"{m.online_usd:,.2f}", f"{m.batch_usd:,.2f}")
    console.print(table)
    console.print("assumptions:", markup=False)
    for line in est.assumptions:
        console.print(f"- {line}", markup=False, highlight=False)
    approximated = [m.model for m in est.models if m.approximate]
    if approximated:
        console.print(f"- token counts of {', '.join(approximated)} are approximate: counted with the offline "
                      "cl100k encoding, their own is not available here (tasks/prompting/tokens.py)", markup=False,
                      highlight=False)
