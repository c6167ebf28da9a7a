"""The flows under one temporary Prefect server (`prefect_harness`), against the simulator.

What is checked is what a user relies on: a rerun sends no request and adds no row; a shard
that fails half-way is retried by Prefect without a duplicated good response; training output
reaches the Prefect log and a failing stage fails the flow; the UI gets its artifacts.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from flows import generate as generate_module
from flows import runner as runner_module
from flows.generate import generate_flow
from flows.ingest import ingest_flow
from flows.pipeline import pipeline_flow
from flows.train import train_flow
from schemas.flow_params import CurateParams, GenerateParams, IngestParams, PipelineParams, TrainParams
from tasks import store
from tasks.llm.shared_limiter import SharedRateLimiter
from tests.sim import SimConfig, start_simulator

pytestmark = pytest.mark.usefixtures("prefect_harness")

DATA_TABLES = ("images", "captions", "objects", "requests", "responses", "samples", "rejects", "duplicates")


@pytest.fixture
def sim() -> Iterator[object]:
    with start_simulator(SimConfig()) as handle:
        yield handle


def data_counts(db: Path) -> dict[str, int]:
    counts = store.table_counts(db)
    return {t: counts[t] for t in DATA_TABLES}


def chat_calls(sim: object) -> int:
    return sum(1 for r in list(sim.log) if r.path == "/v1/chat/completions")  # type: ignore[attr-defined]


def ok_per_request(db: Path) -> list[int]:
    rows = store.query("SELECT request_id, count(*) FILTER (WHERE status = 'ok') AS ok FROM responses "
                       "GROUP BY request_id", path=db)
    return [r["ok"] for r in rows]


async def latest_run(flow_name: str) -> tuple[dict[str, object], list[int]]:
    """Artifacts (key -> data) and task-run attempt counts of the latest run of `flow_name`."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        FlowFilter,
        FlowFilterName,
        FlowRunFilter,
        FlowRunFilterId,
    )
    from prefect.client.schemas.sorting import FlowRunSort

    async with get_client() as client:
        runs = await client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=[flow_name])),
                                           sort=FlowRunSort.START_TIME_DESC, limit=1)
        artifacts = await client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[runs[0].id])))
        task_runs = await client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[runs[0].id])))
    shard_attempts = [t.run_count for t in task_runs if t.name.startswith("generate-shard")]
    return {a.key: a.data for a in artifacts if a.key}, shard_attempts


def test_generate_rerun_sends_nothing_and_adds_no_row(db_path: Path, sample_coco: Path, sim: object) -> None:
    ingest_flow(IngestParams(coco_dir=str(sample_coco), db_path=str(db_path)))
    params = GenerateParams(db_path=str(db_path), base_url=sim.base_url, model="gpt-4o-mini",  # type: ignore[attr-defined]
                            shard_size=5, max_workers=2, rpm=60_000)
    first = asyncio.run(generate_flow(params))
    planned = store.table_counts(db_path)["requests"]
    assert planned == 12  # 4 images x 3 sample types, in 3 shards
    assert first.done == 12 and first.failed == 0
    assert chat_calls(sim) == 12
    assert ok_per_request(db_path) == [1] * 12

    artifacts, shard_attempts = asyncio.run(latest_run("generate"))
    assert shard_attempts == [1, 1, 1]
    assert artifacts["generation-progress"] == 100.0
    assert "12/12 done" in str(artifacts["generation-summary"])

    before = data_counts(db_path)
    ingest_flow(IngestParams(coco_dir=str(sample_coco), db_path=str(db_path)))
    again = asyncio.run(generate_flow(params))
    assert chat_calls(sim) == 12  # not one request sent again
    assert data_counts(db_path) == before
    assert (again.done, again.failed, again.attempts) == (0, 0, 0)


