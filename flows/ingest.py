"""The `ingest` flow: COCO captions and instances into DuckDB, one task per split."""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger

from schemas.flow_params import IngestParams
from tasks import prefect_tasks


@flow(name="ingest")
def ingest_flow(params: IngestParams | None = None) -> dict[str, Any]:
    """Ingest every split in `params.splits`; returns rows added per table and skips per reason."""
    params = params or IngestParams()
    logger = get_run_logger()
    summary: dict[str, Any] = {"added": {}, "skipped": {}}
    for split in params.splits:
        stats = prefect_tasks.ingest_split(params.coco_dir, split, params.db_path, params.strict)
        for table, n in stats.added.items():
            summary["added"][table] = summary["added"].get(table, 0) + n
        for reason, n in stats.skipped.items():
            summary["skipped"][reason] = summary["skipped"].get(reason, 0) + n
        logger.info("%s: %d images read, added %s, skipped %s", split, stats.images, stats.added,
                    dict(stats.skipped) or "nothing")
    return summary
