"""`vistune estimate` and `vistune generate`: price a plan, then run it against any OpenAI-compatible API."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

import typer
from pydantic import SecretStr, ValidationError
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from flows.cli import app
from flows.cli.output import make_console
from schemas.flow_params import GenerateParams
from schemas.generation import GenerateStats
from schemas.recipes import SampleMix
from schemas.samples import SAMPLE_TYPES
from schemas.settings import get_settings
from tasks import store

console = make_console()
err_console = make_console(stderr=True)

DbOption = Annotated[
    Path | None, typer.Option("--db", help="DuckDB file (default: $VISTUNE_DB or data/vistune.duckdb)")
]
TypesOption = Annotated[
    str, typer.Option("--types", help="Comma-separated sample types: " + ", ".join(SAMPLE_TYPES))
]
LimitOption = Annotated[int | None, typer.Option("--limit", help="Number of images (first N by id); default all")]
ModelOption = Annotated[str | None, typer.Option("--model", help="Model name (default: $VISTUNE_MODEL or gpt-4o)")]
FormatOption = Annotated[str, typer.Option("--format", help="structured | llava-text")]
PromptSetOption = Annotated[
    str | None,
    typer.Option("--prompt-set", help="Prompt set folder: vistune's layout or LLaVA's released "
                                      "playground/data/prompts (default: vistune's own; docs/PROMPTS.md)"),
]


def default(name: str) -> Any:
    """The default of a `GenerateParams` field: the CLI's defaults are the flows' and the engine's, never a copy."""
    return GenerateParams.model_fields[name].get_default(call_default_factory=True)


# The generation flags shared by `vistune generate` and `vistune run` (one place, so neither drops one).
ModeOption = Annotated[str, typer.Option("--mode", help="online | batch (Batch API: half price, up to 24 h)")]
ConcurrencyOption = Annotated[int, typer.Option(help="Requests in flight at once (per shard under Prefect)")]
RpmOption = Annotated[float | None, typer.Option(help="Requests per minute (default: learned from headers)")]
TpmOption = Annotated[float | None, typer.Option(help="Tokens per minute (default: learned from headers)")]
MaxCostOption = Annotated[float | None, typer.Option(help="Stop sending new requests at this spend (whole run)")]
TimeoutOption = Annotated[float, typer.Option(help="Seconds per HTTP attempt")]
TransportOption = Annotated[
    str, typer.Option(help="aiohttp (lean, default) | sdk (the openai SDK's own post): how each call travels")
]
WakeupOption = Annotated[
    float | None,
    typer.Option(help="Batch the client's wake-ups into windows of this many ms (0 = off; default: from the rate)"),
]
MaxAttemptsOption = Annotated[int, typer.Option(help="Attempts per request (retries + 1)")]
TemperatureOption = Annotated[float, typer.Option(help="Sampling temperature of every request")]
MaxTokensOption = Annotated[int, typer.Option(help="max_tokens per request")]
MaxRegenerationsOption = Annotated[
    int | None,
    typer.Option(help="Ask again for a rejected answer at most this often, in further rounds "
                      "(default: $VISTUNE_MAX_REGENERATIONS or 2)"),
]
MixOption = Annotated[
    str | None,
    typer.Option("--mix", help="Images per sample type, counts or fractions of the images: e.g. conversation=58000,"
                               "detail_description=23000,complex_reasoning=77000 or conversation=0.7,... (seed=N "
                               "draws other images); default: every type for every image"),
]
BaseUrlOption = Annotated[
    str | None, typer.Option("--base-url", help="OpenAI-compatible endpoint (default: $OPENAI_BASE_URL)")
]
EndpointsOption = Annotated[
    Path | None,
    typer.Option("--endpoints", help="TOML file of several endpoints used together, each with its URL, key variable, "
                                     "model, rpm and tpm (docs/GENERATION.md, 'Several endpoints'); replaces "
                                     "--base-url/--rpm/--tpm"),
]


def _types(text: str) -> list[str]:
    names = [t.strip() for t in text.split(",") if t.strip()]
    unknown = [t for t in names if t not in SAMPLE_TYPES]
    if unknown:
        raise typer.BadParameter(f"unknown sample type(s) {unknown}; choose from {', '.join(SAMPLE_TYPES)}")
    return names


def parse_mix(text: str | None) -> SampleMix | None:
    """`--mix` as a `SampleMix`; a bad one raises `ValueError` with the first problem only (one line)."""
    if text is None:
        return None
    try:
        return SampleMix.model_validate(text)
    except ValidationError as exc:
        raise ValueError(f"--mix {text}: {exc.errors()[0]['msg'].removeprefix('Value error, ')}") from None


def _usd(value: float | None) -> str:
    return "no price (add it to tasks/llm/prices.toml)" if value is None else f"${value:,.2f}"


