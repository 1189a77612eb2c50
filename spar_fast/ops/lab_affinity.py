"""Pixel affinity product of LPOSS+ (SPEC §8): ``y = S W S x`` without storing ``W``.

Pixels of an ``[H, W]`` image are the nodes; pixel ``i`` is joined to every pixel ``j`` of its
``(2r+1) x (2r+1)`` window except itself (``r = radius``, 6 in LPOSS+: 168 neighbours) by

    W_ij = exp(-||lab_i - lab_j||_2 / tau)

with ``lab [H, W, 3]`` the image in CIELAB already divided by ``(100, 128, 128)``. ``W`` is
symmetric. ``S = diag(scale)`` (``scale [N]`` or None for the identity) lets the normalized
product ``D^-1/2 W D^-1/2 x`` of the label propagation run as one pass (``scale = D^-1/2``), and
the degree ``D = W 1`` is the product with a column of ones (:func:`lab_affinity_degree`).

:func:`lab_affinity_reference` is the specification: the explicit sparse matrix (LPOSS builds it
the same way, offset by offset), 168 entries per pixel — at 1024x2048 that is 352M entries, about
4 GB of fp32 values and int64 column indices — then a sparse-dense product.

:func:`lab_affinity` computes the weights on the fly (matrix-free): per output pixel, per offset,
one distance, one ``exp`` and ``Q`` multiply-adds. Backends (op ``lab_affinity`` of
``spar_fast._backend``): ``torch`` (the reference), ``cpp`` (``csrc/lab_affinity_cpu.cpp``,
OpenMP over image rows; CPU order ``cpp`` then the reference) and ``triton``
(``kernels/lab_affinity.py``; CUDA order ``triton`` then the reference, unmeasured: no GPU). The
fused kernels read ``lab / tau`` (one division on the host instead of one per pair).
"""
from __future__ import annotations

import warnings

import torch

from .. import _backend
from ..errors import UserError
from .triton_kernels import triton_kernels

DTYPES = (torch.float32, torch.float64)

LAB_AFFINITY = _backend.op("lab_affinity", cpu=("cpp",), cuda=("triton",))

# Pixels per step of the reference matrix build: its [B, K, 3] difference tensor is 132 MB fp32.
MATRIX_BLOCK = 2 ** 16


