"""kNN retrieval segmentation (paper Table 7, Hummingbird style, Balažević et al. 2023).

Memory bank: L2-normalized patch features ``[N, C]`` of the train split with each patch's label
distribution ``[N, K]`` (the fraction of its labelled pixels in each class: the label map
area-averaged to the patch grid; patches without labelled pixels are left out). A fraction
``sample_fraction`` of each image's patches is kept (seeded), then at most ``bank_size`` patches
overall (uniform, seeded) — the paper had to subsample to fit a GPU.

Each val patch takes its ``k`` nearest bank entries by cosine similarity; its class scores are
``sum_j softmax(sim_j / temperature) * dist_j``, bilinearly upsampled to the label size, argmax.

The search is chunked: ``query_chunk`` queries against ``bank_chunk`` bank rows at a time with a
running top-k, so memory is ``O(query_chunk * (bank_chunk + k))`` whatever the bank's size, on
a GPU or a CPU. :func:`nearest_reference` is the one-matrix search it must equal.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import UserError
from ..evaluation.metrics import IGNORE_INDEX, ConfusionMatrix
from .features import FeatureSet


@dataclass(frozen=True)
class KnnSettings:
    """Bank and search settings (defaults: Hummingbird's k = 30, temperature 0.02)."""
    k: int = 30
    temperature: float = 0.02
    sample_fraction: float = 1.0
    bank_size: int | None = None
    query_chunk: int = 4096
    bank_chunk: int = 65536
    seed: int = 0

    def check(self) -> None:
        if self.k < 1:
            raise UserError(f"kNN k must be >= 1, got {self.k}")
        if not self.temperature > 0:
            raise UserError(f"kNN temperature must be > 0, got {self.temperature}")
        if not 0 < self.sample_fraction <= 1:
            raise UserError(f"kNN sampling fraction must be in (0, 1], got {self.sample_fraction}")
        if self.bank_size is not None and self.bank_size < 1:
            raise UserError(f"kNN bank size must be >= 1, got {self.bank_size}")
        if self.query_chunk < 1 or self.bank_chunk < 1:
            raise UserError("kNN chunk sizes must be >= 1")


def patch_label_distribution(label: torch.Tensor, grid_hw, num_classes: int) -> torch.Tensor:
    """``uint8 [H, W]`` labels -> ``[h, w, K]``: per patch, the share of each class among its
    labelled pixels (area averaging; rows of all-ignore patches sum to 0)."""
    lab = label.long()
    valid = lab != IGNORE_INDEX
    onehot = F.one_hot(torch.where(valid, lab, 0).clamp_(0, num_classes - 1), num_classes).float()
    onehot *= valid[..., None]
    pooled = F.interpolate(onehot.permute(2, 0, 1)[None], size=tuple(grid_hw), mode="area")[0]
    counts = pooled.sum(0, keepdim=True)
    return (pooled / counts.clamp_min(1e-12)).permute(1, 2, 0) * (counts.permute(1, 2, 0) > 0)


@dataclass
class MemoryBank:
    """``keys [N, C]`` unit rows and ``values [N, K]`` label distributions."""
    keys: torch.Tensor
    values: torch.Tensor


def build_bank(train: FeatureSet, num_classes: int, settings: KnnSettings = KnnSettings()) -> MemoryBank:
    """The memory bank of ``train`` (module docstring)."""
    gen = torch.Generator().manual_seed(settings.seed)
    keys, values = [], []
    for feats, label in zip(train.feats, train.labels):
        dist = patch_label_distribution(label, feats.shape[:2], num_classes).reshape(-1, num_classes)
        f = F.normalize(feats.reshape(-1, feats.shape[-1]).float(), dim=-1)
        keep = torch.nonzero(dist.sum(1) > 0).flatten()
        if settings.sample_fraction < 1:
            n = max(1, round(len(keep) * settings.sample_fraction))
            keep = keep[torch.randperm(len(keep), generator=gen)[:n]]
        keys.append(f[keep])
        values.append(dist[keep])
    keys, values = torch.cat(keys), torch.cat(values)
    if settings.bank_size is not None and len(keys) > settings.bank_size:
        keep = torch.randperm(len(keys), generator=gen)[:settings.bank_size]
        keys, values = keys[keep], values[keep]
    if len(keys) == 0:
        raise UserError("the kNN memory bank is empty: no train patch has a labelled pixel")
    return MemoryBank(keys.contiguous(), values.contiguous())


def nearest_reference(queries: torch.Tensor, keys: torch.Tensor, k: int):
    """``(similarities [M, k], indices [M, k])`` of the ``k`` largest ``queries @ keys.T``."""
    return torch.topk(queries @ keys.t(), min(k, len(keys)), dim=1)


def nearest(queries: torch.Tensor, keys: torch.Tensor, k: int, query_chunk: int = 4096,
            bank_chunk: int = 65536):
    """:func:`nearest_reference` in bounded memory: ``query_chunk x bank_chunk`` similarities at
    a time; each chunk's top-k merged into a running top-k per query."""
    k = min(k, len(keys))
    out_s, out_i = [], []
    for q0 in range(0, len(queries), query_chunk):
        q = queries[q0:q0 + query_chunk]
        for b0 in range(0, len(keys), bank_chunk):
            sims = q @ keys[b0:b0 + bank_chunk].t()
            chunk_s, chunk_i = torch.topk(sims, min(k, sims.shape[1]), dim=1)  # the chunk's best k
            if b0 == 0:
                best_s, best_i = chunk_s, chunk_i
                continue
            both_s, both_i = torch.cat([best_s, chunk_s], 1), torch.cat([best_i, chunk_i + b0], 1)
            best_s, pos = torch.topk(both_s, min(k, both_s.shape[1]), dim=1)  # merge the two candidate sets
            best_i = torch.gather(both_i, 1, pos)
        out_s.append(best_s)
        out_i.append(best_i)
    return torch.cat(out_s), torch.cat(out_i)


def knn_scores(feats: torch.Tensor, bank: MemoryBank, settings: KnnSettings) -> torch.Tensor:
    """``[h, w, C]`` features -> ``[h, w, K]`` class scores from the bank."""
    h, w, c = feats.shape
    q = F.normalize(feats.reshape(-1, c).float(), dim=-1).to(bank.keys.device)
    sims, idx = nearest(q, bank.keys, settings.k, settings.query_chunk, settings.bank_chunk)
    weights = torch.softmax(sims / settings.temperature, dim=1)               # [M, k]
    scores = torch.einsum("mk,mkc->mc", weights, bank.values[idx])            # [M, K]
    return scores.reshape(h, w, -1)


@torch.no_grad()
def knn_probe(train: FeatureSet, val: FeatureSet, num_classes: int,
              settings: KnnSettings = KnnSettings()) -> dict:
    """``{"mIoU", "aAcc", "IoU", "bank_size"}`` (fractions) of kNN segmentation of ``val``."""
    settings.check()
    bank = build_bank(train, num_classes, settings)
    confmat = ConfusionMatrix(num_classes)
    for feats, label in zip(val.feats, val.labels):
        scores = knn_scores(feats, bank, settings)
        up = F.interpolate(scores.permute(2, 0, 1)[None], size=tuple(label.shape), mode="bilinear",
                           align_corners=False)[0]
        confmat.update(up.argmax(0), label)
    s = confmat.compute()
    return {"mIoU": s["mIoU"], "aAcc": s["aAcc"], "IoU": s["IoU"], "bank_size": len(bank.keys)}
