"""Bilinear source taps (align_corners=False, no antialias): the one definition every kernel uses.

Computed once on the host and passed to every compiled kernel (C++ stitch and finalize, CUDA
stitch, C++ and Triton seg_head); no kernel derives its own. Per output position ``o``:

    scale = fp32(1 / r)                       F.interpolate(scale_factor=r)  (window upsampling)
          = fp32(n_in) / fp32(n_out)          F.interpolate(size=...)        (final resize, seg_head)
    src   = max(round_fp32(scale * (o + 0.5) - 0.5), 0)   one rounding, as a fused multiply-add
    i0    = min(floor(src), n_in - 1),  i1 = i0 + (i0 < n_in - 1)
    w1    = clamp(src - i0, 0, 1),      w0 = 1 - w1        (fp32)

with the identity (``i0 = i1 = o``, ``w0 = 1``) when ``n_in == n_out`` and no scale factor is
given. This is what ATen's channels-last CPU bilinear kernel computes (the layout of the stitch
reference's ``[N, g, g, C]`` windows and canvas): tests/test_bilinear.py checks it bit for bit on
many sizes. ATen's channels-first kernel rounds ``scale * (o + 0.5)`` separately for some sizes,
so there a tap may differ by one ulp of ``src``; the seg_head tests' near-tie width covers that.
"""
from __future__ import annotations

import functools

import torch


@functools.lru_cache(maxsize=256)
def _host_taps(n_in: int, n_out: int, scale_factor: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    o = torch.arange(n_out, dtype=torch.float64)
    if scale_factor is None and n_in == n_out:
        i0, w1 = o.to(torch.int64), torch.zeros(n_out, dtype=torch.float32)
    else:
        if scale_factor is None:
            scale = torch.tensor(n_in, dtype=torch.float32) / torch.tensor(n_out, dtype=torch.float32)
        else:
            scale = torch.tensor(1.0 / scale_factor, dtype=torch.float32)
        # fp64 holds the exact product of an fp32 scale and o + 0.5 (24 + 25 bits), and subtracting
        # 0.5 is exact whenever the result is >= 0 (negative ones are clamped): the cast to fp32
        # is the only rounding, as in a fused multiply-add
        src = (scale.double() * (o + 0.5) - 0.5).to(torch.float32).clamp_min(0)
        i0 = src.floor().to(torch.int64).clamp_max(n_in - 1)
        w1 = (src - i0.to(torch.float32)).clamp(0, 1)
    i1 = i0 + (i0 < n_in - 1).to(torch.int64)
    return torch.stack([i0, i1]).to(torch.int32), torch.stack([1 - w1, w1])


def bilinear_taps(n_in: int, n_out: int, device: torch.device | str = "cpu", *,
                  scale_factor: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Taps of a bilinear resize ``n_in -> n_out`` along one axis.

    ``scale_factor``: the integer factor when the resize is ``F.interpolate(scale_factor=r)``
    (``n_out == n_in * r``); None for ``F.interpolate(size=...)``.
    Returns ``(index int32 [2, n_out] = (i0, i1), weight fp32 [2, n_out] = (w0, w1))`` on
    ``device`` (cached per size: one host computation and one copy per device).
    """
    if n_in < 1 or n_out < 1:
        raise ValueError(f"bilinear_taps needs positive sizes, got {n_in} -> {n_out}")
    return _taps_on(n_in, n_out, scale_factor, torch.device(device))


@functools.lru_cache(maxsize=256)
def _taps_on(n_in: int, n_out: int, scale_factor: int | None, device: torch.device):
    index, weight = _host_taps(n_in, n_out, scale_factor)
    return index.to(device), weight.to(device)
