"""NaFlex's input rule: resize keeping the aspect ratio to a patch budget (docs/NAFLEX.md).

SigLIP2 NaFlex sees every image at its own aspect ratio: the image is resized (never padded,
never cropped) to sides that are multiples of the patch size P, as large as fits a budget of
``max_patches`` patches. The size is the one of timm's ``get_image_size_for_seq`` (and of the
Hugging Face SigLIP2 processor's ``get_image_size_for_max_num_patches``, the same search):
a bisection for the largest ratio ``r`` in ``(1e-6, 100)`` whose size

    side(r) = max(P, P * ceil(side * r / P))      (both sides)

holds at most ``max_patches`` patches, stopped when the interval is narrower than 1e-5.
The resampling is bilinear with antialiasing (align_corners=False), as the SigLIP2 processor's
PIL bilinear resize; it is linear with weights summing to one, so it commutes with the
per-channel normalization and runs on normalized images.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..errors import UserError

_EPS = 1e-5  # the bisection's stopping width (timm's and the SigLIP2 processor's)
_RATIO_MAX = 100.0  # upper end of the search: at most 100x upscaling


def _scaled(side: int, ratio: float, patch: int) -> int:
    return int(max(patch * math.ceil(side * ratio / patch), patch))


def budget_hw(height: int, width: int, patch: int, max_patches: int) -> tuple[int, int]:
    """Size ``(H', W')`` (multiples of ``patch``) of an ``height x width`` image resized keeping its
    ratio to the most patches ``<= max_patches`` (upscaling stops near 100x). One-line UserError
    when no ratio in the search range fits (it would need a scale below 1e-5)."""
    if height <= 0 or width <= 0:
        raise UserError(f"image size {height}x{width} is empty")
    if max_patches < 1:
        raise UserError(f"the NaFlex patch budget must be >= 1, got {max_patches}")
    lo, hi = _EPS / 10.0, _RATIO_MAX
    while hi - lo >= _EPS:
        mid = (lo + hi) / 2.0
        if (_scaled(height, mid, patch) // patch) * (_scaled(width, mid, patch) // patch) <= max_patches:
            lo = mid
        else:
            hi = mid
    if lo <= _EPS or lo >= _RATIO_MAX:
        raise UserError(f"a {height}x{width} image cannot be resized to {max_patches} patches of "
                        f"{patch}x{patch} within a 100x scale change (it needs a scale below {_EPS:g})")
    return _scaled(height, lo, patch), _scaled(width, lo, patch)


def image_budget(height: int, width: int, patch: int) -> int:
    """The patch count of the image at its own size (sides rounded up to whole patches): the
    budget of ``max_patches=None``, which keeps the resolution (resize by < one patch per side)."""
    return math.ceil(height / patch) * math.ceil(width / patch)


def resize_to_budget(images: torch.Tensor, patch: int, max_patches: int | None) -> torch.Tensor:
    """``[..., 3, H, W] -> [..., 3, H', W']`` (:func:`budget_hw`; ``max_patches`` None: the
    image's own patch count); the input itself when the size is already right."""
    height, width = images.shape[-2:]
    budget = image_budget(height, width, patch) if max_patches is None else max_patches
    hw = budget_hw(height, width, patch, budget)
    if hw == (height, width):
        return images
    lead = images.shape[:-3]
    flat = images.reshape(-1, *images.shape[-3:])
    out = F.interpolate(flat, size=hw, mode="bilinear", align_corners=False, antialias=True)
    return out.reshape(*lead, *out.shape[-3:])
