"""Fused bilinear upsample + stitch, Triton (gather formulation).

Each program owns a tile of ``BLOCK_P`` canvas cells (inside the windows' bounding box) by
``BLOCK_C`` channels and loops over all windows in order; for windows covering a cell it gathers
the four bilinear taps (align_corners=False, factor ``r``) in fp32 and accumulates in registers,
then adds the tile into the canvas once. Every canvas element has one writer: no atomics,
deterministic. The reference and the dispatch are in ``spar_fast/ops/stitch.py``.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK_P = 32  # cells per tile: 32 x 64 fp32 accumulators = 16 registers/thread at 4 warps
MAX_BLOCK_C = 64  # channels per tile: 64 contiguous elements = 128-256 B per gathered row


@triton.jit
def _upsample_stitch_kernel(canvas_ptr, count_ptr, feats_ptr, origins_ptr, N, g, C, r, scale,
                            Wc, y0, x0, bw, n_cells,
                            BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    pid_p = tl.program_id(0)
    pid_c = tl.program_id(1)
    cells = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    chans = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    pmask = cells < n_cells
    cmask = chans < C
    y = y0 + cells // bw
    x = x0 + cells % bw
    G = g * r
    acc = tl.zeros([BLOCK_P, BLOCK_C], dtype=tl.float32)
    cover = tl.zeros([BLOCK_P], dtype=tl.float32)
    window_ptr = feats_ptr + chans[None, :]  # advanced window by window (64-bit pointer math)
    for n in range(0, N):
        oy = y - tl.load(origins_ptr + 2 * n)
        ox = x - tl.load(origins_ptr + 2 * n + 1)
        inside = pmask & (oy >= 0) & (oy < G) & (ox >= 0) & (ox < G)
        # ATen's source index: max(scale * (dst + 0.5) - 0.5, 0), floor, right tap clamped
        sy = tl.maximum(scale * (oy.to(tl.float32) + 0.5) - 0.5, 0.0)
        sx = tl.maximum(scale * (ox.to(tl.float32) + 0.5) - 0.5, 0.0)
        ya = tl.minimum(sy.to(tl.int32), g - 1)
        xa = tl.minimum(sx.to(tl.int32), g - 1)
        wy = (sy - ya.to(tl.float32))[:, None]
        wx = (sx - xa.to(tl.float32))[:, None]
        yb = tl.where(ya < g - 1, ya + 1, ya)
        xb = tl.where(xa < g - 1, xa + 1, xa)
        base = window_ptr
        m = inside[:, None] & cmask[None, :]
        v00 = tl.load(base + ((ya * g + xa) * C)[:, None], mask=m, other=0.0).to(tl.float32)
        v01 = tl.load(base + ((ya * g + xb) * C)[:, None], mask=m, other=0.0).to(tl.float32)
        v10 = tl.load(base + ((yb * g + xa) * C)[:, None], mask=m, other=0.0).to(tl.float32)
        v11 = tl.load(base + ((yb * g + xb) * C)[:, None], mask=m, other=0.0).to(tl.float32)
        top = (1.0 - wx) * v00 + wx * v01
        bot = (1.0 - wx) * v10 + wx * v11
        acc += (1.0 - wy) * top + wy * bot
        cover += inside.to(tl.float32)
        window_ptr += g * g * C
    cell_off = y.to(tl.int64) * Wc + x
    out = canvas_ptr + (cell_off * C)[:, None] + chans[None, :]
    m = pmask[:, None] & cmask[None, :]
    tl.store(out, tl.load(out, mask=m, other=0.0) + acc, mask=m)
    if pid_c == 0:
        cnt = count_ptr + cell_off
        tl.store(cnt, tl.load(cnt, mask=pmask, other=0.0) + cover, mask=pmask)


def upsample_stitch(canvas: torch.Tensor, count: torch.Tensor, feats: torch.Tensor,
                    origins: torch.Tensor, r: int, bbox: tuple[int, int, int, int]) -> None:
    """In place: ``canvas [Hc,Wc,C]`` fp32 += bilinear x ``r`` of ``feats [N,g,g,C]`` placed at
    ``origins [N,2]`` (int64, cells); ``count [Hc,Wc]`` += cover. ``bbox = (y0, y1, x0, x1)``
    bounds the covered cells. Inputs are validated and contiguous (``spar_fast.ops.stitch``)."""
    y0, y1, x0, x1 = bbox
    N, g, _, C = feats.shape
    bw = x1 - x0
    n_cells = (y1 - y0) * bw
    block_c = min(triton.next_power_of_2(C), MAX_BLOCK_C)
    grid = (triton.cdiv(n_cells, BLOCK_P), triton.cdiv(C, block_c))
    _upsample_stitch_kernel[grid](canvas, count, feats, origins, N, g, C, r, 1.0 / r,
                                  canvas.shape[1], y0, x0, bw, n_cells,
                                  BLOCK_P=BLOCK_P, BLOCK_C=block_c)
