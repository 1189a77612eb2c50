"""Fused segmentation head, Triton: ``[h, w, Q]`` logits -> ``[H, W]`` labels in one pass.

One program handles ``BLOCK_P`` output pixels (row-major) and walks the queries in chunks of
``BLOCK_Q``: bilinear value of each query from its 4 source taps (fp32), scaled logit
``z = up * scale + bias``, running best (first maximal query among the allowed ones) and, when
``prob_thd > 0``, an online max / sum-exp over all queries. Queries arrive sorted by class, so the
first maximal query is also the lowest class among exact ties. ``spar_fast.ops.seg_head`` holds
the reference, the argument checks and the area filter.
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

# 64 pixels x 32 queries x 4 taps keeps the fp32 tile at 8K values per program (about 64
# registers per thread at 4 warps); queries are contiguous, so each tap row is one coalesced load.
BLOCK_P = 64
MAX_BLOCK_Q = 32


@triton.jit
def _seg_head_fwd_kernel(x_ptr, qcls_ptr, qallow_ptr, yidx_ptr, ywt_ptr, xidx_ptr, xwt_ptr, out_ptr,
                         w_in, Q, H, W, scale, bias, prob_thd,
                         HAS_ALLOWED: tl.constexpr, NEED_SUM: tl.constexpr,
                         BLOCK_P: tl.constexpr, BLOCK_Q: tl.constexpr):
    pid = tl.program_id(0)
    p = pid * BLOCK_P + tl.arange(0, BLOCK_P)
    pmask = p < H * W
    oy = p // W
    ox = p % W
    y0 = tl.load(yidx_ptr + oy, mask=pmask, other=0)
    y1 = tl.load(yidx_ptr + H + oy, mask=pmask, other=0)
    wy0 = tl.load(ywt_ptr + oy, mask=pmask, other=0.0)[:, None]
    wy1 = tl.load(ywt_ptr + H + oy, mask=pmask, other=0.0)[:, None]
    x0 = tl.load(xidx_ptr + ox, mask=pmask, other=0)
    x1 = tl.load(xidx_ptr + W + ox, mask=pmask, other=0)
    wx0 = tl.load(xwt_ptr + ox, mask=pmask, other=0.0)[:, None]
    wx1 = tl.load(xwt_ptr + W + ox, mask=pmask, other=0.0)[:, None]
    # offsets of the 4 taps' query vectors in the [h, w, Q] input
    b00 = ((y0 * w_in + x0) * Q)[:, None]
    b01 = ((y0 * w_in + x1) * Q)[:, None]
    b10 = ((y1 * w_in + x0) * Q)[:, None]
    b11 = ((y1 * w_in + x1) * Q)[:, None]

    m = tl.full([BLOCK_P], float("-inf"), tl.float32)
    s = tl.zeros([BLOCK_P], tl.float32)
    best_z = tl.full([BLOCK_P], float("-inf"), tl.float32)
    best_q = tl.full([BLOCK_P], -1, tl.int32)
    for q0 in range(0, Q, BLOCK_Q):
        q = q0 + tl.arange(0, BLOCK_Q)
        qmask = q < Q
        mask = pmask[:, None] & qmask[None, :]
        qq = q[None, :]
        v00 = tl.load(x_ptr + b00 + qq, mask=mask, other=0.0).to(tl.float32)
        v01 = tl.load(x_ptr + b01 + qq, mask=mask, other=0.0).to(tl.float32)
        v10 = tl.load(x_ptr + b10 + qq, mask=mask, other=0.0).to(tl.float32)
        v11 = tl.load(x_ptr + b11 + qq, mask=mask, other=0.0).to(tl.float32)
        # ATen's order: rows interpolated along x first, then blended along y
        up = wy0 * (wx0 * v00 + wx1 * v01) + wy1 * (wx0 * v10 + wx1 * v11)
        z = tl.where(qmask[None, :], up * scale + bias, float("-inf"))
        if NEED_SUM:
            m_new = tl.maximum(m, tl.max(z, axis=1))
            s = s * tl.exp(m - m_new) + tl.sum(tl.exp(z - m_new[:, None]), axis=1)
            m = m_new
        if HAS_ALLOWED:
            allow = tl.load(qallow_ptr + q, mask=qmask, other=0)
            z = tl.where(allow[None, :] != 0, z, float("-inf"))
        chunk_z = tl.max(z, axis=1)
        cand = tl.where((z == chunk_z[:, None]) & (z > float("-inf")), qq, Q)
        chunk_q = tl.min(cand, axis=1)
        # strictly greater: an earlier chunk (lower queries, lower classes) wins exact ties
        take = chunk_z > best_z
        best_z = tl.where(take, chunk_z, best_z)
        best_q = tl.where(take, chunk_q, best_q)
    found = best_q >= 0
    label = tl.load(qcls_ptr + best_q, mask=pmask & found, other=0)
    if NEED_SUM:
        prob = tl.exp(best_z - m) / s
        label = tl.where(found & (prob >= prob_thd), label, 0)
    tl.store(out_ptr + p, label, mask=pmask)


@torch.library.custom_op("spar_fast::seg_head_pass_triton", mutates_args=())
def seg_head_pass(x: torch.Tensor, qcls: torch.Tensor, qallowed: Optional[torch.Tensor],
                  yidx: torch.Tensor, ywt: torch.Tensor, xidx: torch.Tensor, xwt: torch.Tensor,
                  scale: float, bias: float, prob_thd: float) -> torch.Tensor:
    """One fused pass -> int64 ``[H, W]`` labels (a torch.library custom op, so torch.compile
    treats the launch as one opaque op).

    ``x [h, w, Q]`` contiguous logits with queries sorted by class ``qcls [Q]`` (int64);
    ``qallowed [Q]`` bool or None (restrict the winner to these queries); taps from
    ``spar_fast.ops.bilinear.bilinear_taps``: ``yidx/xidx`` int32 ``[2, H]/[2, W]``,
    ``ywt/xwt`` fp32 ``[2, H]/[2, W]``. ``prob_thd > 0`` turns on the sum-exp.
    """
    h, w, Q = x.shape
    H, W = yidx.shape[1], xidx.shape[1]
    out = torch.empty((H, W), dtype=torch.int64, device=x.device)
    allow = qallowed.to(torch.int8) if qallowed is not None else qcls  # unused when None
    block_q = min(MAX_BLOCK_Q, triton.next_power_of_2(Q))
    grid = (triton.cdiv(H * W, BLOCK_P),)
    _seg_head_fwd_kernel[grid](x, qcls, allow, yidx, ywt, xidx, xwt, out, w, Q, H, W,
                               scale, bias, prob_thd,
                               HAS_ALLOWED=qallowed is not None, NEED_SUM=prob_thd > 0,
                               BLOCK_P=BLOCK_P, BLOCK_Q=block_q)
    return out


@seg_head_pass.register_fake
def _seg_head_pass_fake(x, qcls, qallowed, yidx, ywt, xidx, xwt, scale, bias, prob_thd):
    return x.new_empty((yidx.shape[1], xidx.shape[1]), dtype=torch.int64)
