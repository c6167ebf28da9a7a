"""`vistune validate-text`, `vistune curate` and `vistune export`: checking, cleaning and exporting samples."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from flows.cli import app
from schemas.flow_params import CurateParams
from schemas.samples import SAMPLE_TYPES
from tasks import store
from tasks.prompting.formats import OUTPUT_FORMATS

console = Console()
err_console = Console(stderr=True)


def _default(name: str) -> Any:
    """A `CurateParams` default: the CLI's defaults are the flow's."""
    return CurateParams.model_fields[name].get_default(call_default_factory=True)


DbOption = Annotated[
    Path | None, typer.Option("--db", help="DuckDB file (default: $VISTUNE_DB or data/vistune.duckdb)")
]
ImageRootOption = Annotated[
    Path | None,
    typer.Option("--image-root", help="Folder the exported `image` paths are relative to (default: the COCO root "
                                      "recorded at ingest, holding train2017/ and val2017/)"),
]


@app.command("validate-text")
def validate_text_command(
    file: Annotated[Path, typer.Argument(help="A raw LLM response (the message content), '-' for stdin")],
    sample_type: Annotated[str, typer.Option("--type", help=" | ".join(SAMPLE_TYPES))],
    output_format: Annotated[str, typer.Option("--format", help=" | ".join(OUTPUT_FORMATS))] = "structured",
    finish_reason: Annotated[str | None, typer.Option(help="The response's finish_reason, if known")] = None,
) -> None:
    """Validate one raw LLM response: print the parsed sample as JSON (exit 0) or the reject reasons (exit 1)."""
    from tasks.curation.validate import validate_output

    content = typer.get_text_stream("stdin").read() if str(file) == "-" else file.read_text(encoding="utf-8")
    try:
        result = validate_output(sample_type, output_format, content, finish_reason)
    except ValueError as exc:  # unknown type or format
        err_console.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False)
        raise typer.Exit(2) from None
    if result.ok:
        print(json.dumps(result.output.model_dump(), ensure_ascii=False, indent=2))
        return
    for reject in result.rejects:
        print(f"{reject.code.value}: {reject.detail}")
    raise typer.Exit(1)


def _resolve_image_root(image_root: Path | None, db: Path | None) -> Path:
    from tasks.curation.export import default_image_root

    if image_root is not None:
        return image_root
    try:
        return default_image_root(db)
    except ValueError as exc:
        err_console.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False)
        raise typer.Exit(2) from None


def _print_export(result) -> None:
    table = Table(title=escape(f"export to {result.out_dir} (images relative to {result.image_root})"))
    table.add_column("file")
    table.add_column("records", justify="right")
    for stem, count in result.counts.items():
        table.add_row(f"{stem}.json / .parquet", f"{count:,}")
    console.print(table)
    if result.missing_images:
        err_console.print(f"[yellow]warning:[/yellow] {len(result.missing_images)} image(s) not found under "
                          + escape(f"{result.image_root}, e.g. {result.missing_images[0]}"), highlight=False)
    if result.skipped:
        err_console.print(f"[yellow]warning:[/yellow] skipped {len(result.skipped)} bad record(s), e.g. "
                          f"{escape(result.skipped[0].message())}", highlight=False)


@app.command("export")
def export_command(
    out: Annotated[Path, typer.Option("--out", help="Folder for the LLaVA json / parquet files")],
    image_root: ImageRootOption = None,
    seed: Annotated[int, typer.Option(help="Seed of the instruction / <image> placement draws")] = 0,
    db: DbOption = None,
) -> None:
    """Export the deduplicated dataset as LLaVA json (all types + one file per type), stage-1 pairs and parquet."""
    from tasks.curation.export import export

    _print_export(export(db, out, _resolve_image_root(image_root, db), seed=seed))


@app.command("curate")
def curate_command(
    out: Annotated[Path, typer.Option("--out", help="Export folder (json, parquet, report.md, plots)")] = Path(
        CurateParams().export_dir
    ),
    image_root: ImageRootOption = None,
    threshold: Annotated[float, typer.Option(help="Near-duplicate Jaccard threshold")] = _default("dedup_threshold"),
    scope: Annotated[str, typer.Option(help="Dedup scope: image (same image and type) or global")] = _default(
        "dedup_scope"),
    seed: Annotated[int, typer.Option(help="Seed of the export's random draws")] = _default("seed"),
    db: DbOption = None,
) -> None:
    """Validate pending responses, remove duplicates, export, and write the report (no Prefect needed).

    The same steps as the `curate` flow (`tasks.pipeline.CURATE`), run in this process.
    """
    from pydantic import ValidationError

    from tasks import pipeline

    try:
        params = CurateParams(db_path=str(store.resolve_db(db)), dedup_threshold=threshold, dedup_scope=scope,
                              export_dir=str(out), seed=seed,
                              image_root=str(_resolve_image_root(image_root, db)))
    except ValidationError as exc:
        err_console.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False)
        raise typer.Exit(2) from None
    ctx = pipeline.Context(db=store.resolve_db(db), runner=pipeline.Runner(
        log=lambda line: console.print(line, highlight=False, markup=False)))
    done = pipeline.run_steps(pipeline.CURATE, params, ctx)
    _print_export(done["export"])
    console.print(f"database: {store.resolve_db(db)}", markup=False, highlight=False)
