"""Row shapes of every DuckDB table: the single source of truth for the store's schema.

`tasks/store/__init__.py` derives `CREATE TABLE` statements from these models, so a column is added
here and nowhere else. JSON columns are typed `dict` / `list` (stored as DuckDB `JSON`).
Each model names its table and primary key in `model_config["json_schema_extra"]`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field


class TableRow(BaseModel):
    """Base for a table row: `table` and `primary_key` are read by the store."""

    model_config = ConfigDict(extra="forbid")
    table: ClassVar[str]
    primary_key: ClassVar[tuple[str, ...]] = ()
    # Whether DuckDB keeps a PRIMARY KEY index. `store.insert_rows` enforces the key either way; the
    # index is for small tables only: in the file format the duckdb 1.5 CLI reads, every checkpoint
    # rewrites a table's whole key index, so each short write transaction would cost O(table size).
    key_index: ClassVar[bool] = True


class RunRow(TableRow):
    """One invocation of a pipeline step (ingest, generate, curate, export, train)."""

    table: ClassVar[str] = "runs"
    primary_key: ClassVar[tuple[str, ...]] = ("run_id",)
    run_id: str
    kind: str
    started_at: datetime
    finished_at: datetime | None = None
    status: str = "running"  # running | completed | failed
    params: dict[str, Any] = Field(default_factory=dict)
    stats: dict[str, Any] = Field(default_factory=dict)


class ImageRow(TableRow):
    """A COCO image: ids are COCO's own, unique across train and val splits."""

    table: ClassVar[str] = "images"
    primary_key: ClassVar[tuple[str, ...]] = ("image_id",)
    key_index: ClassVar[bool] = False
    image_id: int
    split: str
    file_name: str
    width: int
    height: int
    coco_root: str  # the folder holding `<split>/<file_name>` when ingested


class CaptionRow(TableRow):
    """One human caption of an image (COCO has about five per image)."""

    table: ClassVar[str] = "captions"
    primary_key: ClassVar[tuple[str, ...]] = ("caption_id",)
    key_index: ClassVar[bool] = False
    caption_id: int
    image_id: int
    caption: str


class ObjectRow(TableRow):
    """One COCO instance; the box is normalised to [0, 1] as `[x1, y1, x2, y2]` with 3 decimals."""

    table: ClassVar[str] = "objects"
    primary_key: ClassVar[tuple[str, ...]] = ("object_id",)
    key_index: ClassVar[bool] = False
    object_id: int
    image_id: int
    category: str
    x1: float
    y1: float
    x2: float
    y2: float
    area: float
    iscrowd: bool


class IngestErrorRow(TableRow):
    """A COCO record that ingestion skipped, with the reason (`vistune ingest` without --strict)."""

    table: ClassVar[str] = "ingest_errors"
    primary_key: ClassVar[tuple[str, ...]] = ("run_id", "source_file", "record")
    key_index: ClassVar[bool] = False
    run_id: str
    source_file: str
    record: str  # e.g. "annotation 1234" or "image 5678"
    reason: str  # short code: bad_box, unknown_image, no_captions, missing_file, ...
    detail: str


class PromptPrefixRow(TableRow):
    """Messages that many requests start with (system and few-shots of a prompt version, type and format), stored once.

    `prefix_id` hashes the messages. The view `requests` puts them back in front of each request's own messages.
    """

    table: ClassVar[str] = "prompt_prefixes"
    primary_key: ClassVar[tuple[str, ...]] = ("prefix_id",)
    prefix_id: str
    messages: list[dict[str, Any]]
    created_at: datetime


class RequestRow(TableRow):
    """One planned LLM call. `request_id` hashes model + the full messages + params, so identical calls collapse.

    Stored in `requests_stored` with only the request's own messages (the image's) and `prefix_id`; the view
    `requests` shows the full messages, as every vistune before schema 4 stored them (`tasks/store/prefixes.py`).
    """

    table: ClassVar[str] = "requests_stored"
    primary_key: ClassVar[tuple[str, ...]] = ("request_id",)
    key_index: ClassVar[bool] = False
    request_id: str
    image_id: int
    sample_type: str
    prompt_version: str
    model: str
    output_format: str  # structured | llava-text
    kind: str | None = None  # the parser that checks the answer (tasks/llm/parsers.py), e.g. "conversation/structured"
    regeneration: int = 0  # 0: first request of its (image, type, prompt_version, model); n: after n rejected answers
    messages: list[dict[str, Any]]  # with `prefix_id`: the messages after the prefix; without: all of them
    params: dict[str, Any]
    est_input_tokens: int
    created_at: datetime
    run_id: str | None = None
    prefix_id: str | None = None  # `prompt_prefixes.prefix_id` of the messages that come first


