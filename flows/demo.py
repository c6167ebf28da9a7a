"""`vistune demo`: the whole DAG on the bundled sample (or any COCO folder) in a few minutes on a CPU.

Ingest -> generate (against the simulator when no endpoint is configured) -> validate -> dedup ->
export -> report -> stage-1 and stage-2 training of a tiny random model.

Without `--out` the demo writes where every other command reads: the database `VISTUNE_DB` (default
`data/vistune.duckdb`), the dataset and report in `data/export/` (`vistune curate`'s default), and the
tiny model under `data/demo/`; so the README's `vistune sql` and `vistune status` work as printed after
it. It refuses to add its sample to a database that holds images from another COCO folder. With `--out
DIR` everything goes under DIR (`DIR/vistune.duckdb`, `DIR/export`, `DIR/train`).

By default the demo runs the pipeline's steps (`tasks.pipeline`) in this process, the same steps the
Prefect flows run:
a first run then needs no Prefect server (a temporary one takes ~20 s to start here) and leaves no
Prefect state behind. `--prefect` runs the same steps as the `pipeline` flow instead (on
PREFECT_API_URL's server, else a temporary local one), so its runs and artifacts show in the UI.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from schemas.flow_params import CurateParams, GenerateParams, IngestParams, PipelineParams, TrainParams, splits_found
from schemas.generation import GenerateStats
from schemas.settings import get_settings
from tasks import store
from tasks.curation.export import default_image_root
from tasks.llm import pricing

DEMO_WORK = Path("data/demo")  # the tiny models and training runs when no --out is given
DEFAULT_REAL_BUDGET_USD = 1.0  # a real endpoint costs money: cap the demo unless told otherwise
SQL_TO_TRY = (
    ("samples per type that survived dedup", "SELECT sample_type, count(*) AS n FROM dataset GROUP BY 1 ORDER BY 1"),
    ("a few samples with their image files",
     "SELECT i.file_name, d.sample_type, left(d.text, 80) AS text FROM dataset d JOIN images i USING (image_id) "
     "ORDER BY d.sample_id LIMIT 5"),
    ("tokens and cost per sample type",
     "SELECT q.sample_type, sum(r.prompt_tokens) AS prompt_tok, sum(r.completion_tokens) AS completion_tok, "
     "round(sum(r.cost_usd), 4) AS usd FROM responses r JOIN requests q USING (request_id) GROUP BY 1"),
)


@dataclass
class DemoResult:
    """Where everything the demo made lies."""

    db: Path
    export_dir: Path
    report: Path
    checkpoint: Path | None
    endpoint: str
    seconds: float


class DemoError(RuntimeError):
    """The demo cannot go on (e.g. the LLM endpoint answered nothing usable)."""


@contextmanager
def endpoint(console: Console) -> Iterator[tuple[str | None, str]]:
    """The OpenAI-compatible endpoint to use: the configured one, else the simulator (said plainly)."""
    settings = get_settings()
    if settings.openai_api_key is not None or settings.openai_base_url:
        where = settings.openai_base_url or "https://api.openai.com/v1"
        console.print(f"[bold]Generating with the configured endpoint {where}[/bold] (paid endpoints cost money).")
        yield settings.openai_base_url, where
        return
    from tests.sim import SimConfig, start_simulator

    with start_simulator(SimConfig(latency_ms=20, latency="uniform")) as sim:
        console.print(
            "[bold yellow]Neither OPENAI_API_KEY nor OPENAI_BASE_URL is set: generating against the built-in "
            f"OpenAI-compatible simulator at {sim.base_url}[/bold yellow]. Its answers are synthetic (built "
            "from the captions) and cost nothing; set OPENAI_API_KEY (and optionally OPENAI_BASE_URL) for real ones."
        )
        yield sim.base_url, f"simulator at {sim.base_url}"


def splits_in(coco_dir: Path) -> list[str]:
    """Splits with a captions file under `coco_dir/annotations`."""
    return splits_found(coco_dir)


def demo_paths(out_dir: Path | None) -> tuple[Path, Path, Path]:
    """(database, export folder, training folder): all under `out_dir`, else the commands' defaults."""
    if out_dir is not None:
        out_dir = out_dir.resolve()
        return out_dir / "vistune.duckdb", out_dir / "export", out_dir / "train"
    return store.resolve_db(None).resolve(), Path(CurateParams().export_dir).resolve(), DEMO_WORK.resolve() / "train"


