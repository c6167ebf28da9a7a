"""The config model of each pipeline step, shared by the CLI flags, the Prefect flows and `tasks/pipeline.py`.

Every field has a default that works on a laptop; a deployment in `prefect.yaml` or a
`prefect deployment run --param` overrides only what differs. `db_path=None` means the
`VISTUNE_DB` setting (default `data/vistune.duckdb`). No secrets here: the API key comes from
the environment or a Prefect Secret block (`secret_block`), never from a parameter, because
parameters are stored and shown by the Prefect server.

`GenerateParams` is *derived* from the engine's `GenerateConfig` (every field but `api_key`), so
a field added to the engine is a flow parameter at once and nothing is dropped on the way;
`GenerateParams.engine_config()` maps it back.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, create_model, model_validator

from schemas.generation import GenerateConfig
from schemas.recipes import SampleMix

SAMPLE_COCO = str(Path(__file__).resolve().parents[1] / "tasks" / "ingest" / "sample_coco")


class _Params(BaseModel):
    model_config = ConfigDict(extra="forbid")


def splits_found(coco_dir: str | Path) -> list[str]:
    """The splits a COCO folder has captions for (`annotations/captions_<split>.json`), sorted; [] if none."""
    return sorted(p.stem.removeprefix("captions_") for p in (Path(coco_dir) / "annotations").glob("captions_*.json"))


class IngestParams(_Params):
    """Read COCO captions and instances into DuckDB (re-ingesting adds nothing)."""

    coco_dir: str = Field(default=SAMPLE_COCO, description="folder with annotations/ and the image folders")
    # One default everywhere (deployment, `vistune ingest`, `vistune run`, the demo): every split found.
    splits: list[str] = Field(
        default_factory=list, description="e.g. train2017, val2017; empty = every split with annotations"
    )
    strict: bool = Field(default=False, description="fail on the first bad record instead of skipping it")
    check_images: bool = Field(default=True, description="open every image file to check it exists and is readable")
    db_path: str | None = Field(default=None, description="DuckDB file; empty = VISTUNE_DB")

    @model_validator(mode="after")
    def _every_split_found(self) -> IngestParams:
        # Resolved where the flow runs (a deployment's worker), so the stored run shows the splits it read.
        if not self.splits:
            self.splits = splits_found(self.coco_dir)
        return self


# GenerateConfig fields that are no parameter: the key is a secret (Prefect stores and shows parameters).
NOT_A_PARAMETER = frozenset({"api_key"})
# GenerateConfig field -> its parameter name, where the flows' names predate the engine's (deployments use them).
PARAM_NAMES = {"types": "sample_types", "limit": "limit_images", "format": "output_format", "timeout": "timeout_s"}
# What the Prefect UI's form says under each engine field (GenerateConfig documents them in comments).
_DESCRIPTIONS = {
    "model": "model name, priced in tasks/llm/prices.toml",
    "base_url": "OpenAI-compatible endpoint; empty = OPENAI_BASE_URL",
    "format": "structured (JSON schema) or llava-text",
    "mode": "batch: OpenAI Batch API, ~50% cheaper",
    "concurrency": "requests in flight per shard",
    "rpm": "requests per minute, all workers together",
    "tpm": "tokens per minute, all workers together",
    "max_cost_usd": "stop sending once this much is spent (the whole run: every shard and round together)",
    "budget_id": "runs sharing max_cost_usd; empty = this flow run",
    "timeout": "seconds per HTTP attempt",
    "transport": "aiohttp (lean) or sdk (the openai SDK's own post)",
    "wakeup_window_ms": "event-loop wake-up batching; empty = sized from the rate limit, 0 = off",
    "max_attempts": "attempts per request (retries + 1)",
    "temperature": "sampling temperature of every request",
    "max_tokens": "max_tokens per request",
    "types": "sample types to generate",
    "limit": "at most this many images; empty = all",
    "batch_poll_s": "batch mode: seconds between status polls",
    "backoff_base_s": "a retry waits up to this many seconds (full jitter), doubling per attempt",
    "backoff_max_s": "longest wait before a retry, in seconds",
    "flush_interval_s": "seconds between moves of journaled answers into DuckDB",
    "flush_rows": "journaled answers that trigger a move into DuckDB earlier",
    "claim_lease_s": "seconds a claim on a request lasts for an owner whose journal is not visible here",
    "claim_chunk": "requests claimed per write transaction; empty = sized from the store (1,000 up to 158K stored "
    "requests, up to 10,000 from 1.58M)",
    "claim_poll_s": "seconds between looks at requests claimed by another run",
    "breaker_consecutive_failures": "stop the run after this many connection failures or timeouts in a row",
    "breaker_first_attempts": "stop the run when this many first attempts all failed (429s not counted)",
    "endpoints_file": "TOML file of several endpoints used together (docs/GENERATION.md, 'Several endpoints'); "
    "replaces base_url, rpm and tpm; online mode only",
}


class _GenerateWhere(_Params):
    """The generate step's own fields: planning, and where the sending runs. The engine's come from GenerateConfig."""

    db_path: str | None = Field(default=None, description="DuckDB file; empty = VISTUNE_DB")
    prompt_set: str | None = Field(
        default=None, description="prompt set folder, vistune's layout or LLaVA's released one; empty = vistune's own"
    )
    max_regenerations: int | None = Field(
        default=None, ge=0, description="ask again for a rejected answer at most this often; empty = the setting (2)"
    )
    mix: SampleMix | None = Field(
        default=None, description="images per sample type, counts or fractions, e.g. conversation=58000,"
        "detail_description=23000,complex_reasoning=77000 (seed=N to draw others); empty = every type for every image"
    )
    secret_block: str | None = Field(
        default=None, description="Prefect Secret block with the API key when OPENAI_API_KEY is unset"
    )
    shard_size: int | None = Field(
        default=None, ge=1, description="requests per Prefect task run; empty = from the plan: about 2 shards per "
        "worker (max_workers), 200 to 25,000 requests each"
    )
    task_runner: Literal["threads", "dask"] = Field(default="threads", description="dask needs vistune[dask]")
    max_workers: int = Field(default=4, ge=1, description="shards running at once")
    limiter_path: str | None = Field(
        default=None, description="shared rate-limit bucket (SQLite); empty = beside the DuckDB file"
    )
    shard_retries: int = Field(default=2, ge=0, description="Prefect retries of a failed shard")

    @model_validator(mode="after")
    def _no_credentials_in_the_url(self) -> _GenerateWhere:
        # Prefect stores and shows flow parameters: a `user:pass@` in base_url would be on the server for good.
        base_url = getattr(self, "base_url", None)
        if base_url and "@" in urlsplit(base_url).netloc:
            raise ValueError("base_url holds credentials (user:password@): they would be stored with the run's "
                             "parameters; put the URL in OPENAI_BASE_URL (or the key in a Secret block) instead")
        return self

    def engine_config(self, *, api_key: SecretStr | None = None, **updates: Any) -> GenerateConfig:
        """The engine's config: every engine field of these parameters, plus the key (never a parameter)."""
        values = {name: getattr(self, PARAM_NAMES.get(name, name)) for name in GenerateConfig.model_fields
                  if name not in NOT_A_PARAMETER}
        return GenerateConfig(**{**values, **updates}, api_key=api_key)

    @classmethod
    def from_config(cls, config: GenerateConfig, **where: Any) -> _GenerateWhere:
        """Parameters carrying every field of an engine config (but the key), plus the given step fields."""
        values = {PARAM_NAMES.get(name, name): value for name, value in config if name not in NOT_A_PARAMETER}
        return cls(**values, **where)


