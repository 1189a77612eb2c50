"""Run reporting: ``metrics.jsonl`` (one JSON object per step), ``summary.json`` and ``loss.png``."""
from __future__ import annotations

import json
import os

from ..atomic import atomic_write


class MetricsLog:
    """Appends step records to ``<run_dir>/metrics.jsonl``.

    On resume, records of steps after the resumed step are dropped first, so the log matches
    the weights (a killed run may have logged steps it never checkpointed)."""

    def __init__(self, run_dir: str, resume_step: int = 0):
        self.path = os.path.join(run_dir, "metrics.jsonl")
        kept = [r for r in read_metrics(self.path) if r.get("step", 0) <= resume_step] if resume_step else []
        with open(self.path, "w") as f:
            for record in kept:
                f.write(json.dumps(record) + "\n")

    def write_many(self, records: list[dict]) -> None:
        """Append records (the trainer writes the steps of each log interval at once)."""
        with open(self.path, "a") as f:
            f.write("".join(json.dumps(record) + "\n" for record in records))


def write_summary(run_dir: str, summary: dict) -> str:
    """Write ``<run_dir>/summary.json`` (atomically) and return its path."""
    path = os.path.join(run_dir, "summary.json")
    atomic_write(path, (json.dumps(summary, indent=1, sort_keys=True) + "\n").encode())
    return path


def read_metrics(path: str) -> list[dict]:
    """Records of a ``metrics.jsonl`` (a torn last line from a kill is skipped)."""
    if not os.path.exists(path):
        return []
    out = []
    with open(path) as f:
        for line in f:
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return out


def plot_loss(run_dir: str) -> str | None:
    """Write ``<run_dir>/loss.png`` from ``metrics.jsonl`` (per-step loss and its running mean)."""
    records = [r for r in read_metrics(os.path.join(run_dir, "metrics.jsonl"))
               if r.get("loss") is not None]  # a skipped (non-finite) step has no loss
    if not records:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in records]
    loss = [r["loss"] for r in records]
    window = max(1, len(loss) // 20)
    smooth = [sum(loss[max(0, i - window + 1):i + 1]) / len(loss[max(0, i - window + 1):i + 1])
              for i in range(len(loss))]
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    # the step line is drawn on top, marked, so the running mean never hides it
    ax.plot(steps, loss, lw=1.0, marker="." if len(loss) <= 200 else None, color="tab:blue",
            zorder=3, label="loss (step)")
    if window > 1:  # a 1-step mean would be the step line itself
        ax.plot(steps, smooth, lw=1.5, ls="--", color="tab:orange", zorder=2,
                label=f"running mean ({window})")
    ax.set_xlabel("step")
    ax.set_ylabel("MSE")
    ax.set_yscale("log")
    ax.legend()
    fig.tight_layout()
    path = os.path.join(run_dir, "loss.png")
    fig.savefig(path)
    plt.close(fig)
    return path
