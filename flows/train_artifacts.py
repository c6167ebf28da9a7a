"""Live training artifacts for the `train` flow: progress with ETA, the preflight report, the loss table.

`training/` never imports Prefect; it writes files into the stage directory, and this watcher (a thread of the
flow's process) turns them into artifacts of the flow run:

- `train-<stage>-progress` (progress): step / total steps, loss, held-out loss and ETA, from the tail of
  `metrics.jsonl`, pushed at most once per `interval_s`;
- `train-<stage>-preflight` (markdown): `preflight/report.txt` (and `preflight-eval/report.txt`), once written;
- `train-<stage>-loss` (markdown): a table of train and held-out loss with the ETA, refreshed whenever the run
  redraws `loss_curve.png` (every checkpoint, held-out evaluation and the end) and when the stage ends.

Only files written after the stage started count, so a previous run's files in the same directory are never
published as this run's.
"""

from __future__ import annotations

import contextvars
import json
import logging
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from prefect.artifacts import create_markdown_artifact, create_progress_artifact, update_progress_artifact

from training.metrics import METRICS_FILE

log = logging.getLogger(__name__)
WATCHED_STAGES = ("stage1", "stage2")  # merge logs no steps
LOSS_ROWS = 30  # train-loss rows kept in the table (evenly spaced, the last always); held-out rows all kept
MTIME_SLACK_S = 1.0  # file timestamps can lag the clock a little
KEPT = ("step", "total_steps", "loss", "eval_loss", "eta_s")  # the fields of metrics.jsonl shown


def artifact_keys(stage: str) -> dict[str, str]:
    """The stable artifact keys of one stage (lowercase, dashed)."""
    return {kind: f"train-{stage}-{kind}" for kind in ("progress", "preflight", "loss")}


def stage_dir_of(config: str | Path, stage: str, overrides: Sequence[str] = ()) -> Path | None:
    """Where `python -m training STAGE --config FILE OVERRIDES` writes, or None when the config cannot be read."""
    from training.config import load_config  # pydantic + yaml only: no torch in the flow's process

    key_values = [o for o in overrides if "=" in o and not o.startswith("-")]  # the CLI's key=value overrides
    try:
        return load_config(config, key_values).stage_dir(stage)  # type: ignore[arg-type]
    except Exception as exc:  # a config the training process will reject itself, with a better message
        log.debug("no training artifacts for %s: cannot read %s: %s", stage, config, exc)
        return None


