"""PCA of dense features on one shared basis, mapped to RGB."""
from __future__ import annotations

import numpy as np
import torch

from ..errors import UserError


def pca_rgb(feats: list[torch.Tensor]) -> list[np.ndarray]:
    """Dense features ``[h_i, w_i, C]`` of several models -> ``uint8 [h_i, w_i, 3]`` each.

    The basis is fit once on the concatenation of all positions of all models (centered by the
    joint mean), so colors are comparable across panels; each component is mapped to [0, 255]
    with the joint 1st-99th percentile range.
    """
    dims = {int(f.shape[-1]) for f in feats}
    if len(dims) != 1:
        raise UserError(f"models have different feature sizes {sorted(dims)}; PCA needs one size")
    flat = torch.cat([f.reshape(-1, f.shape[-1]).double() for f in feats])  # [N, C]
    mean = flat.mean(0, keepdim=True)
    k = min(3, flat.shape[1], flat.shape[0])
    _, _, v = torch.linalg.svd(flat - mean, full_matrices=False)  # rows of v: components
    proj = (flat - mean) @ v[:k].t()  # [N, k]
    if k < 3:
        proj = torch.cat([proj, proj.new_zeros(proj.shape[0], 3 - k)], dim=1)
    lo = torch.quantile(proj, 0.01, dim=0)
    hi = torch.quantile(proj, 0.99, dim=0)
    rgb = ((proj - lo) / (hi - lo).clamp_min(1e-12)).clamp(0, 1).mul(255).round().to(torch.uint8)
    out, start = [], 0
    for f in feats:
        n = f.shape[0] * f.shape[1]
        out.append(rgb[start:start + n].reshape(f.shape[0], f.shape[1], 3).numpy())
        start += n
    return out
