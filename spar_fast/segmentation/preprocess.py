"""Image preparation: keep-ratio test resize (SPEC §5.1), normalization, and
:func:`model_input`, the real-photo entry point of the API (``sf.model_input``; ``sf.load_image``
is its deprecated name).

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

from ..data.augment import normalize
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


def resize_to(image: torch.Tensor, size_hw: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of ``[3, H, W]`` to ``size_hw`` (identity when the size is unchanged)."""
    if tuple(image.shape[-2:]) == tuple(size_hw):
        return image
    return F.interpolate(image[None], size=size_hw, mode="bilinear", align_corners=False,
                         antialias=False)[0]


def prepare_image(image, mean, std, scale=TEST_SCALE, device=None, min_side: int = 1) -> torch.Tensor:
    """``uint8 [H, W, 3]`` -> normalized float32 ``[3, H', W']``. ``scale``: a ``(long, short)``
    test scale (keep-ratio fit), a :class:`~spar_fast.segmentation.resolution.Resolution` (its
    ``hw(H, W)`` gives the size) or None (keep the size). A result with a side below ``min_side``
    (e.g. a 3x100000 panorama squeezed under one patch) or above the pixel limit is refused in
    one line before any resize."""
    from ..data.images import check_image_size

    x = to_tensor01(image, device)
    if scale is None:
        hw = tuple(x.shape[1:])
    elif hasattr(scale, "hw"):
        hw = scale.hw(x.shape[1], x.shape[2])
    else:
        hw = keep_ratio_hw(x.shape[1], x.shape[2], scale)
    check_image_size(hw, min_side=min_side, what="model input")
    x = resize_to(x, hw)
    return normalize(x, mean, std)


def as_rgb(src) -> np.ndarray | torch.Tensor:
    """A path, PIL image, or ``[H, W, 3]`` / ``[H, W]`` uint8 array or tensor -> ``uint8 [H, W, 3]``
    (a missing path: one-line ``UserError``)."""
    import os

    from ..data.images import read_rgb

    if isinstance(src, (str, os.PathLike)):
        if not os.path.isfile(src):
            raise UserError(f"image not found: {os.fspath(src)}")
        return read_rgb(src)
    if hasattr(src, "convert") and hasattr(src, "size"):  # a PIL image
        return np.asarray(src.convert("RGB"))
    if isinstance(src, (np.ndarray, torch.Tensor)) and src.ndim == 2:
        src = np.stack([np.asarray(src)] * 3, -1)
    return src


def teacher_hw(height: int, width: int, patch: int, window: int) -> tuple[int, int]:
    """The size the sliding-window teacher accepts (SPEC §2): keep-ratio upscale so the short side
    is at least ``window`` when it is shorter, then each side floored to a multiple of ``patch``
    (``window`` is a multiple of ``patch``, so both sides stay >= ``window``)."""
    if min(height, width) < window:
        height, width = keep_ratio_hw(height, width, (max(height, width) * window, window))
        height, width = max(height, window), max(width, window)
    return height // patch * patch, width // patch * patch


def model_input(src, bb, resize: str | tuple[int, int] | None = "test", for_teacher: bool = False,
                device=None) -> torch.Tensor:
    """The normalized ``[3, H, W]`` float32 input of backbone ``bb`` for a real photo.

    ``src``: an image path, a PIL image, or a uint8 ``[H, W, 3]`` (or grey ``[H, W]``) numpy
    array / tensor. ``resize``: ``"test"`` (keep-ratio into 2048x672, the evaluation rule of SPEC
    §5.1), a ``(long, short)`` scale, or None (keep the size). The result goes to
    :func:`spar_fast.dense_features` and :func:`spar_fast.segment` as is (every family handles
    any size: SigLIP2 pads to a multiple of the patch, OpenCLIP drops the remainder). With
    ``for_teacher`` the sides are also made what :func:`spar_fast.teacher_features` needs:
    multiples of ``bb.patch_size`` and at least ``bb.window`` (:func:`teacher_hw`; a slight
    stretch of < one patch per side). ``device``: default the backbone's.
    """
    if device is None:
        device = next(iter(bb.parameters())).device if hasattr(bb, "parameters") else "cpu"
    if resize is not None and resize != "test" and (isinstance(resize, str) or len(resize) != 2):
        raise UserError(f"resize must be 'test', a (long, short) scale or None, got {resize!r}")
    scale = None if resize is None else TEST_SCALE if resize == "test" else tuple(resize)
    x = prepare_image(as_rgb(src), bb.mean, bb.std, scale, device, min_side=bb.patch_size)
    if for_teacher:  # bilinear commutes with the per-channel normalization
        x = resize_to(x, teacher_hw(x.shape[1], x.shape[2], bb.patch_size, bb.window))
    return x


def load_image(src, bb, resize: str | tuple[int, int] | None = "test", for_teacher: bool = False,
               device=None) -> torch.Tensor:
    """Deprecated name of :func:`model_input` (same arguments, same result)."""
    import warnings

    warnings.warn("spar_fast.load_image is deprecated; use spar_fast.model_input (same arguments)",
                  DeprecationWarning, stacklevel=2)
    return model_input(src, bb, resize, for_teacher, device)
