"""Parameters of the Prefect flows: pydantic models, so the Prefect UI shows each as a form.

Every field has a default that works on a laptop; a deployment in `prefect.yaml` or a
`prefect deployment run --param` overrides only what differs. `db_path=None` means the
`VISTUNE_DB` setting (default `data/vistune.duckdb`). No secrets here: the API key comes from
the environment or a Prefect Secret block (`secret_block`), never from a flow parameter,
because parameters are stored and shown by the Prefect server.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

SAMPLE_COCO = str(Path(__file__).resolve().parents[1] / "tasks" / "ingest" / "sample_coco")
ALL_SAMPLE_TYPES = ["conversation", "detail_description", "complex_reasoning"]


class _Params(BaseModel):
    model_config = ConfigDict(extra="forbid")


class IngestParams(_Params):
    """Read COCO captions and instances into DuckDB (re-ingesting adds nothing)."""

    coco_dir: str = Field(default=SAMPLE_COCO, description="folder with annotations/ and the image folders")
    splits: list[str] = Field(default_factory=lambda: ["train2017"], description="e.g. train2017, val2017")
    strict: bool = Field(default=False, description="fail on the first bad record instead of skipping it")
    db_path: str | None = Field(default=None, description="DuckDB file; empty = VISTUNE_DB")


class GenerateParams(_Params):
    """Send the requests that still lack a good response, in shards of `shard_size`."""

    db_path: str | None = Field(default=None, description="DuckDB file; empty = VISTUNE_DB")
    sample_types: list[str] = Field(default_factory=lambda: list(ALL_SAMPLE_TYPES))
    limit_images: int | None = Field(default=None, ge=1, description="at most this many images; empty = all")
    model: str = Field(default="gpt-4o")
    output_format: Literal["structured", "llava-text"] = "structured"
    mode: Literal["online", "batch"] = Field(default="online", description="batch: OpenAI Batch API, ~50% cheaper")
    batch_poll_s: float = Field(default=30.0, gt=0, description="batch mode: seconds between status polls")
    base_url: str | None = Field(default=None, description="OpenAI-compatible endpoint; empty = OPENAI_BASE_URL")
    secret_block: str | None = Field(
        default=None, description="Prefect Secret block with the API key when OPENAI_API_KEY is unset"
    )
    concurrency: int = Field(default=64, ge=1, description="requests in flight per shard")
    rpm: float | None = Field(default=None, gt=0, description="requests per minute, all workers together")
    tpm: float | None = Field(default=None, gt=0, description="tokens per minute, all workers together")
    max_cost_usd: float | None = Field(default=None, ge=0, description="stop sending once this much is spent")
    max_attempts: int = Field(default=5, ge=1)
    timeout_s: float = Field(default=120.0, gt=0, description="per HTTP attempt")
    shard_size: int = Field(default=500, ge=1, description="requests per Prefect task run")
    task_runner: Literal["threads", "dask"] = Field(default="threads", description="dask needs vistune[dask]")
    max_workers: int = Field(default=4, ge=1, description="shards running at once")
    limiter_path: str | None = Field(
        default=None, description="shared rate-limit bucket (SQLite); empty = beside the DuckDB file"
    )
    shard_retries: int = Field(default=2, ge=0, description="Prefect retries of a failed shard")


class CurateParams(_Params):
    """Validate pending responses, remove duplicates, export LLaVA json and write the report."""

    db_path: str | None = Field(default=None, description="DuckDB file; empty = VISTUNE_DB")
    dedup_threshold: float = Field(default=0.8, gt=0, le=1, description="MinHash Jaccard threshold")
    dedup_scope: Literal["image", "global"] = "image"
    export_dir: str = Field(default="data/export", description="where llava_instruct.json and the report go")
    image_root: str | None = Field(default=None, description="root of the exported image paths; empty = COCO dir")
    seed: int = 0


class TrainParams(_Params):
    """Stage 1 (projector), stage 2 (projector + LLM), optional merge, each `python -m training`."""

    config: str = Field(description="training config file shared by the stages")
    stage1_overrides: list[str] = Field(default_factory=list, description="extra CLI arguments for stage 1")
    stage2_overrides: list[str] = Field(default_factory=list, description="extra CLI arguments for stage 2")
    merge: bool = Field(default=False, description="merge LoRA adapters + projector into one checkpoint")
    merge_overrides: list[str] = Field(default_factory=list)
    launcher: list[str] | None = Field(
        default=None, description='instead of "python -m", e.g. ["accelerate", "launch", "-m"]'
    )
    timeout_s: float | None = Field(default=None, gt=0, description="per stage")


class PipelineParams(_Params):
    """The whole DAG: ingest -> generate -> curate -> (train)."""

    ingest: IngestParams = Field(default_factory=IngestParams)
    generate: GenerateParams = Field(default_factory=GenerateParams)
    curate: CurateParams = Field(default_factory=CurateParams)
    train: TrainParams | None = Field(default=None, description="empty = stop after curation")
