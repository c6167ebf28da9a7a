"""Where the pipeline's steps run under Prefect: each unit a task, generation shards over a task runner.

`tasks/pipeline.py` says what every step does; this runner only changes where its units run:
- `call(name, fn, ...)` -> a Prefect task run named `name` (retries from `tasks.prefect_tasks.POLICIES`);
- `send(ids, ...)` -> one `generate-shard` task per shard of `shard_size` requests (default: sized from the
  round's requests and `max_workers`, `plan.shard_size_for`) on the chosen task runner (never one task per
  request: DESIGN.md, ~14 ms of bookkeeping each), or one
  `generate-batch` task in batch mode (the Batch API does the fan-out);
- `log` / `warn` -> the flow run's log.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from prefect.futures import as_completed
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner
from prefect.utilities.annotations import quote

from flows.progress import GenerationProgress
from schemas.flow_params import GenerateParams
from schemas.generation import GenerateConfig, GenerateStats
from tasks import prefect_tasks
from tasks.llm.shared_limiter import SharedRateLimiter
from tasks.pipeline import Runner, send_requests, total_of
from tasks.prompting.plan import shard, shard_size_for


class ShardsFailed(RuntimeError):
    """One or more shards failed after their retries; the message names each one and its error."""


def build_task_runner(kind: str, max_workers: int) -> TaskRunner[Any]:
    """Threads with a bounded pool (default) or a local Dask cluster (`pip install 'vistune[dask]'`)."""
    if kind == "threads":
        return ThreadPoolTaskRunner(max_workers=max_workers)
    if kind == "dask":
        try:
            from prefect_dask import DaskTaskRunner
        except ImportError as exc:
            raise RuntimeError("task_runner='dask' needs prefect-dask: pip install 'vistune[dask]'") from exc
        return DaskTaskRunner(cluster_kwargs={"n_workers": max_workers, "threads_per_worker": 1})
    raise ValueError(f"unknown task_runner {kind!r}: use 'threads' or 'dask'")


def build_limiter(params: GenerateParams, db: Path) -> SharedRateLimiter | None:  # type: ignore[valid-type]
    """One bucket file shared by every shard, thread and worker process on this machine."""
    if params.rpm is None and params.tpm is None:
        return None  # each shard's engine learns the limits from the server's headers
    path = Path(params.limiter_path) if params.limiter_path else db.with_suffix(".ratelimit.sqlite")
    return SharedRateLimiter(path, rpm=params.rpm, tpm=params.tpm, name=f"{params.base_url or 'openai'}|{params.model}")


class PrefectRunner(Runner):
    """Units as Prefect tasks; `send` needs `params` and `progress` (the generate flow gives them)."""

    def __init__(
        self,
        logger: logging.Logger | logging.LoggerAdapter[Any],
        *,
        params: GenerateParams | None = None,  # type: ignore[valid-type]
        progress: GenerationProgress | None = None,
        limiter: SharedRateLimiter | None = None,
    ) -> None:
        super().__init__(log=logger.info, warn=logger.warning, limiter=limiter)
        self.params = params
        self.progress = progress
        self._stack = ExitStack()
        self._task_runner: TaskRunner[Any] | None = None

    def __enter__(self) -> PrefectRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def call(self, name: str, fn: Any, /, *args: Any, **kwargs: Any) -> Any:
        """Run the unit as a Prefect task run named `name`."""
        # Quoted: Prefect looks through a task's arguments for futures and states, element by element, before
        # the run starts (70 ms for a list of 5,000 request ids, 200 ms for 20,000); these hold neither.
        return prefect_tasks.as_task(name)(fn, *map(quote, args), **{k: quote(v) for k, v in kwargs.items()})

    def _runner(self) -> TaskRunner[Any]:
        # Started on the first round and kept for the next ones (a Dask cluster takes seconds to start).
        if self._task_runner is None:
            assert self.params is not None
            self._task_runner = self._stack.enter_context(
                build_task_runner(self.params.task_runner, self.params.max_workers))
        return self._task_runner

    def send(self, request_ids: Any, db: Path, config: GenerateConfig, *, round_no: int) -> GenerateStats:
        """One round: a `generate-batch` task, or one `generate-shard` task per shard, shards concurrently."""
        if self.params is None or self.progress is None:
            raise RuntimeError("PrefectRunner.send needs the generate step's params and a GenerationProgress")
        progress = self.progress
        progress.add_total(len(request_ids))
        if config.mode == "batch":
            key = (round_no, "batch")
            stats = self.call("generate-batch", send_requests, request_ids, db, config,
                              on_progress=lambda s: progress.report(key, s))
            progress.report(key, stats)
            return stats
        size = shard_size_for(len(request_ids), self.params.max_workers, self.params.shard_size)
        return self._send_shards(shard(request_ids, size), db, config, round_no)

    def _send_shards(
        self, shards: list[Sequence[str]], db: Path, config: GenerateConfig, round_no: int
    ) -> GenerateStats:
        assert self.params is not None and self.progress is not None
        progress = self.progress
        shard_task = prefect_tasks.as_task("generate-shard", retries=self.params.shard_retries)
        in_process = self.params.task_runner == "threads"  # a callback cannot cross into Dask worker processes
        runner = self._runner()
        futures = {}
        for index, ids in enumerate(shards):
            key = (round_no, index)
            on_progress = (lambda stats, key=key: progress.report(key, stats)) if in_process else None
            future = runner.submit(shard_task, parameters={  # quoted: see `call`
                "fn": send_requests, "args": quote((ids, db, config)),
                "kwargs": quote({"limiter": self.limiter, "on_progress": on_progress}),
            })
            futures[future] = index
        results: list[GenerateStats] = []
        errors: list[tuple[int, str]] = []
        for future in as_completed(list(futures)):
            index = futures[future]
            try:
                stats = future.result()
            except Exception as exc:  # keep waiting: every shard's error belongs in the message
                errors.append((index, f"shard {index} of round {round_no} ({len(shards[index])} requests, first "
                                      f"{shards[index][0]}): {type(exc).__name__}: {exc}"))
                continue
            progress.report((round_no, index), stats)
            results.append(stats)
        if errors:
            raise ShardsFailed(f"{len(errors)} of {len(shards)} shard(s) failed after their retries "
                               f"(what they answered is stored; a rerun sends the rest):\n- "
                               + "\n- ".join(message for _, message in sorted(errors)))
        return total_of(*results)
