"""`vistune run` (the pipeline flow), `vistune demo` (the whole DAG on the sample) and `vistune status`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from flows.cli import app
from flows.cli.generate import (
    BaseUrlOption,
    ConcurrencyOption,
    EndpointsOption,
    FormatOption,
    MaxAttemptsOption,
    MaxCostOption,
    MaxRegenerationsOption,
    MaxTokensOption,
    MixOption,
    ModelOption,
    ModeOption,
    PromptSetOption,
    TemperatureOption,
    TimeoutOption,
    TransportOption,
    default,
    parse_mix,
)
from flows.cli.output import make_console
from schemas.flow_params import (
    SAMPLE_COCO,
    CurateParams,
    GenerateParams,
    IngestParams,
    PipelineParams,
    TrainParams,
    splits_found,
)
from schemas.settings import get_settings
from tasks import store
from tasks.store import queries

console = make_console()

DbOption = Annotated[
    Path | None, typer.Option("--db", help="DuckDB file (default: $VISTUNE_DB or data/vistune.duckdb)")
]


def splits_of(coco_dir: Path) -> list[str]:
    """The splits a COCO folder has annotations for (`annotations/captions_<split>.json`)."""
    found = splits_found(coco_dir)
    if not found:
        raise typer.BadParameter(f"{coco_dir}/annotations has no captions_<split>.json", param_hint="--coco")
    return found


class ProgressBar:
    """A rich progress bar fed by the generate flow's totals (see `flows.progress.add_listener`)."""

    def __init__(self) -> None:
        self.progress = Progress(
            TextColumn("generating"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[detail]}"),
            TimeElapsedColumn(), console=console, transient=False,
        )
        self.task_id = self.progress.add_task("generate", total=None, detail="")

    def __call__(self, stats: object, total: int) -> None:
        done = stats.done + stats.already_ok + stats.failed  # type: ignore[attr-defined]
        detail = f"{stats.failed} failed · {stats.tokens:,} tok · ${stats.cost_usd:.4f}"  # type: ignore[attr-defined]
        self.progress.update(self.task_id, total=total, completed=done, detail=detail)


# `vistune run` flag -> the GenerateParams field it sets (with --recipe, only the flags given replace the recipe's).
_GENERATE_FLAGS = {
    "types": "sample_types", "limit": "limit_images", "model": "model", "output_format": "output_format",
    "mode": "mode", "base_url": "base_url", "concurrency": "concurrency", "rpm": "rpm", "tpm": "tpm",
    "max_cost_usd": "max_cost_usd", "timeout": "timeout_s", "transport": "transport", "max_attempts": "max_attempts",
    "temperature": "temperature", "max_tokens": "max_tokens", "max_regenerations": "max_regenerations",
    "prompt_set": "prompt_set", "shard_size": "shard_size", "max_workers": "max_workers",
    "task_runner": "task_runner", "mix": "mix", "endpoints": "endpoints_file",
}


def flags_given(ctx: typer.Context) -> set[str]:
    """The options typed on the command line (not left at their default)."""
    # By the source's name: typer vendors its own click, whose ParameterSource is not click's.
    sources = {name: ctx.get_parameter_source(name) for name in ctx.params}
    return {name for name, source in sources.items()
            if source is not None and source.name not in ("DEFAULT", "DEFAULT_MAP")}