def check_not_mixing(db: Path, coco_dir: Path) -> None:
    """Refuse to add the demo's images to a database that holds images from another COCO folder."""
    if not db.exists():
        return
    import duckdb

    try:  # a plain read-only connection: the store's per-file caches must not outlive a --fresh delete
        with duckdb.connect(str(db), read_only=True) as con:
            roots = {r[0] for r in con.execute("SELECT DISTINCT coco_root FROM images").fetchall()}
    except duckdb.Error:  # locked by a writer, no images table, not DuckDB: the steps below say what is wrong
        return
    others = sorted(r for r in roots if Path(r).resolve() != coco_dir.resolve())
    if others:
        raise DemoError(f"{db} already holds images from {others[0]}: the demo would mix its sample into it; "
                        "give --out DIR for a separate demo (or set VISTUNE_DB)")


def remove_database(db: Path) -> None:
    """Delete a database file with its DuckDB WAL, journal folder and rate-limit bucket."""
    for path in db.parent.glob(db.name + "*"):  # vistune.duckdb, .wal, .journal/, .ratelimit.sqlite
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()


def progress_bar(console: Console) -> tuple[Progress, Callable[[GenerateStats], None]]:
    """A rich bar plus the `on_progress` callback that drives it."""
    bar = Progress(TextColumn("generating"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[detail]}"),
                   TimeElapsedColumn(), console=console)
    task_id = bar.add_task("generate", total=None, detail="")

    def on_progress(stats: GenerateStats) -> None:
        bar.update(task_id, total=stats.requests, completed=stats.done + stats.already_ok + stats.failed,
                   detail=f"{stats.failed} failed · {stats.tokens:,} tok · ${stats.cost_usd:.4f}")

    return bar, on_progress


def prepare_training(
    work: Path, export_dir: Path, image_root: str, captions: list[str], vision_tower: str = "clip"
) -> Path:
    """Tiny random vision tower (`vision_tower`: clip or siglip) + Llama base models and a config pointing at the
    demo's exports."""
    from transformers.utils import logging as hf_logging

    from training.tiny import build_tiny_base_models, write_tiny_config

    hf_logging.disable_progress_bar()  # saving two tiny models: "Writing model shards" bars would be empty noise

    vision, llm = build_tiny_base_models(work / "base", texts=captions, vision=vision_tower)
    return write_tiny_config(
        work / "train.yaml", vision, llm, image_root=image_root, output_dir=work / "runs",
        stage1={"data": str(export_dir / "llava_pretrain.json")},
        stage2={"data": str(export_dir / "llava_instruct.json")},
    )


def run_demo(
    console: Console,
    *,
    coco_dir: Path,
    out_dir: Path | None,
    limit_images: int | None,
    model: str,
    max_cost_usd: float | None,
    train: bool = True,
    fresh: bool = False,
    use_prefect: bool = False,
    vision: str = "clip",
) -> DemoResult:
    """Run every step; returns where the database, dataset, report and checkpoint are.

    `out_dir` None: the default database (`VISTUNE_DB`), `data/export` and `data/demo` (see the module doc)."""
    started = time.monotonic()
    db, export_dir, work = demo_paths(out_dir)
    splits = splits_in(coco_dir)
    if not splits:
        raise FileNotFoundError(f"{coco_dir}/annotations has no captions_<split>.json: is it a COCO folder?")
    check_not_mixing(db, coco_dir)  # before --fresh deletes anything: never someone else's data
    if fresh and out_dir is not None and out_dir.exists():
        shutil.rmtree(out_dir)
    elif fresh:
        remove_database(db)
        for folder in (export_dir, work):
            shutil.rmtree(folder, ignore_errors=True)
    with endpoint(console) as (base_url, where):
        if max_cost_usd is None and not where.startswith("simulator") and pricing.known(model):
            max_cost_usd = DEFAULT_REAL_BUDGET_USD
            console.print(f"Spending at most ${max_cost_usd:.2f} (--max-cost-usd to change).")
        params = PipelineParams(
            ingest=IngestParams(coco_dir=str(coco_dir), splits=splits, db_path=str(db)),
            generate=GenerateParams(db_path=str(db), model=model, base_url=base_url, limit_images=limit_images,
                                    max_cost_usd=max_cost_usd, concurrency=16),
            curate=CurateParams(db_path=str(db), export_dir=str(export_dir)),
        )
        run = _run_with_prefect if use_prefect else _run_plain
        checkpoint = run(console, params, db, work, train, vision)
    return DemoResult(db=db, export_dir=export_dir, report=export_dir / "report.md", checkpoint=checkpoint,
                      endpoint=where, seconds=time.monotonic() - started)


