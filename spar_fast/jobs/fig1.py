"""Fig. 1's data: mIoU against time per image (1024x2048 by default) for the single pass, the
teacher at several strides and students -- the protocol's eager time
(:mod:`spar_fast.jobs.timing`) beside spar_fast's own path, and the mIoU of each row on a dataset
(optional: time only without one).
"""
from __future__ import annotations

from typing import Callable

from . import timing


def time_row(row, bb, image, *, warmup: int, precision, fast: bool, num_queries: int,
             repeats: int = 1) -> dict:
    """Protocol and (with ``fast``) spar_fast-path times of one row on ``image [3, H, W]``."""
    same = dict(precision=precision, repeats=repeats)
    if row.mode == "slide":
        eager = timing.protocol_slide(bb, image, row.stride, warmup, **same)
        own = timing.fast_teacher(bb, image, row.stride, warmup, **same) if fast else None
        path = "teacher_features (batched windows, fused stitch)"
    else:
        eager = timing.protocol_single(bb, image, warmup, **same)
        queries = timing.random_queries(bb, num_queries, image.device)
        own = timing.fast_single(bb, image, queries, warmup, **same) if fast else None
        path = "segment (forward, cosine logits, fused head)"
    return {"windows": eager.windows, "forwards": eager.spans, "protocol_seconds": eager.seconds,
            "protocol_all": list(eager.all_seconds),
            "fast_seconds": None if own is None else own.seconds,
            "fast_all": None if own is None else list(own.all_seconds),
            "fast_path": path if fast else None}


def fig1(models: list, size_hw: tuple[int, int], *, warmup: int = timing.WARMUP,
         precision: str | None = None, fast: bool = True, num_queries: int = 19,
         repeats: int = 1, dataset: str | None = None, root=None, log: Callable[[str], None] | None = None,
         **eval_options) -> dict:
    """Time (and, with ``dataset``, score) every ``(SweepRow, backbone)`` of ``models``.

    ``size_hw``: the timed image's size; ``repeats``: timed passes per row (the protocol: 1;
    more report the median); ``num_queries``: classes of the timed head (19, as
    Cityscapes); ``eval_options``: :func:`spar_fast.evaluate`'s keywords for the mIoU (``limit``,
    ``split``, ``queries``, ``resolution``, ...). Returns ``{"size", "warmup", "sub_batch",
    "precision", "rows": [{label, weights, mode, stride, windows, forwards, protocol_seconds,
    fast_seconds, fast_path, mIoU}], "eval"}``.
    """
    from ..evaluation import evaluate

    device = next(iter(models[0][1].parameters())).device
    image = timing.timing_image(models[0][1], *size_hw, device)
    rows = []
    for row, bb in models:
        out = {"label": row.label, "weights": row.weights, "mode": row.mode,
               "stride": row.stride if row.mode == "slide" else None}
        out.update(time_row(row, bb, image, warmup=warmup, precision=precision, fast=fast,
                            num_queries=num_queries, repeats=repeats))
        if dataset is not None:
            result = evaluate(bb, dataset, root, mode=row.mode, stride=row.stride,
                              precision=precision, **eval_options)
            out.update(mIoU=result["mIoU"], num_images=result["num_images"])
        if log is not None:
            log(format_row(out))
        rows.append(out)
    resolution = eval_options.get("resolution")
    return {"size": list(size_hw), "warmup": warmup, "repeats": repeats, "sub_batch": timing.SUB_BATCH,
            "precision": precision or "auto", "rows": rows,
            "eval": None if dataset is None else {
                "dataset": dataset, "root": str(root), "split": eval_options.get("split", "val"),
                "resolution": None if resolution is None else str(resolution),
                "limit": eval_options.get("limit")},
            "units": "seconds per image (the timed pass), mIoU in percent (MMSeg)"}


def format_row(r: dict) -> str:
    fast = "" if r.get("fast_seconds") is None else f", spar_fast path {r['fast_seconds']:.4f} s"
    miou = "" if r.get("mIoU") is None else f", mIoU {r['mIoU']:.2f}"
    return f"{r['label']}: {r['windows']} windows, protocol {r['protocol_seconds']:.4f} s{fast}{miou}"


def format_table(report: dict) -> str:
    """The Fig. 1 table: per row, windows, both times, the protocol's ratio to the single pass
    and the mIoU."""
    rows = report["rows"]
    single = next((r["protocol_seconds"] for r in rows if r["label"] == "single pass"), None)
    width = max([len(r["label"]) for r in rows] + [8]) + 2
    h, w = report["size"]
    timed = "the next timed" if report["repeats"] == 1 else f"the median of the next {report['repeats']}"
    lines = [f"time per {h}x{w} image: forward passes only, {report['warmup']} warm-up passes, "
             f"{timed}; sliding windows in sub-batches of {report['sub_batch']} (summed)",
             f"{'':<{width}}{'windows':>9}{'protocol s':>12}{'spar_fast s':>13}{'x single':>10}{'mIoU':>8}"]
    for r in rows:
        fast = "" if r["fast_seconds"] is None else f"{r['fast_seconds']:.4f}"
        ratio = f"{r['protocol_seconds'] / single:.2f}" if single else ""
        miou = "" if r.get("mIoU") is None else f"{r['mIoU']:.2f}"
        lines.append(f"{r['label']:<{width}}{r['windows']:>9}{r['protocol_seconds']:>12.4f}"
                     f"{fast:>13}{ratio:>10}{miou:>8}")
    return "\n".join(lines)


def plot_fig1(path: str, report: dict) -> bool:
    """mIoU against the protocol's time (and against spar_fast's time) per image; False without
    matplotlib or without mIoU (time only)."""
    from .plots import Panel, save_figure

    rows = [r for r in report["rows"] if r.get("mIoU") is not None]
    if not rows:
        return False
    h, w = report["size"]
    panels = [Panel(f"Fig. 1: protocol (eager forwards), {h}x{w}", "seconds per image", "mIoU (%)",
                    points={r["label"]: (r["protocol_seconds"], r["mIoU"]) for r in rows}, xlog=10)]
    if all(r["fast_seconds"] is not None for r in rows):
        panels.append(Panel(f"spar_fast's own paths, {h}x{w}", "seconds per image", "mIoU (%)",
                            points={r["label"]: (r["fast_seconds"], r["mIoU"]) for r in rows}, xlog=10))
    return save_figure(path, panels)
