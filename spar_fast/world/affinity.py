"""The world's affinity model: a small DINO-layout ViT whose last-block value vectors group objects.

LPOSS builds its patch graph from DINO ViT-B/16's last-block value vectors, whose cosine is high
between patches of one object and low between objects. The world backbone's own features lack
that property (docs/LPOSS.md), and DINO's weights need the network, so this module trains a
stand-in with it on world scenes. It is a timm ViT in DINO's layout (``vit_base_patch16_224``
with a smaller width and depth): :mod:`spar_fast.segmentation.dino_affinity` reads it through
``affinity="dino", dino_weights=PATH`` exactly as it reads DINO, value vectors of the last
block's ``qkv`` included.

Objective (:func:`grouping_loss`): for the patches of a crop, the unit value vectors (the ones
LPOSS reads) should have cosine 1 within a segment and at most ``-margin`` across segments, the
latter enforced on each patch's ``hardest`` most similar patches of other segments. A segment is
a connected region of one class of the scene generator's labels (:func:`label_segments`); a
patch belongs to the segment covering most of it. Classes are never used: two objects of one
class are different segments, as two cars are for DINO. The grouping DINO learns without labels
is given here by the generator: the world tests the propagation, not self-supervision. Crops of
random sides in ``sides`` (one per step), random flips; the pool of scenes (seeds
``4 * 10**6 + ...``) is apart from every other seed range.

Cached like the world backbone (:mod:`spar_fast.world.backbone`), under a key hashed from the
config, the source of the functions that make the weights and of the scene generator (so an edit
of a docstring or of the cache code keeps the model)::

    <cache>/world/affinity-<key>/model.safetensors   timm state dict; metadata: timm_model,
                                                     timm_kwargs, affinity_key
    <cache>/world/affinity-<key>/affinity.json       the config, the key, build time
"""
from __future__ import annotations

import hashlib
import inspect
import json
import math
import os
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..atomic import atomic_write, atomic_write_with
from ..lock import exclusive_lock
from ..segmentation.dino_affinity import IMAGENET_MEAN, IMAGENET_STD, last_block_values

TIMM_MODEL = "vit_base_patch16_224"  # DINO ViT-B/16's layout; the config sets the size
WEIGHTS_FILE, RECORD_FILE = "model.safetensors", "affinity.json"
POOL_SEED = 4 * 10**6


@dataclass(frozen=True)
class AffinityConfig:
    """What the world's affinity model is trained with (all of it enters the cache key)."""
    dim: int = 96
    depth: int = 4
    heads: int = 4
    patch: int = 16
    steps: int = 1200
    lr: float = 1e-3
    warmup: int = 50
    weight_decay: float = 0.05
    batch: int = 8
    sides: tuple[int, int] = (128, 512)   # crop sides, uniform over multiples of the patch
    margin: float = 0.3                   # cosine across segments pushed to <= -margin
    hardest: int = 64                     # per patch, its most similar patches of other segments
    pool_scenes: int = 48
    pool_side: int = 512
    seed: int = 0

    def timm_kwargs(self) -> dict:
        return {"img_size": 128, "patch_size": self.patch, "embed_dim": self.dim, "depth": self.depth,
                "num_heads": self.heads}


def affinity_key(cfg: AffinityConfig) -> str:
    """16 hex digits naming the model ``cfg`` builds with the code as it is now."""
    from . import scenes as scenes_module

    makers = (build_model, AffinityConfig.timm_kwargs, label_segments, _pool, _crops, patch_segments,
              grouping_loss, last_block_values, _train)
    parts = [json.dumps(asdict(cfg), sort_keys=True), *(inspect.getsource(f) for f in makers),
             inspect.getsource(scenes_module)]
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]


