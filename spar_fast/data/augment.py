"""SPAR distillation augmentation (SPEC §3), sampled once per image and stored as parameters.

``sample_augment`` draws every random choice for one image from its own seed
(:func:`image_seed`: a SHA-256 of the global seed and the image id, so sharding, rank count and
resuming never change it) and returns :class:`AugmentParams`, a small JSON-able record.
``apply_augment`` rebuilds the augmented image from the decoded source and those parameters,
deterministically. The feature store keeps the parameters with each target instead of the
augmented pixels. Measured on skimage photos saved as JPEG (2-core CPU, one thread): decode 2 ms +
re-augment 68 ms per image, versus an 8-bit PNG of the augmented image of 0.68 MB (10x the source
JPEG), 450 ms to encode and 45 ms to decode; the PNG would also round the float image to 8 bits.
Parameters cost ~300 bytes and rebuild the float image exactly.

Steps (SPEC §3), sizes as ``(height, width)``:

1. RandomResize: ``rho ~ U(lo, 1)``, ``scale = (int(S0*rho), int(S1*rho))`` with
   ``(S0, S1, lo) = (2048, 1024, 0.5)`` ("default") or ``(2560, 2560, 0.2)`` ("extended");
   ``factor = min(max(scale)/max(H, W), min(scale)/min(H, W))``;
   new size ``int(dim*factor + 0.5)`` (at least 1 pixel); bilinear.
2. Crop-or-full: if the short side is below ``min_side`` (512), upscale so the short side is
   ``min_side`` and the long side ``ceil(long*min_side/short)``, then floor both to multiples of
   ``multiple`` (16): one bilinear resize, no crop. Otherwise with p = 0.5 the full image is
   resized to the floor multiples, else a crop of ``max(randint(floor(0.4h), h), min_side)`` x
   ``max(randint(floor(0.4w), w), min_side)``, floored to multiples, at a uniform random offset.
   ``randint(a, b)`` includes both ends.
3. Horizontal flip, p = 0.5.

Variant "none" (no augmentation, e.g. features of a fixed image set): only the resize step 2
needs, i.e. upscale when the short side is below ``min_side`` else resize to the floor multiples;
no random resize, no crop, no flip. Every variant returns sides that are multiples of
``multiple`` and at least ``min_side`` (512 >= every supported teacher window).

Bilinear is ``F.interpolate(mode="bilinear", align_corners=False, antialias=False)`` on float
images in [0, 1]; a convex combination of inputs, so outputs stay in [0, 1].
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

VARIANTS = ("default", "extended", "none")
_RESIZE = {"default": ((2048, 1024), 0.5), "extended": ((2560, 2560), 0.2)}
MIN_SIDE = 512
MULTIPLE = 16


@dataclass(frozen=True)
class AugmentParams:
    """Everything needed to rebuild one augmented image from its decoded source.

    ``crop`` is ``(top, left, height, width)`` in the resized image (mode "crop" only);
    ``final_hw`` is the size of the result (before the flip, which keeps it).
    """
    variant: str
    source_hw: tuple[int, int]
    rho: float | None
    resize_hw: tuple[int, int]
    mode: str  # "upscale" | "full" | "crop"
    crop: tuple[int, int, int, int] | None
    final_hw: tuple[int, int]
    flip: bool

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "AugmentParams":
        crop = d.get("crop")
        return cls(variant=d["variant"], source_hw=tuple(d["source_hw"]), rho=d.get("rho"),
                   resize_hw=tuple(d["resize_hw"]), mode=d["mode"],
                   crop=tuple(crop) if crop is not None else None,
                   final_hw=tuple(d["final_hw"]), flip=bool(d["flip"]))


def image_seed(global_seed: int, image_id: str) -> int:
    """A 63-bit seed for one image, from the run's seed and the image id only."""
    digest = hashlib.sha256(f"spar_fast.augment:{int(global_seed)}:{image_id}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def _uniforms(seed: int, n: int) -> list[float]:
    """``n`` uniforms in [0, 1) (53-bit), a pure function of ``seed`` (no library RNG, so stored
    parameters stay reproducible across numpy / torch versions)."""
    out = []
    for k in range(n):
        digest = hashlib.sha256(f"{int(seed)}:{k}".encode()).digest()
        out.append((int.from_bytes(digest[:8], "little") >> 11) * 2.0 ** -53)
    return out


def _randint(u: float, a: int, b: int) -> int:
    """Uniform integer in [a, b] (both included) from a uniform ``u`` in [0, 1)."""
    return a + min(int(u * (b - a + 1)), b - a)


def rescale_size(h: int, w: int, scale: tuple[int, int]) -> tuple[int, int]:
    """Keep-ratio size (SPEC §3.1 / §5.1): fit ``(h, w)`` into ``scale`` (either orientation)."""
    factor = min(max(scale) / max(h, w), min(scale) / min(h, w))
    return max(1, int(h * factor + 0.5)), max(1, int(w * factor + 0.5))


def _floor_to(x: int, multiple: int) -> int:
    return x // multiple * multiple


def _upscale_hw(h: int, w: int, min_side: int, multiple: int) -> tuple[int, int]:
    short = min(h, w)
    nh, nw = -(-h * min_side // short), -(-w * min_side // short)  # ceil: both sides >= min_side
    return _floor_to(nh, multiple), _floor_to(nw, multiple)


def sample_augment(H: int, W: int, seed: int, variant: str = "default", *,
                   min_side: int = MIN_SIDE, multiple: int = MULTIPLE, scale: float = 1.0) -> AugmentParams:
    """Draw the augmentation of one ``H x W`` source image (SPEC §3; see the module docstring).

    ``seed``: the image's own seed (:func:`image_seed`). ``min_side`` / ``multiple`` default to the
    SPEC's 512 / 16; the extraction job raises them only for a backbone whose window or patch
    needs it. ``scale`` multiplies the RandomResize scale ``(S0, S1)`` (1: the SPEC's; a model
    with a 128-pixel window uses ``128 / 512``, with ``min_side`` scaled alike). Seven uniforms are always drawn in a fixed order (rho, crop-or-full, crop height,
    crop width, top, left, flip), whatever branch is taken.
    """
    if variant not in VARIANTS:
        raise ValueError(f"augment variant {variant!r}; expected one of {', '.join(VARIANTS)}")
    if H < 1 or W < 1:
        raise ValueError(f"image size {H}x{W} is empty")
    if min_side % multiple:
        raise ValueError(f"min_side {min_side} is not a multiple of {multiple}")
    if not (0 < scale <= 4):
        raise ValueError(f"augment scale must be in (0, 4], got {scale}")
    u_rho, u_coin, u_ch, u_cw, u_top, u_left, u_flip = _uniforms(seed, 7)
    if variant == "none":
        rho, (h, w), flip = None, (H, W), False
    else:
        (s0, s1), lo = _RESIZE[variant]
        rho = lo + (1.0 - lo) * u_rho
        h, w = rescale_size(H, W, (int(s0 * scale * rho), int(s1 * scale * rho)))
        flip = u_flip < 0.5
    crop = None
    if min(h, w) < min_side:
        mode, final = "upscale", _upscale_hw(h, w, min_side, multiple)
    elif variant == "none" or u_coin < 0.5:
        mode, final = "full", (_floor_to(h, multiple), _floor_to(w, multiple))
    else:
        ch = _floor_to(max(_randint(u_ch, math.floor(0.4 * h), h), min_side), multiple)
        cw = _floor_to(max(_randint(u_cw, math.floor(0.4 * w), w), min_side), multiple)
        top, left = _randint(u_top, 0, h - ch), _randint(u_left, 0, w - cw)
        mode, crop, final = "crop", (top, left, ch, cw), (ch, cw)
    return AugmentParams(variant=variant, source_hw=(H, W), rho=rho, resize_hw=(h, w), mode=mode,
                         crop=crop, final_hw=final, flip=flip)


def _as_float_chw(img) -> torch.Tensor:
    """uint8 ``[H, W, 3]`` (numpy or torch) or float ``[3, H, W]`` in [0, 1] -> float32 [3, H, W]."""
    if isinstance(img, np.ndarray):
        writable = img.flags.c_contiguous and img.flags.writeable
        img = torch.from_numpy(img if writable else np.array(img, order="C"))
    if not isinstance(img, torch.Tensor):
        raise TypeError(f"expected a numpy array or tensor image, got {type(img).__name__}")
    if img.dtype == torch.uint8:
        if img.ndim != 3 or img.shape[2] != 3:
            raise ValueError(f"uint8 image must be [H, W, 3], got {list(img.shape)}")
        return img.permute(2, 0, 1).float().div_(255.0)
    if not img.is_floating_point() or img.ndim != 3 or img.shape[0] != 3:
        raise ValueError(f"float image must be [3, H, W], got {img.dtype} {list(img.shape)}")
    return img.float()


def _resize(x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of ``[1, 3, h, w]`` (identity when the size already matches)."""
    if tuple(x.shape[-2:]) == tuple(hw):
        return x
    return F.interpolate(x, size=tuple(hw), mode="bilinear", align_corners=False, antialias=False)


def apply_augment(img, params: AugmentParams) -> torch.Tensor:
    """Rebuild the augmented image: ``img`` uint8 ``[H, W, 3]`` or float ``[3, H, W]`` in [0, 1]
    (``(H, W) == params.source_hw``) -> float32 ``[3, H', W']`` in [0, 1],
    ``(H', W') == params.final_hw``, on the input's device."""
    x = _as_float_chw(img)
    if tuple(x.shape[1:]) != tuple(params.source_hw):
        raise ValueError(f"image is {x.shape[1]}x{x.shape[2]} but the augmentation was sampled "
                         f"for {params.source_hw[0]}x{params.source_hw[1]}")
    x = _resize(x[None], params.resize_hw)
    if params.mode == "crop":
        top, left, ch, cw = params.crop
        x = x[..., top:top + ch, left:left + cw]
    else:
        x = _resize(x, params.final_hw)
    if params.flip:
        x = x.flip(-1)
    return x[0].contiguous()


def normalize(img01: torch.Tensor, mean, std) -> torch.Tensor:
    """``[3, H, W]`` in [0, 1] -> ``(img01 - mean) / std`` per channel (new tensor)."""
    mean_t = torch.as_tensor(mean, dtype=img01.dtype, device=img01.device).view(-1, 1, 1)
    std_t = torch.as_tensor(std, dtype=img01.dtype, device=img01.device).view(-1, 1, 1)
    return (img01 - mean_t) / std_t
