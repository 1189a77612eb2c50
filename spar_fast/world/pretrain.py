"""Pretraining the world backbone: a SigLIP2-family ViT trained on world scenes at its native size
only, with one learned embedding per class as its text side.

The objective is the segmentation head itself (SPEC §5): dense features ``[B, h, w, C]`` are
L2-normalized, compared by cosine with the unit class embeddings ``[K, C]``, scaled by
``logit_scale``, bilinearly upsampled to the pixels and scored by cross-entropy against the
labels (255 ignored). So the pretrained model segments the world in single pass at its native
size exactly as ``spar_fast.segment`` runs it, and its embeddings become a query file.

Training crops are native-size (``bb.window``) windows cut from a pool of larger scenes rendered
once, with random flips; every random choice comes from ``seed``.

The head and the last blocks see the native size only, as a CLIP model's do. The first
``aux_blocks`` blocks also learn at every size: each step adds the cross-entropy of a linear
classifier on their tokens for a crop of a random side in ``aux_sides``. Without that phase the
single pass's loss at large sizes is spread over every block, and a student that trains only
the last blocks inherits damaged tokens from the frozen ones (docs/WORLD.md, "History").
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..data.augment import normalize
from .scenes import CLASSES, IGNORE, render_scene


@dataclass(frozen=True)
class Phase:
    """``steps`` of AdamW (fresh state) at peak ``lr`` with a cosine decay to 0, the loss
    ``cross-entropy + span_weight * off_span_energy + norm_weight * norm_spread``."""
    steps: int
    lr: float
    span_weight: float = 0.0
    norm_weight: float = 0.0


@dataclass(frozen=True)
class PretrainConfig:
    """What the world backbone is trained with (all of it enters the cache key).

    Two phases: the segmentation objective alone, then with :func:`off_span_energy` and
    :func:`norm_spread` at a lower learning rate (the span term from the start stalls learning:
    native mIoU 35 instead of 70). ``logit_scale`` 10 rather than CLIP's larger scales: a
    confident prediction then needs a feature close to its class direction, so a wrong class is
    a large feature error that regression sees (at 40, features of classes the model finds hard
    sat within cosine 0.985 of their stitched targets while their argmax was wrong)."""
    backbone: str = "world-s16"
    phases: tuple[Phase, ...] = (Phase(600, 2e-3), Phase(200, 5e-4, 1.0, 1.0))
    batch: int = 64
    weight_decay: float = 0.05
    warmup: int = 100
    logit_scale: float = 10.0
    pool_scenes: int = 48
    pool_side: int = 512
    aux_blocks: int = 2
    aux_sides: tuple[int, int] = (192, 512)
    aux_batch: int = 2
    seed: int = 0

    @property
    def steps(self) -> int:
        return sum(p.steps for p in self.phases)


def _scene_pool(cfg: PretrainConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """``(images uint8 [N, S, S, 3], labels uint8 [N, S, S])`` of the pretraining pool (seeds
    ``10**6 + i``, apart from every evaluation seed)."""
    scenes = [render_scene(10**6 + cfg.seed * 10**4 + i, cfg.pool_side, cfg.pool_side)
              for i in range(cfg.pool_scenes)]
    return (torch.from_numpy(np.stack([s[0] for s in scenes])),
            torch.from_numpy(np.stack([s[1] for s in scenes])))


def _batch(images, labels, size: int, count: int, gen: torch.Generator, mean, std):
    """``count`` random ``size``-square crops with random horizontal flips:
    ``(normalized [B, 3, size, size], labels int64 [B, size, size])``."""
    n, side = images.shape[0], images.shape[1]
    idx = torch.randint(n, (count,), generator=gen)
    ys = torch.randint(side - size + 1, (count,), generator=gen)
    xs = torch.randint(side - size + 1, (count,), generator=gen)
    flips = torch.rand(count, generator=gen) < 0.5
    xb, yb = [], []
    for i, y, x, f in zip(idx.tolist(), ys.tolist(), xs.tolist(), flips.tolist()):
        img = images[i, y:y + size, x:x + size].permute(2, 0, 1).float().div(255.0)
        lab = labels[i, y:y + size, x:x + size].long()
        if f:
            img, lab = img.flip(-1), lab.flip(-1)
        xb.append(normalize(img, mean, std))
        yb.append(lab)
    return torch.stack(xb), torch.stack(yb)


def segmentation_loss(feats: torch.Tensor, embeddings: torch.Tensor, labels: torch.Tensor,
                      logit_scale: float) -> torch.Tensor:
    """Cross-entropy of the segmentation head: ``feats [B, h, w, C]``, ``embeddings [K, C]``,
    ``labels int64 [B, H, W]`` (255 ignored) -> scalar."""
    logits = F.normalize(feats, dim=-1) @ F.normalize(embeddings, dim=-1).t() * logit_scale
    logits = F.interpolate(logits.permute(0, 3, 1, 2), size=labels.shape[-2:], mode="bilinear",
                           align_corners=False)
    return F.cross_entropy(logits, labels, ignore_index=IGNORE)


def off_span_energy(feats: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
    """Mean squared norm of the unit features ``[B, h, w, C]`` outside the span of the class
    embeddings ``[K, C]`` (0: every feature is a mix of class directions) -> scalar.

    Without it only the ``K`` class directions of a ``C``-dimensional feature are trained and the
    rest is left to chance (about 95% of the energy of a free 64-dim world backbone): a teacher
    and a student that differ mostly there make feature regression chase noise. A CLIP model's
    features carry meaning in every direction (its text side names far more concepts than a
    benchmark's classes); this term gives the small world that property."""
    basis, _ = torch.linalg.qr(F.normalize(embeddings, dim=-1).t())  # [C, K] orthonormal
    unit = F.normalize(feats, dim=-1)
    inside = unit @ basis
    return (1.0 - inside.pow(2).sum(-1)).mean()


def aux_loss(bb, classifier: torch.nn.Linear, images, labels, cfg: PretrainConfig,
             gen: torch.Generator) -> torch.Tensor:
    """Cross-entropy of ``classifier`` (``C -> K``) on the tokens after the first
    ``cfg.aux_blocks`` blocks, for ``cfg.aux_batch`` crops of one random side (a multiple of
    the patch size in ``cfg.aux_sides``) -> scalar."""
    p = bb.patch_size
    lo, hi = cfg.aux_sides[0] // p, cfg.aux_sides[1] // p
    side = int(torch.randint(lo, hi + 1, (1,), generator=gen)) * p
    x, y = _batch(images, labels, side, cfg.aux_batch, gen, bb.mean, bb.std)
    tokens, (h, w) = bb.block_tokens(x, cfg.aux_blocks)
    logits = classifier(tokens).reshape(x.shape[0], h, w, -1).permute(0, 3, 1, 2)
    logits = F.interpolate(logits, size=y.shape[-2:], mode="bilinear", align_corners=False)
    return F.cross_entropy(logits, y, ignore_index=IGNORE)


def norm_spread(feats: torch.Tensor) -> torch.Tensor:
    """Mean squared log-norm of the features ``[B, h, w, C]`` (0: every feature has norm 1) -> scalar.

    The head compares directions only, so without it the norms are free, and the classes the
    model finds hard ended up with features 2.5x shorter than the easy ones: feature regression
    (an MSE) then weights their direction errors ~6x less, and a student fits the easy classes
    and leaves the hard ones -- the ones the single pass gets wrong -- as they were."""
    return torch.log(feats.norm(dim=-1).clamp_min(1e-6)).pow(2).mean()


def pretrain(bb, cfg: PretrainConfig, progress: bool = True, log=print) -> torch.Tensor:
    """Train ``bb`` (a random-init world backbone, modified in place) on native-size crops.

    Returns the unit class embeddings ``[K, C]`` fp32 (row k: class ``CLASSES[k]``).

    Runs on one CPU thread: multi-threaded reductions sum in an order that depends on the thread
    count, and 800 steps amplify those last bits into a different backbone. One thread gives the
    same weights on every machine with the same CPU instruction set, whatever its core count.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _pretrain(bb, cfg, progress, log)
    finally:
        torch.set_num_threads(threads)


def _pretrain(bb, cfg: PretrainConfig, progress: bool, log) -> torch.Tensor:
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    images, labels = _scene_pool(cfg)
    model = bb.model.visual
    model.train()
    embeddings = torch.nn.Parameter(torch.randn(len(CLASSES), bb.feature_dim, generator=gen))
    params = [p for p in model.parameters()] + [embeddings]
    classifier = None
    if cfg.aux_blocks:
        width = bb.block_tokens(torch.zeros(1, 3, bb.patch_size, bb.patch_size), 0)[0].shape[-1]
        classifier = torch.nn.Linear(width, len(CLASSES))
        params += list(classifier.parameters())
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=cfg.steps, desc="pretraining the world backbone", unit="step")
    start, recent, done = time.perf_counter(), [], 0
    for phase in cfg.phases:
        opt = torch.optim.AdamW(params, lr=phase.lr, weight_decay=cfg.weight_decay)
        for step in range(phase.steps):
            warm = min(1.0, (done + 1) / cfg.warmup) if done < cfg.warmup else 1.0
            for group in opt.param_groups:
                group["lr"] = phase.lr * warm * 0.5 * (1 + math.cos(math.pi * step / phase.steps))
            x, y = _batch(images, labels, bb.window, cfg.batch, gen, bb.mean, bb.std)
            feats = bb(x)
            loss = segmentation_loss(feats, embeddings, y, cfg.logit_scale)
            if phase.span_weight:
                loss = loss + phase.span_weight * off_span_energy(feats, embeddings)
            if phase.norm_weight:
                loss = loss + phase.norm_weight * norm_spread(feats)
            if classifier is not None:
                loss = loss + aux_loss(bb, classifier, images, labels, cfg, gen)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            done += 1
            recent = (recent + [loss.item()])[-50:]
            if bar is not None:
                bar.update(1)
                if step % 50 == 0:
                    bar.set_postfix(loss=f"{sum(recent) / len(recent):.3f}")
    if bar is not None:
        bar.close()
    model.eval()
    log(f"world backbone pretrained: {cfg.steps} steps in {time.perf_counter() - start:.0f} s, "
        f"final loss {sum(recent) / len(recent):.3f}")
    return F.normalize(embeddings.detach().float(), dim=-1)
