"""Variable-length (packed) attention: the torch reference and the dispatching function.

``q, k, v``: ``[T, H, D]`` holding several sequences back to back; ``cu_seqlens``: int32 ``[B+1]``
cumulative lengths (``cu_seqlens[0] == 0``, ``cu_seqlens[-1] == T``). Each token attends only to
tokens of its own sequence, non-causally, softmax scale ``D ** -0.5`` unless given. Returns
``[T, H, D]``, differentiable in q, k, v.

Backends (op ``varlen_attention`` of ``spar_fast._backend``):

* ``torch``: :func:`varlen_attention_reference`, one SDPA per sequence; the CPU default.
* ``triton``: ``kernels/varlen_attention.py`` (forward + backward custom ops), head dim <= 128;
  on CPU tensors only when forced and ``TRITON_INTERPRET=1``.
* ``torch_varlen``: ``torch.nn.attention.varlen.varlen_attn`` (cuDNN / Flash inside torch),
  fp16/bf16, CUDA.
* ``flash_attn``: ``flash_attn.flash_attn_varlen_func`` (the flash-attn package), fp16/bf16, CUDA.

CUDA automatic order: ``flash_attn``, ``torch_varlen``, ``triton``, then the reference. This order
is UNMEASURED (no GPU was available): the two vendor kernels are tuned for Hopper and have run
on GPUs, ours has only run in Triton's interpreter; ``benchmarks/bench_varlen_attention.py`` on
the target GPU decides, and ``SPAR_FAST_BACKEND_VARLEN_ATTENTION`` picks one meanwhile.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import _backend
from .triton_kernels import triton_kernels

MAX_TRITON_HEAD_DIM = 128  # the Triton tile configs are sized for D <= 128
HALF_DTYPES = (torch.float16, torch.bfloat16)

VARLEN_ATTENTION = _backend.op("varlen_attention", cuda=("flash_attn", "torch_varlen", "triton"))


def varlen_attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                               cu_seqlens: torch.Tensor, max_seqlen: int | None = None, *,
                               scale: float | None = None) -> torch.Tensor:
    """Per-sequence SDPA; the specification of :func:`varlen_attention`. ``[T, H, D]``."""
    bounds = cu_seqlens.tolist()
    outs = []
    for start, end in zip(bounds[:-1], bounds[1:]):
        qs, ks, vs = (t[start:end].transpose(0, 1) for t in (q, k, v))  # [H, n, D]
        outs.append(F.scaled_dot_product_attention(qs, ks, vs, scale=scale).transpose(0, 1))
    return torch.cat(outs, dim=0) if outs else q.new_empty(q.shape)


def _validate(q, k, v, cu_seqlens, max_seqlen) -> tuple[torch.Tensor, int]:
    """Check shapes and dtypes; return int32 ``cu_seqlens`` on q's device and ``max_seqlen``.

    Values of ``cu_seqlens`` are checked when it lives on the CPU or ``max_seqlen`` is None (both
    need no extra device sync); a CUDA ``cu_seqlens`` with a given ``max_seqlen`` is trusted, as in
    flash-attn, so the packed forward never waits on the GPU here.
    """
    if q.dim() != 3 or k.shape != q.shape or v.shape != q.shape:
        raise ValueError(f"varlen_attention: q, k, v must share one [T, H, D] shape; got "
                         f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if not (q.dtype == k.dtype == v.dtype) or not q.is_floating_point():
        raise ValueError(f"varlen_attention: q, k, v must share one float dtype; got "
                         f"{q.dtype}, {k.dtype}, {v.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError("varlen_attention: q, k, v must be on one device")
    if cu_seqlens.dim() != 1 or cu_seqlens.numel() < 1 or cu_seqlens.is_floating_point():
        raise ValueError(f"varlen_attention: cu_seqlens must be a 1-D integer tensor [B+1]; got "
                         f"{cu_seqlens.dtype} {tuple(cu_seqlens.shape)}")
    check = cu_seqlens.device.type == "cpu" or max_seqlen is None
    if check:
        cu = cu_seqlens.tolist()
        lengths = [b - a for a, b in zip(cu[:-1], cu[1:])]
        if cu[0] != 0 or cu[-1] != q.shape[0] or any(n < 0 for n in lengths):
            raise ValueError(f"varlen_attention: cu_seqlens must rise from 0 to T={q.shape[0]}; "
                             f"got {cu[:4]}{'...' if len(cu) > 4 else ''} ending at {cu[-1]}")
        longest = max(lengths, default=0)
        if max_seqlen is None:
            max_seqlen = longest
        elif max_seqlen < longest:
            raise ValueError(f"varlen_attention: max_seqlen={max_seqlen} < longest sequence {longest}")
    cu_seqlens = cu_seqlens.to(device=q.device, dtype=torch.int32, non_blocking=True)
    return cu_seqlens, int(max_seqlen)


def _half_only(q, *_) -> str | None:
    return None if q.dtype in HALF_DTYPES else f"needs fp16/bf16, got {q.dtype}"


def _triton_head_dim(q, *_) -> str | None:
    dim = q.shape[-1]
    return None if dim <= MAX_TRITON_HEAD_DIM else f"supports head dim <= {MAX_TRITON_HEAD_DIM}, got {dim}"


@VARLEN_ATTENTION.register("torch", available=_backend.anywhere)
def _reference(q, k, v, cu_seqlens, max_seqlen, scale):
    return varlen_attention_reference(q, k, v, cu_seqlens, max_seqlen, scale=scale)


@VARLEN_ATTENTION.register("triton", available=_backend.triton_device, accepts=_triton_head_dim)
def _triton(q, k, v, cu_seqlens, max_seqlen, scale):
    return triton_kernels("varlen_attention").varlen_attention(q, k, v, cu_seqlens, max_seqlen, scale)


@VARLEN_ATTENTION.register("torch_varlen", available=_backend.cuda_module("torch.nn.attention.varlen"),
                           accepts=_half_only)
def _torch_varlen(q, k, v, cu_seqlens, max_seqlen, scale):
    from torch.nn.attention.varlen import varlen_attn
    return varlen_attn(q, k, v, cu_seqlens, cu_seqlens, max_seqlen, max_seqlen, scale=scale)


@VARLEN_ATTENTION.register("flash_attn", available=_backend.cuda_module("flash_attn"), accepts=_half_only)
def _flash_attn(q, k, v, cu_seqlens, max_seqlen, scale):
    from flash_attn import flash_attn_varlen_func
    return flash_attn_varlen_func(q, k, v, cu_seqlens, cu_seqlens, max_seqlen, max_seqlen, softmax_scale=scale)


def implementation(q: torch.Tensor) -> str:
    """Name of the backend :func:`varlen_attention` runs for ``q``."""
    return VARLEN_ATTENTION.pick(q.device, q).backend


def varlen_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                     cu_seqlens: torch.Tensor, max_seqlen: int | None = None, *,
                     scale: float | None = None) -> torch.Tensor:
    """Packed non-causal attention ``[T, H, D]``; dispatches to the fastest available backend.

    ``max_seqlen`` must be >= every sequence length (it sizes the kernel grid); None computes it
    from ``cu_seqlens`` (one device sync when that lives on the GPU).
    """
    cu_seqlens, max_seqlen = _validate(q, k, v, cu_seqlens, max_seqlen)
    if q.shape[0] == 0:  # no tokens: nothing to launch
        return varlen_attention_reference(q, k, v, cu_seqlens, max_seqlen, scale=scale)
    return VARLEN_ATTENTION.run(q.device, q, k, v, cu_seqlens, max_seqlen, scale)
