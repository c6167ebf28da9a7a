"""The `pipeline` flow: `tasks.pipeline.STEPS` (ingest -> generate -> eval-set -> validate, dedup, export, report
-> train -> evaluate), each group of steps as its subflow, so the UI shows each (and its artifacts) on its own
page. With `params.evaluate` set, the eval set is built (or imported) before export, so its images stay out of
the training data, and after training the checkpoint answers it, the LLM judges, and the scores are reported.

The pipeline run carries its own `pipeline-summary` artifact: counts, cost, rejects, duplicates, export
paths, the checkpoint, the eval scores, and links to every subflow run and its artifacts.

With `train_on="deployment"` training is not a subflow of this process: the run starts the `train`
deployment (`flows.handoff.run_on_pool`), which a worker of the GPU pool runs on its machine, waits for it and
links it in the summary; the export folder, image root and checkpoint folder must be on storage both see.

Training is skipped when the exported dataset and the training parameters are the same as at the last
successful training (`trained.json` beside the checkpoint holds their fingerprint): the nightly schedule
then does no work on an unchanged database (generation already sends only what is new).
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.context import get_run_context

from flows.curate import curate_flow
from flows.evaluate import answer_and_judge_flow, eval_set_flow, in_pipeline
from flows.generate import generate_flow
from flows.handoff import ChildRun, run_on_pool
from flows.ingest import ingest_flow
from flows.train import train_flow
from schemas.flow_params import PipelineParams, TrainParams
from tasks import pipeline, store

SUMMARY_KEY = "pipeline-summary"
TRAINED_FILE = "trained.json"  # beside the checkpoint: the fingerprint of what it was trained on

# Where each group of `pipeline.STEPS` (`pipeline.sections`) runs: its own subflow (which runs those steps).
SUBFLOWS: dict[str, Callable[[Any], Any]] = {
    "ingest": ingest_flow,
    "generate": generate_flow,
    "eval-set": eval_set_flow,  # before curate: the export leaves the eval set's images out
    "curate": curate_flow,
    "train": train_flow,
    "evaluate": answer_and_judge_flow,  # the set exists: answers, judging, report
}


def run_subflow(section: str, config: Any) -> Any:
    """Run a section's subflow and return its result; an async one (generate) runs to its end here."""
    out = SUBFLOWS[section](config)
    return asyncio.run(out) if inspect.iscoroutine(out) else out


# ---------------------------------------------------------------- skip training on an unchanged dataset
def checkpoint_of(params: TrainParams) -> Path | None:
    """The checkpoint training leaves (`merged/`, else `stage2/final/`), or None when the config cannot be read."""
    from flows.train_artifacts import stage_dir_of  # reads the YAML only (no torch)

    stage2 = stage_dir_of(params.config, "stage2", params.stage2_overrides)
    if stage2 is None:
        return None
    return stage2.parent / "merged" if params.merge else stage2 / "final"


def dataset_fingerprint(export_dir: Path, params: TrainParams) -> str:
    """sha256 of the exported LLaVA json files, the training parameters and the training config file."""
    from tasks.curation.export import export_files

    # allow_cpu says where training may run, not what it trains
    digest = hashlib.sha256(params.model_dump_json(exclude={"allow_cpu"}).encode())
    config = Path(params.config)
    digest.update(config.read_bytes() if config.is_file() else b"")
    for name in export_files():  # the json files only: Parquet bytes may change while the rows do not
        path = export_dir / f"{name}.json"
        digest.update(name.encode() + (path.read_bytes() if path.is_file() else b"<none>"))
    return digest.hexdigest()


def already_trained(checkpoint: Path | None, fingerprint: str) -> bool:
    """The checkpoint exists and was trained on exactly this dataset with these parameters."""
    if checkpoint is None or not checkpoint.exists():
        return False
    record = checkpoint.parent / TRAINED_FILE
    try:
        return json.loads(record.read_text())["fingerprint"] == fingerprint
    except (OSError, ValueError, KeyError):
        return False


