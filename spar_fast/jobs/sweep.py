"""Resolution sweeps (Fig. 3 / Fig. 4): mIoU and time per image of several models at several
input resolutions of one dataset.

A row is a model and how it segments (:class:`SweepRow`: the single pass of the pretrained
backbone, its sliding window -- the teacher --, a student's single pass); a point is one
:func:`spar_fast.evaluate` of that row with the images resized to one
:class:`~spar_fast.segmentation.resolution.Resolution` (labels scored at their original size).
Time per image is the median over the images of ``evaluate``'s per-image wall time (resize,
forward, head; the device synchronized; ``seconds_per_image_median``), after one untimed warm-up
image at the same resolution; the mean is kept as ``seconds_per_image_mean``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from ..evaluation import evaluate


@dataclass(frozen=True)
class SweepRow:
    """One model of a sweep: a display ``label``, its ``weights`` (text), ``mode`` "single" or
    "slide" and the sliding-window ``stride``."""
    label: str
    weights: str
    mode: str = "single"
    stride: int = 24


def sweep(models: list[tuple[SweepRow, object]], dataset: str, root, resolutions, *,
          warmup: bool = True, log: Callable[[str], None] | None = None, **eval_options) -> dict:
    """Evaluate every ``(row, backbone)`` of ``models`` at every resolution.

    ``eval_options``: the rest of :func:`spar_fast.evaluate`'s keywords (``limit``, ``split``,
    ``queries``, ``classes``, ``precision``, ...; not ``mode``, ``stride``, ``resolution``).
    Returns ``{"dataset", "sweep": {"kind", "values"}, "rows": [{label, weights, mode, stride,
    "points": [{resolution, value, mIoU, mIoU_torchmetrics, seconds_per_image (median),
    seconds_per_image_mean, num_images}]}],
    "units"}``; mIoU in percent (MMSeg convention), time in seconds.
    """
    resolutions = tuple(resolutions)
    kinds = {r.kind for r in resolutions}
    if len(kinds) != 1:
        raise ValueError(f"a sweep has one kind of resolution, got {sorted(kinds)}")
    rows = []
    for row, bb in models:
        points = []
        for res in resolutions:
            opts = dict(eval_options, mode=row.mode, stride=row.stride, resolution=res)
            if warmup:
                evaluate(bb, dataset, root, **dict(opts, limit=1, progress=False))
            result = evaluate(bb, dataset, root, **opts)
            points.append({"resolution": str(res), "value": res.value, "mIoU": result["mIoU"],
                           "mIoU_torchmetrics": result["mIoU_torchmetrics"],
                           "seconds_per_image": result["seconds_per_image_median"],
                           "seconds_per_image_mean": result["seconds_per_image"],
                           "num_images": result["num_images"]})
            if log is not None:
                log(f"{row.label} at {res}: mIoU {result['mIoU']:.2f}, "
                    f"{result['seconds_per_image_median']:.4f} s/image (median)")
        rows.append({"label": row.label, "weights": row.weights, "mode": row.mode,
                     "stride": row.stride if row.mode == "slide" else None, "points": points})
    return {"dataset": dataset, "sweep": {"kind": resolutions[0].kind,
                                          "values": [r.value for r in resolutions]},
            "rows": rows, "units": "mIoU in percent (MMSeg), seconds per image"}


def combine(report: dict, others: list[dict]) -> dict:
    """``report`` plus the rows of earlier sweep reports ``others`` (another backbone's, e.g.
    Fig. 3's NaFlex baseline), every label prefixed by its report's backbone. Each must sweep
    the same dataset at the same resolutions (``ValueError`` otherwise)."""
    rows = []
    for r in [report, *others]:
        for key in ("dataset", "sweep"):
            if r.get(key) != report.get(key):
                raise ValueError(f"cannot combine sweeps of different {key}: {r.get(key)} and {report.get(key)}")
        backbone = r.get("backbone") or "?"
        rows += [dict(row, backbone=row.get("backbone", backbone),
                      label=f"{row.get('backbone', backbone)}: {row['label'].split(': ', 1)[-1]}")
                 for row in r["rows"]]
    return dict(report, rows=rows)


def x_label(kind: str) -> str:
    return {"short": "short side (px)", "long": "long side (px)", "area": "image area (pixels)"}[kind]


def format_table(report: dict) -> str:
    """Two tables, rows by resolution: mIoU (%) and seconds per image (median)."""
    values = report["sweep"]["values"]
    kind = report["sweep"]["kind"]
    width = max([len(r["label"]) for r in report["rows"]] + [10]) + 2
    head = f"{kind:<{width}}" + "".join(f"{v:>11}" for v in values)
    lines = []
    for key, title, fmt in (("mIoU", "mIoU (%, MMSeg)", "{:>11.2f}"),
                            ("seconds_per_image", "seconds per image (median)", "{:>11.4f}")):
        lines += [title, head]
        for row in report["rows"]:
            lines.append(f"{row['label']:<{width}}" + "".join(fmt.format(p[key]) for p in row["points"]))
        lines.append("")
    return "\n".join(lines[:-1])


def plot_sweep(path: str, report: dict) -> bool:
    """``path``: mIoU against resolution beside time per image against resolution (False:
    matplotlib is missing)."""
    from .plots import Panel, save_figure

    kind = report["sweep"]["kind"]
    def lines(key):
        return {r["label"]: [(p["value"], p[key]) for p in r["points"]] for r in report["rows"]}
    title = f"{report['dataset']}: resolution sweep"
    return save_figure(path, [
        Panel(title, x_label(kind), "mIoU (%)", lines=lines("mIoU"), xlog=2),
        Panel(title, x_label(kind), "seconds per image", lines=lines("seconds_per_image"), xlog=2,
              ylog=True)])
