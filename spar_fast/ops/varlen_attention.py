"""Variable-length (packed) attention: the torch reference.

``q, k, v``: ``[T, H, D]`` holding several sequences back to back; ``cu_seqlens``: int32
``[B+1]`` cumulative lengths (``cu_seqlens[0] == 0``, ``cu_seqlens[-1] == T``). Each token attends
only to tokens of its own sequence, non-causally, softmax scale ``D ** -0.5``. Returns ``[T, H, D]``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def varlen_attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                               cu_seqlens: torch.Tensor, max_seqlen: int | None = None) -> torch.Tensor:
    """Per-sequence SDPA; the specification of :func:`varlen_attention`."""
    bounds = cu_seqlens.tolist()
    outs = []
    for start, end in zip(bounds[:-1], bounds[1:]):
        qs, ks, vs = (t[start:end].transpose(0, 1) for t in (q, k, v))  # [H, n, D]
        outs.append(F.scaled_dot_product_attention(qs, ks, vs).transpose(0, 1))
    return torch.cat(outs, dim=0) if outs else q.new_empty(q.shape)


def varlen_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                     cu_seqlens: torch.Tensor, max_seqlen: int | None = None) -> torch.Tensor:
    """Packed non-causal attention ``[T, H, D]``; dispatches to the fastest available backend."""
    return varlen_attention_reference(q, k, v, cu_seqlens, max_seqlen)
