"""The `curate` flow: validate -> dedup -> export -> report, with the report shown in the Prefect UI."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact

from schemas.flow_params import CurateParams
from tasks import prefect_tasks
from tasks.curation.export import default_image_root
from tasks.store import resolve_db

REPORT_KEY = "dataset-report"
EXPORTS_KEY = "dataset-exports"


def publish_report(report: Any, export_dir: Path) -> None:
    """The curation report as markdown and table artifacts, plus where the exports are."""
    create_markdown_artifact(key=REPORT_KEY, markdown=report.markdown, description="dataset report")
    for name, rows in report.tables.items():
        if rows:
            slug = name.lower().replace("_", "-").replace(" ", "-")
            create_table_artifact(table=rows, key=f"{REPORT_KEY}-{slug}", description=name)
    files = sorted(p for p in export_dir.rglob("*") if p.is_file())
    listing = "\n".join(f"- `{p}` ({p.stat().st_size:,} bytes)" for p in files)
    create_markdown_artifact(key=EXPORTS_KEY, markdown=f"## Exports in `{export_dir}`\n\n{listing}\n",
                             description="where the exports are")
    create_link_artifact(link=export_dir.resolve().as_uri(), link_text=str(export_dir), key=f"{EXPORTS_KEY}-link")


@flow(name="curate")
def curate_flow(params: CurateParams | None = None) -> dict[str, Any]:
    """Validate pending responses, drop duplicates, export the dataset and publish the report."""
    params = params or CurateParams()
    logger = get_run_logger()
    db = str(resolve_db(params.db_path))
    export_dir = Path(params.export_dir).resolve()
    validated = prefect_tasks.validate(db)
    logger.info("validation: %s", validated)
    deduped = prefect_tasks.dedup(db, params.dedup_threshold, params.dedup_scope)
    logger.info("dedup: %s", deduped)
    image_root = params.image_root or str(default_image_root(db))
    exported = prefect_tasks.export(db, str(export_dir), image_root, params.seed)
    logger.info("export to %s: %s", export_dir, exported)
    report = prefect_tasks.report(db, str(export_dir))
    publish_report(report, export_dir)
    return {"validate": validated, "dedup": deduped, "export": exported, "export_dir": str(export_dir)}
