"""Hand a step to another work pool: start a deployment's flow run, wait for a worker to take it, wait for it to end.

`pipeline` (with `train_on="deployment"`) runs ingest, generate and curate where it runs, on a CPU worker, and
hands training to the `train` deployment, which a worker of the GPU pool runs on its own machine. The data
goes between them through storage both machines see (export folder, image root, checkpoint folder); the
parameters go through the Prefect server. `run_on_pool` is the one way to do such a handoff (evaluation's
inference uses it too), so every handoff fails the same clear ways:

- the deployment does not exist: says how to deploy it;
- no worker takes the run within `start_timeout_s` (no machine of that pool online, a paused pool, a busy
  worker): fails with "no worker of pool ... picked up ...", naming the pool's workers and their last
  heartbeat, and cancels the run so it does not start hours later next to a newer one;
- the run ends in any state but Completed: fails with its state, its message, the worker that ran it and a link;
- it has not ended after `timeout_s`: fails saying so; the run itself goes on (its checkpoint stays usable).

The child is started as a subflow of the calling flow run (`run_deployment(..., as_subflow=True)`), so the UI
shows it under the parent and the pipeline's summary lists it with its artifacts.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.deployments import run_deployment
from prefect.exceptions import ObjectNotFound
from prefect.settings import get_current_settings
from prefect.states import Cancelled

POLL_S = 2.0  # seconds between looks at the child run; a training run lasts minutes to days
WORKER_LABEL = "prefect.worker.name"  # the label a worker puts on every flow run it takes


class HandoffFailed(RuntimeError):
    """The deployment's run never started, failed, or did not end in time; the message says which and links it."""


@dataclass
class ChildRun:
    """A flow run started on another pool, as the parent's summary shows it."""

    deployment: str
    flow_run_id: UUID
    name: str
    pool: str | None
    state: str = "Scheduled"
    message: str | None = None
    worker: str | None = None

    @property
    def url(self) -> str | None:
        """The run's page in the UI, when the UI's address is known."""
        ui = (get_current_settings().ui_url or "").rstrip("/")
        return f"{ui}/runs/flow-run/{self.flow_run_id}" if ui else None

    def link(self) -> str:
        """Markdown: the run's name linked to its page (or its id when the UI's address is unknown)."""
        return f"[{self.name}]({self.url})" if self.url else f"`{self.name}` ({self.flow_run_id})"

    def where(self) -> str:
        return f"worker `{self.worker or '?'}` of pool `{self.pool or '?'}`"

    def summary(self) -> dict[str, Any]:
        """JSON-able, for the parent's result."""
        return {"deployment": self.deployment, "flow_run_id": str(self.flow_run_id), "name": self.name,
                "pool": self.pool, "worker": self.worker, "state": self.state, "url": self.url}

    def _update(self, run: FlowRun) -> None:
        if run.state is not None:
            self.state, self.message = run.state.name, run.state.message
        self.worker = (run.labels or {}).get(WORKER_LABEL) or self.worker


def _workers_seen(client: Any, pool: str) -> str:
    """The pool's workers and how long ago each last sent a heartbeat, for a "no worker" message."""
    try:
        paused = client.read_work_pool(pool).is_paused
        workers = client.read_workers_for_work_pool(pool)
    except Exception as exc:  # the message is still useful without this detail
        return f"its workers could not be read: {exc}"
    now = datetime.now(UTC)
    # the server keeps calling a stopped worker online for a few heartbeats: its last heartbeat is the clue
    seen = ", ".join(
        f"`{w.name}` (last heartbeat {(now - w.last_heartbeat_time).total_seconds():.0f} s ago)"
        if w.last_heartbeat_time else f"`{w.name}` (no heartbeat)" for w in workers)
    pool_state = "the pool is paused (`prefect work-pool resume`); " if paused else ""
    return f"{pool_state}workers the server knows: {seen or 'none'}"


def run_on_pool(
    deployment_name: str,
    parameters: dict[str, Any],
    start_timeout_s: float,
    timeout_s: float | None = None,
    *,
    on_created: Callable[[ChildRun], None] | None = None,
    poll_s: float = POLL_S,
) -> ChildRun:
    """Start `deployment_name` ("flow/deployment") with `parameters` and wait until its run Completed.

    Fails (`HandoffFailed`, with a link to the run) when no worker of the deployment's pool took the run
    within `start_timeout_s` (the run is then cancelled), when the run ends in another state, or when it is
    still running `timeout_s` seconds after it started (None: no limit; the run is left running).
    `on_created` is called once the run exists (e.g. to put its link in a summary before waiting).
    """
    with get_client(sync_client=True) as client:
        try:
            pool = client.read_deployment_by_name(deployment_name).work_pool_name
        except ObjectNotFound:
            raise HandoffFailed(
                f"deployment {deployment_name!r} not found on the Prefect server "
                f"({get_current_settings().api.url}): deploy it from the repository root with "
                "`python -m flows.pools deploy`") from None
        created = run_deployment(deployment_name, parameters=parameters, timeout=0)
        child = ChildRun(deployment=deployment_name, flow_run_id=created.id, name=created.name, pool=pool)
        if on_created is not None:
            on_created(child)

        deadline = time.monotonic() + start_timeout_s
        run = client.read_flow_run(child.flow_run_id)
        while run.state is not None and run.state.type == StateType.SCHEDULED:
            if time.monotonic() >= deadline:
                message = (f"no worker of pool {pool!r} picked up {deployment_name} run {child.name!r} within "
                           f"{start_timeout_s:g} s: {_workers_seen(client, pool) if pool else 'no pool'}. Start one "
                           f"on the machine that should run it: `prefect worker start --pool {pool}`. "
                           "The run was cancelled.")
                client.set_flow_run_state(child.flow_run_id, Cancelled(message=message), force=True)
                child.state, child.message = "Cancelled", message
                raise HandoffFailed(message)
            time.sleep(poll_s)
            run = client.read_flow_run(child.flow_run_id)

        started = time.monotonic()
        while run.state is None or not run.state.is_final():
            if timeout_s is not None and time.monotonic() - started >= timeout_s:
                child._update(run)
                raise HandoffFailed(
                    f"{deployment_name} run {child.name!r} on {child.where()} is still {child.state} after "
                    f"{timeout_s:g} s; it goes on without this run waiting: {child.url or child.flow_run_id}")
            time.sleep(poll_s)
            run = client.read_flow_run(child.flow_run_id)
        child._update(run)
    if run.state.type != StateType.COMPLETED:
        raise HandoffFailed(f"{deployment_name} run {child.name!r} on {child.where()} ended {child.state}: "
                            f"{child.message or 'no message'} ({child.url or child.flow_run_id})")
    return child