def _check(lab, x, scale, radius, tau) -> None:
    """Validate the arguments (one-line ``UserError`` each)."""
    if not isinstance(lab, torch.Tensor) or lab.dim() != 3 or lab.shape[2] != 3:
        raise UserError(f"lab_affinity lab must be an [H, W, 3] tensor, got "
                        f"{tuple(lab.shape) if isinstance(lab, torch.Tensor) else type(lab).__name__}")
    H, W, _ = lab.shape
    if H < 1 or W < 1 or H * W >= 2 ** 31:
        raise UserError(f"lab_affinity image must be non-empty with H*W < 2**31, got {(H, W)}")
    if not isinstance(x, torch.Tensor) or x.dim() != 2 or x.shape[0] != H * W or x.shape[1] < 1:
        raise UserError(f"lab_affinity x must be [H*W, Q] = [{H * W}, Q>=1], got "
                        f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
    if x.dtype not in DTYPES or lab.dtype != x.dtype:
        raise UserError(f"lab_affinity lab and x must share dtype float32 or float64, got {lab.dtype}, {x.dtype}")
    if scale is not None and (not isinstance(scale, torch.Tensor) or tuple(scale.shape) != (H * W,)
                              or scale.dtype != x.dtype):
        raise UserError(f"lab_affinity scale must be None or a [{H * W}] tensor of dtype {x.dtype}")
    if len({t.device for t in (lab, x, scale) if t is not None}) != 1:
        raise UserError("lab_affinity inputs must be on one device")
    if isinstance(radius, bool) or not isinstance(radius, int) or radius < 1:
        raise UserError(f"lab_affinity radius must be an integer >= 1, got {radius!r}")
    if not isinstance(tau, (int, float)) or not 0 < tau < float("inf"):
        raise UserError(f"lab_affinity tau must be a finite number > 0, got {tau!r}")


def offsets(radius: int) -> list[tuple[int, int]]:
    """The ``(dy, dx)`` of the ``(2r+1)^2 - 1`` neighbours, row-major, centre excluded."""
    span = range(-radius, radius + 1)
    return [(dy, dx) for dy in span for dx in span if (dy, dx) != (0, 0)]


def lab_affinity_matrix(lab: torch.Tensor, radius: int = 6, tau: float = 0.01) -> torch.Tensor:
    """The explicit ``W`` as a sparse CSR ``[N, N]`` tensor (N = H*W) of ``lab``'s dtype.

    Built as a dense ``[N, K]`` table (K = (2r+1)^2 - 1 offsets, row-major, so each row's columns
    come out sorted), ``MATRIX_BLOCK`` pixels x all offsets per step (few large tensor ops), then
    compacted to the entries inside the image.
    """
    H, W, _ = lab.shape
    N, device = H * W, lab.device
    flat = lab.reshape(N, 3)
    moves = torch.tensor(offsets(radius), device=device)  # [K, 2]
    K = moves.shape[0]
    cols = torch.empty((N, K), dtype=torch.int64, device=device)
    vals = torch.empty((N, K), dtype=lab.dtype, device=device)
    inside = torch.empty((N, K), dtype=torch.bool, device=device)
    for start in range(0, N, MATRIX_BLOCK):
        i = torch.arange(start, min(N, start + MATRIX_BLOCK), device=device)
        ny = (i // W)[:, None] + moves[:, 0]  # [B, K]
        nx = (i % W)[:, None] + moves[:, 1]
        inside[i] = (ny >= 0) & (ny < H) & (nx >= 0) & (nx < W)
        j = ny.clamp(0, H - 1) * W + nx.clamp(0, W - 1)
        cols[i] = j
        vals[i] = torch.exp(-(flat[i][:, None, :] - flat[j]).square().sum(-1).sqrt() / tau)
    crow = torch.zeros(N + 1, dtype=torch.int64, device=device)
    crow[1:] = inside.sum(1).cumsum(0)
    with warnings.catch_warnings():  # "sparse CSR support is in beta": the reference accepts it
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(crow, cols[inside], vals[inside], (N, N))


def lab_affinity_reference(lab: torch.Tensor, x: torch.Tensor, scale: torch.Tensor | None = None,
                           radius: int = 6, tau: float = 0.01) -> torch.Tensor:
    """``S W S x`` with the explicit sparse ``W``: ``lab [H, W, 3]``, ``x [H*W, Q]``,
    ``scale [H*W]`` or None -> ``[H*W, Q]``."""
    _check(lab, x, scale, radius, tau)
    return _reference(lab, x, scale, radius, tau)


def _reference(lab, x, scale, radius, tau):
    mat = lab_affinity_matrix(lab, radius, tau)
    if scale is None:
        return mat @ x
    return scale[:, None] * (mat @ (scale[:, None] * x))


@LAB_AFFINITY.register("torch", available=_backend.anywhere)
def _lab_affinity_torch(lab, x, scale, radius, tau):
    return _reference(lab, x, scale, radius, tau)


@LAB_AFFINITY.register("cpp", available=_backend.cpu_extension, compiled="lab_affinity_apply")
def _lab_affinity_cpp(lab, x, scale, radius, tau):
    return torch.ops.spar_fast.lab_affinity_apply((lab / tau).contiguous(), x.contiguous(),
                                                  None if scale is None else scale.contiguous(), radius)


def _triton_accepts(lab, x, scale, radius, tau) -> str | None:
    if x.dtype != torch.float32:
        return "runs float32 only"
    return None if x.numel() < 2 ** 31 else "indexes with int32 (H*W*Q < 2**31)"


@LAB_AFFINITY.register("triton", available=_backend.triton_device, accepts=_triton_accepts)
def _lab_affinity_triton(lab, x, scale, radius, tau):
    kernels = triton_kernels("lab_affinity")
    return kernels.lab_affinity_apply((lab / tau).contiguous(), x.contiguous(),
                                      None if scale is None else scale.contiguous(), radius)


def lab_affinity(lab: torch.Tensor, x: torch.Tensor, scale: torch.Tensor | None = None,
                 radius: int = 6, tau: float = 0.01) -> torch.Tensor:
    """``S W S x`` computed on the fly: ``lab [H, W, 3]``, ``x [H*W, Q]``, ``scale [H*W]`` or
    None (fp32 or fp64, one dtype) -> ``[H*W, Q]``; same result as
    :func:`lab_affinity_reference` up to rounding."""
    _check(lab, x, scale, radius, tau)
    return LAB_AFFINITY.run(x.device, lab, x, scale, radius, float(tau))


def lab_affinity_degree(lab: torch.Tensor, radius: int = 6, tau: float = 0.01,
                        fused: bool = True) -> torch.Tensor:
    """Degree ``W 1`` ``[H*W]`` of the pixel graph (``fused=False``: the reference)."""
    ones = lab.new_ones((lab.shape[0] * lab.shape[1], 1))
    fn = lab_affinity if fused else lab_affinity_reference
    return fn(lab, ones, None, radius, tau)[:, 0]
