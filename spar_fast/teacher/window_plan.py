"""Sliding-window plan of the teacher (SPEC §2 steps 1-2).

Windows of the backbone's native size slide with a fixed stride; their features are upsampled by
an integer factor ``r`` so that every window origin falls on a whole cell of the stitch canvas
(cell = P / r pixels), then averaged on that canvas.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import UserError


def window_origins(length: int, window: int, stride: int) -> list[int]:
    """Origins 0, s, 2s, ... while ≤ length − window; ``length − window`` appended if missing."""
    if length < window:
        raise UserError(f"image side {length} is smaller than the teacher window {window}")
    last = length - window
    origins = list(range(0, last + 1, stride))
    if origins[-1] != last:
        origins.append(last)
    return origins


def upsample_factor(patch: int, stride: int) -> int:
    """Smallest ``r`` with ``patch % r == 0`` and ``stride % (patch // r) == 0``.

    P=16, s=24 → r=2 (cells of 8 px). ``r = patch`` (1-px cells) always qualifies.
    """
    for r in range(1, patch + 1):
        if patch % r == 0 and stride % (patch // r) == 0:
            return r
    raise AssertionError("unreachable: r = patch always divides")


@dataclass(frozen=True)
class WindowPlan:
    """Every window of one image and the canvas geometry.

    ``origins``: int64 ``[N, 2]`` window (row, col) in pixels, row-major order;
    ``canvas_hw``: stitch canvas in cells ``(H / cell, W / cell)``; ``out_hw``: patch grid
    ``(H / P, W / P)``; ``grid``: window feature side ``window / P``.
    """

    height: int
    width: int
    window: int
    stride: int
    patch: int
    r: int
    origins: torch.Tensor

    @property
    def cell(self) -> int:
        return self.patch // self.r

    @property
    def grid(self) -> int:
        return self.window // self.patch

    @property
    def canvas_hw(self) -> tuple[int, int]:
        return self.height // self.cell, self.width // self.cell

    @property
    def out_hw(self) -> tuple[int, int]:
        return self.height // self.patch, self.width // self.patch

    @property
    def origins_cells(self) -> torch.Tensor:
        """Window origins in canvas cells, int64 ``[N, 2]``."""
        return self.origins // self.cell

    def __len__(self) -> int:
        return int(self.origins.shape[0])


def plan_windows(height: int, width: int, window: int, stride: int, patch: int) -> WindowPlan:
    """Validate the image geometry and list the windows (SPEC §2)."""
    if stride <= 0:
        raise UserError(f"stride must be a positive number of pixels, got {stride}")
    if window % patch:
        raise UserError(f"window {window} is not a multiple of the patch size {patch}")
    if height % patch or width % patch:
        raise UserError(f"image size {height}x{width} is not a multiple of the patch size {patch}")
    if height < window or width < window:
        raise UserError(f"image size {height}x{width} is smaller than the teacher window {window}")
    rows = window_origins(height, window, stride)
    cols = window_origins(width, window, stride)
    r = upsample_factor(patch, stride)
    cell = patch // r
    # The appended last origin (L - window) is a multiple of P, hence of the cell: all origins
    # fall on whole cells.
    origins = torch.tensor([(y, x) for y in rows for x in cols], dtype=torch.int64)
    assert bool((origins % cell == 0).all())
    return WindowPlan(height, width, window, stride, patch, r, origins)