@app.command("estimate")
def estimate_command(
    types: TypesOption = ",".join(default("sample_types")),
    limit: LimitOption = None,
    model: ModelOption = None,
    output_format: FormatOption = default("output_format"),
    max_tokens: MaxTokensOption = default("max_tokens"),
    prompt_set: PromptSetOption = None,
    mix: MixOption = None,
    recipe: Annotated[
        str | None,
        typer.Option("--recipe", help="Price a recipe (vistune recipe list) for every model of prices.toml, from "
                                      "the image count it states: no COCO download needed"),
    ] = None,
    overrides: Annotated[
        list[str] | None,
        typer.Option("--set", metavar="KEY=VALUE", help="With --recipe: override a field, e.g. mix.conversation=500"),
    ] = None,
    images: Annotated[
        int | None, typer.Option("--images", min=1, help="With --recipe: price this many images instead")
    ] = None,
    endpoints: EndpointsOption = None,
    db: DbOption = None,
) -> None:
    """Requests, tokens and cost (online vs batch) of what `generate` would send. Sends nothing, writes nothing."""
    from tasks.llm.estimate import estimate  # imported here: `vistune sql` & co. need not load the engine
    from tasks.prompting.plan import plan_requests

    if recipe is not None:
        from flows.cli.recipe import print_recipe_estimate

        print_recipe_estimate(recipe, overrides, images, store.resolve_db(db))
        return
    model = model or get_settings().model
    try:
        plan = plan_requests(db, sample_types=_types(types), model=model, output_format=output_format,
                             limit_images=limit, max_tokens=max_tokens, dry_run=True, prompt_set=prompt_set,
                             mix=parse_mix(mix))
    except (ValueError, FileNotFoundError) as exc:  # a broken prompt set, a format it does not offer, no database
        err_console.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False)
        raise typer.Exit(2) from None
    est = estimate(plan, model, db)
    table = Table(title=f"estimate: {model}, {output_format}, {plan.images} images")
    table.add_column("")
    table.add_column("value", justify="right")
    table.add_row("requests to send", f"{est.requests:,}")
    table.add_row("already have a good sample", f"{plan.already_ok:,}")
    for name, n in sorted(plan.by_type.items()):
        table.add_row(f"  {name}", f"{n:,}")
    table.add_row("input tokens (estimated)", f"{est.input_tokens:,}")
    table.add_row(f"output tokens ({est.output_source} means)", f"{est.output_tokens:,}")
    table.add_row("cost online", _usd(est.online_usd))
    table.add_row("cost with --mode batch", _usd(est.batch_usd))
    if endpoints is not None:
        _endpoint_estimate(table, est, endpoints, model)
    console.print(table)


def _endpoint_estimate(table: Table, est: Any, endpoints: Path, model: str) -> None:
    # Each endpoint prices by its own model; a run at full load gives each its rpm's share of the requests.
    from tasks.llm.estimate import endpoint_costs, split_usd
    from tasks.llm.pool import load_endpoints

    try:
        costs = endpoint_costs(est, load_endpoints(endpoints, keys=False), model)
    except ValueError as exc:
        err_console.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False)
        raise typer.Exit(2) from None
    for cost in costs:
        table.add_row(f"cost online, all at {cost.name} ({cost.priced_as})", _usd(cost.usd))
    table.add_row("cost online, shared by rpm", _usd(split_usd(costs)))


def _message(exc: Exception) -> str:
    # A config that does not validate says what is wrong, without pydantic's report around it.
    if isinstance(exc, ValidationError):
        return "; ".join(str(e["msg"]).removeprefix("Value error, ") for e in exc.errors())
    return str(exc)


def _endpoints_table(stats: GenerateStats) -> Table:
    """What each endpoint of an endpoints file did in the run (`GenerateStats.by_endpoint`)."""
    table = Table(title="endpoints")
    for name in ("endpoint", "calls", "ok", "cost", "share of ok"):
        table.add_column(name, justify="left" if name == "endpoint" else "right")
    table.add_column("cut out")
    all_ok = sum(c.ok for c in stats.by_endpoint.values()) or 1
    for name, counts in sorted(stats.by_endpoint.items()):
        table.add_row(name, f"{counts.attempts:,}", f"{counts.ok:,}", f"${counts.cost_usd:,.4f}",
                      f"{counts.ok / all_ok:.0%}", escape(counts.cut_out or ""))
    return table


def _progress_printer(progress: Progress, task_id: TaskID) -> Callable[[GenerateStats], None]:
    def update(stats: GenerateStats) -> None:
        progress.update(
            task_id, total=max(stats.requests - stats.already_ok, 0), completed=stats.done + stats.failed,
            failed=stats.failed, tokens=stats.tokens, cost=stats.cost_usd,
        )

    return update


def _warn(message: str) -> None:
    err_console.print(f"[yellow]warning:[/yellow] {escape(message)}", highlight=False)


