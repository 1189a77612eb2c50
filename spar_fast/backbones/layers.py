"""A pre-norm transformer block run from either family's modules, batched or packed.

Both families' blocks compute ``x + post_attn(proj(attn(norm1(x))))`` then
``x + post_mlp(mlp(norm2(x)))`` with a fused qkv projection whose output channels are ordered
``[3, heads, head_dim]`` (timm ``Attention.qkv`` and ``nn.MultiheadAttention.in_proj`` alike).
:class:`BlockParts` names those pieces; :func:`block_forward` runs them on ``[B, N, C]`` tokens
(batched SDPA) or on packed ``[T, C]`` tokens (``spar_fast.ops.varlen_attention``).
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import UserError

_IDENTITY = nn.Identity()


class BlockParts(NamedTuple):
    """The modules and parameters of one block, looked up fresh on each call (no stale copies)."""
    norm1: nn.Module
    qkv_weight: torch.Tensor      # [3*C, C]
    qkv_bias: torch.Tensor | None  # [3*C]
    heads: int
    q_norm: nn.Module             # per head, on [..., head_dim]
    k_norm: nn.Module
    attn_norm: nn.Module          # on the merged heads [..., C] (timm scale_norm; Identity otherwise)
    proj: nn.Module               # [C] -> [C]
    post_attn: tuple              # applied in order after proj (dropout, layer scale, drop path)
    norm2: nn.Module
    mlp: nn.Module
    post_mlp: tuple


Attend = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def residual_add(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``x + y``, in place when no autograd graph is being recorded (saves an allocation).

    In place only when it gives the same result: ``x`` already has the broadcast shape and the
    promoted dtype (under autocast the residual stream may be fp32 while ``y`` is bf16).
    """
    recording = torch.is_grad_enabled() and (x.requires_grad or y.requires_grad)
    if recording or torch.promote_types(x.dtype, y.dtype) != x.dtype \
            or torch.broadcast_shapes(x.shape, y.shape) != x.shape:
        return x + y
    return x.add_(y)


def sdpa_attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Batched attention: ``q, k, v [B, N, H, D] -> [B, N, H, D]``."""
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    return out.transpose(1, 2)


def varlen_attend(cu_seqlens: torch.Tensor, max_seqlen: int) -> Attend:
    """Packed attention over ``[T, H, D]`` restricted to each segment of ``cu_seqlens``."""
    from ..ops import varlen_attention

    def attend(q, k, v):
        return varlen_attention(q, k, v, cu_seqlens, max_seqlen)
    return attend


def block_forward(x: torch.Tensor, p: BlockParts, attend: Attend) -> torch.Tensor:
    """One block on ``x [..., C]`` (``[B, N, C]`` with :func:`sdpa_attend`, ``[T, C]`` packed)."""
    h = p.norm1(x)
    qkv = F.linear(h, p.qkv_weight, p.qkv_bias).unflatten(-1, (3, p.heads, -1))  # [..., 3, H, D]
    q, k, v = qkv.unbind(-3)
    q, k = p.q_norm(q).to(v.dtype), p.k_norm(k).to(v.dtype)  # norms may return fp32 under autocast
    h = p.proj(p.attn_norm(attend(q, k, v).flatten(-2)))
    for module in p.post_attn:
        h = module(h)
    x = residual_add(x, h)
    h = p.mlp(p.norm2(x))
    for module in p.post_mlp:
        h = module(h)
    return residual_add(x, h)


def require_inactive(modules: list[tuple[str, nn.Module]]) -> None:
    """Reject active token-dropping / stochastic-depth modules (called in training mode).

    They draw per sample, and packed tokens have no sample axis, so in training mode they must
    be ``Identity`` or have probability 0 (in eval mode they are the identity anyway).
    """
    for what, module in modules:
        if isinstance(module, nn.Identity) or not module.training:
            continue
        prob = getattr(module, "drop_prob", getattr(module, "prob", None))
        if prob is None or float(prob) != 0.0:
            raise UserError(f"{what} ({module.__class__.__name__}) is not supported in training mode; "
                            "create the model without patch dropout / drop path")


def identity() -> nn.Module:
    """A shared ``nn.Identity`` for parts a family does not have."""
    return _IDENTITY
