"""Label propagation of LPOSS / LPOSS+ (SPEC §8): graphs, normalization and conjugate gradient.

Both stages solve ``(I - alpha * D^-1/2 W D^-1/2) X = Y`` for all ``Q`` class columns of
``Y [N, Q]`` at once by :func:`conjugate_gradient` (10 iterations from ``X = 0``; per-column step
sizes, so it is exactly LPOSS's one-column-at-a-time loop). ``D = diag(W 1)`` with zero degrees
set to 1, ``W`` without self loops.

* Patches (:func:`propagate_patches`): ``W`` = the kNN graph of :func:`patch_graph` (``k``
  neighbours by inner product of unit features, the node itself included, weight
  ``max(0, cos)^gamma * exp(-sigma * d^p)``), plus its transpose, diagonal removed. Stored
  explicitly: ``2 N k`` entries (8192 patches x k = 400: 6.6M).
* Pixels (:func:`propagate_pixels`): ``W`` = the Lab-colour affinity of
  :mod:`spar_fast.ops.lab_affinity` over a ``(2r+1)^2 - 1`` window, never stored (``fused``);
  ``fused=False`` builds the explicit sparse matrix once instead (the reference).
"""
from __future__ import annotations

import warnings
from collections.abc import Callable

import torch

from ..ops.lab_affinity import lab_affinity, lab_affinity_matrix

# CIELAB of sRGB, D65 (kornia.color.rgb_to_lab, which LPOSS calls): linear RGB -> XYZ rows
_RGB_TO_XYZ = ((0.412453, 0.357580, 0.180423), (0.212671, 0.715160, 0.072169),
               (0.019334, 0.119193, 0.950227))
_WHITE = (0.95047, 1.0, 1.08883)
LAB_RANGE = (100.0, 128.0, 128.0)  # LPOSS divides L, a, b by these ("to the 0-1 range")
# Similarity rows per kNN block: the [rows, N] fp32 block stays under 256 MB for N <= 64K nodes.
KNN_BLOCK_ELEMENTS = 2 ** 26


def rgb_to_lab(rgb: torch.Tensor) -> torch.Tensor:
    """sRGB ``[3, H, W]`` in [0, 1] -> CIELAB ``[3, H, W]`` (L in [0, 100], a and b about
    [-128, 127]), with kornia's constants (thresholds 0.04045 and 0.008856)."""
    rgb = rgb.clamp(0, 1)
    linear = torch.where(rgb > 0.04045, ((rgb + 0.055) / 1.055).pow(2.4), rgb / 12.92)
    xyz = torch.einsum("ij,jhw->ihw", rgb.new_tensor(_RGB_TO_XYZ), linear)
    xyz = xyz / rgb.new_tensor(_WHITE)[:, None, None]
    f = torch.where(xyz > 0.008856, xyz.clamp_min(0.008856).pow(1 / 3), 7.787 * xyz + 4 / 29)
    return torch.stack([116 * f[1] - 16, 500 * (f[0] - f[1]), 200 * (f[1] - f[2])])


