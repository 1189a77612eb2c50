"""Graph features that group a scene's patches by its labels: the ideal affinity graph of LPOSS.

LPOSS propagates class scores over a kNN graph with edge weight ``max(0, cos)^gamma`` times a
spatial decay. Features that are the one-hot code of each patch's segment (a connected region of
one class, :func:`spar_fast.world.affinity.label_segments`) give weight only between patches of
one object: the graph an affinity model would give if it grouped objects perfectly. Blended with
a model's features at a finite ``strength`` they show how clean the graph must be for the
paper's gamma 1 to gain (``spar-fast world lposs``, docs/LPOSS.md).
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from .affinity import label_segments, patch_segments


def segment_grids(label: np.ndarray, boxes, patch: int) -> list[torch.Tensor]:
    """One-hot segment codes of every window: ``label uint8 [H, W]`` and windows ``(y, x, h, w)``
    (sides multiples of ``patch``) -> ``[h/P, w/P, S]`` per window, S the scene's segment count;
    a patch's code is its most frequent segment's (all zero where that is the ignore band). One
    object has one code in every window."""
    segments = torch.from_numpy(label_segments(label))
    count = int(segments.max())
    grids = []
    for y, x, h, w in boxes:
        if h % patch or w % patch:
            raise ValueError(f"window {h}x{w} is not a multiple of the patch {patch}")
        ids = patch_segments(segments[None, y:y + h, x:x + w], patch)[0]      # [h/P * w/P], -1: none
        code = F.one_hot(ids.clamp_min(0), count + 1)[:, 1:].float()  # column 0 (none) dropped
        grids.append(code.reshape(h // patch, w // patch, count))
    return grids


def blend(codes: list[torch.Tensor], values: list[torch.Tensor], strength: float) -> list[torch.Tensor]:
    """Per window ``[strength * code, unit value]`` (``strength`` inf: the codes alone). With unit
    codes the cosine of two patches of different segments is the values' cosine divided by
    ``1 + strength^2``."""
    if math.isinf(strength):
        return codes
    return [torch.cat([strength * c, F.normalize(v.float(), dim=-1)], dim=-1) for c, v in zip(codes, values)]
