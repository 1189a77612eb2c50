"""``run_probes``: the feature-quality probes of one backbone on one labelled dataset.

Features of the train and val splits are extracted once (cached, :mod:`.features`); the linear
probe and the kNN probe read them; the mask oracle reads the val split's panoptic segments and
classifies them with the text queries. Results are fractions in [0, 1].
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..errors import UserError
from .features import extract_feature_set
from .knn import KnnSettings, knn_probe
from .linear import LinearSettings, linear_probe

PROBES = ("linear", "knn", "panoptic")


@dataclass(frozen=True)
class ProbeOptions:
    """Which probes and how: ``probes`` (subset of :data:`PROBES`), ``train_split`` /
    ``val_split`` (folder split names), ``limit_train`` / ``limit_val`` (first N images),
    ``resolution`` ("native" or a fixed square side), ``linear`` / ``knn`` settings,
    ``instances`` (folder panoptic: "auto" | "folder" | "components"), ``stuff`` (folder classes
    that are one segment per image), ``panoptic_layout`` ("folder" | "cityscapes" | "ade20k"),
    ``cache_dir`` (feature cache; None: no cache), ``precision``, ``progress``."""
    probes: tuple[str, ...] = PROBES
    train_split: str = "train"
    val_split: str = "val"
    limit_train: int | None = None
    limit_val: int | None = None
    resolution: str | int = "native"
    linear: LinearSettings = field(default_factory=LinearSettings)
    knn: KnnSettings = field(default_factory=KnnSettings)
    instances: str = "auto"
    stuff: tuple[int, ...] = (0,)
    panoptic_layout: str = "folder"
    cache_dir: str | None = None
    precision: str = "fp32"
    progress: bool = False

    def check(self) -> None:
        unknown = [p for p in self.probes if p not in PROBES]
        if unknown or not self.probes:
            raise UserError(f"probes must be a non-empty subset of {', '.join(PROBES)}, got {list(self.probes)}")
        if self.instances not in ("auto", "folder", "components"):
            raise UserError(f"instances must be auto, folder or components, got {self.instances!r}")
        if self.panoptic_layout not in ("folder", "cityscapes", "ade20k"):
            raise UserError(f"panoptic layout must be folder, cityscapes or ade20k, got {self.panoptic_layout!r}")
        self.linear.check()
        self.knn.check()


def run_probes(bb, dataset: str, root, options: ProbeOptions = ProbeOptions(), *, classes=None,
               queries=None) -> dict:
    """Linear, kNN and mask-oracle results of backbone ``bb`` on ``dataset`` under ``root``.

    ``classes`` / ``queries``: as in :func:`spar_fast.evaluate` (the folder's classes.txt by
    default); the mask oracle needs text queries (a query file or a text tower). Returns
    ``{"linear": ..., "knn": ..., "panoptic": ..., "classes": [...], "num_train", "num_val"}``."""
    from ..evaluation.datasets import get_spec
    from ..evaluation.runner import _class_lines

    options.check()
    spec = get_spec(dataset)
    if options.probes == ("panoptic",) and options.panoptic_layout != "folder":
        lines, query_set = None, None  # the layout JSON's classes, unless classes / queries are given
        if classes is not None and queries is None:
            from ..segmentation.queries import parse_classes
            lines = parse_classes(classes)
        if queries is not None:
            from ..segmentation.query_file import as_query_set
            query_set = as_query_set(queries, bb, classes)
            lines = list(query_set.lines)
        k = None
    else:
        lines, query_set = _class_lines(bb, spec, root, classes, queries)
        k = len(lines)
    out: dict = {"classes": lines, "resolution": options.resolution}
    common = dict(resolution=options.resolution, num_classes=k, cache_dir=options.cache_dir,
                  precision=options.precision, progress=options.progress)
    if "linear" in options.probes or "knn" in options.probes:
        train = extract_feature_set(bb, dataset, root, options.train_split, limit=options.limit_train, **common)
        val = extract_feature_set(bb, dataset, root, options.val_split, limit=options.limit_val, **common)
        out.update(num_train=len(train), num_val=len(val))
        if "linear" in options.probes:
            out["linear"] = linear_probe(train, val, k, options.linear)
        if "knn" in options.probes:
            out["knn"] = knn_probe(train, val, k, options.knn)
    if "panoptic" in options.probes:
        out["panoptic"] = _panoptic(bb, dataset, root, options, lines, query_set)
    return out


def _panoptic(bb, dataset, root, options: ProbeOptions, lines, query_set) -> dict:
    from ..data.images import read_rgb
    from ..segmentation.query_file import resolve_queries
    from ..runtime import autocast
    from .features import check_resolution, model_input
    from .panoptic import coco_panoptic_samples, folder_panoptic_samples, mask_oracle

    k = len(lines)
    if options.panoptic_layout == "folder":
        if dataset != "folder":
            raise UserError(f"the folder panoptic layout needs --dataset folder, got {dataset}; use "
                            "--probes linear,knn, or --panoptic-layout cityscapes|ade20k")
        samples = folder_panoptic_samples(root, options.val_split, options.instances)[:options.limit_val]
        things = set(range(k)) - set(options.stuff)
    else:
        samples, coco_lines, things = coco_panoptic_samples(root, options.panoptic_layout)
        samples = samples[:options.limit_val]
        if lines is None:
            lines = coco_lines
        if len(lines) != len(coco_lines):
            raise UserError(f"{options.panoptic_layout} panoptic has {len(coco_lines)} classes but "
                            f"{len(lines)} class lines were given")
        k = len(lines)
    device = next(bb.parameters()).device
    queries, q2c, _ = resolve_queries(bb, lines, queries=query_set, device="cpu")
    resolution = check_resolution(options.resolution)

    def feature_fn(sample):
        x = model_input(read_rgb(sample.image), bb, resolution, device)
        with torch.no_grad(), autocast(device, options.precision):
            return bb(x[None])[0].float().cpu()
    result = mask_oracle(feature_fn, samples, queries.float().cpu(), q2c.cpu(), k, set(options.stuff),
                         things, options.progress)
    result["num_images"] = len(samples)
    return result