def test_a_generate_run_opens_one_sync_api_client_for_all_its_tasks_and_artifacts(
    db_path: Path, sample_coco: Path, sim: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The flow is async, so Prefect does not hand its worker thread a sync client: without one opened there,
    every task run, artifact and progress push builds its own (~25 ms of CPU each, bench/prefect_overhead.py)."""
    import traceback

    from prefect.client.orchestration import SyncPrefectClient

    ingest_flow(IngestParams(coco_dir=str(sample_coco), db_path=str(db_path)))
    opened_by_the_flow_body: list[str] = []  # (Prefect's engine opens one of its own while it sets the run up)
    real_init = SyncPrefectClient.__init__

    def counting_init(self: SyncPrefectClient, *args: object, **kwargs: object) -> None:
        stack = traceback.extract_stack()
        if any(frame.filename.endswith(("flows/generate.py", "flows/progress.py")) for frame in stack):
            opened_by_the_flow_body.append("".join(traceback.format_list(stack[-6:])))
        real_init(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(SyncPrefectClient, "__init__", counting_init)
    params = GenerateParams(db_path=str(db_path), base_url=sim.base_url, model="gpt-4o-mini",  # type: ignore[attr-defined]
                            shard_size=3, max_workers=2)
    stats = asyncio.run(generate_flow(params))
    assert stats.done == 12  # in 4 shards, plus the plan, validate and plan-again task runs, and 3+ artifacts
    assert len(opened_by_the_flow_body) == 1, "\n----\n".join(opened_by_the_flow_body)


def test_pipeline_publishes_the_report_and_a_rerun_changes_nothing(
    db_path: Path, sample_coco: Path, sim: object, tmp_path: Path
) -> None:
    export_dir = tmp_path / "export"
    params = PipelineParams(
        ingest=IngestParams(coco_dir=str(sample_coco), db_path=str(db_path)),
        generate=GenerateParams(base_url=sim.base_url, model="gpt-4o-mini", shard_size=6),  # type: ignore[attr-defined]
        curate=CurateParams(export_dir=str(export_dir)),
    )
    pipeline_flow(params)
    counts = data_counts(db_path)
    assert counts["images"] == 4 and counts["requests"] == 12 and counts["samples"] + counts["rejects"] >= 12
    records = json.loads((export_dir / "llava_instruct.json").read_text())
    assert len(records) == store.table_counts(db_path)["dataset"] > 0
    artifacts, _ = asyncio.run(latest_run("curate"))
    assert "llava_instruct.json" in str(artifacts["dataset-exports"])
    assert str(artifacts["dataset-report"]).startswith("#")
    assert any(key.startswith("dataset-report-") for key in artifacts)  # the report's tables

    pipeline_flow(params)
    assert chat_calls(sim) == 12
    assert data_counts(db_path) == counts


def test_batch_mode_runs_one_batch_task_and_resumes_nothing_twice(
    db_path: Path, sample_coco: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-batch")
    ingest_flow(IngestParams(coco_dir=str(sample_coco), db_path=str(db_path)))
    with start_simulator(SimConfig(batch_delay_s=0.2)) as sim:
        params = GenerateParams(db_path=str(db_path), base_url=sim.base_url, model="gpt-4o-mini", mode="batch",
                                batch_poll_s=0.2)
        stats = asyncio.run(generate_flow(params))
        assert stats.done == 12
        assert asyncio.run(generate_flow(params)).done == 0
        assert sum(1 for r in list(sim.log) if r.path == "/v1/batches" and r.method == "POST") == 1
    assert ok_per_request(db_path) == [1] * 12


class FailOnceLimiter:
    """Wraps the shared limiter; the first shard to reach its 3rd call raises once (a crashed shard)."""

    def __init__(self, inner: SharedRateLimiter) -> None:
        self.inner = inner
        self.calls = 0
        self.failed = False

    async def acquire(self, requests: int = 1, tokens: int = 0) -> None:
        self.calls += 1
        if self.calls == 3 and not self.failed:
            self.failed = True
            raise ConnectionResetError("injected: the shard's worker lost its connection")
        await self.inner.acquire(requests, tokens)

    def penalize(self, retry_after_s: float) -> None:
        self.inner.penalize(retry_after_s)

    def observe_headers(self, headers: object) -> None:
        self.inner.observe_headers(headers)  # type: ignore[arg-type]


def test_a_shard_that_fails_once_is_retried_without_duplicates(
    db_path: Path, sample_coco: Path, sim: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    ingest_flow(IngestParams(coco_dir=str(sample_coco), db_path=str(db_path)))
    limiters: list[FailOnceLimiter] = []

    def flaky_limiter(params: GenerateParams, db: Path) -> FailOnceLimiter:
        limiters.append(FailOnceLimiter(SharedRateLimiter(db.with_suffix(".bucket"), rpm=params.rpm)))
        return limiters[-1]

    monkeypatch.setattr(generate_module, "build_limiter", flaky_limiter)
    params = GenerateParams(db_path=str(db_path), base_url=sim.base_url, model="gpt-4o-mini",  # type: ignore[attr-defined]
                            shard_size=12, max_workers=1, rpm=60_000, shard_retries=1)
    stats = asyncio.run(generate_flow(params))
    assert limiters[0].failed  # the shard did crash once, Prefect ran it a second time ...
    assert asyncio.run(latest_run("generate"))[1] == [2]
    assert ok_per_request(db_path) == [1] * 12  # ... and still every request has exactly one good response
    assert chat_calls(sim) == 12  # the two answered before the crash were not sent again
    assert stats.done + stats.already_ok == 12


# Stands in for `python -m training`: prints a few lines, fails when asked to.
FAKE_TRAINING = """
import sys
stage = sys.argv[2]
print(f"{stage}: step 1 loss 2.50", flush=True)
print(f"{stage}: saved checkpoint", flush=True)
sys.exit(7 if "--fail" in sys.argv and stage == "stage2" else 0)
"""


def fake_config(tmp_path: Path) -> Path:
    """A config the train flow's path check accepts (hub model ids, no data); the fake launcher ignores it."""
    config = tmp_path / "train.yaml"
    config.write_text(f"output_dir: {tmp_path / 'runs'}\n")
    return config


def test_train_runs_the_stages_in_order_and_streams_their_lines(tmp_path: Path) -> None:
    params = TrainParams(config=str(fake_config(tmp_path)), launcher=[sys.executable, "-c", FAKE_TRAINING])
    tails = train_flow(params)
    assert list(tails) == ["stage1", "stage2"]
    assert tails["stage2"] == ["stage2: step 1 loss 2.50", "stage2: saved checkpoint"]


def test_a_failing_training_stage_fails_the_flow(tmp_path: Path) -> None:
    params = TrainParams(config=str(fake_config(tmp_path)), launcher=[sys.executable, "-c", FAKE_TRAINING],
                         stage2_overrides=["--fail"])
    state = train_flow(params, return_state=True)
    assert state.is_failed()
    with pytest.raises(Exception, match="exited with code 7"):
        state.result()


def test_api_key_from_a_secret_block_reaches_the_endpoint_but_no_log(
    db_path: Path, sample_coco: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from prefect.blocks.system import Secret

    secret = "sk-test-from-block-0123456789"
    Secret(value=secret).save("vistune-test-key", overwrite=True)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.setenv("VISTUNE_SECRET_BLOCK", "vistune-test-key")
    ingest_flow(IngestParams(coco_dir=str(sample_coco), db_path=str(db_path)))
    from tasks.llm import client as llm_client

    seen: list[str | None] = []
    make_client = llm_client.make_client

    def spy(**kwargs: object) -> object:  # the key the engine hands to the OpenAI client
        seen.append(kwargs.get("api_key"))  # type: ignore[arg-type]
        return make_client(**kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(llm_client, "make_client", spy)
    with start_simulator(SimConfig()) as sim:
        stats = asyncio.run(generate_flow(GenerateParams(
            db_path=str(db_path), base_url=sim.base_url, model="gpt-4o-mini", sample_types=["conversation"],
            limit_images=1)))
    assert stats.done == 1
    assert seen == [secret]
    logs = asyncio.run(all_logs())
    assert logs and not any(secret in line for line in logs)


async def all_logs() -> list[str]:
    from prefect.client.orchestration import get_client

    async with get_client() as client:
        return [log.message for log in await client.read_logs()]


def test_vistune_run_cli(db_path: Path, sample_coco: Path, sim: object, tmp_path: Path,
                         monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from flows.cli import get_app

    monkeypatch.setenv("OPENAI_BASE_URL", sim.base_url)  # type: ignore[attr-defined]
    result = CliRunner().invoke(get_app(), ["run", "--coco", str(sample_coco), "--db", str(db_path),
                                            "--model", "gpt-4o-mini", "--export-dir", str(tmp_path / "export")])
    assert result.exit_code == 0, result.output
    assert chat_calls(sim) == 12
    assert (tmp_path / "export" / "llava_instruct.json").exists()
    assert store.table_counts(db_path)["dataset"] > 0


def test_the_flow_passes_transport_temperature_and_max_tokens_to_the_engine(
    db_path: Path, sample_coco: Path, sim: object
) -> None:
    from tests.test_pipeline import assert_engine_got

    ingest_flow(IngestParams(coco_dir=str(sample_coco), db_path=str(db_path)))
    stats = asyncio.run(generate_flow(GenerateParams(db_path=str(db_path), base_url=sim.base_url, model="gpt-4o-mini",  # type: ignore[attr-defined]
                                         sample_types=["conversation"], limit_images=2, transport="sdk",
                                         temperature=0.7, max_tokens=300)))
    assert stats.done == 2
    assert_engine_got(db_path, transport="sdk", temperature=0.7, max_tokens=300)


def test_the_whole_budget_and_the_flow_run_id_reach_every_shard(
    db_path: Path, sample_coco: Path, sim: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    ingest_flow(IngestParams(coco_dir=str(sample_coco), db_path=str(db_path)))
    configs: list[object] = []
    real = runner_module.send_requests

    def spy(ids: list[str], db: Path, config: object, **kwargs: object) -> object:
        configs.append(config)
        return real(ids, db, config, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(runner_module, "send_requests", spy)
    asyncio.run(generate_flow(GenerateParams(db_path=str(db_path), base_url=sim.base_url, model="gpt-4o-mini",  # type: ignore[attr-defined]
                                 shard_size=4, max_cost_usd=5.0)))
    assert len(configs) == 3  # 12 requests in shards of 4
    assert {c.max_cost_usd for c in configs} == {5.0}  # type: ignore[attr-defined]  (not 5 / 3 each)
    budget_ids = {c.budget_id for c in configs}  # type: ignore[attr-defined]
    assert len(budget_ids) == 1 and None not in budget_ids
    runs = asyncio.run(latest_flow_run_id("generate"))
    assert budget_ids == {runs}


async def latest_flow_run_id(flow_name: str) -> str:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName
    from prefect.client.schemas.sorting import FlowRunSort

    async with get_client() as client:
        runs = await client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=[flow_name])),
                                           sort=FlowRunSort.START_TIME_DESC, limit=1)
    return str(runs[0].id)


def test_every_failed_shard_is_named_in_the_error(
    db_path: Path, sample_coco: Path, sim: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    ingest_flow(IngestParams(coco_dir=str(sample_coco), db_path=str(db_path)))
    real = runner_module.send_requests
    calls: list[int] = []

    def two_fail(ids: list[str], db: Path, config: object, **kwargs: object) -> object:
        calls.append(len(calls))
        if len(calls) in (1, 3):
            raise ConnectionResetError(f"injected failure number {len(calls)}")
        return real(ids, db, config, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(runner_module, "send_requests", two_fail)
    state = asyncio.run(generate_flow(GenerateParams(db_path=str(db_path), base_url=sim.base_url, model="gpt-4o-mini",  # type: ignore[attr-defined]
                                         shard_size=4, max_workers=1, shard_retries=0), return_state=True))
    assert state.is_failed()
    with pytest.raises(Exception, match="2 of 3 shard") as info:
        state.result()
    message = str(info.value)
    assert "injected failure number 1" in message and "injected failure number 3" in message
    assert message.count("ConnectionResetError") == 2


def test_an_unpriced_model_is_warned_about_in_the_log_and_the_summary(
    db_path: Path, sample_coco: Path, sim: object
) -> None:
    ingest_flow(IngestParams(coco_dir=str(sample_coco), db_path=str(db_path)))
    asyncio.run(generate_flow(GenerateParams(db_path=str(db_path), base_url=sim.base_url, model="my-local-llama",  # type: ignore[attr-defined]
                                 sample_types=["conversation"], limit_images=1)))
    artifacts, _ = asyncio.run(latest_run("generate"))
    summary = str(artifacts["generation-summary"])
    assert "Warning" in summary and "my-local-llama" in summary and "prices.toml" in summary
    warnings = logged_lines(asyncio.run(latest_flow_run_id("generate")), "no price for model 'my-local-llama'")
    assert len(warnings) == 1, warnings  # once per run, not per shard or round


def logged_lines(flow_run_id: str, text: str, wait_s: float = 15.0) -> list[str]:
    """The lines of a flow run's log holding `text`, once the log handler has sent them to the server."""
    import time

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    async def read() -> list[str]:
        async with get_client() as client:
            logs = await client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
        return [log.message for log in logs]

    deadline = time.monotonic() + wait_s
    while True:
        lines = [line for line in asyncio.run(read()) if text in line]
        if lines or time.monotonic() > deadline:
            return lines
        time.sleep(0.5)


def test_a_missing_secret_block_means_no_key_with_a_warning(monkeypatch: pytest.MonkeyPatch,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    assert generate_module.resolve_api_key("vistune-no-such-block") is None
    assert "vistune-no-such-block" in caplog.text and "OPENAI_API_KEY" in caplog.text


def test_a_secret_block_that_cannot_be_read_fails_clearly(monkeypatch: pytest.MonkeyPatch) -> None:
    import httpx
    from prefect.blocks.system import Secret

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    Secret(value={"not": "a key"}).save("vistune-test-json-secret", overwrite=True)
    with pytest.raises(generate_module.SecretBlockError, match=r"vistune-test-json-secret.*dict"):
        generate_module.resolve_api_key("vistune-test-json-secret")

    def unreachable(*args: object, **kwargs: object) -> object:
        raise httpx.ConnectError("All connection attempts failed")

    monkeypatch.setattr(Secret, "load", unreachable)
    with pytest.raises(generate_module.SecretBlockError, match=r"'openai-api-key'.*ConnectError.*PREFECT_API_URL"):
        generate_module.resolve_api_key(None)


def test_progress_finish_does_not_wait_out_the_push_interval() -> None:
    """Between changes the pusher waits up to `interval_s` for one (at the end of a generate run: while the
    last validation and plan run); `finish` wakes it at once (it used to sit out that wait, up to a second of
    every run's wall time, here the 10 s join timeout) and still pushes the final figures."""
    import time

    from prefect import flow

    from flows.progress import GenerationProgress
    from schemas.generation import GenerateStats

    @flow
    def finish_after_idle() -> tuple[float, GenerateStats, GenerationProgress]:
        progress = GenerationProgress(interval_s=60)
        time.sleep(0.2)  # the pusher is now waiting for a change
        with progress._lock:  # a shard's figures, without waking the pusher
            progress.total, progress._snapshots["shard-0"] = 3, GenerateStats(done=3)
        started = time.monotonic()
        totals = progress.finish(model="gpt-4o-mini")
        return time.monotonic() - started, totals, progress

    seconds, totals, progress = finish_after_idle()
    assert seconds < 5
    assert totals.done == 3 and not progress._thread.is_alive()
    assert progress.percent(totals) == 100.0
