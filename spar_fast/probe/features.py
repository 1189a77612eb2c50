"""Frozen dense features of a labelled split, extracted once and cached for every probe.

A :class:`FeatureSet` holds, per image, the backbone's single-pass features ``[h, w, C]`` (fp16
in the cache, fp32 in memory) and its label ``uint8 [H, W]`` (255 = ignore) at the label's own
size. The linear probe trains several heads / learning rates on one extraction, and the kNN
probe builds its bank from the same train set.

Resolution (``resolution``): ``native`` runs every image at its stored size (Tables 7/8 "native
resolution"); an integer N stretches it to ``N x N`` (the paper's "repository resolution",
a fixed resize to 512² / 1024²). Labels always stay at their stored size: predictions are
upsampled to them.

Cache: one safetensors file per (backbone, weights, dataset folder, split, image ids, resolution)
under ``cache_dir`` (named by a hash of those; written atomically), so a second probe of the
same split reads it instead of running the backbone.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass

import torch

from ..atomic import atomic_write_with
from ..errors import UserError

CACHE_FORMAT = "spar_fast.probe_features/1"


@dataclass
class FeatureSet:
    """Dense features and labels of one split: ``feats[i]`` fp32 ``[h_i, w_i, C]``,
    ``labels[i]`` uint8 ``[H_i, W_i]`` (255 = ignore), ``ids[i]`` the image id."""
    ids: list[str]
    feats: list[torch.Tensor]
    labels: list[torch.Tensor]

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def dim(self) -> int:
        return int(self.feats[0].shape[-1])


def check_resolution(resolution) -> str | int:
    """``"native"`` or a positive integer side (one-line error otherwise)."""
    if resolution == "native":
        return resolution
    try:
        side = int(resolution)
    except (TypeError, ValueError):
        raise UserError(f"resolution must be 'native' or a side in pixels, got {resolution!r}") from None
    if side < 16:
        raise UserError(f"resolution side must be >= 16 pixels, got {side}")
    return side


def cache_key(bb, dataset: str, root, split: str, ids: list[str], resolution) -> str:
    """16 hex digits naming the features of ``ids`` by ``bb`` at ``resolution``."""
    parts = [str(getattr(bb, "name", type(bb).__name__)), str(getattr(bb, "weights_id", "") or ""),
             dataset, os.path.abspath(os.fspath(root)), split, str(resolution), json.dumps(ids)]
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]


def save_feature_set(fs: FeatureSet, path: str) -> None:
    """Write ``fs`` (features fp16, labels uint8) to ``path`` atomically."""
    from safetensors.torch import save_file

    tensors = {}
    for i, (f, lab) in enumerate(zip(fs.feats, fs.labels)):
        tensors[f"feat.{i}"] = f.to(torch.float16).contiguous().cpu()
        tensors[f"label.{i}"] = lab.contiguous().cpu()
    meta = {"format": CACHE_FORMAT, "ids": json.dumps(fs.ids)}
    atomic_write_with(path, lambda tmp: save_file(tensors, tmp, metadata=meta))


def load_feature_set(path: str) -> FeatureSet | None:
    """The cached set at ``path``; None when missing or not a probe cache file."""
    from safetensors import safe_open

    if not os.path.isfile(path):
        return None
    try:
        with safe_open(path, framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("format") != CACHE_FORMAT:
                return None
            ids = json.loads(meta["ids"])
            feats = [f.get_tensor(f"feat.{i}").float() for i in range(len(ids))]
            labels = [f.get_tensor(f"label.{i}") for i in range(len(ids))]
    except (OSError, KeyError, ValueError, json.JSONDecodeError):
        return None
    return FeatureSet(ids, feats, labels)


def model_input(image, bb, resolution, device) -> torch.Tensor:
    """``uint8 [H, W, 3]`` -> normalized ``[3, H', W']`` at ``resolution`` on ``device``."""
    from ..segmentation.preprocess import prepare_image, resize_to

    x = prepare_image(image, bb.mean, bb.std, scale=None, device=device, min_side=int(bb.patch_size))
    return x if resolution == "native" else resize_to(x, (resolution, resolution))


@torch.no_grad()
def extract_feature_set(bb, dataset: str, root, split: str, resolution="native", limit: int | None = None,
                        num_classes: int | None = None, cache_dir: str | None = None,
                        precision: str = "fp32", progress: bool = False) -> FeatureSet:
    """Single-pass features and labels of ``split`` of ``dataset`` (the evaluation readers:
    ``folder``, voc21, ...), from the cache when it holds them. ``num_classes``: label values
    are checked against it (folder datasets)."""
    from ..evaluation.datasets import get_spec, list_samples, load_sample
    from ..evaluation.runner import check_label_values
    from ..runtime import autocast

    resolution = check_resolution(resolution)
    spec = get_spec(dataset)
    samples = list_samples(dataset, root, split)[:limit]
    ids = [s.id for s in samples]
    path = None
    if cache_dir is not None:
        name = cache_key(bb, dataset, root, split, ids, resolution) + ".safetensors"
        path = os.path.join(os.fspath(cache_dir), name)
        cached = load_feature_set(path)
        if cached is not None and cached.ids == ids:
            return cached
    device = next(bb.parameters()).device
    feats, labels = [], []
    it = samples
    if progress:
        from tqdm.auto import tqdm
        it = tqdm(samples, desc=f"features ({split})", unit="img")
    for sample in it:
        image, label = load_sample(sample, spec.reduce_zero_label)
        if num_classes is not None:
            check_label_values(label, num_classes, sample.label)
        x = model_input(image, bb, resolution, device)
        with autocast(device, precision):
            f = bb(x[None])[0]
        feats.append(f.to(torch.float16).float().cpu())  # as cached: a cached rerun is identical
        labels.append(torch.from_numpy(label.copy()))
    fs = FeatureSet(ids, feats, labels)
    if path is not None:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        save_feature_set(fs, path)
    return fs
