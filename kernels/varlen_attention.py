"""Variable-length (packed) non-causal attention in Triton: forward, backward, autograd.

Tensors: ``q, k, v, o`` ``[T, H, D]`` (any token/head strides; the launchers make the last dim
contiguous when it is not), ``cu_seqlens`` int32 ``[B+1]`` on the same device, ``lse`` fp32
``[H, T]``.

Sequence-aware tiling: the grid is (batch * heads, blocks of ``max_seqlen``); a program owns one
block of rows of ONE sequence and loops only over the blocks of that same sequence (bounds read
from ``cu_seqlens``), so tiles that would cross an image boundary are never visited. Only the
ragged tail block of a sequence is masked; programs whose block starts past their sequence's
length exit at once. ``lse`` is kept in base 2 (``log2 sum exp2(s * scale * log2 e)``) because the
kernels use ``exp2``; it stays inside the custom ops (saved for the backward).

Forward and backward are torch.library custom ops (autograd registered on the forward), so
``torch.compile`` traces through them. Backward follows FlashAttention-2 without atomics: a
preprocess kernel for ``delta = rowsum(dO * O)``, a dK/dV kernel (one program per key block, loop over the query blocks
of its sequence) and a dQ kernel (one program per query block, loop over key blocks).
"""
from __future__ import annotations

import os
from dataclasses import astuple, dataclass
from typing import List, Tuple

import torch
import triton
import triton.language as tl

LOG2E = 1.4426950408889634


@dataclass(frozen=True)
class Config:
    """Tile sizes and launch parameters. ``fwd_m x fwd_n`` forward tile, ``kv_m x kv_n`` the dK/dV
    kernel (``kv_n`` key rows held, ``kv_m`` query rows per step), ``q_m x q_n`` the dQ kernel."""
    fwd_m: int
    fwd_n: int
    kv_m: int
    kv_n: int
    q_m: int
    q_n: int
    num_warps: int
    fwd_stages: int
    bwd_stages: int


def default_config(head_dim: int) -> Config:
    """Autotune-free defaults, chosen so the sm_90 builds (Triton 3.9, ptxas -v) do not spill.

    D <= 64: the forward takes 128 query rows x 64 keys (the FlashAttention-2 / Triton-tutorial
    Hopper shape: 128 rows feed wgmma, 64-key K/V tiles keep 3 pipeline stages small); the dK/dV
    kernel holds 128 key rows and steps 32 query rows, the dQ kernel the mirror (128 x 32) -- the
    tutorial's split that keeps its four register-resident tiles within budget. 8 warps: with 4,
    every kernel hits 255 registers and spills (forward 181 registers at 8, no spill).
    D = 128: tiles along the streamed axis halve (forward 128 x 32, dK/dV 64 key rows) and 2
    stages; measured spills drop to <= 44 bytes (0 for the forward), against 100-4000 bytes with
    the D = 64 shapes. Under the interpreter every tile is 32 so short test sequences still span
    several blocks and a ragged tail.
    """
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        return Config(32, 32, 32, 32, 32, 32, 4, 1, 1)
    if head_dim > 64:
        return Config(128, 32, 32, 64, 128, 32, 8, 2, 2)
    return Config(128, 64, 32, 128, 128, 32, 8, 3, 3)


@triton.jit
def _dot(a, b, PRECISION: tl.constexpr):
    """``a @ b`` accumulated in fp32. ``PRECISION == "upcast"`` (interpreter with bf16 inputs only:
    its ``tl.dot`` multiplies the raw uint16 storage of bf16) multiplies exact fp32 copies, which is
    what bf16 tensor cores compute (exact products, fp32 sums)."""
    if PRECISION == "upcast":
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    else:
        return tl.dot(a, b, input_precision=PRECISION)


@triton.jit
def _load_tile(base, rows, stride, offs_d, d_mask, limit, MASK_ROWS: tl.constexpr,
               EVEN_D: tl.constexpr):
    """``[len(rows), BLOCK_D]`` tile at ``base + rows * stride``; zeros past ``limit`` rows (only
    when ``MASK_ROWS``) and past the head dim (only when it is not a power of two): unneeded
    predicate tiles cost registers inside the loops."""
    ptrs = base + rows[:, None] * stride + offs_d[None, :]
    if MASK_ROWS:
        return tl.load(ptrs, mask=(rows < limit)[:, None] & d_mask[None, :], other=0.0)
    elif EVEN_D:
        return tl.load(ptrs)
    else:
        return tl.load(ptrs, mask=d_mask[None, :], other=0.0)


