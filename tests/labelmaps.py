"""One label-map comparison for every segmentation test: labels may differ only at near-ties.

Two label maps of the same logits (a fused kernel and the reference, fp32 and fp64, ...) may
disagree only where rounding can decide: at a pixel whose two best classes have scaled logits
``z = up * logit_scale + logit_bias`` within ``eps`` of each other, or whose best softmax
probability is within a factor ``exp(2 * eps)`` of ``prob_thd`` (an error ``eps`` on every ``z``
moves ``log p = z_best - logsumexp(z)`` by at most ``2 * eps``). The scores are recomputed in fp64
from the logits, with the reference's area filter. Every other difference is a bug.

``eps`` is in scaled-logit units; each caller states the error bound it stands for.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def class_scores(logits: torch.Tensor, query_to_class: torch.Tensor, out_hw: tuple[int, int],
                 logit_scale: float, logit_bias: float = 0.0, area_thd: float | None = None):
    """``(scores [K, H, W], log_p_best [H, W])`` in fp64: per class the best scaled logit of its
    queries (-inf for a class without queries or removed by ``area_thd``), and the log softmax
    probability of the best allowed query over all queries."""
    q2c = query_to_class.long().cpu()
    K = int(q2c.max()) + 1
    x = logits.detach().double().cpu().permute(2, 0, 1)[None]
    z = F.interpolate(x, size=tuple(out_hw), mode="bilinear", align_corners=False)[0]
    z = z * logit_scale + logit_bias  # [Q, H, W]
    scores = torch.full((K, *z.shape[1:]), float("-inf"), dtype=torch.float64)
    scores = scores.scatter_reduce(0, q2c[:, None, None].expand(z.shape), z, "amax")
    if area_thd is not None:
        area = torch.bincount(scores.argmax(0).flatten(), minlength=K)[1:].double()
        removed = torch.cat([torch.zeros(1, dtype=torch.bool), area <= area_thd * area.sum()])
        scores[removed] = float("-inf")
    log_p_best = scores.amax(0) - torch.logsumexp(z, dim=0)
    return scores, log_p_best


def assert_labels_match(got: torch.Tensor, want: torch.Tensor, logits: torch.Tensor,
                        query_to_class: torch.Tensor, out_hw: tuple[int, int], *, eps: float,
                        logit_scale: float = 40.0, logit_bias: float = 0.0, prob_thd: float = 0.0,
                        area_thd: float | None = None) -> None:
    """``got == want`` except at near-ties of ``logits [h, w, Q]`` (see the module docstring)."""
    assert got.shape == want.shape == tuple(out_hw), (tuple(got.shape), tuple(want.shape), tuple(out_hw))
    assert got.dtype == want.dtype == torch.int64
    diff = (got != want).cpu()
    if not bool(diff.any()):
        return
    scores, log_p_best = class_scores(logits, query_to_class, out_hw, logit_scale, logit_bias, area_thd)
    if scores.shape[0] > 1:
        top2 = scores.topk(2, dim=0).values[:, diff]
        near_tie = (top2[0] - top2[1]) < eps
    else:
        near_tie = torch.zeros(int(diff.sum()), dtype=torch.bool)
    near_thd = torch.zeros_like(near_tie)
    if prob_thd > 0:
        near_thd = (log_p_best[diff] - torch.log(torch.tensor(prob_thd, dtype=torch.float64))).abs() < 2 * eps
    bad = ~(near_tie | near_thd)
    assert not bool(bad.any()), (f"{int(bad.sum())} of {int(diff.sum())} differing pixels are not near-ties "
                                 f"(eps {eps:g} in scaled-logit units)")
