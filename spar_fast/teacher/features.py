"""Sliding-window teacher features (SPEC §2), computed in bounded memory.

Windows are cut from the image in batches, run through the backbone's batched dense forward
(autocast on GPU), and each batch is folded into an fp32 canvas by the fused upsample-stitch op
as soon as it comes out: memory is O(canvas + one batch), whatever the number of windows.
"""
from __future__ import annotations

import torch

from ..errors import UserError
from ..runtime import autocast, precision_or_amp
from ..ops.stitch import stitch_finalize, upsample_stitch_
from .window_plan import WindowPlan, plan_windows

# Patch tokens per forward when no batch size is given. GPU: 64 windows of 512² (65k tokens) keep
# an H100 busy in bf16 while the activations stay a few GB; CPU: ~4k tokens keep the working set
# in cache. Tiny windows get proportionally more windows per batch (less per-call overhead).
TOKENS_PER_BATCH = {"cuda": 65536, "cpu": 4096}


def default_batch_size(bb, device: torch.device) -> int:
    tokens = (bb.window // bb.patch_size) ** 2
    return max(1, TOKENS_PER_BATCH.get(device.type, 4096) // tokens)

def check_image(image: torch.Tensor) -> None:
    if not isinstance(image, torch.Tensor) or image.dim() != 3 or image.shape[0] != 3:
        shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise UserError(f"expected a normalized image tensor [3, H, W], got {shape}")
    if not image.is_floating_point():
        raise UserError(f"expected a float (normalized) image, got dtype {image.dtype}")


def iter_window_batches(image: torch.Tensor, plan: WindowPlan, batch_size: int):
    """Yield ``(windows [B,3,win,win], origins_cells [B,2])`` in plan order, cut on the fly."""
    win = plan.window
    cells = plan.origins_cells
    origins = plan.origins.tolist()
    for start in range(0, len(plan), batch_size):
        chunk = origins[start:start + batch_size]
        windows = torch.stack([image[:, y:y + win, x:x + win] for y, x in chunk])
        yield windows, cells[start:start + len(chunk)]


@torch.no_grad()
def teacher_features(bb, image: torch.Tensor, stride: int = 24, batch_size: int | None = None,
                     precision: str | None = None, progress: bool = False, *,
                     amp: str | None = None) -> torch.Tensor:
    """Stitched sliding-window features of one image.

    Args:
        bb: a :class:`spar_fast.Backbone` (any object with ``patch_size``, ``window``,
            ``feature_dim`` and a batched dense ``forward([B,3,win,win]) -> [B,g,g,C]``).
        image: normalized ``[3, H, W]``; H, W multiples of the patch size and ≥ the window.
        stride: window stride in pixels (24 in SPAR).
        batch_size: windows per forward (default: 65k tokens on GPU — 64 SigLIP2 windows —,
            4k tokens on CPU).
        precision: "auto"/None (default; bf16 on GPU, fp32 on CPU), "bf16", "fp16" (the
            reference's autocast) or "fp32" (``amp=``: its older, deprecated spelling).
    Returns:
        ``[H / P, W / P, C]`` fp32 on the image's device.
    """
    check_image(image)
    precision = precision_or_amp(precision, amp, "teacher_features")
    _, height, width = image.shape
    plan = plan_windows(height, width, bb.window, stride, bb.patch_size)
    device = image.device
    batch_size = batch_size or default_batch_size(bb, device)
    canvas = torch.zeros(*plan.canvas_hw, bb.feature_dim, dtype=torch.float32, device=device)
    count = torch.zeros(plan.canvas_hw, dtype=torch.float32, device=device)
    origins = plan.origins_cells  # host tensor: the stitch checks its bounds without a device sync
    batches = iter_window_batches(image, plan, batch_size)
    if progress:
        from tqdm.auto import tqdm
        batches = tqdm(batches, total=-(-len(plan) // batch_size), unit="batch", leave=False,
                       desc=f"teacher {height}x{width}")
    done = 0
    for windows, _ in batches:
        with autocast(device, precision):
            feats = bb(windows)
        n = feats.shape[0]
        upsample_stitch_(canvas, count, feats, origins[done:done + n], plan.r)
        done += n
    return stitch_finalize(canvas, count, plan.out_hw)