def world_affinity(cfg: AffinityConfig = AffinityConfig(), root: str | None = None, rebuild: bool = False,
                   progress: bool = True, log=print) -> str:
    """Path of the cached affinity model of ``cfg`` (trained now if missing or ``rebuild``): a
    ``dino_weights`` value."""
    from .backbone import cache_root

    key = affinity_key(cfg)
    folder = os.path.join(root or os.path.join(cache_root(), "world"), f"affinity-{key}")
    weights, record = os.path.join(folder, WEIGHTS_FILE), os.path.join(folder, RECORD_FILE)
    if os.path.isfile(record) and os.path.isfile(weights) and not rebuild:
        return weights
    os.makedirs(folder, exist_ok=True)
    with exclusive_lock(folder, "world affinity model"):
        if os.path.isfile(record) and os.path.isfile(weights) and not rebuild:
            return weights
        if os.path.exists(record):  # the record marks completion: drop it first
            os.remove(record)
        start = time.perf_counter()
        model = build_model(cfg)
        train_affinity(model, cfg, progress, log)
        save_affinity(model, cfg, weights, key)
        info = {"key": key, "config": asdict(cfg), "seconds": round(time.perf_counter() - start, 1),
                "torch": torch.__version__, "weights": WEIGHTS_FILE}
        atomic_write(record, (json.dumps(info, indent=1) + "\n").encode())
    return weights


def build_model(cfg: AffinityConfig) -> torch.nn.Module:
    """A random-init timm ViT of ``cfg``'s size in DINO's layout, seeded by ``cfg.seed``."""
    import timm

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        return timm.create_model(TIMM_MODEL, pretrained=False, dynamic_img_size=True, num_classes=0,
                                 **cfg.timm_kwargs())


def save_affinity(model: torch.nn.Module, cfg: AffinityConfig, path: str, key: str = "") -> None:
    """Write the state dict as safetensors with the architecture in its metadata (what
    :func:`spar_fast.segmentation.dino_affinity.load_dino` builds from), atomically."""
    from safetensors.torch import save_file

    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    meta = {"timm_model": TIMM_MODEL, "timm_kwargs": json.dumps(cfg.timm_kwargs()), "affinity_key": key}
    atomic_write_with(path, lambda tmp: save_file(state, tmp, metadata=meta))


