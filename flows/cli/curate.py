"""`vistune validate-text`, `vistune curate` and `vistune export`: checking, cleaning and exporting samples."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from flows.cli import app
from flows.cli.output import make_console
from schemas.flow_params import CurateParams
from schemas.samples import SAMPLE_TYPES
from tasks import store
from tasks.prompting.formats import OUTPUT_FORMATS

console = make_console()
err_console = make_console(stderr=True)


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


RequireImagesOption = Annotated[
    bool, typer.Option("--require-images", help="Leave out records whose image file is missing under the image root")
]


@app.command("validate-text")
def validate_text_command(
    file: Annotated[
        Path, typer.Argument(metavar="FILE", help="A raw LLM response (the message content), '-' for stdin")
    ],
    sample_type: Annotated[str, typer.Option("--type", help=" | ".join(SAMPLE_TYPES))],
    output_format: Annotated[str, typer.Option("--format", help=" | ".join(OUTPUT_FORMATS))] = "structured",
    finish_reason: Annotated[
        str | None, typer.Option(metavar="REASON", help="The response's finish_reason, if known")
    ] = None,
) -> None:
    """Validate one raw LLM response: print the parsed sample as JSON (exit 0) or the reject reasons (exit 1)."""
    from tasks.curation.validate import validate_output

    try:
        content = typer.get_text_stream("stdin").read() if str(file) == "-" else file.read_text(encoding="utf-8")
    except OSError as exc:  # missing, a folder, unreadable: one line naming the file
        err_console.print(f"[red]error:[/red] cannot read {escape(str(file))}: {escape(exc.strerror or str(exc))}",
                          highlight=False)
        raise typer.Exit(2) from None
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
    except (ValueError, FileNotFoundError) as exc:  # several COCO folders; no database
        err_console.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False)
        raise typer.Exit(2) from None


def _print_export(result) -> None:
    # Paths on lines of their own, not in the title: a table wraps its title, a soft-wrapped line stays whole.
    console.print(f"export to {result.out_dir} (images relative to {result.image_root})", markup=False,
                  highlight=False)
    table = Table()
    table.add_column("file")
    table.add_column("records", justify="right")
    for stem, count in result.counts.items():
        table.add_row(f"{stem}.json / .parquet", f"{count:,}")
    console.print(table)
    if held_out := result.eval_summary():
        console.print(held_out, markup=False, highlight=False)
    if missing := result.missing_summary():
        err_console.print(f"[yellow]warning:[/yellow] {escape(missing)}", highlight=False)
    if result.skipped:
        err_console.print(f"[yellow]warning:[/yellow] skipped {len(result.skipped)} bad record(s), e.g. "
                          f"{escape(result.skipped[0].message())}", highlight=False)


@app.command("export")
def export_command(
    out: Annotated[Path, typer.Option("--out", help="Folder for the LLaVA json / parquet files")],
    image_root: ImageRootOption = None,
    seed: Annotated[int, typer.Option(help="Seed of the instruction / <image> placement draws")] = 0,
    require_images: RequireImagesOption = False,
    db: DbOption = None,
) -> None:
    """Export the deduplicated dataset as LLaVA json (all types + one file per type), stage-1 pairs and parquet."""
    from tasks.curation.export import export

    root = _resolve_image_root(image_root, db)
    try:
        _print_export(export(db, out, root, seed=seed, require_images=require_images))
    except FileNotFoundError as exc:  # no database
        err_console.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False)
        raise typer.Exit(1) from None


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
    require_images: RequireImagesOption = _default("require_images"),
    db: DbOption = None,
) -> None:
    """Validate pending responses, remove duplicates, export, and write the report (no Prefect needed).

    The same steps as the `curate` flow (`tasks.pipeline.CURATE`), run in this process.
    """
    from pydantic import ValidationError

    from tasks import pipeline

    try:
        params = CurateParams(db_path=str(store.resolve_db(db)), dedup_threshold=threshold, dedup_scope=scope,
                              export_dir=str(out), seed=seed, require_images=require_images,
                              image_root=str(_resolve_image_root(image_root, db)))
    except ValidationError as exc:
        err_console.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False)
        raise typer.Exit(2) from None
    ctx = pipeline.Context(db=store.resolve_db(db), runner=pipeline.Runner(
        log=lambda line: console.print(line, highlight=False, markup=False)))
    done = pipeline.run_steps(pipeline.CURATE, params, ctx)
    _print_export(done["export"])
    console.print(f"database: {store.resolve_db(db)}", markup=False, highlight=False)