class ResponseRow(TableRow):
    """Every attempt at a request, committed before its content is parsed (nothing paid is lost)."""

    table: ClassVar[str] = "responses"
    primary_key: ClassVar[tuple[str, ...]] = ("response_id",)
    key_index: ClassVar[bool] = False
    response_id: str
    request_id: str
    attempt: int
    status: str  # ok | rate_limited | server_error | timeout | connection_error | bad_output | ...
    http_status: int | None = None
    content: str | None = None
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    cost_usd: float = 0.0
    latency_s: float | None = None
    error: str | None = None
    mode: str = "online"  # online | batch
    created_at: datetime
    run_id: str | None = None
    # the endpoint that served it: a name from the endpoints file, or "default" for a run's one endpoint
    endpoint: str | None = None


class ClaimRow(TableRow):
    """A request an engine is sending: taken before it is sent, renewed while the engine runs, dropped once
    the request's answer is stored (`tasks/store/queries.py` `claim`). Another engine skips a claimed
    request; it takes the claim over once the owner's journal has been replayed (the owner died) or,
    for an owner whose journal it cannot see, once the lease expired."""

    table: ClassVar[str] = "claims"
    primary_key: ClassVar[tuple[str, ...]] = ("request_id",)
    request_id: str
    owner: str  # the claiming engine's journal owner, `<pid>-<token>` (tasks/store/journal.py)
    run_id: str | None = None
    claimed_at: datetime
    expires_at: datetime  # the lease: renewed from the engine's flush loop


class SampleRow(TableRow):
    """A validated sample: `data` is the sample type's pydantic output model dumped to JSON."""

    table: ClassVar[str] = "samples"
    primary_key: ClassVar[tuple[str, ...]] = ("sample_id",)
    key_index: ClassVar[bool] = False
    sample_id: str
    request_id: str
    response_id: str
    image_id: int
    sample_type: str
    prompt_version: str
    model: str
    data: dict[str, Any]
    text: str  # all question/answer text joined, the input to dedup
    created_at: datetime


class RejectRow(TableRow):
    """A response that did not yield a sample, with one row per reason code."""

    table: ClassVar[str] = "rejects"
    primary_key: ClassVar[tuple[str, ...]] = ("response_id", "code")
    key_index: ClassVar[bool] = False
    response_id: str
    request_id: str
    image_id: int
    sample_type: str
    code: str
    detail: str
    created_at: datetime


class DuplicateRow(TableRow):
    """A sample removed by dedup: it duplicates `duplicate_of`, which is kept."""

    table: ClassVar[str] = "duplicates"
    primary_key: ClassVar[tuple[str, ...]] = ("sample_id",)
    key_index: ClassVar[bool] = False
    sample_id: str
    duplicate_of: str
    method: str  # exact | minhash
    similarity: float
    scope: str  # image | global
    created_at: datetime


class BatchRow(TableRow):
    """An OpenAI Batch API job, so polling resumes after a restart."""

    table: ClassVar[str] = "batches"
    primary_key: ClassVar[tuple[str, ...]] = ("batch_id",)
    batch_id: str
    input_file_id: str
    status: str
    n_requests: int
    request_ids: list[str]
    output_file_id: str | None = None
    error_file_id: str | None = None
    created_at: datetime
    updated_at: datetime
    run_id: str | None = None


ALL_TABLES: tuple[type[TableRow], ...] = (
    RunRow,
    ImageRow,
    CaptionRow,
    ObjectRow,
    IngestErrorRow,
    PromptPrefixRow,
    RequestRow,
    ResponseRow,
    ClaimRow,
    SampleRow,
    RejectRow,
    DuplicateRow,
    BatchRow,
)

# The eval tables (schemas/eval.py) subclass TableRow, so they are imported once it exists; `schemas/__init__.py`
# imports this module first, so the order holds whichever of the two a caller imports first.
from schemas.eval import EVAL_TABLES  # noqa: E402

ALL_TABLES = (*ALL_TABLES, *EVAL_TABLES)
