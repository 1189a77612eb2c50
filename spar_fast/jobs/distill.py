"""``distill``: teacher features into a store (reused when present), then training."""
from __future__ import annotations

import os

from ..runtime import Weights, check_output_dir
from ..train.config import TrainConfig, make_config
from ..train.trainer import train
from .extract import extract_features


def distill(images, out_dir: str, backbone: str = "siglip2-b16-512", weights="hub", *, stride: int = 24,
            augment: str = "default", dtype: str = "fp16", config: TrainConfig | None = None,
            **overrides) -> str:
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
    ``trainer_state.json`` unless ``resume=False``."""
    if "pretrained" in overrides:
        weights = Weights.deprecated_keyword({"pretrained": overrides.pop("pretrained")}, "distill")
    cfg = make_config(config, **overrides).replace(backbone=backbone, weights=str(Weights.parse(weights)))
    check_output_dir(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    store = os.path.join(out_dir, "store")
    extract_features(images, store, backbone=cfg.backbone, weights=cfg.weights, stride=stride,
                     augment=augment, dtype=dtype, device=cfg.device, seed=cfg.seed, progress=cfg.progress)
    return train(store, out_dir, cfg)