@app.command("run")
def run_command(
    ctx: typer.Context,
    coco: Annotated[Path, typer.Option("--coco", help="COCO root (default: the bundled sample)")] = Path(SAMPLE_COCO),
    split: Annotated[list[str] | None, typer.Option("--split", help="split(s); default: every split found")] = None,
    types: Annotated[list[str] | None, typer.Option("--types", help="sample types; default: all three")] = None,
    limit: Annotated[int | None, typer.Option("--limit", help="at most this many images")] = None,
    model: ModelOption = None,
    output_format: FormatOption = default("output_format"),
    mode: ModeOption = default("mode"),
    base_url: BaseUrlOption = None,
    endpoints: EndpointsOption = None,
    concurrency: ConcurrencyOption = default("concurrency"),
    rpm: Annotated[float | None, typer.Option("--rpm", help="requests/minute, all workers together")] = None,
    tpm: Annotated[float | None, typer.Option("--tpm", help="tokens/minute, all workers together")] = None,
    max_cost_usd: MaxCostOption = None,
    timeout: TimeoutOption = default("timeout_s"),
    transport: TransportOption = default("transport"),
    max_attempts: MaxAttemptsOption = default("max_attempts"),
    temperature: TemperatureOption = default("temperature"),
    max_tokens: MaxTokensOption = default("max_tokens"),
    max_regenerations: MaxRegenerationsOption = None,
    prompt_set: PromptSetOption = None,
    mix: MixOption = None,
    recipe: Annotated[
        str | None,
        typer.Option("--recipe", help="Start from a recipe (vistune recipe list); any flag given replaces its value"),
    ] = None,
    overrides: Annotated[
        list[str] | None,
        typer.Option("--set", metavar="KEY=VALUE", help="With --recipe: override a recipe field, e.g. "
                                                        "mix.conversation=500 or coco.split=train2017"),
    ] = None,
    shard_size: Annotated[int | None, typer.Option(
        "--shard-size", help="requests per Prefect task (default: from the plan and --max-workers)"
    )] = default("shard_size"),
    max_workers: Annotated[int, typer.Option("--max-workers", help="shards at once")] = default("max_workers"),
    task_runner: Annotated[str, typer.Option("--task-runner", help="threads | dask")] = default("task_runner"),
    export_dir: Annotated[
        Path, typer.Option("--export-dir", help="Folder for the LLaVA json / parquet files, report and plots")
    ] = Path(CurateParams().export_dir),
    train_config: Annotated[Path | None, typer.Option("--train-config", help="also train with this config")] = None,
    db: DbOption = None,
) -> None:
    """Run the whole pipeline as a Prefect flow (on PREFECT_API_URL's server, else a temporary local one).

    With --recipe NAME the recipe's settings apply (`vistune recipe show NAME`); flags given and --set override them.
    """
    from flows.pipeline import pipeline_flow
    from flows.progress import add_listener
    from schemas.settings import get_settings

    given = flags_given(ctx) if recipe else set(ctx.params)  # without a recipe every flag counts, defaults too
    flags = {**ctx.params, "types": types or default("sample_types"),
             "endpoints": str(endpoints) if endpoints else None}
    values: dict = {"ingest": {}, "generate": {}, "curate": {}}
    if recipe:
        from flows.cli.recipe import load_or_exit
        from tasks.recipes import pipeline_values

        values = pipeline_values(load_or_exit(recipe, overrides))
    elif overrides:
        raise typer.BadParameter("--set overrides a recipe's field: give --recipe NAME too", param_hint="--set")
    if "coco" in given or "coco_dir" not in values["ingest"]:
        coco = coco if "coco" in given else Path(SAMPLE_COCO)
    else:
        coco = Path(values["ingest"]["coco_dir"])
    if not coco.is_dir():  # before a Prefect server is started for nothing
        raise typer.BadParameter(f"{coco} is not a folder", param_hint="--coco")
    db_path = str(store.resolve_db(db))
    try:
        generate_values = {**values["generate"], **{field: flags[flag] for flag, field in _GENERATE_FLAGS.items()
                                                    if flag in given}}
        generate_values["mix"] = parse_mix(mix) if "mix" in given else generate_values.get("mix")
        generate_values["model"] = generate_values.get("model") or get_settings().model
        generate = GenerateParams(db_path=db_path, **generate_values)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    splits = split if "split" in given and split else values["ingest"].get("splits") or splits_of(coco)
    curate = {**values["curate"], **({"export_dir": str(export_dir)} if "export_dir" in given else {})}
    export_dir = Path(curate.setdefault("export_dir", str(export_dir)))
    train = TrainParams(config=str(train_config)) if train_config else values.get("train")
    params = PipelineParams(
        recipe=recipe,
        ingest=IngestParams(coco_dir=str(coco), splits=splits, db_path=db_path),
        generate=generate,
        curate=CurateParams(db_path=db_path, **curate),
        train=train,
    )
    bar = ProgressBar()
    remove = add_listener(bar)
    try:
        with bar.progress:
            state = pipeline_flow(params, return_state=True)
    finally:
        remove()
    console.print(f"database: {db_path}\nexports: {export_dir.resolve()}", markup=False, highlight=False)
    if not state.is_completed():  # the flow's own reason (no key, nothing answered, ...), not a traceback
        console.print(f"[red]error:[/red] {escape(state.message or state.name)}", highlight=False)
        raise typer.Exit(1)


