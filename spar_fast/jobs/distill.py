"""``distill``: teacher features into a store (reused when present), then training."""
from __future__ import annotations

import os

from ..errors import UserError
from ..runtime import Weights, check_output_dir
from ..train.config import TrainConfig, make_config
from ..train.trainer import train
from .extract import extract_features


def scheme_queries(cfg: TrainConfig, backbone: str, weights: str):
    """``(queries [Q, D], query_to_class [Q])`` of a class_sim run's ``class_queries`` (a query
    file from `spar-fast queries`, a class file, or names separated by ';'; the last two are
    encoded by ``backbone``'s text tower), None for the other schemes."""
    if cfg.scheme != "class_sim":
        return None
    from ..segmentation.query_file import load_query_set

    spec = cfg.class_queries
    if spec.endswith(".safetensors"):
        qs = load_query_set(spec)
        return qs.queries, qs.query_to_class
    from ..backbones import Backbone
    from ..segmentation.queries import read_class_file, text_queries

    classes = read_class_file(spec) if os.path.isfile(spec) else [c.strip() for c in spec.split(";") if c.strip()]
    if not classes:
        raise UserError(f"class_queries {spec!r} names no class")
    bb = Backbone.from_pretrained(backbone, weights=weights)
    queries, q2c, _ = text_queries(bb, classes, device="cpu")
    return queries.float(), q2c


def train_run(store: str, out_dir: str, config: TrainConfig | None = None, **overrides) -> str:
    """:func:`spar_fast.train.train` with the scheme's text queries read first (``class_sim``)."""
    cfg = make_config(config, **overrides)
    queries = None
    if cfg.scheme == "class_sim":
        from ..store.records import StoreConfig

        store_cfg = StoreConfig.read(store)
        if store_cfg is None:
            raise UserError(f"feature store {store} has no readable store.json")
        queries = scheme_queries(cfg, cfg.backbone or store_cfg.backbone,
                                 cfg.weights or store_cfg.weights or "hub")
    return train(store, out_dir, cfg, queries=queries)


def distill(images, out_dir: str, backbone: str = "siglip2-b16-512", weights="hub", *, stride: int = 24,
            augment: str = "default", dtype: str = "fp16", config: TrainConfig | None = None,
            teacher: str | None = None, **overrides) -> str:
    """Run SPAR distillation end to end; returns the final student weights (safetensors).

    ``images``: a folder, a list file or a list of paths (see :func:`spar_fast.data.list_images`).
    ``weights`` (teacher and student init): ``"hub"``, ``"random[:SEED]"`` (the same seeded init
    in the teacher and the student, no file written), a weights path, or a
    :class:`spar_fast.runtime.Weights` (the older ``pretrained=True | False | PATH`` still works,
    with a deprecation warning). Teacher features (sliding window at ``stride``, ``augment``
    variant, stored in ``dtype``) go to ``out_dir/store``, which a rerun reuses. Training takes
    ``config`` (a :class:`TrainConfig`, default the reference recipe) with keyword ``overrides``
    (its field names, e.g. ``epochs=2``) and writes ``out_dir/{final.safetensors,
    trainer_state.json, metrics.jsonl, loss.png, summary.json}``, resuming from
    ``trainer_state.json`` unless ``resume=False``. ``teacher``: ``"sliding"`` or ``"single"`` (single-pass
    targets); default single for ``scheme="multires"``, else sliding (docs/SCHEMES.md)."""
    if "pretrained" in overrides:
        weights = Weights.deprecated_keyword({"pretrained": overrides.pop("pretrained")}, "distill")
    cfg = make_config(config, **overrides).replace(backbone=backbone, weights=str(Weights.parse(weights)))
    teacher = teacher or ("single" if cfg.scheme == "multires" else "sliding")
    check_output_dir(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    store = os.path.join(out_dir, "store")
    extract_features(images, store, backbone=cfg.backbone, weights=cfg.weights, stride=stride,
                     augment=augment, dtype=dtype, device=cfg.device, seed=cfg.seed, progress=cfg.progress,
                     teacher=teacher)
    return train_run(store, out_dir, cfg)
