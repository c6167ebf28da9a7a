"""The `curate` flow: the pipeline's curate steps (`tasks.pipeline.CURATE`: validate -> dedup -> export ->
report), each unit a Prefect task, with the report shown in the Prefect UI.

The flow fails when the export wrote no sample while samples were expected (`pipeline.export_problem`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact

from flows.runner import PrefectRunner
from schemas.flow_params import CurateParams
from tasks import pipeline
from tasks.curation.export import stored_missing_summary
from tasks.store import resolve_db

REPORT_KEY = "dataset-report"
EXPORTS_KEY = "dataset-exports"


def publish_report(report: Any, export_dir: Path) -> None:
    """The curation report as markdown and table artifacts, plus where the exports are.

    The report's plots are inlined as data URIs: the UI cannot load the PNGs beside `report.md`.
    """
    create_markdown_artifact(key=REPORT_KEY, markdown=report.embedded_markdown(), description="dataset report")
    for name, rows in report.tables.items():
        if rows:
            slug = name.lower().replace("_", "-").replace(" ", "-")
            create_table_artifact(table=rows, key=f"{REPORT_KEY}-{slug}", description=name)
    files = sorted(p for p in export_dir.rglob("*") if p.is_file())
    listing = "\n".join(f"- `{p}` ({p.stat().st_size:,} bytes)" for p in files)
    missing = stored_missing_summary(export_dir)
    create_markdown_artifact(key=EXPORTS_KEY, markdown=f"## Exports in `{export_dir}`\n\n{listing}\n"
                             + (f"\n**Missing images:** {missing}\n" if missing else ""),
                             description="where the exports are")
    create_link_artifact(link=export_dir.resolve().as_uri(), link_text=str(export_dir), key=f"{EXPORTS_KEY}-link")


@flow(name="curate")
def curate_flow(params: CurateParams | None = None) -> dict[str, Any]:
    """Validate pending responses, drop duplicates, export the dataset and publish the report."""
    params = params or CurateParams()
    db = resolve_db(params.db_path)
    export_dir = Path(params.export_dir).resolve()
    params = params.model_copy(update={"export_dir": str(export_dir)})
    ctx = pipeline.Context(db=db, runner=PrefectRunner(get_run_logger()))
    done = pipeline.run_steps(pipeline.CURATE, params, ctx)
    publish_report(done["report"], export_dir)
    if problem := pipeline.export_problem(db, done["export"]):  # the report above still says what happened
        raise pipeline.StepFailed(problem)
    return {"validate": done["validate"], "dedup": done["dedup"], "export": done["export"],
            "export_dir": str(export_dir)}
