"""Dataset-level confusion matrix and the two mIoU conventions (SPEC §5.6).

The matrix ``M [K, K]`` (int64; row = target class, column = predicted class) is accumulated
over the whole dataset with one ``torch.bincount`` per image, on the device of the labels (the
GPU when there is one). Pixels whose target is ``ignore_index`` (255) or outside ``0..K-1`` are
dropped. Per class: ``I = M[k, k]``, ``U = row_k + col_k - I``.

* ``mIoU`` (MMSeg): ``mean(I / U)`` over classes with ``U > 0`` (MMSeg's nanmean of the
  dataset-summed intersections and unions).
* ``mIoU_torchmetrics``: ``JaccardIndex(task="multiclass", num_classes=K, ignore_index=255)``
  updated per image and computed at the end (the reference): the same confusion matrix, macro
  average. torchmetrics 1.9 (installed) gives weight 0 to classes absent from both prediction
  and target, which makes it equal to the MMSeg value; earlier torchmetrics releases averaged
  over all K classes with IoU 0 for absent ones, reported as ``mIoU_all_classes``. The two
  differ only when some class never appears in targets or predictions (small subsets).
* ``aAcc``: correctly labelled pixels / counted pixels.
"""
from __future__ import annotations

import torch

IGNORE_INDEX = 255


class ConfusionMatrix:
    """Accumulates ``[K, K]`` counts of (target, prediction) pairs over a dataset."""

    def __init__(self, num_classes: int, device=None, ignore_index: int = IGNORE_INDEX):
        self.num_classes = int(num_classes)
        self.ignore_index = ignore_index
        self.mat = torch.zeros(self.num_classes, self.num_classes, dtype=torch.int64, device=device)

    @torch.no_grad()
    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """Add one image: ``pred`` and ``target`` integer maps of the same shape ``[H, W]``."""
        if pred.shape != target.shape:
            raise ValueError(f"prediction {tuple(pred.shape)} and label {tuple(target.shape)} differ in size")
        k = self.num_classes
        target = target.to(self.mat.device, torch.int64).flatten()
        pred = pred.to(self.mat.device, torch.int64).flatten()
        keep = (target != self.ignore_index) & (target >= 0) & (target < k)
        pred = pred[keep].clamp_(0, k - 1)
        self.mat += torch.bincount(target[keep] * k + pred, minlength=k * k).view(k, k)

    def merge(self, other: "ConfusionMatrix") -> None:
        self.mat += other.mat.to(self.mat.device)

    def compute(self) -> dict:
        return scores(self.mat)


def scores(mat: torch.Tensor) -> dict:
    """Metrics of a confusion matrix ``[K, K]`` (rows target, columns prediction).

    Returns ``{"mIoU", "mIoU_torchmetrics", "mIoU_all_classes", "aAcc"}`` as floats in [0, 1]
    and ``"IoU"``: list of K per-class IoU (None for a class with empty union).
    """
    m = mat.double()
    inter = m.diagonal()
    union = m.sum(0) + m.sum(1) - inter
    present = union > 0
    iou = torch.where(present, inter / union.clamp_min(1), torch.zeros_like(inter))
    total = m.sum()
    miou = float(iou[present].mean()) if bool(present.any()) else 0.0
    return {
        "mIoU": miou,
        "mIoU_torchmetrics": miou,
        "mIoU_all_classes": float(iou.mean()),
        "aAcc": float(inter.sum() / total) if float(total) > 0 else 0.0,
        "IoU": [float(v) if p else None for v, p in zip(iou.tolist(), present.tolist())],
    }
