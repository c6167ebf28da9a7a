"""`vistune demo`: the whole DAG on the bundled sample (or any COCO folder) in a few minutes on a CPU.

`tasks.pipeline.STEPS`: ingest -> generate (against the simulator when no endpoint is configured) -> eval-set
(one image held out as the eval set `demo`: questions and reference answers from the LLM) -> validate -> dedup ->
export (without that image) -> report -> stage-1 and stage-2 training of a tiny random model -> evaluate (the
tiny model answers with `python -m training infer`, the LLM judges) -> the demo prints the relative score.
Its settings are the `demo` recipe's (`tasks/recipes/demo.toml`, `vistune recipe show demo`); the flags of
`vistune demo` and where it writes (below) are laid over them. `vistune run --recipe demo` runs the same steps.

Without `--out` the demo writes where every other command reads: the database `VISTUNE_DB` (default
`data/vistune.duckdb`), the dataset and report in `data/export/` (`vistune curate`'s default), and the
tiny model under `data/demo/`; so the README's `vistune sql` and `vistune status` work as printed after
it. It refuses to add its sample to a database that holds images from another COCO folder. With `--out
DIR` everything goes under DIR (`DIR/vistune.duckdb`, `DIR/export`, `DIR/train`).

By default the demo runs the pipeline's steps (`tasks.pipeline.STEPS`) in this process, the same list the
Prefect flows run:
a first run then needs no Prefect server (a temporary one takes ~20 s to start here) and leaves no
Prefect state behind. `--prefect` runs the `pipeline` flow itself instead (on PREFECT_API_URL's server, else a
temporary local one), so its runs and artifacts show in the UI. Either way the tiny base models are built
first (their tokenizer learns from the sample's captions), so the pipeline's parameters hold the training config.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from schemas.flow_params import (
    SAMPLE_COCO,
    CurateParams,
    EvaluateParams,
    GenerateParams,
    IngestParams,
    PipelineParams,
    TrainParams,
    splits_found,
)
from schemas.generation import GenerateStats
from schemas.settings import get_settings
from tasks import store
from tasks.llm import pricing

DEMO_RECIPE = "demo"  # tasks/recipes/demo.toml: what the demo runs
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
    eval_scores: dict[str, Any] | None = None  # the tiny model's relative scores on the demo's eval set
    eval_set: str | None = None  # that set's name


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


def run_demo(
    console: Console,
    *,
    coco_dir: Path | None,
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

    `out_dir` None: the default database (`VISTUNE_DB`), `data/export` and `data/demo` (see the module doc).
    `coco_dir` None: the demo recipe's COCO folder (the bundled sample)."""
    from tasks.recipes import load, pipeline_values

    started = time.monotonic()
    recipe = pipeline_values(load(DEMO_RECIPE))
    coco_dir = coco_dir or Path(recipe["ingest"].get("coco_dir", SAMPLE_COCO))
    db, export_dir, work = demo_paths(out_dir)
    splits = recipe["ingest"].get("splits") or splits_in(coco_dir)
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
        params = PipelineParams(  # the recipe's settings, then the demo's flags and paths over them
            ingest=IngestParams(**{**recipe["ingest"], "coco_dir": str(coco_dir), "splits": splits,
                                   "db_path": str(db)}),
            generate=GenerateParams(**{**recipe["generate"], "db_path": str(db), "model": model, "base_url": base_url,
                                       "limit_images": limit_images, "max_cost_usd": max_cost_usd}),
            curate=CurateParams(**{**recipe["curate"], "db_path": str(db), "export_dir": str(export_dir)}),
        )
        checkpoint = work / "runs" / "stage2" / "final" if train else None
        params = params.model_copy(update={
            "train": TrainParams(config=str(prepare_training(work, export_dir, coco_dir, splits, vision)))
            if train else None,
            "evaluate": demo_eval_params(recipe.get("evaluate", {}), params, db, checkpoint),
        })
        run = _run_with_prefect if use_prefect else _run_plain
        done = run(console, params, db)
        scores = done["evaluate"]["report"]["models"][TINY_MODEL_ID] if done.get("evaluate") else None
    return DemoResult(db=db, export_dir=export_dir, report=export_dir / "report.md", checkpoint=checkpoint,
                      endpoint=where, seconds=time.monotonic() - started, eval_scores=scores,
                      eval_set=params.evaluate.name if params.evaluate else None)


# ---------------------------------------------------------------- evaluation of the tiny model
TINY_MODEL_ID = "tiny"


def demo_eval_params(
    recipe_eval: dict[str, Any], params: PipelineParams, db: Path, checkpoint: Path | None
) -> EvaluateParams:
    """The demo recipe's eval set (one held-out image, 3 questions) with the demo's flags over it: its database,
    the generation's LLM and endpoint (writer and judge), its budget, and the tiny model as the model under test.
    The recipe's split when the COCO folder has it, else the folder's first."""
    generate = params.generate
    split = recipe_eval.get("split")
    return EvaluateParams(**{
        **recipe_eval, "db_path": str(db), "split": split if split in params.ingest.splits else params.ingest.splits[0],
        "model": generate.model, "base_url": generate.base_url, "judge_model": generate.model,
        "judge_base_url": generate.base_url, "max_cost_usd": generate.max_cost_usd,
        "checkpoints": [f"{TINY_MODEL_ID}={checkpoint}"] if checkpoint else []})


