"""Run reporting: ``metrics.jsonl`` (one JSON object per step), ``summary.json`` and ``loss.png``."""
from __future__ import annotations

import json
import os

from ..atomic import atomic_write, atomic_write_with, write_error
from ..jsonfile import check_int, parse_json


class MetricsLog:
    """Appends step records to ``<run_dir>/metrics.jsonl``.

    On resume, records of steps after the resumed step are dropped first, so the log matches
    the weights (a killed run may have logged steps it never checkpointed)."""

    def __init__(self, run_dir: str, resume_step: int = 0):
        self.path = os.path.join(run_dir, "metrics.jsonl")
        kept = [r for r in read_metrics(self.path) if r["step"] <= resume_step] if resume_step else []
        atomic_write(self.path, "".join(json.dumps(record) + "\n" for record in kept).encode())

    def write_many(self, records: list[dict]) -> None:
        """Append records (the trainer writes the steps of each log interval at once)."""
        try:
            with open(self.path, "a") as f:
                f.write("".join(json.dumps(record) + "\n" for record in records))
        except OSError as exc:
            raise write_error(self.path, exc) from None


def write_summary(run_dir: str, summary: dict) -> str:
    """Write ``<run_dir>/summary.json`` (atomically) and return its path."""
    path = os.path.join(run_dir, "summary.json")
    atomic_write(path, (json.dumps(summary, indent=1, sort_keys=True) + "\n").encode())
    return path


def read_metrics(path: str) -> list[dict]:
    """Records of a ``metrics.jsonl`` (a torn last line from a kill, or any line that is not an
    object with an integer ``step``, is skipped)."""
    if not os.path.isfile(path):
        return []
    out = []
    with open(path, "rb") as f:
        for line in f:
            try:
                record = parse_json(line, path)
            except ValueError:
                continue
            if isinstance(record, dict) and check_int(record.get("step"), 0):
                out.append(record)
    return out


def plot_loss(run_dir: str) -> str | None:
    """Write ``<run_dir>/loss.png`` from ``metrics.jsonl`` (per-step loss and its running mean)."""
    records = [r for r in read_metrics(os.path.join(run_dir, "metrics.jsonl"))
               if isinstance(r.get("loss"), (int, float)) and not isinstance(r.get("loss"), bool)]  # a skipped (non-finite) step has no loss
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
    try:
        atomic_write_with(path, lambda tmp: fig.savefig(tmp, format="png"))
    finally:
        plt.close(fig)
    return path