def knn(feats: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Blocked exact kNN by inner product: ``feats [N, C]`` -> ``(sims [N, k'], index [N, k'])``
    with ``k' = min(k, N)``, best first (a unit vector's first neighbour is itself)."""
    N = feats.shape[0]
    k = min(k, N)
    rows = max(1, KNN_BLOCK_ELEMENTS // N)
    sims, index = [], []
    for start in range(0, N, rows):
        block = feats[start:start + rows] @ feats.t()  # [rows, N]
        s, i = block.topk(k, dim=1)
        sims.append(s)
        index.append(i)
    return torch.cat(sims), torch.cat(index)


def patch_graph(feats: torch.Tensor, centres: torch.Tensor, k: int, gamma: float, sigma: float,
                power: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """kNN edges of unit ``feats [N, C]`` at pixel ``centres [N, 2]``: ``(rows, cols, weights)``
    ``[N k']`` each, weight ``max(0, cos)^gamma * exp(-sigma * ||c_i - c_j||^power)``."""
    sims, index = knn(feats, k)
    dist = (centres[:, None, :] - centres[index]).norm(dim=-1)  # [N, k']
    weights = sims.clamp_min(0).pow(gamma) * torch.exp(-sigma * dist.pow(power))
    rows = torch.arange(feats.shape[0], device=feats.device).repeat_interleave(index.shape[1])
    return rows, index.flatten(), weights.flatten()


def normalized_symmetric(rows, cols, weights, n: int) -> torch.Tensor:
    """``D^-1/2 (W + W^T - diag) D^-1/2`` as sparse CSR ``[n, n]`` from the edges of ``W``
    (duplicate entries add, as in a sparse sum); zero degrees count as 1."""
    r = torch.cat([rows, cols])
    c = torch.cat([cols, rows])
    v = torch.cat([weights, weights])
    off = r != c
    coo = torch.sparse_coo_tensor(torch.stack([r[off], c[off]]), v[off], (n, n), check_invariants=False).coalesce()
    (r, c), v = coo.indices(), coo.values()
    degree = torch.zeros(n, dtype=v.dtype, device=v.device).index_add_(0, r, v)
    dinv = torch.where(degree > 0, degree.clamp_min(torch.finfo(v.dtype).tiny).rsqrt(), 1.0)
    with warnings.catch_warnings():  # "sparse CSR support is in beta"
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_coo_tensor(coo.indices(), v * dinv[r] * dinv[c], (n, n)).coalesce().to_sparse_csr()


def conjugate_gradient(apply: Callable[[torch.Tensor], torch.Tensor], b: torch.Tensor,
                       iters: int = 10, tol: float = 1e-6) -> torch.Tensor:
    """``iters`` CG steps from 0 for the symmetric positive definite ``apply`` on every column
    of ``b [N, Q]`` at once (per-column step sizes); a column stops once its residual norm is
    at most ``tol * ||b||`` (cupyx / scipy ``cg(tol=1e-6)``, LPOSS's solver)."""
    x = torch.zeros_like(b)
    r = b.clone()
    p = r.clone()
    rho = (r * r).sum(0)  # [Q]
    limit = tol * rho.sqrt()
    active = rho > 0
    for _ in range(iters):  # in place: x, r, p and q are the only [N, Q] buffers
        if not bool(active.any()):
            break
        q = apply(p)
        alpha = torch.where(active, rho / (p * q).sum(0), 0.0)
        x.addcmul_(p, alpha)
        r.addcmul_(q, alpha, value=-1.0)
        del q
        rho_next = (r * r).sum(0)
        active = active & (rho_next.sqrt() > limit)
        p.mul_(torch.where(active, rho_next / rho, 0.0)).add_(r)
        rho = rho_next
    return x


def propagate_patches(feats: torch.Tensor, centres: torch.Tensor, scores: torch.Tensor, k: int,
                      gamma: float, sigma: float, power: float, alpha: float,
                      iters: int = 10) -> torch.Tensor:
    """LPOSS on the patch graph: unit ``feats [N, C]``, ``centres [N, 2]`` (pixels), class
    ``scores [N, Q]`` -> propagated ``[N, Q]`` (fp32)."""
    rows, cols, weights = patch_graph(feats.float(), centres.float(), k, gamma, sigma, power)
    wn = normalized_symmetric(rows, cols, weights, feats.shape[0])
    return conjugate_gradient(lambda x: x - alpha * (wn @ x), scores.float(), iters)


def propagate_pixels(rgb: torch.Tensor, scores: torch.Tensor, alpha: float, tau: float, radius: int,
                     iters: int = 10, fused: bool = True) -> torch.Tensor:
    """LPOSS+ on the pixel grid: sRGB ``rgb [3, H, W]`` in [0, 1], ``scores [H, W, Q]`` ->
    propagated ``[H, W, Q]`` (fp32). ``fused``: matrix-free products (op ``lab_affinity``);
    False: the explicit sparse matrix, built once."""
    H, W, Q = scores.shape
    lab = (rgb_to_lab(rgb.float()) / rgb.new_tensor(LAB_RANGE, dtype=torch.float32)[:, None, None])
    lab = lab.permute(1, 2, 0).contiguous()
    y = scores.float().reshape(H * W, Q)
    if fused:
        degree = lab_affinity(lab, y.new_ones((H * W, 1)), None, radius, tau)[:, 0]
        dinv = torch.where(degree > 0, degree.clamp_min(torch.finfo(y.dtype).tiny).rsqrt(), 1.0)

        def apply(x):
            return lab_affinity(lab, x, dinv, radius, tau).mul_(-alpha).add_(x)
    else:
        mat = lab_affinity_matrix(lab, radius, tau)
        degree = mat @ y.new_ones((H * W, 1))
        dinv = torch.where(degree > 0, degree.clamp_min(torch.finfo(y.dtype).tiny).rsqrt(), 1.0)

        def apply(x):
            return x - alpha * dinv * (mat @ (dinv * x))
    return conjugate_gradient(apply, y, iters).reshape(H, W, Q)
