"""LPOSS / LPOSS+ refinement of open-vocabulary class scores (SPEC §8; Stojnić et al., CVPR 2025).

``refine="lposs"``: the class scores ``Y`` (cosine of the unit dense features with the text
queries, no softmax) of every patch are propagated over a kNN graph of patches
(:func:`~spar_fast.segmentation.propagation.propagate_patches`). The nodes are the patches of the
whole image (single pass) or of all windows jointly (sliding window; a patch centre is its
window's origin + P/2 + P * index, so nearby patches of overlapping windows are close; for a
NaFlex backbone's features P is the window's size over its grid, docs/NAFLEX.md). Window
results are bilinearly resized to the window and averaged over overlaps.
``refine="lposs+"``: then the full-resolution result is propagated again over the pixels
(:func:`~spar_fast.segmentation.propagation.propagate_pixels`, matrix-free).

The graph's affinity features are the backbone's own dense features (``affinity="backbone"``,
offline, the default) or, as in LPOSS, the last-block value vectors of a DINO ViT-B/16
(``affinity="dino"``, weights ``hub | random[:SEED] | PATH``;
:mod:`spar_fast.segmentation.dino_affinity`).

gamma (the exponent of the clipped cosine edge weight, the only gamma of LPOSS): LPOSS's released
configs set 3.0, while its graph builder defaults to 1.0. The SPAR paper (supplementary §9) uses
gamma = 10 for SPAR's distilled single pass and "the default gamma = 1" (that builder default) for
the pretrained single pass and the sliding window. ``gamma=None`` follows the paper:
:func:`default_gamma`. Pass ``gamma=3.0`` for LPOSS's own setting.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import UserError
from ..options import at_least, check_fields, finite_above, in_range, option
from ..runtime import Weights, autocast
from ..teacher.window_plan import window_origins
from .propagation import propagate_patches, propagate_pixels

REFINES = ("lposs", "lposs+")
SLIDE_BATCH = 60  # windows per forward, as the sliding-window segmentation (SPEC §5.8)
GAMMA_DISTILLED_SINGLE = 10.0  # SPAR supplementary §9: SPAR's single pass
GAMMA_DEFAULT = 1.0  # SPAR supplementary §9: pretrained single pass and sliding window


def _weights_problem(value) -> str | None:
    try:
        Weights.parse(value)
    except UserError as exc:
        return f"is not usable: {exc}"
    return None


@dataclass(frozen=True)
class LpossSettings:
    """LPOSS / LPOSS+ hyper-parameters (defaults: LPOSS's configs; gamma: :func:`default_gamma`)."""

    gamma: float | None = option(None, "exponent of the clipped cosine in the patch graph (default: "
                                       "10 for a distilled checkpoint's single pass, else 1)",
                                 check=finite_above(0.0, inclusive=True), kind=float)
    k: int = option(400, "neighbours per patch (the patch itself included)", check=at_least(1))
    alpha: float = option(0.95, "propagation strength alpha in (I - alpha W) X = Y",
                          check=in_range(0.0, 0.999))
    sigma: float = option(0.01, "spatial decay sigma of exp(-sigma d^p), d in pixels",
                          check=finite_above(0.0, inclusive=True))
    power: float = option(1.0, "exponent p of the patch-centre distance", check=finite_above(0.0))
    tau: float = option(0.01, "colour scale tau of the LPOSS+ pixel weights exp(-|Lab_i - Lab_j| / tau)",
                        check=finite_above(0.0))
    radius: int = option(6, "LPOSS+ pixel neighbourhood radius ((2r+1)^2 - 1 neighbours)", check=at_least(1))
    iters: int = option(10, "conjugate-gradient iterations (from 0)", check=at_least(1))
    affinity: str = option("backbone", "graph features: the backbone's dense features, or DINO "
                                       "ViT-B/16 last-block values", choices=("backbone", "dino"))
    dino_weights: str = option("hub", "DINO weights for affinity=dino: hub, random[:SEED] or a path",
                               check=_weights_problem)

    def __post_init__(self):
        check_fields(self)


def default_gamma(mode: str, distilled: bool) -> float:
    """The paper's gamma: 10 for the single pass of a distilled student (``bb.distilled``: a
    spar_fast student or an official SPAR ``.ckpt``), 1 for every other backbone (hub, random, a
    pretrained model from a local file) and for the sliding window."""
    return GAMMA_DISTILLED_SINGLE if mode == "single" and distilled else GAMMA_DEFAULT


@torch.no_grad()
def lposs_logits(bb, image: torch.Tensor, queries: torch.Tensor, refine: str, mode: str = "single",
                 settings: LpossSettings | None = None, stride: int = 24, amp="auto",
                 affinity: Callable | None = None) -> torch.Tensor:
    """Refined class scores of one normalized image ``[3, H, W]`` with unit ``queries [Q, D]``:
    ``[h, w, Q]`` on the patch grid (single pass, ``lposs``) or ``[H, W, Q]`` (otherwise), fp32.

    ``affinity``: graph features of your own instead of ``settings.affinity``'s, a function
    ``(boxes) -> (grids, P)`` of the windows ``(y, x, h, w)`` giving one ``[ceil(h/P), ceil(w/P),
    C]`` grid per window and the pixel size ``P`` of a grid cell."""
    if refine not in REFINES:
        raise UserError(f"refine must be None, 'lposs' or 'lposs+', got {refine!r}")
    if mode not in ("single", "slide"):
        raise UserError(f"mode must be 'single' or 'slide', got {mode!r}")
    if stride <= 0:
        raise UserError(f"stride must be a positive number of pixels, got {stride}")
    s = settings if settings is not None else LpossSettings()
    gamma = s.gamma if s.gamma is not None else default_gamma(mode, bool(getattr(bb, "distilled", False)))
    _, H, W = image.shape
    boxes = _windows(bb, H, W, mode, stride)
    feats, aff, patch = _features(bb, image, boxes, s, amp, affinity)
    own = affinity is None and s.affinity == "backbone"
    scores = [F.normalize(f.float(), dim=-1) @ queries.t().float() for f in feats]  # [h, w, Q] each
    centres = torch.cat([_centres(y, x, f.shape[0], f.shape[1], _cell(bb, own, patch, (h, w), f.shape[:2]),
                                  image.device) for (y, x, h, w), f in zip(boxes, aff)])
    nodes = torch.cat([F.normalize(f.float(), dim=-1).reshape(-1, f.shape[-1]) for f in aff])
    out = propagate_patches(nodes, centres, torch.cat([sc.reshape(-1, sc.shape[-1]) for sc in scores]),
                            s.k, gamma, s.sigma, s.power, s.alpha, s.iters)
    if mode == "single" and refine == "lposs":
        return out.reshape(*scores[0].shape)
    full = _paste(out, scores, boxes, H, W)
    if refine == "lposs":
        return full
    mean = image.new_tensor(bb.mean)[:, None, None]
    std = image.new_tensor(bb.std)[:, None, None]
    return propagate_pixels(image.float() * std + mean, full, s.alpha, s.tau, s.radius, s.iters)


def _windows(bb, H: int, W: int, mode: str, stride: int) -> list[tuple[int, int, int, int]]:
    """``(y, x, height, width)`` of every window: the whole image, or the sliding windows."""
    if mode == "single":
        return [(0, 0, H, W)]
    win_h, win_w = min(bb.window, H), min(bb.window, W)
    return [(y, x, win_h, win_w) for y in window_origins(H, win_h, stride)
            for x in window_origins(W, win_w, stride)]


def _features(bb, image, boxes, s: LpossSettings, amp, affinity=None):
    """Per window the dense features ``[h, w, C]`` (for the scores), the affinity features
    ``[h', w', C']`` (``affinity(boxes)``'s, else ``s.affinity``'s; the scores' features are
    resized when the grids differ) and the affinity patch size."""
    feats = []
    for start in range(0, len(boxes), SLIDE_BATCH):
        crops = torch.stack([image[:, y:y + h, x:x + w] for y, x, h, w in boxes[start:start + SLIDE_BATCH]])
        with autocast(image.device, amp):
            feats.extend(bb(crops).float())
    if affinity is not None:
        aff, patch = affinity(boxes)
        if len(aff) != len(boxes):
            raise UserError(f"the affinity function gave {len(aff)} feature grids for {len(boxes)} windows")
    elif s.affinity == "backbone":
        return feats, feats, bb.patch_size
    else:
        from .dino_affinity import dino_features
        aff, patch = dino_features(bb, image, boxes, Weights.parse(s.dino_weights))
    feats = [f if f.shape[:2] == a.shape[:2] else
             F.interpolate(f.permute(2, 0, 1)[None], size=a.shape[:2], mode="bilinear",
                           align_corners=False)[0].permute(1, 2, 0)
             for f, a in zip(feats, aff)]
    return feats, aff, patch


def _cell(bb, own: bool, patch: int, box_hw, grid) -> tuple:
    """Pixel size ``(cell_h, cell_w)`` of a feature-grid cell: the patch size, except for a NaFlex
    backbone's ``own`` features, whose grid covers the window resized by its patch budget."""
    if own and getattr(bb, "family", None) == "naflex":
        return box_hw[0] / grid[0], box_hw[1] / grid[1]
    return patch, patch


def _centres(y0: int, x0: int, h: int, w: int, cell: tuple, device) -> torch.Tensor:
    """Pixel centres ``[h*w, 2]`` of a window's patches: origin + P//2 + P * index (LPOSS), with
    ``cell`` = ``(P, P)``; a NaFlex cell ``(ch, cw)`` of any size gives origin + c/2 + c * index."""
    ch, cw = cell
    half_h, half_w = (ch // 2, cw // 2) if isinstance(ch, int) else (ch / 2, cw / 2)
    ys = y0 + half_h + ch * torch.arange(h, device=device, dtype=torch.float32)
    xs = x0 + half_w + cw * torch.arange(w, device=device, dtype=torch.float32)
    return torch.stack(torch.meshgrid(ys, xs, indexing="ij"), dim=-1).reshape(-1, 2)


def _paste(out: torch.Tensor, scores: list, boxes, H: int, W: int) -> torch.Tensor:
    """Per-window propagated scores, bilinearly resized to the window and averaged over overlaps
    -> ``[H, W, Q]``."""
    Q = out.shape[1]
    canvas = out.new_zeros((Q, H, W))
    count = out.new_zeros((H, W))
    start = 0
    for (y, x, h, w), sc in zip(boxes, scores):
        n = sc.shape[0] * sc.shape[1]
        win = out[start:start + n].reshape(sc.shape[0], sc.shape[1], Q).permute(2, 0, 1)[None]
        start += n
        canvas[:, y:y + h, x:x + w] += F.interpolate(win, size=(h, w), mode="bilinear", align_corners=False)[0]
        count[y:y + h, x:x + w] += 1
    return (canvas / count).permute(1, 2, 0)
