"""LPOSS+ pixel affinity product, Triton: ``y = S W S x`` with the weights computed on the fly.

``a [H, W, 3]`` is the Lab image already divided by tau, so ``W_ij = exp(-||a_i - a_j||)`` for
the ``(2r+1)^2 - 1`` pixels ``j`` around ``i``; ``x [H*W, Q]`` fp32, ``s [H*W]`` (or none).
One program owns ``BLOCK_X`` pixels of one image row and ``BLOCK_Q`` columns of ``x``; it walks
the offsets, and per offset loads the neighbours' Lab values (a shifted, coalesced row segment),
forms the weights in registers and accumulates ``w * x_j`` into an fp32 ``[BLOCK_X, BLOCK_Q]``
tile. Each output element is written once: no atomics. ``spar_fast.ops.lab_affinity`` holds the
reference and the argument checks.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

# 64 pixels x 32 columns: a 2K-value fp32 accumulator; the neighbour row segment of x is
# BLOCK_X * Q contiguous values, so loads stay coalesced. ptxas (sm_90, Triton 3.8, no GPU run)
# gives 184 registers per thread at 4 warps (2 blocks per SM fit), 120 at 8 warps (4 blocks, 4x
# the resident warps to hide the gather latency), no spills: 8 warps, chosen by that count, not
# by a measurement.
BLOCK_X = 64
MAX_BLOCK_Q = 32
NUM_WARPS = 8


@triton.jit
def _lab_affinity_fwd_kernel(a_ptr, x_ptr, s_ptr, y_ptr, H, W, Q, R,
                             HAS_SCALE: tl.constexpr, BLOCK_X: tl.constexpr, BLOCK_Q: tl.constexpr):
    oy = tl.program_id(0)
    ox = tl.program_id(1) * BLOCK_X + tl.arange(0, BLOCK_X)
    q = tl.program_id(2) * BLOCK_Q + tl.arange(0, BLOCK_Q)
    xmask = ox < W
    qmask = q < Q
    i = oy * W + ox
    a0 = tl.load(a_ptr + i * 3, mask=xmask, other=0.0)
    a1 = tl.load(a_ptr + i * 3 + 1, mask=xmask, other=0.0)
    a2 = tl.load(a_ptr + i * 3 + 2, mask=xmask, other=0.0)
    acc = tl.zeros([BLOCK_X, BLOCK_Q], dtype=tl.float32)
    for dy in range(-R, R + 1):
        ny = oy + dy
        row_ok = (ny >= 0) & (ny < H)
        for dx in range(-R, R + 1):
            nx = ox + dx
            m = xmask & row_ok & (nx >= 0) & (nx < W) & ((dy != 0) | (dx != 0))
            j = ny * W + nx
            d0 = a0 - tl.load(a_ptr + j * 3, mask=m, other=0.0)
            d1 = a1 - tl.load(a_ptr + j * 3 + 1, mask=m, other=0.0)
            d2 = a2 - tl.load(a_ptr + j * 3 + 2, mask=m, other=0.0)
            w = tl.where(m, tl.exp(-tl.sqrt(d0 * d0 + d1 * d1 + d2 * d2)), 0.0)
            if HAS_SCALE:
                w = w * tl.load(s_ptr + j, mask=m, other=0.0)
            xt = tl.load(x_ptr + j[:, None] * Q + q[None, :], mask=m[:, None] & qmask[None, :], other=0.0)
            acc += w[:, None] * xt
    if HAS_SCALE:
        acc = acc * tl.load(s_ptr + i, mask=xmask, other=0.0)[:, None]
    tl.store(y_ptr + i[:, None] * Q + q[None, :], acc, mask=xmask[:, None] & qmask[None, :])


@torch.library.custom_op("spar_fast::lab_affinity_apply_triton", mutates_args=())
def lab_affinity_apply(lab: torch.Tensor, x: torch.Tensor, scale: torch.Tensor | None,
                       radius: int) -> torch.Tensor:
    """``[H*W, Q]`` fp32 = ``S W S x`` for contiguous fp32 ``lab [H, W, 3]`` (divided by tau),
    ``x [H*W, Q]`` and ``scale [H*W]`` or None (a torch.library custom op: one opaque launch)."""
    H, W, _ = lab.shape
    Q = x.shape[1]
    y = torch.empty_like(x)
    block_q = min(MAX_BLOCK_Q, triton.next_power_of_2(Q))
    grid = (H, triton.cdiv(W, BLOCK_X), triton.cdiv(Q, block_q))
    s = scale if scale is not None else x  # unused when HAS_SCALE is False
    _lab_affinity_fwd_kernel[grid](lab, x, s, y, H, W, Q, radius, HAS_SCALE=scale is not None,
                                   BLOCK_X=BLOCK_X, BLOCK_Q=block_q, num_warps=NUM_WARPS)
    return y


@lab_affinity_apply.register_fake
def _lab_affinity_apply_fake(lab, x, scale, radius):
    return torch.empty_like(x)
