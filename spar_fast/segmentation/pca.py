"""PCA of dense features on one shared basis, mapped to RGB, and titled panel sheets."""
from __future__ import annotations

import numpy as np
import torch

from ..atomic import save_image
from ..errors import UserError

# Height in pixels of the caption strip above each row of panels (PIL's default bitmap font is
# about 11 px tall).
TITLE_PX = 16


def pca_rgb(feats: list[torch.Tensor], fit_on: list[int] | None = None) -> list[np.ndarray]:
    """Dense features ``[h_i, w_i, C]`` of several models -> ``uint8 [h_i, w_i, 3]`` each.

    The 3-component basis is fit once on the positions of the models ``fit_on`` (default all;
    the demo fits on the teacher alone, as the paper's Fig. 7), centered by their joint mean, so
    colors are comparable across panels; each component is mapped to [0, 255] with the 1st-99th
    percentile range of the fitted positions.
    """
    dims = {int(f.shape[-1]) for f in feats}
    if len(dims) != 1:
        raise UserError(f"models have different feature sizes {sorted(dims)}; PCA needs one size")
    flats = [f.reshape(-1, f.shape[-1]).double() for f in feats]  # [N_i, C]
    fit = torch.cat([flats[i] for i in (range(len(feats)) if fit_on is None else fit_on)])
    mean = fit.mean(0, keepdim=True)
    k = min(3, fit.shape[1], fit.shape[0])
    _, _, v = torch.linalg.svd(fit - mean, full_matrices=False)  # rows of v: components
    basis = torch.cat([v[:k].t(), v.new_zeros(v.shape[1], 3 - k)], dim=1)  # [C, 3]
    ref = (fit - mean) @ basis
    lo = torch.quantile(ref, 0.01, dim=0)
    hi = torch.quantile(ref, 0.99, dim=0)
    out = []
    for f, flat in zip(feats, flats):
        rgb = (((flat - mean) @ basis - lo) / (hi - lo).clamp_min(1e-12)).clamp(0, 1)
        out.append(rgb.mul(255).round().to(torch.uint8).reshape(f.shape[0], f.shape[1], 3).numpy())
    return out


def save_panels(rows, titles, path: str) -> None:
    """A sheet of titled panels: ``rows`` is a list of rows, each a list of ``uint8 [h, w, 3]``
    arrays (the first of a row sets the panel size; the others are resized to it, nearest);
    ``titles`` gives one caption per panel. A single row may be passed unnested."""
    from PIL import Image, ImageDraw

    if rows and isinstance(rows[0], np.ndarray):
        rows, titles = [rows], [titles]
    h, w = rows[0][0].shape[:2]
    cols = max(len(r) for r in rows)
    sheet = Image.new("RGB", (w * cols, (h + TITLE_PX) * len(rows)), "white")
    draw = ImageDraw.Draw(sheet)
    for r, (row, names) in enumerate(zip(rows, titles)):
        top = r * (h + TITLE_PX)
        for c, (panel, name) in enumerate(zip(row, names)):
            tile = Image.fromarray(panel)
            if tile.size != (w, h):
                tile = tile.resize((w, h), Image.NEAREST)
            sheet.paste(tile, (c * w, top + TITLE_PX))
            draw.text((c * w + 3, top + 2), name, fill="black")
    save_image(sheet, path)
