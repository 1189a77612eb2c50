"""The reference teacher, as the official implementation runs it (SPEC §2, "Reference execution").

All windows are materialized up front, run 10 per forward (fp16 autocast on GPU), and folded by a
Python loop over windows, each upsampled by ``F.interpolate``. Used by the parity tests and as the
``reference`` variant of the teacher benchmark; never on a hot path.
"""
from __future__ import annotations

import contextlib

import torch

from ..ops.stitch import stitch_reference
from .window_plan import plan_windows

REFERENCE_WINDOWS_PER_FORWARD = 10


@torch.no_grad()
def teacher_features_reference(bb, image: torch.Tensor, stride: int = 24,
                               forward=None) -> torch.Tensor:
    """Reference stitched features ``[H / P, W / P, C]`` fp32 of a normalized ``[3, H, W]`` image.

    ``forward`` (default ``bb``) maps windows ``[B,3,win,win]`` to ``[B,g,g,C]``; tests pass an
    independent reference dense forward here.
    """
    forward = forward or bb
    _, height, width = image.shape
    plan = plan_windows(height, width, bb.window, stride, bb.patch_size)
    win = plan.window
    windows = torch.stack([image[:, y:y + win, x:x + win] for y, x in plan.origins.tolist()])
    amp = (torch.autocast("cuda", dtype=torch.float16) if image.device.type == "cuda"
           else contextlib.nullcontext())
    feats = []
    for start in range(0, len(windows), REFERENCE_WINDOWS_PER_FORWARD):
        with amp:
            feats.append(forward(windows[start:start + REFERENCE_WINDOWS_PER_FORWARD]))  # [B, g, g, C]
    # the reference fold: F.interpolate on 10 windows at a time, a Python loop over windows
    return stitch_reference(torch.cat(feats), plan.origins_cells, plan.r, plan.canvas_hw, plan.out_hw)