@triton.jit
def _fwd_inner(acc, l_i, m_i, q, k_base, v_base, n_lo, n_hi, seq_len, offs_n, offs_d, d_mask, qk_scale,
               stride_kt, stride_vt, MASK: tl.constexpr, BLOCK_N: tl.constexpr,
               PRECISION: tl.constexpr, EVEN_D: tl.constexpr):
    for start_n in range(n_lo, n_hi, BLOCK_N):
        cols = start_n + offs_n
        k = _load_tile(k_base, cols, stride_kt, offs_d, d_mask, seq_len, MASK, EVEN_D)  # [N, D]
        s = _dot(q, tl.trans(k), PRECISION) * qk_scale  # [M, N], base 2
        if MASK:
            s = tl.where((cols < seq_len)[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        v = _load_tile(v_base, cols, stride_vt, offs_d, d_mask, seq_len, MASK, EVEN_D)  # [N, D]
        acc = acc * alpha[:, None] + _dot(p.to(v.dtype), v, PRECISION)
        m_i = m_new
    return acc, l_i, m_i


@triton.jit
def _fwd_kernel(Q, K, V, O, LSE, CU, qk_scale, num_heads, total,
                stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh,
                stride_ot, stride_oh,
                HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                BLOCK_D: tl.constexpr, PRECISION: tl.constexpr, EVEN_D: tl.constexpr):
    pid_bh = tl.program_id(0)
    b = pid_bh // num_heads
    h = pid_bh % num_heads
    seq_start = tl.load(CU + b)
    seq_len = tl.load(CU + b + 1) - seq_start
    start_m = tl.program_id(1) * BLOCK_M
    if start_m >= seq_len:
        return
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    d_mask = offs_d < HEAD_DIM
    row_mask = (offs_m < seq_len)[:, None] & d_mask[None, :]
    rows = seq_start + offs_m
    q = tl.load(Q + rows[:, None] * stride_qt + h * stride_qh + offs_d[None, :],
                mask=row_mask, other=0.0)
    # Scalar bases; tile pointers are rebuilt per step (a held [N, D] pointer tile costs 2
    # registers per element and made the sm_90 build spill).
    k_base = K + seq_start * stride_kt + h * stride_kh
    v_base = V + seq_start * stride_vt + h * stride_vh
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    n_full = (seq_len // BLOCK_N) * BLOCK_N
    acc, l_i, m_i = _fwd_inner(acc, l_i, m_i, q, k_base, v_base, 0, n_full, seq_len, offs_n, offs_d,
                               d_mask, qk_scale, stride_kt, stride_vt, False, BLOCK_N, PRECISION,
                               EVEN_D)
    acc, l_i, m_i = _fwd_inner(acc, l_i, m_i, q, k_base, v_base, n_full, seq_len, seq_len, offs_n,
                               offs_d, d_mask, qk_scale, stride_kt, stride_vt, True, BLOCK_N,
                               PRECISION, EVEN_D)
    acc = acc / l_i[:, None]
    tl.store(O + rows[:, None] * stride_ot + h * stride_oh + offs_d[None, :],
             acc.to(O.dtype.element_ty), mask=row_mask)
    tl.store(LSE + h * total + rows, m_i + tl.log2(l_i), mask=offs_m < seq_len)


@triton.jit
def _bwd_preprocess(O, DO, DELTA, total, stride_ot, stride_oh, stride_dt, stride_dh,
                    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    """``delta[h, t] = sum_d dO[t, h, d] * O[t, h, d]`` in fp32; grid (cdiv(T, BLOCK_M), H)."""
    h = tl.program_id(1)
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    mask = (rows < total)[:, None] & (offs_d < HEAD_DIM)[None, :]
    o = tl.load(O + rows[:, None] * stride_ot + h * stride_oh + offs_d[None, :],
                mask=mask, other=0.0).to(tl.float32)
    do = tl.load(DO + rows[:, None] * stride_dt + h * stride_dh + offs_d[None, :],
                 mask=mask, other=0.0).to(tl.float32)
    tl.store(DELTA + h * total + rows, tl.sum(o * do, 1), mask=rows < total)


@triton.jit
def _dkdv_inner(dk, dv, k, v, q_base, do_base, lse_ptr, delta_ptr, m_lo, m_hi, seq_len, offs_m,
                offs_d, d_mask, qk_scale, stride_qt, stride_dt, MASK: tl.constexpr, BLOCK_M: tl.constexpr,
                PRECISION: tl.constexpr, EVEN_D: tl.constexpr):
    for start_m in range(m_lo, m_hi, BLOCK_M):
        rows = start_m + offs_m
        if MASK:
            row_ok = rows < seq_len
            # +inf log-sum-exp makes P exactly 0 on rows past the sequence end.
            lse = tl.load(lse_ptr + rows, mask=row_ok, other=float("inf"))
            delta = tl.load(delta_ptr + rows, mask=row_ok, other=0.0)
        else:
            lse = tl.load(lse_ptr + rows)
            delta = tl.load(delta_ptr + rows)
        q = _load_tile(q_base, rows, stride_qt, offs_d, d_mask, seq_len, MASK, EVEN_D)  # [M, D]
        do = _load_tile(do_base, rows, stride_dt, offs_d, d_mask, seq_len, MASK, EVEN_D)  # [M, D]
        s_t = _dot(k, tl.trans(q), PRECISION) * qk_scale  # [N, M]
        p_t = tl.exp2(s_t - lse[None, :])
        dv += _dot(p_t.to(do.dtype), do, PRECISION)
        dp_t = _dot(v, tl.trans(do), PRECISION)  # [N, M]
        ds_t = p_t * (dp_t - delta[None, :])
        dk += _dot(ds_t.to(q.dtype), q, PRECISION)
    return dk, dv


@triton.jit
def _bwd_dkdv_kernel(Q, K, V, DO, DK, DV, LSE, DELTA, CU, qk_scale, sm_scale, num_heads, total,
                     stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh,
                     stride_dt, stride_dh, stride_dkt, stride_dkh, stride_dvt, stride_dvh,
                     HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                     BLOCK_D: tl.constexpr, PRECISION: tl.constexpr, EVEN_D: tl.constexpr):
    """One program per (sequence, head, block of BLOCK_N key rows)."""
    pid_bh = tl.program_id(0)
    b = pid_bh // num_heads
    h = pid_bh % num_heads
    seq_start = tl.load(CU + b)
    seq_len = tl.load(CU + b + 1) - seq_start
    start_n = tl.program_id(1) * BLOCK_N
    if start_n >= seq_len:
        return
    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    d_mask = offs_d < HEAD_DIM
    kv_mask = (offs_n < seq_len)[:, None] & d_mask[None, :]
    keys = seq_start + offs_n
    k = tl.load(K + keys[:, None] * stride_kt + h * stride_kh + offs_d[None, :], mask=kv_mask, other=0.0)
    v = tl.load(V + keys[:, None] * stride_vt + h * stride_vh + offs_d[None, :], mask=kv_mask, other=0.0)
    q_base = Q + seq_start * stride_qt + h * stride_qh
    do_base = DO + seq_start * stride_dt + h * stride_dh
    lse_ptr = LSE + h * total + seq_start
    delta_ptr = DELTA + h * total + seq_start
    dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    m_full = (seq_len // BLOCK_M) * BLOCK_M
    dk, dv = _dkdv_inner(dk, dv, k, v, q_base, do_base, lse_ptr, delta_ptr, 0, m_full, seq_len,
                         offs_m, offs_d, d_mask, qk_scale, stride_qt, stride_dt, False, BLOCK_M,
                         PRECISION, EVEN_D)
    dk, dv = _dkdv_inner(dk, dv, k, v, q_base, do_base, lse_ptr, delta_ptr, m_full, seq_len, seq_len,
                         offs_m, offs_d, d_mask, qk_scale, stride_qt, stride_dt, True, BLOCK_M,
                         PRECISION, EVEN_D)
    tl.store(DK + keys[:, None] * stride_dkt + h * stride_dkh + offs_d[None, :],
             (dk * sm_scale).to(DK.dtype.element_ty), mask=kv_mask)
    tl.store(DV + keys[:, None] * stride_dvt + h * stride_dvh + offs_d[None, :],
             dv.to(DV.dtype.element_ty), mask=kv_mask)


@triton.jit
def _dq_inner(dq, q, do, lse, delta, k_base, v_base, n_lo, n_hi, seq_len, offs_n, offs_d, d_mask,
              qk_scale,
              stride_kt, stride_vt, MASK: tl.constexpr, BLOCK_N: tl.constexpr,
              PRECISION: tl.constexpr, EVEN_D: tl.constexpr):
    for start_n in range(n_lo, n_hi, BLOCK_N):
        cols = start_n + offs_n
        k = _load_tile(k_base, cols, stride_kt, offs_d, d_mask, seq_len, MASK, EVEN_D)  # [N, D]
        v = _load_tile(v_base, cols, stride_vt, offs_d, d_mask, seq_len, MASK, EVEN_D)  # [N, D]
        s = _dot(q, tl.trans(k), PRECISION) * qk_scale  # [M, N]
        if MASK:
            s = tl.where((cols < seq_len)[None, :], s, float("-inf"))
        p = tl.exp2(s - lse[:, None])
        dp = _dot(do, tl.trans(v), PRECISION)
        ds = p * (dp - delta[:, None])
        dq += _dot(ds.to(k.dtype), k, PRECISION)
    return dq


@triton.jit
def _bwd_dq_kernel(Q, K, V, DO, DQ, LSE, DELTA, CU, qk_scale, sm_scale, num_heads, total,
                   stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh,
                   stride_dt, stride_dh, stride_dqt, stride_dqh,
                   HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                   BLOCK_D: tl.constexpr, PRECISION: tl.constexpr, EVEN_D: tl.constexpr):
    """One program per (sequence, head, block of BLOCK_M query rows)."""
    pid_bh = tl.program_id(0)
    b = pid_bh // num_heads
    h = pid_bh % num_heads
    seq_start = tl.load(CU + b)
    seq_len = tl.load(CU + b + 1) - seq_start
    start_m = tl.program_id(1) * BLOCK_M
    if start_m >= seq_len:
        return
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    d_mask = offs_d < HEAD_DIM
    row_ok = offs_m < seq_len
    q_mask = row_ok[:, None] & d_mask[None, :]
    rows = seq_start + offs_m
    q = tl.load(Q + rows[:, None] * stride_qt + h * stride_qh + offs_d[None, :], mask=q_mask, other=0.0)
    do = tl.load(DO + rows[:, None] * stride_dt + h * stride_dh + offs_d[None, :], mask=q_mask, other=0.0)
    lse = tl.load(LSE + h * total + rows, mask=row_ok, other=float("inf"))
    delta = tl.load(DELTA + h * total + rows, mask=row_ok, other=0.0)
    k_base = K + seq_start * stride_kt + h * stride_kh
    v_base = V + seq_start * stride_vt + h * stride_vh
    dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    n_full = (seq_len // BLOCK_N) * BLOCK_N
    dq = _dq_inner(dq, q, do, lse, delta, k_base, v_base, 0, n_full, seq_len, offs_n, offs_d, d_mask,
                   qk_scale, stride_kt, stride_vt, False, BLOCK_N, PRECISION, EVEN_D)
    dq = _dq_inner(dq, q, do, lse, delta, k_base, v_base, n_full, seq_len, seq_len, offs_n, offs_d,
                   d_mask, qk_scale, stride_kt, stride_vt, True, BLOCK_N, PRECISION, EVEN_D)
    tl.store(DQ + rows[:, None] * stride_dqt + h * stride_dqh + offs_d[None, :],
             (dq * sm_scale).to(DQ.dtype.element_ty), mask=q_mask)


def _meta(q: torch.Tensor) -> tuple[int, str]:
    """``BLOCK_D`` (head dim rounded up to a power of two >= 16, tl.dot's minimum) and the dot
    precision: exact fp32 products for fp32 inputs (no TF32), tensor-core default otherwise,
    "upcast" for bf16 under the interpreter (see :func:`_dot`)."""
    block_d = max(16, triton.next_power_of_2(q.shape[-1]))
    if q.dtype == torch.float32:
        return block_d, "ieee"
    if q.dtype == torch.bfloat16 and os.environ.get("TRITON_INTERPRET", "0") == "1":
        return block_d, "upcast"
    return block_d, "tf32"


def forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor,
            max_seqlen: int, scale: float, cfg: Config) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns ``o`` ``[T, H, D]`` (q's dtype, contiguous) and base-2 ``lse`` fp32 ``[H, T]``."""
    q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
    total, heads, dim = q.shape
    batch = cu_seqlens.numel() - 1
    o = torch.empty((total, heads, dim), dtype=q.dtype, device=q.device)
    lse = torch.empty((heads, total), dtype=torch.float32, device=q.device)
    block_d, precision = _meta(q)
    grid = (batch * heads, triton.cdiv(max_seqlen, cfg.fwd_m))
    _fwd_kernel[grid](q, k, v, o, lse, cu_seqlens, scale * LOG2E, heads, total,
                      q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
                      o.stride(0), o.stride(1),
                      HEAD_DIM=dim, BLOCK_M=cfg.fwd_m, BLOCK_N=cfg.fwd_n, BLOCK_D=block_d,
                      PRECISION=precision, EVEN_D=dim == block_d, num_warps=cfg.num_warps,
                      num_stages=cfg.fwd_stages)
    return o, lse


def backward(do: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, o: torch.Tensor,
             lse: torch.Tensor, cu_seqlens: torch.Tensor, max_seqlen: int, scale: float,
             cfg: Config) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients ``dq, dk, dv`` ``[T, H, D]`` in the input dtype (fp32 accumulation)."""
    q, k, v, do = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v, do))
    total, heads, dim = q.shape
    batch = cu_seqlens.numel() - 1
    block_d, precision = _meta(q)
    delta = torch.empty((heads, total), dtype=torch.float32, device=q.device)
    pre_m = 64  # rows per preprocess program: a [64, D] fp32 product stays small in registers
    _bwd_preprocess[(triton.cdiv(total, pre_m), heads)](
        o, do, delta, total, o.stride(0), o.stride(1), do.stride(0), do.stride(1),
        HEAD_DIM=dim, BLOCK_M=pre_m, BLOCK_D=block_d)
    dq, dk, dv = (torch.empty((total, heads, dim), dtype=q.dtype, device=q.device) for _ in range(3))
    common = dict(HEAD_DIM=dim, BLOCK_D=block_d, PRECISION=precision, EVEN_D=dim == block_d,
                  num_warps=cfg.num_warps, num_stages=cfg.bwd_stages)
    _bwd_dkdv_kernel[(batch * heads, triton.cdiv(max_seqlen, cfg.kv_n))](
        q, k, v, do, dk, dv, lse, delta, cu_seqlens, scale * LOG2E, scale, heads, total,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        do.stride(0), do.stride(1), dk.stride(0), dk.stride(1), dv.stride(0), dv.stride(1),
        BLOCK_M=cfg.kv_m, BLOCK_N=cfg.kv_n, **common)
    _bwd_dq_kernel[(batch * heads, triton.cdiv(max_seqlen, cfg.q_m))](
        q, k, v, do, dq, lse, delta, cu_seqlens, scale * LOG2E, scale, heads, total,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        do.stride(0), do.stride(1), dq.stride(0), dq.stride(1),
        BLOCK_M=cfg.q_m, BLOCK_N=cfg.q_n, **common)
    return dq, dk, dv


# torch.library custom ops, so torch.compile traces through the kernels as opaque ops; autograd
# is registered on the forward op. ``config`` is the Config as a list of ints (a schema type).
@torch.library.custom_op("spar_fast::varlen_attention_triton_fwd", mutates_args=())
def _fwd_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor, max_seqlen: int,
            scale: float, config: List[int]) -> Tuple[torch.Tensor, torch.Tensor]:
    return forward(q, k, v, cu_seqlens, max_seqlen, scale, Config(*config))


@_fwd_op.register_fake
def _fwd_fake(q, k, v, cu_seqlens, max_seqlen, scale, config):
    total, heads, dim = q.shape
    return q.new_empty((total, heads, dim)), q.new_empty((heads, total), dtype=torch.float32)


@torch.library.custom_op("spar_fast::varlen_attention_triton_bwd", mutates_args=())
def _bwd_op(do: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, o: torch.Tensor,
            lse: torch.Tensor, cu_seqlens: torch.Tensor, max_seqlen: int, scale: float,
            config: List[int]) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return backward(do, q, k, v, o, lse, cu_seqlens, max_seqlen, scale, Config(*config))


@_bwd_op.register_fake
def _bwd_fake(do, q, k, v, o, lse, cu_seqlens, max_seqlen, scale, config):
    return tuple(q.new_empty(q.shape) for _ in range(3))


def _setup_context(ctx, inputs, output):
    q, k, v, cu_seqlens, max_seqlen, scale, config = inputs
    o, lse = output
    ctx.save_for_backward(q, k, v, o, lse, cu_seqlens)
    ctx.max_seqlen, ctx.scale, ctx.config = max_seqlen, scale, config


def _backward(ctx, do, _dlse):
    q, k, v, o, lse, cu_seqlens = ctx.saved_tensors
    dq, dk, dv = _bwd_op(do.contiguous(), q, k, v, o, lse, cu_seqlens, ctx.max_seqlen, ctx.scale, ctx.config)
    return dq, dk, dv, None, None, None, None


_fwd_op.register_autograd(_backward, setup_context=_setup_context)


def varlen_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor,
                     max_seqlen: int, scale: float | None = None,
                     cfg: Config | None = None) -> torch.Tensor:
    """Packed attention ``[T, H, D]``, differentiable in q, k, v (inputs already validated: same
    shape/dtype/device, int32 ``cu_seqlens`` on that device, ``max_seqlen`` >= every length)."""
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    cfg = cfg or default_config(q.shape[-1])
    return _fwd_op(q, k, v, cu_seqlens, int(max_seqlen), scale, list(astuple(cfg)))[0]


__all__ = ["Config", "default_config", "forward", "backward", "varlen_attention"]
