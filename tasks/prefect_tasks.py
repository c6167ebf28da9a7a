"""The one thin Prefect `@task` around the plain units of work: retries and caching only.

The work itself lives in plain modules, composed by `tasks/pipeline.py` (no Prefect there). A
step calls each unit through its runner (`runner.call("validate", validate_pending, db)`); under
Prefect that becomes `as_task("validate")(validate_pending, db)`: a task run named after the unit,
with the retry policy of `POLICIES`.

Every task uses `NO_CACHE` and does not persist its result: DuckDB is the system of record and
every step is idempotent against it (a rerun sends no request that already has a good response and
adds no row), so a Prefect result cache could only hide new data. Retries are on the units that
talk to the network; a training stage is never retried (it would repeat hours of work; resume from
its checkpoint with a new run instead).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prefect import Task, task
from prefect.cache_policies import NO_CACHE

_PLAIN: dict[str, Any] = {"cache_policy": NO_CACHE, "persist_result": False}

# Unit name (or the prefix before "-<stage>") -> Prefect task options.
POLICIES: dict[str, dict[str, Any]] = {
    # A retry re-runs the whole shard; the engine skips what the failed attempt already answered,
    # so nothing is paid twice and no sample is duplicated.
    "generate-shard": {"retries": 2, "retry_delay_seconds": [2, 10]},
    # Batch ids live in DuckDB: a retry resumes polling instead of submitting again.
    "generate-batch": {"retries": 2, "retry_delay_seconds": [30, 120]},
    "train": {"retries": 0},
}


@task(name="unit", **_PLAIN)
def run_unit(fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
    """Run one plain function as a Prefect task (named and given its retries by `as_task`)."""
    return fn(*args, **kwargs)


def policy(name: str) -> dict[str, Any]:
    """The task options of a unit: its own entry, else its prefix's (`train-stage1` -> `train`), else none."""
    return dict(POLICIES.get(name) or POLICIES.get(name.split("-", 1)[0], {}))


def as_task(name: str, **options: Any) -> Task[..., Any]:
    """The Prefect task that runs a unit called `name`; `options` override its policy (e.g. `retries`)."""
    return run_unit.with_options(name=name, **{**policy(name), **options})
