"""Evaluation runs: one backbone over several benchmark datasets, and their mean (Mean6)."""
from __future__ import annotations

from typing import Callable

from ..evaluation import evaluate
from ..evaluation.datasets import BENCHMARKS


def evaluate_datasets(bb, datasets, root, *, on_result: Callable[[dict], None] | None = None,
                      **options) -> dict:
    """``{"results": [evaluate(bb, name, root, **options) for name in datasets]}``, plus
    ``"Mean6"`` (the mean mIoU, percent) when ``datasets`` are all six benchmarks.

    ``root``: one dataset's folder, or a folder holding the datasets under their standard names;
    ``on_result(result)`` is called after each dataset (e.g. to print it before the next one).
    """
    results = []
    for name in datasets:
        results.append(evaluate(bb, name, root, **options))
        if on_result is not None:
            on_result(results[-1])
    summary = {"results": results}
    if sorted(datasets) == sorted(BENCHMARKS):
        summary["Mean6"] = sum(r["mIoU"] for r in results) / len(results)
    return summary
