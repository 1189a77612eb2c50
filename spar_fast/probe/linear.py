"""Linear probe (paper Table 7): one linear layer on frozen dense features, mIoU on val.

Per patch ``logits = ((f - mean) / std) @ W + b`` (``[h, w, K]``; ``mean`` / ``std`` per channel
from the train features, so one learning rate suits any backbone's feature scale — the map is
still linear in ``f``), bilinearly upsampled (align_corners=False) to the label's size; pixel
cross entropy over labelled pixels (255 ignored), AdamW, one image per step, a fixed number of
epochs, zero init, seeded image order. Prediction: argmax of the upsampled logits. Several
learning rates train on the same cached features; each gets its val mIoU.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import UserError
from ..evaluation.metrics import IGNORE_INDEX, ConfusionMatrix
from .features import FeatureSet


@dataclass(frozen=True)
class LinearSettings:
    """``lrs``: one head per learning rate; ``epochs`` over the train images; ``weight_decay``."""
    lrs: tuple[float, ...] = (1e-3, 1e-2, 1e-1)
    epochs: int = 20
    weight_decay: float = 1e-4
    seed: int = 0

    def check(self) -> None:
        if not self.lrs or any(not (lr > 0) for lr in self.lrs):
            raise UserError(f"linear probe learning rates must be positive numbers, got {self.lrs}")
        if self.epochs < 1:
            raise UserError(f"linear probe epochs must be >= 1, got {self.epochs}")


class LinearHead(torch.nn.Module):
    """``[h, w, C]`` features -> ``[K, H, W]`` logits at the label size ``out_hw``."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor, num_classes: int):
        super().__init__()
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)
        self.linear = torch.nn.Linear(mean.numel(), num_classes)
        torch.nn.init.zeros_(self.linear.weight)
        torch.nn.init.zeros_(self.linear.bias)

    def forward(self, feats: torch.Tensor, out_hw) -> torch.Tensor:
        logits = self.linear((feats - self.mean) / self.std)           # [h, w, K]
        return F.interpolate(logits.permute(2, 0, 1)[None], size=tuple(out_hw), mode="bilinear",
                             align_corners=False)[0]                     # [K, H, W]


def feature_stats(train: FeatureSet) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std ``[C]`` over every train patch (std floored at 1e-6)."""
    flat = torch.cat([f.reshape(-1, f.shape[-1]) for f in train.feats]).double()
    return flat.mean(0).float(), flat.std(0).clamp_min(1e-6).float()


def train_head(train: FeatureSet, num_classes: int, lr: float, settings: LinearSettings,
               stats=None) -> LinearHead:
    """A :class:`LinearHead` trained on ``train`` with learning rate ``lr``."""
    mean, std = stats if stats is not None else feature_stats(train)
    head = LinearHead(mean, std, num_classes)
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=settings.weight_decay)
    gen = torch.Generator().manual_seed(settings.seed)
    for _ in range(settings.epochs):
        for i in torch.randperm(len(train), generator=gen).tolist():
            label = train.labels[i].long()
            if not bool((label != IGNORE_INDEX).any()):
                continue
            logits = head(train.feats[i], label.shape)
            loss = F.cross_entropy(logits[None], label[None], ignore_index=IGNORE_INDEX)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return head.eval()


@torch.no_grad()
def evaluate_head(head: LinearHead, val: FeatureSet, num_classes: int) -> dict:
    """Metrics (:func:`spar_fast.evaluation.metrics.scores`, fractions) of ``head`` on ``val``."""
    confmat = ConfusionMatrix(num_classes)
    for feats, label in zip(val.feats, val.labels):
        confmat.update(head(feats, label.shape).argmax(0), label)
    return confmat.compute()


def linear_probe(train: FeatureSet, val: FeatureSet, num_classes: int,
                 settings: LinearSettings = LinearSettings()) -> dict:
    """``{"runs": [{"lr", "mIoU", "aAcc", "IoU"}, ...], "best": the run of highest val mIoU}``
    (fractions in [0, 1])."""
    settings.check()
    if train.dim != val.dim:
        raise UserError(f"train features have {train.dim} channels but val features {val.dim}")
    stats = feature_stats(train)
    runs = []
    for lr in settings.lrs:
        with torch.enable_grad():
            head = train_head(train, num_classes, lr, settings, stats)
        s = evaluate_head(head, val, num_classes)
        runs.append({"lr": lr, "mIoU": s["mIoU"], "aAcc": s["aAcc"], "IoU": s["IoU"]})
    return {"runs": runs, "best": max(runs, key=lambda r: r["mIoU"])}
