"""DINOv3's axial 2-D rotary position embedding (RoPE), per image grid, batched or packed.

Patch ``(i, j)`` of an ``h x w`` grid sits at ``y = 2*(i + 0.5)/h - 1``, ``x = 2*(j + 0.5)/w - 1``
(each axis normalized on its own to [-1, 1], DINOv3's "separate" mode). A head of dimension D has
D/4 periods ``base ** (2k / (D/2))``; the angles ``2*pi*[y, x] / period`` are laid out
``[y angles, x angles]`` twice along D, and a query or key row becomes
``x*cos + rotate_half(x)*sin`` with ``rotate_half([a, b]) = [-b, a]``. Prefix tokens (class,
storage) are not rotated: their rows of the tables are ``cos = 1, sin = 0``, which leaves them
exactly unchanged, so one elementwise formula covers a whole batched or packed sequence.

Training mode (the reference's coordinate augmentation): every block multiplies the coordinates
by its own factor drawn log-uniformly in ``[1/rescale, rescale]``.
"""
from __future__ import annotations

import math

import torch


def rope_periods(head_dim: int, base: float) -> torch.Tensor:
    """``[head_dim // 4]`` fp32 periods ``base ** (2k / (head_dim / 2))``."""
    return base ** (2 * torch.arange(head_dim // 4, dtype=torch.float32) / (head_dim // 2))


def rope_tables(periods: torch.Tensor, h: int, w: int, scale: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(sin, cos)``, each ``[h*w, D]`` fp32, for an ``h x w`` grid (raster order).

    ``scale``: a ``[1]`` coordinate factor (training-mode augmentation) or None."""
    dd = {"device": periods.device, "dtype": torch.float32}
    ys = torch.arange(0.5, h, **dd) / h
    xs = torch.arange(0.5, w, **dd) / w
    coords = torch.stack(torch.meshgrid(ys, xs, indexing="ij"), dim=-1).flatten(0, 1)  # [h*w, 2]
    coords = 2.0 * coords - 1.0
    if scale is not None:
        coords = coords * scale
    angles = 2 * math.pi * coords[:, :, None] / periods.float()[None, None, :]  # [h*w, 2, D/4]
    angles = angles.flatten(1, 2).tile(2)  # [h*w, D]
    return torch.sin(angles), torch.cos(angles)


def draw_rescale(rescale: float, device: torch.device) -> torch.Tensor:
    """A ``[1]`` factor, log-uniform in ``[1/rescale, rescale]`` (one per block in training)."""
    bound = math.log(rescale)
    return torch.empty(1, device=device).uniform_(-bound, bound).exp()


class RopeRotation:
    """Rotates per-head rows ``[..., N, heads, D]`` by tables ``[N, 1, D]`` (identity on prefix rows).

    Computed in the tables' dtype (fp32) and cast back to the input dtype, as the reference does.
    """

    def __init__(self, sin: torch.Tensor, cos: torch.Tensor):
        self.sin, self.cos = sin, cos

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.to(self.sin.dtype)
        first, second = x.chunk(2, dim=-1)
        rotated = torch.cat([-second, first], dim=-1)
        return (x * self.cos + rotated * self.sin).to(dtype)


def sequence_rotation(periods: torch.Tensor, grids: list[tuple[int, int]], prefix: int,
                      scale: torch.Tensor | None = None) -> RopeRotation:
    """The rotation of a sequence of images, each ``[prefix tokens, h*w patches]``, concatenated
    (one image: the batched layout; several: the packed one). Tables are computed once per
    distinct grid; result tables ``[sum(prefix + h*w), 1, D]``."""
    tables = {g: rope_tables(periods, *g, scale) for g in dict.fromkeys(grids)}
    dim = next(iter(tables.values()))[0].shape[-1]
    zeros = torch.zeros(prefix, dim, device=periods.device)
    ones = torch.ones(prefix, dim, device=periods.device)
    sin = torch.cat([t for g in grids for t in (zeros, tables[g][0])])
    cos = torch.cat([t for g in grids for t in (ones, tables[g][1])])
    return RopeRotation(sin[:, None], cos[:, None])
