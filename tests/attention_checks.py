"""Shared checks of the packed-attention tests (reference, dispatch, Triton kernels).

Accuracy rule (flash-attention's): with the float64 reference as truth, an implementation's max
error must be at most twice the max error of plain torch attention (``softmax(q k^T) v`` computed
by eager torch ops in the same dtype), plus a floor counted in units of the unavoidable rounding
of the exact result to that dtype (half an ulp of its largest value), see ``FLOOR_ROUNDINGS``.
Inputs are fresh random draws; the seed is in every failure message.
"""
from __future__ import annotations

import random

import torch

from spar_fast.ops import varlen_attention_reference

LENGTH_CASES = {
    "mixed_with_1": [1, 37, 64, 70, 3],  # 1-token image, non-multiples of the 32-tile, exact multiple
    "single": [97],
    "many_short": [5, 1, 9, 2, 16, 1, 7, 3, 11, 4, 6, 1],
    "random": None,  # 2-5 lengths drawn in 1..90 per run
}


# fp16 / bf16: both errors are dominated by rounding P and the output to the dtype, so a few
# roundings suffice. fp32: both errors are a few ulps set only by summation order (the kernel's
# delta = rowsum(dO * O) vs torch's rowsum(P * dP), blockwise vs one-shot sums); measured excess
# over 2x torch reached ~8 roundings on dK/dQ, so 16.
FLOOR_ROUNDINGS = {torch.float32: 16, torch.float16: 4, torch.bfloat16: 4}


def fresh_seed() -> int:
    seed = random.randrange(2**31)
    torch.manual_seed(seed)
    return seed


def cu_of(lengths: list[int]) -> torch.Tensor:
    return torch.tensor([0] + torch.tensor(lengths).cumsum(0).tolist(), dtype=torch.int32)


def lengths_of(case: str) -> list[int]:
    lengths = LENGTH_CASES[case]
    if lengths is None:
        lengths = torch.randint(1, 91, (int(torch.randint(2, 6, ())),)).tolist()
    return lengths


def math_attention(q, k, v, cu, scale=None):
    """Plain eager attention per sequence in the inputs' dtype: the low-precision baseline."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    bounds = cu.tolist()
    outs = []
    for start, end in zip(bounds[:-1], bounds[1:]):
        qs, ks, vs = (t[start:end].transpose(0, 1) for t in (q, k, v))
        p = torch.softmax((qs @ ks.transpose(1, 2)) * scale, dim=-1)
        outs.append((p @ vs).transpose(0, 1))
    return torch.cat(outs)


def out_and_grads(fn, q, k, v, do):
    q, k, v = (t.detach().clone().requires_grad_() for t in (q, k, v))
    o = fn(q, k, v)
    return (o.detach(),) + torch.autograd.grad(o, (q, k, v), do.to(o.dtype))


def check_against_reference(fn, q, k, v, do, cu, seed, scale=None):
    """Compare ``fn`` (out, dq, dk, dv) to the float64 reference with the 2x-torch rule."""
    ours = out_and_grads(fn, q, k, v, do)
    plain = out_and_grads(lambda a, b, c: math_attention(a, b, c, cu, scale), q, k, v, do)
    exact = out_and_grads(lambda a, b, c: varlen_attention_reference(a, b, c, cu, scale=scale),
                           q.double(), k.double(), v.double(), do.double())
    for name, x, y, ref in zip(("out", "dq", "dk", "dv"), ours, plain, exact):
        assert x.dtype == q.dtype and x.shape == q.shape, name
        assert torch.isfinite(x).all(), f"{name}: non-finite values (seed {seed})"
        err = (x.double() - ref).abs().max().item()
        err_torch = (y.double() - ref).abs().max().item()
        rounding = (ref.to(q.dtype).double() - ref).abs().max().item()
        floor = FLOOR_ROUNDINGS[q.dtype] * rounding
        assert err <= 2 * err_torch + floor, (
            f"{name} {q.dtype}: error {err:.3g} > 2 x torch {err_torch:.3g} + floor {floor:.3g} "
            f"(seed {seed})")


def inputs(lengths, heads, dim, dtype):
    total = sum(lengths)
    return [torch.randn(total, heads, dim, dtype=dtype) for _ in range(4)]