def _captions(db: Path) -> list[str]:
    return [r["caption"] for r in store.query("SELECT caption FROM captions", path=db)]


def _show_training_line(console: Console, line: str) -> None:
    if "it/s]" not in line and "s/it]" not in line:  # skip tqdm bars of weight loading / saving
        console.print(f"  {line}", style="dim", highlight=False, soft_wrap=True)


def _run_plain(
    console: Console, params: PipelineParams, db: Path, work: Path, train: bool, vision: str = "clip"
) -> Path | None:
    """`tasks.pipeline.STEPS` in this process, the bar showing generation."""
    from tasks import pipeline

    bar, on_progress = progress_bar(console)
    ctx = pipeline.Context(db=db, runner=pipeline.Runner(
        log=lambda line: console.print(line, highlight=False),
        warn=lambda line: console.print(f"[yellow]warning:[/yellow] {line}", highlight=False),
        on_progress=on_progress))
    pipeline.run_steps([pipeline.Ingest], params, ctx)
    with bar:
        gen = pipeline.Generate.run(ctx, params.generate)
    if problem := gen.all_failed():
        raise DemoError(problem)
    pipeline.run_steps(pipeline.CURATE, params, ctx)
    if not train:
        return None
    config = prepare_training(
        work, Path(params.curate.export_dir), str(default_image_root(db)), _captions(db), vision
    )
    ctx.runner = pipeline.Runner(log=lambda line: _show_training_line(console, line))
    console.rule("training stage 1 and stage 2 (tiny random model, CPU)")
    pipeline.Train.run(ctx, TrainParams(config=str(config)))
    return work / "runs" / "stage2" / "final"


def _run_with_prefect(
    console: Console, params: PipelineParams, db: Path, work: Path, train: bool, vision: str = "clip"
) -> Path | None:
    """The same steps as the `pipeline` and `train` flows (runs and artifacts in the Prefect UI)."""
    from flows.pipeline import pipeline_flow

    pipeline_flow(params)
    if not train:
        return None
    from flows.train import train_flow

    image_root = str(default_image_root(db))
    config = prepare_training(work, Path(params.curate.export_dir), image_root, _captions(db), vision)
    train_flow(TrainParams(config=str(config)))
    return work / "runs" / "stage2" / "final"


def print_summary(console: Console, result: DemoResult) -> None:
    """Where things are, and three SQL queries to try."""
    console.rule(f"demo finished in {result.seconds:.0f} s")
    console.print(f"generated with: {result.endpoint}")
    console.print(f"database:   {result.db}")
    console.print(f"dataset:    {result.export_dir / 'llava_instruct.json'} (+ per type, stage-1 pairs, parquet)")
    console.print(f"report:     {result.report}")
    if result.checkpoint is not None:
        console.print(f"checkpoint: {result.checkpoint} (LlavaForConditionalGeneration.from_pretrained loads it)")
    console.print("\nTry some SQL (read-only, also works from the duckdb CLI while nothing writes):")
    # The default database needs no --db: the commands print what works as typed.
    db_flag = "" if result.db == store.resolve_db(None).resolve() else f"--db {result.db} "
    for title, sql in SQL_TO_TRY:
        console.print(f"  # {title}\n  vistune sql {db_flag}\"{sql}\"", highlight=False, soft_wrap=True)
    console.print(f"  # counts, cost and open batches\n  vistune status {db_flag}".rstrip(), highlight=False,
                  soft_wrap=True)