def sample_captions(coco_dir: Path, splits: list[str]) -> list[str]:
    """Every caption of the splits' annotation files (what ingest stores): the tiny tokenizer learns from them."""
    import json

    from tasks.ingest.coco import annotation_paths

    texts = []
    for split in splits:
        captions = annotation_paths(coco_dir, split)[0]
        texts += [a["caption"] for a in json.loads(captions.read_text(encoding="utf-8"))["annotations"]]
    return texts


def prepare_training(work: Path, export_dir: Path, coco_dir: Path, splits: list[str], vision: str = "clip") -> Path:
    """Tiny random vision tower (`vision`: clip or siglip) + Llama base models and a config pointing at the
    demo's exports (written later by the same run) and the COCO folder's images."""
    from transformers.utils import logging as hf_logging

    from training.tiny import build_tiny_base_models, write_tiny_config

    hf_logging.disable_progress_bar()  # saving two tiny models: "Writing model shards" bars would be empty noise

    vision_path, llm = build_tiny_base_models(work / "base", texts=sample_captions(coco_dir, splits), vision=vision)
    return write_tiny_config(
        work / "train.yaml", vision_path, llm, image_root=coco_dir.resolve(), output_dir=work / "runs",
        stage1={"data": str(export_dir / "llava_pretrain.json")},
        stage2={"data": str(export_dir / "llava_instruct.json")},
    )


def _show_line(console: Console, line: str) -> None:
    if "it/s]" not in line and "s/it]" not in line:  # skip tqdm bars of weight loading / saving
        console.print(line, highlight=False, soft_wrap=True)


def _run_plain(console: Console, params: PipelineParams, db: Path) -> dict[str, Any]:
    """`tasks.pipeline.STEPS` in this process, the bar showing generation."""
    from tasks import pipeline

    bar, on_progress = progress_bar(console)
    ctx = pipeline.Context(db=db, runner=pipeline.Runner(
        log=lambda line: _show_line(console, line),
        warn=lambda line: console.print(f"[yellow]warning:[/yellow] {line}", highlight=False),
        on_progress=on_progress))

    def after(step: pipeline.Step, result: Any) -> None:
        if step is pipeline.Generate:
            bar.stop()
            if problem := result.all_failed():
                raise DemoError(problem)
        elif step is pipeline.Report and params.train is not None:
            console.rule("training stage 1 and stage 2 (tiny random model, CPU)")
        elif step is pipeline.Train and params.evaluate is not None:
            console.rule("evaluation: the tiny model answers the held-out questions, the LLM judges")

    bar.start()
    try:
        return pipeline.run_steps(pipeline.STEPS, params, ctx, after=after)
    finally:
        bar.stop()


def _run_with_prefect(console: Console, params: PipelineParams, db: Path) -> dict[str, Any]:
    """The `pipeline` flow itself (runs and artifacts in the Prefect UI)."""
    from flows.pipeline import pipeline_flow

    return pipeline_flow(params)


def print_summary(console: Console, result: DemoResult) -> None:
    """Where things are, and three SQL queries to try."""
    console.rule(f"demo finished in {result.seconds:.0f} s")
    console.print(f"generated with: {result.endpoint}")
    console.print(f"database:   {result.db}")
    console.print(f"dataset:    {result.export_dir / 'llava_instruct.json'} (+ per type, stage-1 pairs, parquet)")
    console.print(f"report:     {result.report}")
    if result.checkpoint is not None:
        console.print(f"checkpoint: {result.checkpoint} (LlavaForConditionalGeneration.from_pretrained loads it)")
    if (scores := result.eval_scores) is not None:
        console.print(f"tiny model's relative score: {scores['all']}% overall (conv {scores['conv']}, detail "
                      f"{scores['detail']}, complex {scores['complex']}; {scores['n_reviews']} reviews; "
                      f"`vistune eval report --name {result.eval_set}`). A random tiny model scores low.",
                      highlight=False)
    console.print("\nTry some SQL (read-only, also works from the duckdb CLI while nothing writes):")
    # The default database needs no --db: the commands print what works as typed.
    db_flag = "" if result.db == store.resolve_db(None).resolve() else f"--db {result.db} "
    for title, sql in SQL_TO_TRY:
        console.print(f"  # {title}\n  vistune sql {db_flag}\"{sql}\"", highlight=False, soft_wrap=True)
    console.print(f"  # counts, cost and open batches\n  vistune status {db_flag}".rstrip(), highlight=False,
                  soft_wrap=True)