def format_eta(seconds: float | None) -> str:
    """`1h 02m`, `3m 20s`, `45s`; `?` when unknown."""
    if seconds is None or seconds != seconds or seconds < 0:
        return "?"
    seconds = round(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h {seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m {seconds % 60:02d}s"
    return f"{seconds}s"


class TrainArtifacts:
    """Watches one stage directory from a thread and mirrors it into the flow run's artifacts.

    Use as a context manager around the stage's task; on exit (success or failure) it publishes the final state.
    """

    def __init__(self, stage: str, stage_dir: Path, *, interval_s: float = 3.0) -> None:
        self.stage = stage
        self.dir = Path(stage_dir)
        self.interval_s = interval_s
        self.keys = artifact_keys(stage)
        self.started = time.time()
        self.records: list[dict[str, Any]] = []
        self.progress_updates = 0
        self._offset = 0  # bytes of metrics.jsonl already read
        self._seen: dict[str, float] = {}  # file -> mtime already published
        self._last_push = 0.0
        self._pushed_step = -1
        self._stop = threading.Event()
        self._lock = threading.Lock()  # the final poll must not run beside a late one of the thread
        self.progress_id = create_progress_artifact(progress=0.0, key=self.keys["progress"],
                                                    description=f"{stage}: starting (preflight, model load)")
        # The thread needs the flow run's Prefect context (API client, flow run id): copy it over.
        context = contextvars.copy_context()
        self._thread = threading.Thread(target=context.run, args=(self._loop,), daemon=True,
                                        name=f"train-artifacts-{stage}")

    def __enter__(self) -> TrainArtifacts:
        self._thread.start()
        return self

    def __exit__(self, exc_type: object, *rest: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        try:
            self.poll(final=True, failed=exc_type is not None)
        except Exception as exc:  # artifacts are a view: never fail (or mask the failure of) the stage for them
            log.warning("could not publish the final training artifacts of %s: %s", self.stage, exc)

    def _loop(self) -> None:
        while not self._stop.wait(min(1.0, self.interval_s)):
            try:
                self.poll()
            except Exception as exc:
                log.debug("training artifacts of %s: %s", self.stage, exc)

    def _fresh(self, path: Path) -> float | None:
        """The mtime of `path` when it exists and was written during this stage, else None."""
        try:
            mtime = path.stat().st_mtime
        except OSError:
            return None
        return mtime if mtime >= self.started - MTIME_SLACK_S else None

    def _read_metrics(self) -> bool:
        """Append the records written since the last read; True when there are new ones."""
        path = self.dir / METRICS_FILE
        if self._fresh(path) is None:
            return False
        with path.open("rb") as handle:
            handle.seek(0, 2)
            if handle.tell() < self._offset:  # rewritten (a resumed run keeps only earlier steps): read again
                self._offset, self.records = 0, []
            handle.seek(self._offset)
            chunk = handle.read()
        complete = chunk[: chunk.rfind(b"\n") + 1]  # a line still being written waits for the next poll
        self._offset += len(complete)
        # Only what the artifacts show: a long run's log stays small in the flow's memory.
        new = [{k: v for k, v in json.loads(line).items() if k in KEPT}
               for line in complete.splitlines() if line.strip()]
        self.records += new
        return bool(new)

    def poll(self, *, final: bool = False, failed: bool = False) -> None:
        """Read what changed and publish it (progress at most once per `interval_s`, unless `final`)."""
        with self._lock:
            self._poll(final=final, failed=failed)

    def _poll(self, *, final: bool, failed: bool) -> None:
        self._read_metrics()
        self._publish_preflight()
        curve = self._fresh(self.dir / "loss_curve.png")
        if (curve is not None and curve != self._seen.get("curve")) or (final and self.records):
            self._seen["curve"] = curve or 0.0
            self._publish_loss()
        step = self._latest("step") or 0
        due = time.monotonic() - self._last_push >= self.interval_s
        if final or (step != self._pushed_step and due):
            self._push_progress(final=final, failed=failed)

    def _latest(self, key: str) -> Any:
        return next((r[key] for r in reversed(self.records) if key in r), None)

    def status(self) -> tuple[float, str]:
        """(percent, one line): step of total, loss, held-out loss, ETA."""
        step, total = self._latest("step"), self._latest("total_steps")
        if step is None:
            return 0.0, f"{self.stage}: no step logged yet"
        percent = min(100.0, 100.0 * step / total) if total else 0.0
        eta = self._latest("eta_s")
        parts = [f"{self.stage}: step {step}" + (f"/{total}" if total else "")]
        loss, eval_loss = self._latest("loss"), self._latest("eval_loss")
        if loss is not None:
            parts.append(f"loss {loss:.4f}")
        if eval_loss is not None:
            parts.append(f"held-out {eval_loss:.4f}")
        parts.append(f"ETA {format_eta(eta)}")
        return percent, " · ".join(parts)

    def _push_progress(self, *, final: bool, failed: bool) -> None:
        percent, line = self.status()
        if final and not failed:
            percent, line = 100.0, line.replace(f"ETA {format_eta(self._latest('eta_s'))}", "done")
        elif failed:
            line = f"FAILED · {line}"
        update_progress_artifact(self.progress_id, percent, description=line)
        self.progress_updates += 1
        self._last_push = time.monotonic()
        self._pushed_step = self._latest("step") or 0

    def _publish_preflight(self) -> None:
        reports = {name: self.dir / name / "report.txt" for name in ("preflight", "preflight-eval")}
        fresh = {name: self._fresh(path) for name, path in reports.items()}
        if fresh["preflight"] is None or all(fresh[n] == self._seen.get(n) for n in fresh):
            return
        self._seen.update(fresh)
        sections = [f"## Preflight of {self.stage}\n\nReport directory: `{self.dir / 'preflight'}` "
                    "(`bad_records.jsonl`, `lengths.png`)\n"]
        for name, path in reports.items():
            if fresh[name] is not None:
                sections.append(f"### {name}\n\n```text\n{path.read_text().rstrip()}\n```\n")
        create_markdown_artifact(markdown="\n".join(sections), key=self.keys["preflight"],
                                 description=f"{self.stage} preflight report")

    def loss_markdown(self) -> str:
        """Train and held-out loss by step (train rows thinned to `LOSS_ROWS`), with the ETA."""
        train = [r for r in self.records if "loss" in r]
        held_out = {r["step"]: r["eval_loss"] for r in self.records if "eval_loss" in r}
        if len(train) > LOSS_ROWS:
            stride = len(train) / LOSS_ROWS
            train = [train[int(i * stride)] for i in range(LOSS_ROWS - 1)] + [train[-1]]
        losses = {r["step"]: r["loss"] for r in train}
        _, line = self.status()
        def cell(value: float | None) -> str:
            return "" if value is None else f"{value:.4f}"

        rows = [f"| {step} | {cell(losses.get(step))} | {cell(held_out.get(step))} |"
                for step in sorted({*losses, *held_out})]
        return (f"## Loss of {self.stage}\n\n{line}\n\nCurve: `{self.dir / 'loss_curve.png'}` "
                f"(updated {time.strftime('%H:%M:%S')})\n\n| step | loss | held-out loss |\n|---:|---:|---:|\n"
                + "\n".join(rows) + "\n")

    def _publish_loss(self) -> None:
        create_markdown_artifact(markdown=self.loss_markdown(), key=self.keys["loss"],
                                 description=f"{self.stage} train and held-out loss, ETA")
