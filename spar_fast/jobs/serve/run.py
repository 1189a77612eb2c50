"""One segmentation of the page: the model from the slot, :func:`spar_fast.segment`, the overlay,
the legend and the label map as PNG bytes, with the time of each step."""
from __future__ import annotations

import io
import time
from dataclasses import dataclass

import numpy as np
import torch

from ...segmentation.classes import display_name
from ...segmentation.infer import segment
from ...segmentation.preprocess import model_input
from ...segmentation.queries import default_cache_dir
from ...segmentation.render import blend, mask_image, palette
from .model_slot import ModelSlot
from .request import SegmentRequest


@dataclass(frozen=True)
class SegmentResult:
    """``overlay_png`` / ``labels_png``: PNG bytes of the blended photo and of the label map
    (palette PNG, value = line index of the class); ``legend``: one dict per class present
    (``index``, ``name``, ``color`` "#rrggbb", ``fraction`` of the pixels), largest first;
    ``timing``: seconds per step; ``input_hw``: the size the model saw."""

    overlay_png: bytes
    labels_png: bytes
    legend: list
    timing: dict
    input_hw: tuple[int, int]


def _png(image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def legend(labels: np.ndarray, lines) -> list:
    """The classes present in ``labels [H, W]``, largest area first."""
    counts = np.bincount(labels.reshape(-1), minlength=len(lines))
    colors = palette(len(lines))
    return [{"index": k, "name": display_name(lines[k]), "color": "#%02x%02x%02x" % tuple(colors[k]),
             "fraction": float(counts[k]) / labels.size}
            for k in np.argsort(-counts, kind="stable").tolist() if counts[k] > 0]


def run_segment(slot: ModelSlot, req: SegmentRequest, waited_s: float = 0.0) -> SegmentResult:
    """Segment ``req`` with the slot's model (loading or replacing it when another is asked)."""
    bb, load_s = slot.get(req.backbone, req.weights)
    start = time.perf_counter()
    x = model_input(req.image, bb, resize="test" if req.resize else None)
    labels = segment(bb, x, None if req.queries is not None else list(req.lines), queries=req.queries,
                     mode=req.mode, stride=req.stride, refine=req.refine, out_hw=req.image.shape[:2],
                     cache_dir=default_cache_dir())
    if labels.device.type == "cuda":
        torch.cuda.synchronize(labels.device)
    labels = labels.cpu().numpy()
    segment_s = time.perf_counter() - start
    start = time.perf_counter()
    overlay_png = _png(blend(req.image, labels, len(req.lines)))
    labels_png = _png(mask_image(labels, len(req.lines)))
    timing = {"waited_s": waited_s, "load_s": load_s, "segment_s": segment_s,
              "render_s": time.perf_counter() - start, "device": str(slot.device)}
    return SegmentResult(overlay_png, labels_png, legend(labels, req.lines), timing,
                         (int(x.shape[1]), int(x.shape[2])))
