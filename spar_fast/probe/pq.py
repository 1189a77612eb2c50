"""Panoptic quality (Kirillov et al. 2019), as panopticapi computes it, one image at a time.

A panoptic map is ``int64 [H, W]`` segment ids (0 = void / unlabelled) with ``{id: category}``
(the ground truth also ``crowd`` ids). A prediction and a ground-truth segment of the same
category match when their IoU exceeds 0.5, where the union leaves out the prediction's pixels on
ground-truth void (unique matching follows). Per category: ``TP``, ``FP``, ``FN`` and the summed
IoU of the matches; ``PQ = sum IoU / (TP + FP/2 + FN/2)``, ``SQ = sum IoU / TP``,
``RQ = TP / (TP + FP/2 + FN/2)``; the dataset PQ is the mean over categories with
``TP + FP + FN > 0``. A prediction that is more than half void or same-category crowd is not a
false positive; crowd ground truth is never a false negative.
"""
from __future__ import annotations

import torch


class PanopticQuality:
    """Accumulates per-category TP / FP / FN / IoU over images (``num_classes`` categories)."""

    def __init__(self, num_classes: int):
        self.k = int(num_classes)
        self.tp = torch.zeros(self.k, dtype=torch.int64)
        self.fp = torch.zeros(self.k, dtype=torch.int64)
        self.fn = torch.zeros(self.k, dtype=torch.int64)
        self.iou = torch.zeros(self.k, dtype=torch.float64)

    def update(self, pred: torch.Tensor, pred_cats: dict[int, int], gt: torch.Tensor,
               gt_cats: dict[int, int], crowd: set[int] = frozenset()) -> None:
        """Add one image: ``pred`` / ``gt`` segment id maps ``[H, W]`` (0 = void) and their
        ``{segment id: category}``; ``crowd``: ground-truth ids that are crowd regions."""
        if pred.shape != gt.shape:
            raise ValueError(f"prediction {tuple(pred.shape)} and ground truth {tuple(gt.shape)} differ in size")
        pred, gt = pred.flatten().long(), gt.flatten().long()
        pairs, inter = torch.unique(torch.stack([gt, pred]), dim=1, return_counts=True)
        area_gt = dict(zip(*[t.tolist() for t in torch.unique(gt, return_counts=True)]))
        area_pred = dict(zip(*[t.tolist() for t in torch.unique(pred, return_counts=True)]))
        overlap = {(g, p): n for (g, p), n in zip(pairs.t().tolist(), inter.tolist())}
        matched_gt, matched_pred = set(), set()
        for (g, p), n in overlap.items():
            if g == 0 or p == 0 or g in crowd or gt_cats.get(g) != pred_cats.get(p):
                continue
            union = area_pred[p] + area_gt[g] - n - overlap.get((0, p), 0)
            iou = n / union
            if iou > 0.5:
                c = gt_cats[g]
                self.tp[c] += 1
                self.iou[c] += iou
                matched_gt.add(g)
                matched_pred.add(p)
        for g, c in gt_cats.items():
            if g not in matched_gt and g not in crowd and g in area_gt:
                self.fn[c] += 1
        crowd_of = {gt_cats[g]: g for g in crowd if g in gt_cats}
        for p, c in pred_cats.items():
            if p in matched_pred or p not in area_pred:
                continue
            ignored = overlap.get((0, p), 0) + overlap.get((crowd_of.get(c, -1), p), 0)
            if ignored / area_pred[p] > 0.5:
                continue
            self.fp[c] += 1

    def compute(self, things: set[int] | None = None) -> dict:
        """``{"PQ", "SQ", "RQ", "per_class": [{"PQ", "SQ", "RQ", "TP", "FP", "FN"} | None]}``
        (fractions), plus ``PQ_things`` / ``PQ_stuff`` when ``things`` (category set) is given."""
        tp, fp, fn, iou = self.tp.double(), self.fp.double(), self.fn.double(), self.iou
        den = tp + 0.5 * fp + 0.5 * fn
        present = (tp + fp + fn) > 0
        pq = torch.where(present, iou / den.clamp_min(1e-12), torch.zeros_like(iou))
        sq = torch.where(tp > 0, iou / tp.clamp_min(1), torch.zeros_like(iou))
        rq = torch.where(present, tp / den.clamp_min(1e-12), torch.zeros_like(iou))

        def mean(v, mask):
            return float(v[mask].mean()) if bool(mask.any()) else 0.0
        out = {"PQ": mean(pq, present), "SQ": mean(sq, present), "RQ": mean(rq, present),
               "per_class": [{"PQ": float(pq[c]), "SQ": float(sq[c]), "RQ": float(rq[c]),
                              "TP": int(self.tp[c]), "FP": int(self.fp[c]), "FN": int(self.fn[c])}
                             if present[c] else None for c in range(self.k)]}
        if things is not None:
            is_thing = torch.tensor([c in things for c in range(self.k)])
            out["PQ_things"] = mean(pq, present & is_thing)
            out["PQ_stuff"] = mean(pq, present & ~is_thing)
        return out
