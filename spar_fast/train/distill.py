"""``distill``: teacher features into a store (reused when present), then training."""
from __future__ import annotations

import os

import torch

from ..backbones.weights import save_weights
from .trainer import train


def fixed_random_init(backbone: str, path: str, seed: int) -> str:
    """Write (once) a seeded random initialization of ``backbone`` to ``path``; returns ``path``.

    Without pretrained weights the teacher and the student must still start from the SAME
    weights, so the random initialization is drawn once and used by both through this file."""
    from ..backbones import Backbone

    if not os.path.exists(path):
        devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            bb = Backbone.from_pretrained(backbone, pretrained=False)
        save_weights(bb.model, path)
    return path


def distill(images, out_dir: str, backbone: str = "siglip2-b16-512", pretrained=True, stride: int = 24,
            epochs: int = 10, unfreeze: str = "blk_-1,blk_-2", tokens_per_step: int | None = None,
            lr: float = 2e-5, weight_decay: float = 1e-4, augment: str = "default", dtype: str = "fp16",
            device=None, seed: int = 0, resume: bool = True, *, accumulate: int = 1,
            precision: str = "auto", schedule: str = "constant", warmup_steps: int = 0,
            num_workers: int | None = None, checkpoint_every: int = 0, progress: bool = True) -> str:
    """Run SPAR distillation end to end; returns the final student weights (safetensors).

    ``images``: a folder, a list file or a list of paths (see :func:`spar_fast.data.list_images`).
    Teacher features (sliding window at ``stride``, ``augment`` variant, stored in ``dtype``) go
    to ``out_dir/store``, which a rerun reuses; training writes ``out_dir/{final.safetensors,
    trainer_state.pt, metrics.jsonl, loss.png}`` and resumes from ``trainer_state.pt`` when
    ``resume``. ``pretrained``: True (hub weights), a weights path, or False (a seeded random
    initialization saved as ``out_dir/init.safetensors`` and shared by teacher and student).
    The remaining options are those of :func:`spar_fast.train.train`."""
    from ..store import extract_features

    os.makedirs(out_dir, exist_ok=True)
    if pretrained is False:
        pretrained = fixed_random_init(backbone, os.path.join(out_dir, "init.safetensors"), seed)
    store = os.path.join(out_dir, "store")
    extract_features(images, store, backbone=backbone, pretrained=pretrained, stride=stride,
                     augment=augment, dtype=dtype, device=device, seed=seed, progress=progress)
    return train(store, out_dir, backbone=backbone, pretrained=pretrained, epochs=epochs,
                 unfreeze=unfreeze, tokens_per_step=tokens_per_step, accumulate=accumulate, lr=lr,
                 weight_decay=weight_decay, schedule=schedule, warmup_steps=warmup_steps,
                 precision=precision, device=device, seed=seed, num_workers=num_workers,
                 checkpoint_every=checkpoint_every, resume=resume, progress=progress)