def _engine_fields() -> dict[str, Any]:
    fields: dict[str, Any] = {}
    for name, info in GenerateConfig.model_fields.items():
        if name in NOT_A_PARAMETER:
            continue
        info = copy.copy(info)
        info.description = info.description or _DESCRIPTIONS.get(name)
        fields[PARAM_NAMES.get(name, name)] = (info.annotation, info)
    return fields


GenerateParams = create_model(  # a class like the others, its engine fields copied from GenerateConfig
    "GenerateParams",
    __base__=_GenerateWhere,
    __module__=__name__,
    __doc__="Plan and send the requests that still lack a good sample, in shards of `shard_size`.",
    **_engine_fields(),
)


class CurateParams(_Params):
    """Validate pending responses, remove duplicates, export LLaVA json and write the report."""

    db_path: str | None = Field(default=None, description="DuckDB file; empty = VISTUNE_DB")
    dedup_threshold: float = Field(default=0.8, gt=0, le=1, description="MinHash Jaccard threshold")
    dedup_scope: Literal["image", "global"] = Field(
        default="image", description="image: duplicates within one image and type; global: across the dataset"
    )
    export_dir: str = Field(default="data/export", description="where llava_instruct.json and the report go")
    image_root: str | None = Field(default=None, description="root of the exported image paths; empty = COCO dir")
    require_images: bool = Field(
        default=False, description="leave out records whose image file is missing under image_root"
    )
    seed: int = Field(default=0, description="seed of the export's random draws (instructions, captions)")


