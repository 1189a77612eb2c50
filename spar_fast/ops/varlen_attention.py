"""Variable-length (packed) attention: the torch reference and the dispatching function.

``q, k, v``: ``[T, H, D]`` holding several sequences back to back; ``cu_seqlens``: int32 ``[B+1]``
cumulative lengths (``cu_seqlens[0] == 0``, ``cu_seqlens[-1] == T``). Each token attends only to
tokens of its own sequence, non-causally, softmax scale ``D ** -0.5`` unless given. Returns
``[T, H, D]``, differentiable in q, k, v.

Implementations (``spar_fast._backend.choose("varlen_attention", ...)`` picks the family):

* ``torch``: :func:`varlen_attention_reference`, one SDPA per sequence; the CPU default.
* ``triton``: ``kernels/varlen_attention.py`` (forward + backward), on CUDA tensors, or on CPU
  tensors when forced with ``SPAR_FAST_BACKEND_VARLEN_ATTENTION=triton`` and ``TRITON_INTERPRET=1``.

On CUDA with the backend left on ``auto``, ``SPAR_FAST_VARLEN_IMPL`` picks the kernel:
``triton`` (default), ``torch_varlen`` (``torch.nn.attention.varlen.varlen_attn``, cuDNN / Flash
inside torch, fp16/bf16 only) or ``flash_attn`` (``flash_attn.flash_attn_varlen_func``). The
default is ours until ``benchmarks/bench_varlen_attention.py`` on the target GPU says otherwise.
Head dims above 128 fall back from ``triton`` to the reference with a one-time message (the
tile configs are sized for D <= 128); other non-power-of-two D are masked inside the kernel.
"""
from __future__ import annotations

import os
import warnings

import torch
import torch.nn.functional as F

from .. import _backend
from ..errors import UserError

CUDA_IMPLS = ("triton", "torch_varlen", "flash_attn")
DEFAULT_CUDA_IMPL = "triton"
MAX_TRITON_HEAD_DIM = 128
_noted: set[str] = set()


def _note_once(key: str, message: str) -> None:
    if key not in _noted:
        _noted.add(key)
        warnings.warn(message, RuntimeWarning, stacklevel=3)


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


def _cuda_impl() -> str:
    impl = os.environ.get("SPAR_FAST_VARLEN_IMPL", DEFAULT_CUDA_IMPL).strip().lower()
    if impl not in CUDA_IMPLS:
        raise UserError(f"SPAR_FAST_VARLEN_IMPL={impl!r}; expected one of {', '.join(CUDA_IMPLS)}")
    return impl


def _torch_varlen(q, k, v, cu_seqlens, max_seqlen, scale):
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError as exc:
        raise UserError(f"SPAR_FAST_VARLEN_IMPL=torch_varlen needs torch >= 2.10 ({exc})") from None
    return varlen_attn(q, k, v, cu_seqlens, cu_seqlens, max_seqlen, max_seqlen, scale=scale)


def _flash_attn(q, k, v, cu_seqlens, max_seqlen, scale):
    try:
        from flash_attn import flash_attn_varlen_func
    except ImportError as exc:
        raise UserError(f"SPAR_FAST_VARLEN_IMPL=flash_attn needs the flash-attn package ({exc})") from None
    return flash_attn_varlen_func(q, k, v, cu_seqlens, cu_seqlens, max_seqlen, max_seqlen,
                                  softmax_scale=scale)


def implementation(q: torch.Tensor) -> str:
    """Name of the implementation :func:`varlen_attention` runs for ``q``:
    ``torch`` | ``triton`` | ``torch_varlen`` | ``flash_attn``."""
    backend = _backend.choose("varlen_attention", q.device, supported=("triton", "torch"))
    head_dim = q.shape[-1]
    forced = _backend.requested("varlen_attention") != "auto"
    if q.device.type == "cuda" and not forced:
        impl = _cuda_impl()
        if impl in ("torch_varlen", "flash_attn"):
            if q.dtype in (torch.float16, torch.bfloat16):
                return impl
            _note_once(f"{impl}-dtype", f"varlen_attention: {impl} needs fp16/bf16, got {q.dtype}; "
                                        f"using {backend}")
    if backend == "triton" and head_dim > MAX_TRITON_HEAD_DIM:
        _note_once("triton-dim", f"varlen_attention: Triton kernel supports head dim <= "
                                 f"{MAX_TRITON_HEAD_DIM}, got {head_dim}; using the torch reference")
        return "torch"
    return backend


def varlen_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                     cu_seqlens: torch.Tensor, max_seqlen: int | None = None, *,
                     scale: float | None = None) -> torch.Tensor:
    """Packed non-causal attention ``[T, H, D]``; dispatches to the fastest available backend.

    ``max_seqlen`` must be >= every sequence length (it sizes the kernel grid); None computes it
    from ``cu_seqlens`` (one device sync when that lives on the GPU).
    """
    cu_seqlens, max_seqlen = _validate(q, k, v, cu_seqlens, max_seqlen)
    impl = implementation(q) if q.shape[0] > 0 else "torch"  # no tokens: nothing to launch
    if impl == "triton":
        return _backend.triton_kernels("varlen_attention").varlen_attention(
            q, k, v, cu_seqlens, max_seqlen, scale)
    if impl == "torch_varlen":
        return _torch_varlen(q, k, v, cu_seqlens, max_seqlen, scale)
    if impl == "flash_attn":
        return _flash_attn(q, k, v, cu_seqlens, max_seqlen, scale)
    return varlen_attention_reference(q, k, v, cu_seqlens, max_seqlen, scale=scale)