@app.command("status")
def status_command(db: DbOption = None) -> None:
    """Row counts, money spent, response statuses and open batches of a database."""
    db_path = store.resolve_db(db)
    try:
        counts = store.table_counts(db_path)
    except FileNotFoundError as exc:  # no database yet: one line, naming it
        console.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
    console.print(f"database: {db_path}", soft_wrap=True, markup=False)
    table = Table()
    table.add_column("table")
    table.add_column("rows", justify="right")
    for name, n in counts.items():
        table.add_row(name, f"{n:,}")
    console.print(table)
    spent = store.query(
        "SELECT status, count(*) AS n, coalesce(sum(cost_usd), 0) AS cost, "
        "coalesce(sum(prompt_tokens + completion_tokens), 0) AS tokens FROM responses GROUP BY status ORDER BY n DESC",
        path=db_path,
    )
    with store.read(db_path) as con:
        slots = queries.slot_summary(con, get_settings().max_regenerations)
        all_ids = [r[0] for r in con.execute("SELECT request_id FROM requests").fetchall()]
        unanswered = len(queries.unanswered(con, all_ids).requests)
    total_cost = sum(r["cost"] for r in spent)
    console.print(f"cost so far: ${total_cost:,.4f} · planned requests still unanswered: {unanswered:,}")
    console.print("slots (image, type, prompt version, model): " + ", ".join(
        f"{n:,} {label.replace('_', ' ')}" for label, n in slots.items()), highlight=False)
    for r in spent:
        console.print(f"  responses {r['status']}: {r['n']:,} ({r['tokens']:,} tokens, ${r['cost']:,.4f})",
                      markup=False)
    from schemas.generation import CLOSED_BATCH_STATES  # the one definition of a finished batch

    open_batches = store.query(
        "SELECT batch_id, status, n_requests, created_at FROM batches WHERE lower(status) NOT IN "
        f"({', '.join('?' * len(CLOSED_BATCH_STATES))}) ORDER BY created_at",
        list(CLOSED_BATCH_STATES), path=db_path,
    )
    console.print(f"open batches: {len(open_batches)}")
    for b in open_batches:
        console.print(f"  {b['batch_id']}: {b['status']}, {b['n_requests']:,} requests, since {b['created_at']}",
                      markup=False)


@app.command("demo")
def demo_command(
    coco: Annotated[
        Path | None, typer.Option("--coco", help="COCO root (default: the demo recipe's, the bundled 4-image sample)")
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option("--out", help="Folder for the demo's database, dataset and model (default: the default "
                                   "database $VISTUNE_DB or data/vistune.duckdb, data/export and data/demo)"),
    ] = None,
    limit: Annotated[int | None, typer.Option("--limit", help="at most this many images")] = None,
    model: Annotated[str | None, typer.Option("--model", help="default: VISTUNE_MODEL or gpt-4o")] = None,
    max_cost_usd: Annotated[float | None, typer.Option("--max-cost-usd", help="stop a real endpoint at this")] = None,
    train: Annotated[bool, typer.Option(help="train the tiny model (stage 1 + stage 2) at the end")] = True,
    fresh: Annotated[
        bool, typer.Option("--fresh", help="Delete the demo's outputs first (--out, else its database and exports)")
    ] = False,
    prefect: Annotated[bool, typer.Option("--prefect", help="run the steps as Prefect flows (UI, artifacts)")] = False,
    vision: Annotated[str, typer.Option("--vision", help="tiny vision tower: clip or siglip")] = "clip",
) -> None:
    """The whole pipeline on a small sample: ingest, generate, curate, export, train a tiny model on the CPU."""
    from flows.demo import DemoError, print_summary, run_demo
    from schemas.settings import get_settings

    try:
        result = run_demo(console, coco_dir=coco, out_dir=out, limit_images=limit,
                          model=model or get_settings().model, max_cost_usd=max_cost_usd, train=train, fresh=fresh,
                          use_prefect=prefect, vision=vision)
    except (DemoError, FileNotFoundError) as exc:  # the endpoint answered nothing usable; no COCO folder
        console.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False)
        raise typer.Exit(1) from None
    print_summary(console, result)