@app.command("generate")
def generate_command(
    types: TypesOption = ",".join(default("sample_types")),
    limit: LimitOption = None,
    model: ModelOption = None,
    output_format: FormatOption = default("output_format"),
    prompt_set: PromptSetOption = None,
    mix: MixOption = None,
    mode: ModeOption = default("mode"),
    concurrency: ConcurrencyOption = default("concurrency"),
    rpm: RpmOption = None,
    tpm: TpmOption = None,
    max_cost_usd: MaxCostOption = None,
    timeout: TimeoutOption = default("timeout_s"),
    transport: TransportOption = default("transport"),
    wakeup_window_ms: WakeupOption = None,
    max_attempts: MaxAttemptsOption = default("max_attempts"),
    temperature: TemperatureOption = default("temperature"),
    max_tokens: MaxTokensOption = default("max_tokens"),
    max_regenerations: MaxRegenerationsOption = None,
    base_url: BaseUrlOption = None,
    endpoints: EndpointsOption = None,
    flush_interval: Annotated[
        float,
        typer.Option(help="Seconds between moves of answers from the journal into DuckDB, where the duckdb CLI "
                          "sees them (`vistune sql` sees them at once)"),
    ] = default("flush_interval_s"),
    db: DbOption = None,
    progress_bar: Annotated[bool, typer.Option("--progress/--no-progress", help="Show a progress bar")] = True,
) -> None:
    """Plan the missing samples, send them, validate the answers, and ask again for rejected ones (rounds).

    Rerun any time: nothing with a good response is sent again. The API key comes from
    $OPENAI_API_KEY (or .env / vistune.toml), never from a flag, so it stays out of shell history;
    it is never printed or stored.
    """
    from tasks import pipeline
    from tasks.llm.engine import RunAborted  # here: openai is slow to import

    if not store.resolve_db(db).exists():  # nothing ingested: an empty new database would only hide the mistake
        err_console.print(f"[red]error:[/red] no vistune database at {escape(str(store.resolve_db(db)))}: run "
                          "`vistune ingest` (or set VISTUNE_DB)", highlight=False)
        raise typer.Exit(1)
    # A URL with credentials goes to the engine through the run's context, never into the parameters.
    secret_url = SecretStr(base_url) if base_url and "@" in urlsplit(base_url).netloc else None
    try:
        params = GenerateParams(
            db_path=str(store.resolve_db(db)), model=model or get_settings().model,
            base_url=None if secret_url else base_url,
            output_format=output_format, mode=mode, concurrency=concurrency, rpm=rpm, tpm=tpm,
            max_cost_usd=max_cost_usd, timeout_s=timeout, transport=transport, wakeup_window_ms=wakeup_window_ms,
            max_attempts=max_attempts, temperature=temperature, max_tokens=max_tokens,
            max_regenerations=max_regenerations, sample_types=_types(types), limit_images=limit,
            flush_interval_s=flush_interval, prompt_set=prompt_set, mix=parse_mix(mix),
            endpoints_file=str(endpoints.resolve()) if endpoints else None,  # a deployment's worker may run elsewhere
        )
        if endpoints is not None:  # every problem of the file (keys included) before a progress bar starts
            from tasks.llm.pool import load_endpoints

            load_endpoints(endpoints)
    except ValueError as exc:
        err_console.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False)
        raise typer.Exit(2) from None
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("failed {task.fields[failed]}  tokens {task.fields[tokens]:,}  ${task.fields[cost]:.4f}"),
               TimeElapsedColumn())
    with Progress(*columns, console=err_console, disable=not progress_bar) as progress:
        task_id = progress.add_task(f"generate {params.model}", total=None, failed=0, tokens=0, cost=0.0)
        runner = pipeline.Runner(log=lambda line: err_console.print(line, style="dim", highlight=False, markup=False),
                                 warn=_warn, on_progress=_progress_printer(progress, task_id))
        try:
            ctx = pipeline.Context(db=store.resolve_db(db), runner=runner, base_url=secret_url)
            stats = pipeline.Generate.run(ctx, params)
        except (ValueError, RunAborted) as exc:  # a rejected key, a dead endpoint, a bad endpoints file
            err_console.print(f"[red]error:[/red] {escape(_message(exc))}", highlight=False)
            raise typer.Exit(2) from None
    table = Table(title=f"generate: {params.model} ({params.mode}, {params.output_format})")
    table.add_column("")
    table.add_column("value", justify="right")
    for name in ("requests", "already_ok", "done", "failed", "attempts", "prompt_tokens", "completion_tokens",
                 "cached_tokens"):
        table.add_row(name, f"{getattr(stats, name):,}")
    table.add_row("cost", f"${stats.cost_usd:,.4f}")
    table.add_row("wall", f"{stats.wall_s:,.1f} s")
    for status, n in sorted(stats.final_by_status.items()):
        if status != "ok":
            table.add_row(f"final {status}", f"{n:,}")
    console.print(table)
    if params.endpoints_file:
        console.print(_endpoints_table(stats))
    console.print(f"database: {store.resolve_db(db)}", markup=False, highlight=False)
    if stats.failed:
        err_console.print(f"[yellow]{stats.failed} request(s) ended without a good response; rerun to retry them. "
                          "Why: vistune sql \"SELECT status, count(*) FROM responses GROUP BY 1\"[/yellow]")
    if problem := stats.all_failed():
        err_console.print(f"[red]error:[/red] {escape(problem)}", highlight=False)
        raise typer.Exit(1)