class TrainParams(_Params):
    """Stage 1 (projector), stage 2 (projector + LLM), optional merge, each `python -m training`."""

    config: str = Field(description="training config file shared by the stages")
    stage1_overrides: list[str] = Field(default_factory=list, description="extra CLI arguments for stage 1")
    stage2_overrides: list[str] = Field(default_factory=list, description="extra CLI arguments for stage 2")
    merge: bool = Field(default=False, description="merge LoRA adapters + projector into one checkpoint")
    merge_overrides: list[str] = Field(default_factory=list, description="extra CLI arguments for the merge")
    launcher: list[str] | None = Field(
        default=None, description='instead of "python -m", e.g. ["accelerate", "launch", "-m"]'
    )
    timeout_s: float | None = Field(default=None, gt=0, description="per stage")
    allow_cpu: bool = Field(
        default=False, description="train even when torch sees no GPU where one is required (VISTUNE_REQUIRE_GPU, "
        "set by the `train` deployment): tiny models, tests"
    )


class EvaluateParams(_Params):
    """Build (or import) an eval set, answer it with each checkpoint, judge the answers, report relative scores."""

    name: str = Field(default="coco-val", description="eval set name (created on the first run, resumed after)")
    db_path: str | None = Field(default=None, description="DuckDB file; empty = VISTUNE_DB")
    split: str = Field(default="val2017", description="build: ingested split the held-out images come from")
    per_category: int = Field(default=30, ge=1, description="build: images, so questions per category")
    seed: int = Field(default=0, description="build: seed of the image pick")
    questions: str | None = Field(
        default=None, description="LLaVA-Bench questions jsonl: import this set instead of building one"
    )
    context: str | None = Field(default=None, description="import: LLaVA-Bench context jsonl (captions, boxes)")
    image_root: str | None = Field(default=None, description="import: folder the questions' image paths are in")
    answers: str | None = Field(default=None, description="import: reference answers jsonl; empty = generate them")
    model: str = Field(default="gpt-4o", description="text-only LLM writing questions and reference answers")
    base_url: str | None = Field(
        default=None, description="its OpenAI-compatible endpoint; empty = the generation's in `pipeline`, else "
        "OPENAI_BASE_URL"
    )
    output_format: Literal["structured", "llava-text"] = Field(
        default="structured", description="questions and reviews as JSON, or LLaVA's text forms"
    )
    checkpoints: list[str] = Field(
        default_factory=list, description="models under test: checkpoint folders (ID=PATH names one), or endpoint "
        "model names with backend=openai; empty in `pipeline` = the checkpoint it trained"
    )
    backend: Literal["transformers", "vllm", "openai"] = Field(
        default="transformers", description="local checkpoints: transformers or vllm; openai: a vision endpoint"
    )
    answer_base_url: str | None = Field(default=None, description="backend=openai: the endpoint answering")
    batch_size: int | None = Field(default=None, ge=1, description="local inference batch size; empty = its default")
    max_new_tokens: int | None = Field(default=None, ge=1, description="answer length cap; empty = the default")
    temperature: float | None = Field(default=None, ge=0, description="answer sampling; empty = greedy")
    infer_timeout_s: float | None = Field(default=None, gt=0, description="per checkpoint")
    infer_on: Literal["local", "deployment"] = Field(
        default="local", description="local checkpoints answer here (local), or in `infer_deployment`'s run on "
        "a worker of its pool, e.g. the GPU machine (deployment); judging stays where this flow runs"
    )
    infer_deployment: str = Field(
        default="evaluate-infer/evaluate-infer", description="the deployment infer_on=deployment starts"
    )
    start_timeout_s: float = Field(
        default=600.0, gt=0, description="infer_on=deployment: fail (and cancel the run) when no worker has picked "
        "it up after this many seconds"
    )
    allow_cpu: bool = Field(
        default=False, description="infer_on=deployment: answer on the CPU where the pool requires a GPU (tiny models)"
    )
    judge_model: str = Field(default="gpt-4o", description="the judge LLM")
    judge_base_url: str | None = Field(default=None, description="the judge's endpoint; empty = base_url's")
    judge_api_key_env: str | None = Field(
        default=None, description="environment variable holding the judge endpoint's key; empty = OPENAI_API_KEY"
    )
    swap: bool = Field(default=False, description="judge each pair in both orders; report position bias")
    mode: Literal["online", "batch"] = Field(default="online", description="batch: OpenAI Batch API for LLM calls")
    concurrency: int = Field(default=16, ge=1, description="LLM requests in flight")
    max_cost_usd: float | None = Field(
        default=None, ge=0, description="stop sending once this much is spent (every LLM call of the run)"
    )

    @model_validator(mode="after")
    def _no_credentials_in_urls(self) -> EvaluateParams:
        # Prefect stores and shows flow parameters: a `user:pass@` in a URL would be on the server for good.
        for name in ("base_url", "judge_base_url", "answer_base_url"):
            url = getattr(self, name)
            if url and "@" in urlsplit(url).netloc:
                raise ValueError(f"{name} holds credentials (user:password@): they would be stored with the run's "
                                 "parameters; put the key in an environment variable instead")
        return self