def patch_segments(segments: torch.Tensor, patch: int) -> torch.Tensor:
    """The most frequent segment id of each patch's pixels: ``segments int64 [B, H, W]`` (0: no
    segment, the one-pixel outline band) -> ``[B, H/P * W/P]`` (-1 where that is 0)."""
    B, H, W = segments.shape
    cells = segments.reshape(B, H // patch, patch, W // patch, patch).permute(0, 1, 3, 2, 4)
    cells = cells.reshape(B, (H // patch) * (W // patch), patch * patch)
    best = torch.mode(cells, dim=-1).values
    return torch.where(best > 0, best, best.new_tensor(-1))


def grouping_loss(values: torch.Tensor, segments: torch.Tensor, margin: float, hardest: int) -> torch.Tensor:
    """``mean_pos (1 - cos)^2 + mean_hard relu(cos + margin)^2`` over the patch pairs of each crop:
    pos are the pairs of one segment (a patch with itself included); hard are, for each patch,
    its ``hardest`` most similar patches of other segments (the ones a kNN graph would link).
    ``values [B, T, C]``, ``segments int64 [B, T]`` (-1: no segment, left out) -> scalar."""
    unit = F.normalize(values.float(), dim=-1)
    cos = unit @ unit.transpose(1, 2)                                   # [B, T, T]
    valid = (segments[:, :, None] >= 0) & (segments[:, None, :] >= 0)
    same = (segments[:, :, None] == segments[:, None, :]) & valid
    other = valid & ~same
    cost = torch.where(other, F.relu(cos + margin).pow(2), cos.new_tensor(-1.0))  # -1: not a pair
    top = cost.topk(min(hardest, cost.shape[-1]), dim=-1).values
    hard = top[top >= 0]
    return (1 - cos)[same].pow(2).mean() + (hard.mean() if hard.numel() else cos.new_zeros(()))


def label_segments(label: np.ndarray) -> np.ndarray:
    """Segments of a label map ``uint8 [H, W]``: every class split into its connected components,
    numbered 1.. class by class (0 on the ignore band) -> ``int64 [H, W]``."""
    from scipy import ndimage

    from .scenes import IGNORE

    out = np.zeros(label.shape, np.int64)
    count = 0
    for c in np.unique(label):
        if c == IGNORE:
            continue
        components, n = ndimage.label(label == c)
        out[components > 0] = components[components > 0] + count
        count += n
    return out


def _pool(cfg: AffinityConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """``(images uint8 [N, S, S, 3], segments int64 [N, S, S])`` of the training pool."""
    from .scenes import render_scene

    images, segments = [], []
    for i in range(cfg.pool_scenes):
        image, label = render_scene(POOL_SEED + cfg.seed * 10**4 + i, cfg.pool_side, cfg.pool_side)
        images.append(image)
        segments.append(label_segments(label))
    return torch.from_numpy(np.stack(images)), torch.from_numpy(np.stack(segments))


def _crops(images, segments, side: int, count: int, gen: torch.Generator):
    """``count`` random ``side``-square crops with random flips: ``(x [B, 3, s, s] ImageNet-
    normalized, segments [B, s, s])``."""
    n, size = images.shape[0], images.shape[1]
    mean = torch.tensor(IMAGENET_MEAN)[:, None, None]
    std = torch.tensor(IMAGENET_STD)[:, None, None]
    xs, ss = [], []
    for _ in range(count):
        i = int(torch.randint(n, (1,), generator=gen))
        y, x = (int(v) for v in torch.randint(size - side + 1, (2,), generator=gen))
        img = images[i, y:y + side, x:x + side].permute(2, 0, 1).float().div(255.0)
        seg = segments[i, y:y + side, x:x + side]
        if float(torch.rand(1, generator=gen)) < 0.5:
            img, seg = img.flip(-1), seg.flip(-1)
        xs.append((img - mean) / std)
        ss.append(seg)
    return torch.stack(xs), torch.stack(ss)


def train_affinity(model: torch.nn.Module, cfg: AffinityConfig, progress: bool = True, log=print) -> None:
    """Train ``model`` (modified in place, left in eval mode) with :func:`grouping_loss`, on one
    CPU thread (same weights on every machine with the same instruction set, as the world
    backbone's pretraining)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _train(model, cfg, progress, log)
    finally:
        torch.set_num_threads(threads)


def _train(model, cfg: AffinityConfig, progress: bool, log) -> None:
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    images, segments = _pool(cfg)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    lo, hi = cfg.sides[0] // cfg.patch, cfg.sides[1] // cfg.patch
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=cfg.steps, desc="training the world affinity model", unit="step")
    start, recent = time.perf_counter(), []
    for step in range(cfg.steps):
        warm = min(1.0, (step + 1) / cfg.warmup)
        for group in opt.param_groups:
            group["lr"] = cfg.lr * warm * 0.5 * (1 + math.cos(math.pi * step / cfg.steps))
        side = int(torch.randint(lo, hi + 1, (1,), generator=gen)) * cfg.patch
        x, seg = _crops(images, segments, side, cfg.batch, gen)
        loss = grouping_loss(last_block_values(model, x), patch_segments(seg, cfg.patch), cfg.margin,
                              cfg.hardest)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        recent = (recent + [loss.item()])[-50:]
        if bar is not None:
            bar.update(1)
            if step % 50 == 0:
                bar.set_postfix(loss=f"{sum(recent) / len(recent):.3f}")
    if bar is not None:
        bar.close()
    model.eval()
    log(f"world affinity model trained: {cfg.steps} steps in {time.perf_counter() - start:.0f} s, "
        f"final loss {sum(recent) / len(recent):.3f}")
