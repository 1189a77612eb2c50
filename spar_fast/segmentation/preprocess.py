"""Image preparation for segmentation: keep-ratio test resize and normalization (SPEC §5.1).

The test resize fits the image into a (long, short) scale keeping its aspect ratio, with the
rescale rule of SPEC §3.1: ``factor = min(max(scale) / max(H, W), min(scale) / min(H, W))``,
each side ``int(side * factor + 0.5)``. Resampling is bilinear (align_corners=False, no
antialias, like OpenCV's INTER_LINEAR used by MMSeg) on the float image; MMSeg rounds the resized
image to uint8, which this skips (a difference of at most half a grey level).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import UserError

TEST_SCALE = (2048, 672)
CITYSCAPES_SCALE = (2048, 1024)


def keep_ratio_hw(height: int, width: int, scale: tuple[int, int] = TEST_SCALE) -> tuple[int, int]:
    """Size ``(H', W')`` of an ``H x W`` image rescaled to fit ``scale`` keeping its ratio."""
    if height <= 0 or width <= 0:
        raise UserError(f"image size {height}x{width} is empty")
    factor = min(max(scale) / max(height, width), min(scale) / min(height, width))
    return int(height * factor + 0.5), int(width * factor + 0.5)


def to_tensor01(image, device=None) -> torch.Tensor:
    """``uint8 [H, W, 3]`` (numpy or torch) -> float32 ``[3, H, W]`` in [0, 1] on ``device``."""
    if isinstance(image, np.ndarray):
        writable = image.flags.writeable and image.flags.c_contiguous
        image = torch.from_numpy(image if writable else np.array(image, order="C"))
    if image.dim() != 3 or image.shape[2] != 3 or image.dtype != torch.uint8:
        raise UserError(f"expected a uint8 RGB image [H, W, 3], got {image.dtype} {tuple(image.shape)}")
    return image.to(device).permute(2, 0, 1).float().div_(255.0)


def normalize(image01: torch.Tensor, mean, std) -> torch.Tensor:
    """``[3, H, W]`` in [0, 1] -> ``(x - mean) / std`` per channel."""
    mean = torch.as_tensor(mean, dtype=image01.dtype, device=image01.device).view(3, 1, 1)
    std = torch.as_tensor(std, dtype=image01.dtype, device=image01.device).view(3, 1, 1)
    return (image01 - mean) / std


def resize(image: torch.Tensor, size_hw: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of ``[3, H, W]`` to ``size_hw`` (identity when the size is unchanged)."""
    if tuple(image.shape[-2:]) == tuple(size_hw):
        return image
    return F.interpolate(image[None], size=size_hw, mode="bilinear", align_corners=False,
                         antialias=False)[0]


def prepare_image(image, mean, std, scale: tuple[int, int] | None = TEST_SCALE,
                  device=None) -> torch.Tensor:
    """``uint8 [H, W, 3]`` -> normalized float32 ``[3, H', W']`` (test-resized unless ``scale`` is None)."""
    x = to_tensor01(image, device)
    if scale is not None:
        x = resize(x, keep_ratio_hw(x.shape[1], x.shape[2], scale))
    return normalize(x, mean, std)
