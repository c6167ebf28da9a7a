"""Metrics to a JSON-lines log and TensorBoard, and a loss-curve PNG (train and held-out loss)."""

from __future__ import annotations

import json
from pathlib import Path

METRICS_FILE = "metrics.jsonl"


class MetricsLog:
    """Appends one json object per logged step; on resume, drops entries after the resumed step.

    Only the main process writes (`enabled`); the others get a no-op log.
    """

    def __init__(self, directory: Path, resume_step: int = 0, enabled: bool = True) -> None:
        self.path = directory / METRICS_FILE
        self.enabled = enabled
        self.writer = None
        if not enabled:
            return
        directory.mkdir(parents=True, exist_ok=True)
        kept = [r for r in read_metrics(self.path) if r["step"] <= resume_step] if resume_step else []
        self.path.write_text("".join(json.dumps(r) + "\n" for r in kept))
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(directory / "tensorboard"), purge_step=resume_step + 1 if resume_step else None)

    def log(self, step: int, values: dict[str, float]) -> None:
        """Record `values` at optimizer step `step`."""
        if not self.enabled:
            return
        with self.path.open("a") as handle:
            handle.write(json.dumps({"step": step, **values}) + "\n")
        for key, value in values.items():
            self.writer.add_scalar(key, value, step)

    def close(self) -> None:
        """Flush TensorBoard."""
        if self.writer is not None:
            self.writer.close()


def read_metrics(path: Path) -> list[dict]:
    """All records of a metrics.jsonl file (empty when absent)."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_loss(metrics_path: Path, png_path: Path) -> Path:
    """Draw train loss, and held-out loss where logged (`eval_loss`), against step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = read_metrics(metrics_path)
    records = [r for r in metrics if "loss" in r]
    held_out = [r for r in metrics if "eval_loss" in r]
    figure, axis = plt.subplots(figsize=(6, 4))
    axis.plot([r["step"] for r in records], [r["loss"] for r in records], label="train")
    if held_out:
        axis.plot([r["step"] for r in held_out], [r["eval_loss"] for r in held_out], "o-", label="held-out")
        axis.legend()
    axis.set_xlabel("optimizer step")
    axis.set_ylabel("loss")
    axis.set_title(metrics_path.parent.name)
    figure.tight_layout()
    figure.savefig(png_path)
    plt.close(figure)
    return png_path