class PipelineParams(_Params):
    """The whole DAG: ingest -> generate -> curate -> (train)."""

    recipe: str | None = Field(
        default=None, description="a recipe (`vistune recipe list`) whose settings fill every field this run leaves "
        "unset; a field given here overrides the recipe's"
    )
    ingest: IngestParams = Field(default_factory=IngestParams, description="the ingest step's keys (`ingest` above)")
    generate: GenerateParams = Field(  # type: ignore[valid-type]
        default_factory=GenerateParams, description="the generate step's keys (`generate` above)"
    )
    curate: CurateParams = Field(default_factory=CurateParams, description="the curate steps' keys (`curate` above)")
    train: TrainParams | None = Field(default=None, description="empty = stop after curation")
    evaluate: EvaluateParams | None = Field(default=None, description="empty = no evaluation after training")

    @model_validator(mode="before")
    @classmethod
    def _recipe_under_the_given_fields(cls, data: Any) -> Any:
        # Resolved where the params are built (a deployment's worker too), so the stored run shows every value.
        if not isinstance(data, dict) or not data.get("recipe"):
            return data
        from tasks.recipes import load, pipeline_values, under  # reads the recipe file: not at import time

        given = {k: v.model_dump(exclude_unset=True) if isinstance(v, BaseModel) else v for k, v in data.items()}
        return under(pipeline_values(load(data["recipe"])), given)
    train_on: Literal["local", "deployment"] = Field(
        default="local", description="local: train as a subflow of this run, on this machine; deployment: start "
        "`train_deployment` (a worker of its pool, e.g. on the GPU machine, runs it) and wait for it"
    )
    train_deployment: str = Field(default="train/train", description="the deployment train_on=deployment starts")
    start_timeout_s: float = Field(
        default=600.0, gt=0, description="a deployment this run starts fails (and is cancelled) when no worker has "
        "picked it up after this many seconds"
    )
    train_timeout_s: float | None = Field(
        default=None, gt=0, description="train_on=deployment: stop waiting after this many seconds of training "
        "(the run goes on); empty = until it ends"
    )