def record_trained(checkpoint: Path | None, fingerprint: str, export_dir: Path) -> None:
    """Remember what the checkpoint was trained on (only after the train flow completed)."""
    if checkpoint is None:
        return
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    (checkpoint.parent / TRAINED_FILE).write_text(json.dumps(
        {"fingerprint": fingerprint, "checkpoint": str(checkpoint), "export_dir": str(export_dir)}, indent=1) + "\n")


# ---------------------------------------------------------------- the summary artifact
def _subflow_rows() -> list[tuple[str, str, str, list[tuple[str, str]]]]:
    """(flow name, run name/link, state, [(artifact key, link)]) of every subflow run of this run."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        FlowRunFilter,
        FlowRunFilterParentFlowRunId,
    )
    from prefect.settings import get_current_settings

    run = get_run_context().flow_run  # type: ignore[union-attr]
    ui = (get_current_settings().ui_url or "").rstrip("/")
    rows = []
    with get_client(sync_client=True) as client:
        children = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[run.id])))
        flows = {f.id: f.name for f in (client.read_flows() if children else [])}
        for child in sorted(children, key=lambda r: r.start_time or r.expected_start_time or r.created):
            artifacts = client.read_artifacts(
                artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[child.id])))
            keys = sorted({a.key for a in artifacts if a.key})
            link = f"[{child.name}]({ui}/runs/flow-run/{child.id})" if ui else f"`{child.name}` ({child.id})"
            rows.append((flows.get(child.flow_id, "?"), link, child.state.name if child.state else "?",
                         [(k, f"{ui}/artifacts/key/{k}" if ui else "") for k in keys]))
    return rows


def summary_markdown(db: Path, result: dict[str, Any], training: str, failure: str | None = None) -> str:
    """Counts, cost, rejects, duplicates, exports and training of this pipeline run, as markdown."""
    counts = store.table_counts(db) if db.exists() else {}
    lines = ["# Pipeline summary\n"]
    if failure:
        lines.append(f"**Failed:** {failure}\n")
    if counts:
        with store.read(db) as con:
            cost, ok = con.execute("SELECT coalesce(sum(cost_usd), 0), count(*) FILTER (WHERE status = 'ok') "
                                   "FROM responses").fetchone()
            rejected = con.execute("SELECT count(DISTINCT response_id) FROM rejects").fetchone()[0]
            codes = con.execute("SELECT code, count(*) FROM rejects GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT 5").fetchall()
        top = ", ".join(f"{code} {n:,}" for code, n in codes)
        lines += [
            f"Database `{db}`:\n",
            "| images | requests | responses (ok) | samples | rejected responses | duplicates | dataset |",
            "|---|---|---|---|---|---|---|",
            f"| {counts['images']:,} | {counts['requests']:,} | {counts['responses']:,} ({ok:,}) | "
            f"{counts['samples']:,} | {rejected:,} | {counts['duplicates']:,} | {counts['dataset']:,} |\n",
            f"- **Cost** (every run on this database): ${cost:,.4f}",
            f"- **Rejects** by reason: {top or 'none'}",
        ]
    if gen := result.get("generate"):
        lines.append(f"- **This run's generation**: {gen['done']:,} new answers, {gen['failed']:,} failed, "
                     f"{gen['already_ok']:,} already done, ${gen['cost_usd']:,.4f}")
    if curate := result.get("curate"):
        export_dir = Path(curate["export_dir"])
        files = sorted(p for p in export_dir.glob("*") if p.is_file())
        lines.append(f"- **Exports** in `{export_dir}`: " + ", ".join(f"`{p.name}`" for p in files))
    lines.append(f"- **Training**: {training}\n")
    lines += eval_lines(result)
    try:
        rows = _subflow_rows()
    except Exception as exc:  # the summary must not fail the run it summarises
        rows = []
        lines.append(f"_subflow runs could not be read: {exc}_\n")
    if rows:
        lines += ["## Subflow runs and their artifacts\n", "| flow | run | state | artifacts |", "|---|---|---|---|"]
        for flow_name, link, state, artifacts in rows:
            named = ", ".join(f"[`{k}`]({url})" if url else f"`{k}`" for k, url in artifacts) or "none"
            lines.append(f"| {flow_name} | {link} | {state} | {named} |")
    return "\n".join(lines) + "\n"


def eval_lines(result: dict[str, Any]) -> list[str]:
    """The evaluation of this run, when it held out a set: the set, where the answers were made, and the relative
    score per category and overall of each model (from the `evaluate` subflow's report)."""
    lines: list[str] = []
    if held := result.get("eval-set"):
        lines.append(f"- **Eval set** `{held['name']}`: {held['images']} image(s) held out of the export, "
                     f"{held['questions']} questions, {held['references']} references")
    done = result.get("evaluate")
    if not done:
        if held:
            lines.append("- **Evaluation**: nothing to answer (no checkpoint named or trained)\n")
        return lines
    report = done["report"]
    lines.append(f"- **Evaluation** on `{report['set']}`, judged by `{report['judge_model']}`"
                 + (f"; answers by {done['inference']}" if done.get("inference") else "") + "\n")
    categories = ("conv", "detail", "complex", "all")
    lines += ["| model | " + " | ".join(categories) + " | reviews |", "|---" * (len(categories) + 2) + "|"]
    for model_id, scores in report["models"].items():
        lines.append(f"| `{model_id}` | " + " | ".join(
            "-" if scores.get(c) is None else f"{scores[c]}%" for c in categories) + f" | {scores['n_reviews']} |")
    return [*lines, ""]


@flow(name="pipeline")
def pipeline_flow(params: PipelineParams | None = None) -> dict[str, Any]:
    """Run every section of the pipeline as a subflow; `train` only when `params.train` is set and the
    exported dataset (or the training parameters) changed since the checkpoint was trained.

    The steps share one database: `db_path` of the ingest step is used everywhere it is unset.
    """
    params = params or PipelineParams()
    db = params.ingest.db_path
    params = params.model_copy(update={
        "generate": params.generate.model_copy(update={"db_path": params.generate.db_path or db}),
        "curate": params.curate.model_copy(update={"db_path": params.curate.db_path or db}),
        "evaluate": in_pipeline(params, db),
    })
    logger = get_run_logger()
    result: dict[str, Any] = {}
    training = "not requested (`params.train` is empty)"
    try:
        for section, steps in pipeline.sections(pipeline.STEPS):
            config = pipeline.config_of(steps[0], params)  # None: skipped (no train, no evaluate, no checkpoint)
            if config is None:
                continue
            if section == "train":
                export_dir = Path(result["curate"]["export_dir"])
                checkpoint = checkpoint_of(config)
                fingerprint = dataset_fingerprint(export_dir, config)
                if already_trained(checkpoint, fingerprint):
                    training = f"skipped: dataset and parameters unchanged since `{checkpoint}` was trained"
                    logger.info("training skipped: %s was trained on this exact dataset", checkpoint)
                    continue
                training = "started"
                if params.train_on == "deployment":  # on the train deployment's pool (the GPU machine)
                    def linked(child: ChildRun) -> None:  # the summary links the run even if it never ends
                        nonlocal training
                        training = f"started as {child.deployment} run {child.link()} on pool `{child.pool}`"

                    child = run_on_pool(params.train_deployment, {"params": config.model_dump(mode="json")},
                                        params.start_timeout_s, params.train_timeout_s, on_created=linked)
                    result[section] = child.summary()
                    ran = f"; trained by {child.deployment} run {child.link()} on {child.where()}"
                else:
                    result[section] = run_subflow(section, config)
                    ran = "; trained in this run"
                record_trained(checkpoint, fingerprint, export_dir)
                training = (f"checkpoint `{checkpoint}`" if checkpoint
                            else "done (checkpoint: see the train config)") + ran
                continue
            out = run_subflow(section, config)
            result[section] = out.model_dump() if section == "generate" else out
    except Exception as exc:
        create_markdown_artifact(key=SUMMARY_KEY, description="what this pipeline run did (failed)",
                                 markdown=summary_markdown(store.resolve_db(db), result, training, failure=str(exc)))
        raise
    create_markdown_artifact(key=SUMMARY_KEY, description="what this pipeline run did",
                             markdown=summary_markdown(store.resolve_db(db), result, training))
    return result
