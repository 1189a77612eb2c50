"""The reference teacher, as the official implementation runs it (SPEC §2, "Reference execution").

All windows are materialized up front, run 10 per forward (fp16 autocast on GPU), and folded by a
Python loop over windows, each upsampled by ``F.interpolate``. Used by the parity tests and as the
``reference`` variant of the teacher benchmark; never on a hot path.
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

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
    win, r, cell = plan.window, plan.r, plan.cell
    windows = torch.stack([image[:, y:y + win, x:x + win] for y, x in plan.origins.tolist()])
    amp = (torch.autocast("cuda", dtype=torch.float16) if image.device.type == "cuda"
           else contextlib.nullcontext())
    feats = []
    for start in range(0, len(windows), REFERENCE_WINDOWS_PER_FORWARD):
        with amp:
            out = forward(windows[start:start + REFERENCE_WINDOWS_PER_FORWARD])
        # [B, g, g, C] -> [B, C, g*r, g*r], fp32
        out = out.permute(0, 3, 1, 2).float()
        feats.append(F.interpolate(out, scale_factor=r, mode="bilinear", align_corners=False))
    feats = torch.cat(feats)
    ch, cw = plan.canvas_hw
    canvas = torch.zeros(1, feats.shape[1], ch, cw, device=image.device)
    count = torch.zeros(1, 1, ch, cw, device=image.device)
    size = win // cell
    for (y, x), feat in zip(plan.origins.tolist(), feats):
        cy, cx = y // cell, x // cell
        canvas[0, :, cy:cy + size, cx:cx + size] += feat
        count[0, :, cy:cy + size, cx:cx + size] += 1
    canvas = canvas / count.clamp(min=1)
    out = F.interpolate(canvas, size=plan.out_hw, mode="bilinear", align_corners=False)
    return out[0].permute(1, 2, 0).contiguous()
