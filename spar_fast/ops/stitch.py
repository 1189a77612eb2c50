"""Fused bilinear upsample + stitch of window features onto a canvas (SPEC §2, steps 3-4).

The sliding-window teacher produces, per window, dense features ``[g, g, C]``. Each is
bilinearly upsampled (``align_corners=False``) by an integer factor ``r`` to ``[g*r, g*r, C]``
and added into an fp32 canvas ``[Hc, Wc, C]`` at its origin (in canvas cells), while a count
canvas ``[Hc, Wc]`` gets +1 over the same cells. :func:`stitch_finalize` divides by
``max(count, 1)`` and bilinearly resizes to the output grid ``[h, w]``.

Implementations of :func:`upsample_stitch_` (picked by ``spar_fast._backend.choose("stitch")``):
``torch`` (vectorized, any device), ``cpp`` (``csrc/stitch_cpu.cpp``, CPU), ``cuda``
(``csrc/stitch_cuda.cu``) and ``triton`` (``kernels/stitch.py``). All interpolate in fp32 from
fp32 / fp16 / bf16 features. They sum overlapping windows in different orders, so they agree
with :func:`upsample_stitch_reference` to rounding, not bit for bit.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import _backend
from ..errors import UserError

FEATURE_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# windows interpolated per F.interpolate call in the reference (the reference teacher's batch)
REFERENCE_BATCH = 10
# fp32 elements of upsampled windows the vectorized torch path materializes at once (256 MiB)
_TORCH_CHUNK_ELEMS = 1 << 26


def _upsample(feats: torch.Tensor, r: int) -> torch.Tensor:
    """``[N, g, g, C]`` -> ``[N, g*r, g*r, C]``, exactly ``F.interpolate`` bilinear x r, in fp32
    (fp64 stays fp64: tests evaluate the reference in double)."""
    x = feats.to(torch.promote_types(feats.dtype, torch.float32)).permute(0, 3, 1, 2)
    up = F.interpolate(x, scale_factor=r, mode="bilinear", align_corners=False)
    return up.permute(0, 2, 3, 1)


def upsample_stitch_reference(canvas: torch.Tensor, count: torch.Tensor, feats: torch.Tensor,
                              origins: torch.Tensor, r: int, batch: int = REFERENCE_BATCH) -> None:
    """The reference fold: ``F.interpolate`` on ``batch`` windows at a time, then a Python loop
    adding each window into ``canvas [Hc, Wc, C]`` and +1 into ``count [Hc, Wc]`` (in place)."""
    G = feats.shape[1] * r
    rows_cols = origins.tolist()
    for start in range(0, feats.shape[0], batch):
        up = _upsample(feats[start:start + batch], r)
        for k in range(up.shape[0]):
            row, col = rows_cols[start + k]
            canvas[row:row + G, col:col + G] += up[k]
            count[row:row + G, col:col + G] += 1


def stitch_finalize_reference(canvas: torch.Tensor, count: torch.Tensor,
                              out_hw: tuple[int, int]) -> torch.Tensor:
    """``canvas / max(count, 1)`` resized bilinearly (align_corners=False, no antialias):
    ``[Hc, Wc, C]`` -> ``[h, w, C]`` fp32."""
    mean = canvas / count.clamp(min=1).unsqueeze(-1)
    out = F.interpolate(mean.permute(2, 0, 1).unsqueeze(0), size=tuple(out_hw), mode="bilinear",
                        align_corners=False, antialias=False)
    return out[0].permute(1, 2, 0).contiguous()


def stitch_reference(feats: torch.Tensor, origins: torch.Tensor, r: int,
                     canvas_hw: tuple[int, int], out_hw: tuple[int, int]) -> torch.Tensor:
    """The whole reference algorithm: fp32 canvas ``[*canvas_hw, C]`` and count, per-window fold
    of ``feats [N, g, g, C]`` at ``origins [N, 2]``, divide, resize -> ``[*out_hw, C]`` fp32
    (fp64 for fp64 feats)."""
    dtype = torch.promote_types(feats.dtype, torch.float32)
    canvas = torch.zeros(*canvas_hw, feats.shape[-1], dtype=dtype, device=feats.device)
    count = torch.zeros(*canvas_hw, dtype=dtype, device=feats.device)
    upsample_stitch_reference(canvas, count, feats, origins, r)
    return stitch_finalize_reference(canvas, count, out_hw)


def _check(canvas, count, feats, origins, r) -> tuple[int, int, int, int] | None:
    """Validate the arguments of :func:`upsample_stitch_` (one-line ``UserError`` each).

    Returns the bounding box ``(y0, y1, x0, x1)`` in canvas cells covered by the windows, or
    ``None`` when there are no windows.
    """
    if not isinstance(r, int) or isinstance(r, bool) or r < 1:
        raise UserError(f"upsample factor r must be a positive int, got {r!r}")
    if canvas.dim() != 3 or canvas.dtype != torch.float32 or not canvas.is_contiguous():
        raise UserError(f"canvas must be a contiguous fp32 [Hc, Wc, C] tensor, got {canvas.dtype} "
                        f"{tuple(canvas.shape)}" + ("" if canvas.is_contiguous() else " (non-contiguous)"))
    Hc, Wc, C = canvas.shape
    if count.shape != (Hc, Wc) or count.dtype != torch.float32 or not count.is_contiguous():
        raise UserError(f"count must be a contiguous fp32 [{Hc}, {Wc}] tensor, got {count.dtype} "
                        f"{tuple(count.shape)}")
    if feats.dim() != 4 or feats.shape[1] != feats.shape[2] or feats.shape[3] != C:
        raise UserError(f"feats must be [N, g, g, {C}], got {tuple(feats.shape)}")
    if feats.dtype not in FEATURE_DTYPES:
        raise UserError(f"feats dtype must be float32, float16 or bfloat16, got {feats.dtype}")
    if origins.shape != (feats.shape[0], 2) or origins.dtype.is_floating_point or origins.dtype.is_complex:
        raise UserError(f"origins must be an integer [{feats.shape[0]}, 2] tensor, got {origins.dtype} "
                        f"{tuple(origins.shape)}")
    for name, t in (("count", count), ("feats", feats)):
        if t.device != canvas.device:
            raise UserError(f"{name} is on {t.device} but canvas is on {canvas.device}")
    if feats.shape[0] == 0:
        return None
    G = feats.shape[1] * r
    o = origins.detach().to("cpu", torch.int64)
    lo, hi = o.min(0).values.tolist(), o.max(0).values.tolist()
    if lo[0] < 0 or lo[1] < 0 or hi[0] + G > Hc or hi[1] + G > Wc:
        raise UserError(f"window origins span rows {lo[0]}..{hi[0]}, cols {lo[1]}..{hi[1]}; a "
                        f"{G}x{G} window must fit in the {Hc}x{Wc} canvas")
    return lo[0], hi[0] + G, lo[1], hi[1] + G


def _upsample_stitch_torch(canvas, count, feats, origins, r) -> None:
    """Vectorized torch: interpolate chunks of windows, ``index_add_`` into the flat canvas."""
    N, g, _, C = feats.shape
    Hc, Wc, _ = canvas.shape
    G = g * r
    offs = torch.arange(G, device=canvas.device)
    cells = offs[:, None] * Wc + offs[None, :]  # [G, G] flat offsets inside a window
    base = origins[:, 0] * Wc + origins[:, 1]  # [N]
    flat_canvas, flat_count = canvas.view(-1, C), count.view(-1)
    chunk = max(1, _TORCH_CHUNK_ELEMS // (G * G * C))
    for s in range(0, N, chunk):
        idx = (base[s:s + chunk, None, None] + cells).reshape(-1)
        flat_canvas.index_add_(0, idx, _upsample(feats[s:s + chunk], r).reshape(-1, C))
        flat_count.index_add_(0, idx, torch.ones_like(idx, dtype=torch.float32))


def upsample_stitch_(canvas: torch.Tensor, count: torch.Tensor, feats: torch.Tensor,
                     origins: torch.Tensor, r: int) -> None:
    """Add bilinearly upsampled windows into the canvas, in place.

    Args:
        canvas: ``[Hc, Wc, C]`` fp32, contiguous; receives the upsampled windows.
        count: ``[Hc, Wc]`` fp32, contiguous; +1 over each window's cells.
        feats: ``[N, g, g, C]`` fp32 / fp16 / bf16 window features, same device as canvas.
        origins: ``[N, 2]`` integer (row, col) of each window's top-left, in canvas cells.
        r: integer upsampling factor; a window covers ``[g*r, g*r]`` cells.
    """
    bbox = _check(canvas, count, feats, origins, r)
    if bbox is None:
        return
    backend = _backend.choose("stitch", canvas.device, supported=("torch", "cpp", "cuda", "triton"))
    feats = feats.contiguous()
    origins = origins.to(canvas.device, torch.int64).contiguous()
    if backend == "torch":
        _upsample_stitch_torch(canvas, count, feats, origins, r)
    elif backend == "triton":
        _backend.triton_kernels("stitch").upsample_stitch(canvas, count, feats, origins, r, bbox)
    else:
        _backend.extension().upsample_stitch_(canvas, count, feats, origins, r, *bbox)


def stitch_finalize(canvas: torch.Tensor, count: torch.Tensor, out_hw: tuple[int, int]) -> torch.Tensor:
    """``canvas [Hc, Wc, C] / max(count [Hc, Wc], 1)``, bilinearly resized (align_corners=False,
    no antialias) to ``out_hw`` -> ``[h, w, C]`` fp32 (SPEC §2 step 4)."""
    if canvas.dim() != 3 or canvas.dtype != torch.float32 or count.shape != canvas.shape[:2]:
        raise UserError(f"stitch_finalize needs an fp32 canvas [Hc, Wc, C] and count [Hc, Wc], got "
                        f"{canvas.dtype} {tuple(canvas.shape)} and {tuple(count.shape)}")
    h, w = (int(v) for v in out_hw)
    if h < 1 or w < 1:
        raise UserError(f"stitch_finalize output size must be positive, got {tuple(out_hw)}")
    # the divide+resize is one pass over the canvas; only the C++ path fuses it (GPU: torch ops)
    if _backend.choose("stitch", canvas.device) == "cpp":
        return _backend.extension().stitch_finalize(canvas.contiguous(), count.contiguous().float(), h, w)
    return stitch_finalize_reference(canvas, count.float(), (h, w))
