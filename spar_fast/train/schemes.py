"""The other distillation schemes of the paper's Table 9 (supplementary §11), as alternatives to
SPAR's loss; docs/SCHEMES.md argues their settings.

* ``multires`` — :class:`MultiResolution`: targets are the backbone's own single-pass features
  of the augmented image (a store made with ``--teacher single``); the student sees that image
  bilinearly rescaled by a factor ``s ~ U(low, high)`` (sides rounded to multiples of the patch,
  at least one patch), and its features ``[h', w', C]`` are bilinearly resized
  (align_corners=False) to the target grid ``[h, w]`` before the MSE over all elements.
  ``s`` is a function of (seed, epoch, image index) only, so a resumed run draws the same.
* ``class_sim`` — :class:`ClassSimilarity`: with unit text queries ``q [Q, D]`` of a class list,
  the class map of features ``f [h, w, D]`` is, per class ``k``,
  ``softmax_q(scale * cos(f, q))`` maxed over ``k``'s queries (form ``softmax``: the
  probabilities segmentation takes its argmax of, SPEC §5.3) or ``scale * cos(f, q)`` maxed over
  them (form ``cosine``); the loss is the MSE between the student's and the target's maps
  ``[h, w, K]``.

``features`` (SPAR itself) has no scheme object: the trainer's loss is then exactly the reference
MSE (``train/step.py``).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import UserError


def resize_features(feats: torch.Tensor, grid_hw) -> torch.Tensor:
    """Bilinear (align_corners=False) resize of ``[h, w, C]`` to ``[grid_hw[0], grid_hw[1], C]``."""
    if tuple(feats.shape[:2]) == tuple(grid_hw):
        return feats
    return F.interpolate(feats.permute(2, 0, 1)[None], size=tuple(grid_hw), mode="bilinear",
                         align_corners=False)[0].permute(1, 2, 0)


class MultiResolution:
    """Random rescale of the student's input and the loss against the target grid."""

    def __init__(self, low: float, high: float, seed: int, patch: int):
        self.low, self.high, self.seed, self.patch = float(low), float(high), int(seed), int(patch)

    def factor(self, epoch: int, index: int) -> float:
        """``U(low, high)`` drawn from (seed, epoch, image index)."""
        return float(np.random.default_rng([self.seed, epoch, index]).uniform(self.low, self.high))

    def rescaled_hw(self, hw, factor: float) -> tuple[int, int]:
        p = self.patch
        return tuple(max(p, int(round(side * factor / p)) * p) for side in hw)

    def rescale(self, image: torch.Tensor, factor: float) -> torch.Tensor:
        """Normalized ``[3, H, W]`` -> ``[3, H', W']`` bilinearly rescaled by ``factor``."""
        size = self.rescaled_hw(image.shape[-2:], factor)
        if size == tuple(image.shape[-2:]):
            return image
        return F.interpolate(image[None], size=size, mode="bilinear", align_corners=False)[0]

    def inputs(self, images, targets, indices, epoch: int):
        """A chunk's ``(rescaled images, targets)``."""
        return [self.rescale(im, self.factor(epoch, i)) for im, i in zip(images, indices)], targets

    def loss(self, feats: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """MSE between the student ``[h', w', C]`` resized to the target's grid and ``target``."""
        return F.mse_loss(resize_features(feats.float(), target.shape[:2]), target.float())


class ClassSimilarity:
    """MSE between class-similarity maps of the student and of the target."""

    def __init__(self, queries: torch.Tensor, query_to_class: torch.Tensor, form: str, scale: float):
        if form not in ("softmax", "cosine"):
            raise UserError(f"class-similarity form must be softmax or cosine, got {form!r}")
        self.queries = F.normalize(queries.float(), dim=-1)
        self.query_to_class = query_to_class.long()
        self.num_classes = int(self.query_to_class.max()) + 1
        self.form, self.scale = form, float(scale)

    def to(self, device) -> "ClassSimilarity":
        self.queries, self.query_to_class = self.queries.to(device), self.query_to_class.to(device)
        return self

    def maps(self, feats: torch.Tensor) -> torch.Tensor:
        """``[h, w, D]`` -> ``[h, w, K]`` (module docstring)."""
        sims = self.scale * (F.normalize(feats.float(), dim=-1) @ self.queries.t())      # [h, w, Q]
        if self.form == "softmax":
            sims = torch.softmax(sims, dim=-1)
        index = self.query_to_class.expand(*sims.shape[:-1], -1)
        out = torch.full((*sims.shape[:-1], self.num_classes), float("-inf"), device=sims.device)
        return out.scatter_reduce(-1, index, sims, reduce="amax")

    def inputs(self, images, targets, indices, epoch: int):
        return images, targets

    def loss(self, feats: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(self.maps(feats), self.maps(target))


def make_scheme(cfg, patch: int, feature_dim: int, store_teacher: str, queries=None):
    """The scheme object of ``cfg`` (None for ``features``), checked against the store's teacher
    and the backbone; ``queries``: ``(queries [Q, D], query_to_class [Q])`` for class_sim."""
    if cfg.scheme == "features":
        if store_teacher == "single":
            raise UserError("this store holds single-pass targets (the student's own initial features); "
                            "train it with --scheme multires, or extract a sliding-window store")
        return None
    if cfg.scheme == "multires":
        if store_teacher != "single":
            raise UserError("--scheme multires distills single-pass targets; extract the store with "
                            "`spar-fast features --teacher single`")
        low, high = cfg.rescale
        return MultiResolution(low, high, cfg.seed, patch)
    if queries is None:
        raise UserError("--scheme class_sim needs its text queries: train through the CLI, spar_fast.distill "
                        "or spar_fast.jobs.distill.train_run (they read class_queries), or pass queries=")
    q, q2c = queries
    if q.dim() != 2 or q.shape[1] != feature_dim:
        raise UserError(f"class queries are {tuple(q.shape)} but the backbone has {feature_dim}-dim features")
    form, scale = cfg.class_settings
    return ClassSimilarity(q, q2c, form, scale)
