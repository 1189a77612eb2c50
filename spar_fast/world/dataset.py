"""The world on disk: a labelled dataset folder and unlabelled training images.

Layout (the ``folder`` dataset of :mod:`spar_fast.evaluation.datasets`)::

    ROOT/classes.txt                 one class line per label value (CLASSES)
    ROOT/images/<id>.png             RGB scenes
    ROOT/labels/<id>.png             uint8 labels, 255 = ignore
    ROOT/splits/val_<side>.txt       held-out square scenes of side <side> (one split per side)
    ROOT/splits/val.txt              all held-out scenes
    ROOT/splits/train.txt            labelled training scenes (for probes)
    ROOT/unlabelled/<id>.png         distillation images (no labels), sizes like real photos
                                     scaled by window / 512

Every file is a deterministic function of its seed and size; a rerun skips files already
written (written atomically, so an interrupted run leaves no partial image).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from ..atomic import atomic_write_with
from .scenes import CLASSES, render_scene

# seed ranges: pretraining uses 10**6 + ..., held-out scenes 0.., unlabelled 2 * 10**6 + ...
VAL_SEED = 0
TRAIN_SEED = 3 * 10**6
UNLABELLED_SEED = 2 * 10**6


@dataclass(frozen=True)
class WorldLayout:
    """What :func:`write_world` writes: held-out sides and counts, unlabelled images."""
    val_sides: tuple[int, ...] = (128, 256, 384, 512)
    val_pixels: int = 12 * 512 * 512       # held-out pixels per side (count = pixels / side^2)
    train_count: int = 0                   # labelled training scenes (probes)
    train_side: int = 256
    unlabelled_count: int = 120
    unlabelled_hw: tuple[tuple[int, int], ...] = ((384, 576), (576, 384), (448, 448), (320, 640))

    def val_count(self, side: int) -> int:
        return min(64, max(2, self.val_pixels // (side * side)))


def _save_png(path: str, array: np.ndarray) -> None:
    if os.path.exists(path):
        return
    from PIL import Image

    atomic_write_with(path, lambda tmp: Image.fromarray(array).save(tmp, format="PNG"))


def _write_scene(root: str, image_id: str, seed: int, hw: tuple[int, int], labelled: bool) -> None:
    folder = "images" if labelled else "unlabelled"
    image_path = os.path.join(root, folder, f"{image_id}.png")
    label_path = os.path.join(root, "labels", f"{image_id}.png")
    if os.path.exists(image_path) and (not labelled or os.path.exists(label_path)):
        return
    image, label = render_scene(seed, *hw)
    _save_png(image_path, image)
    if labelled:
        _save_png(label_path, label)


def _write_lines(path: str, lines: list[str]) -> None:
    text = "".join(f"{line}\n" for line in lines)

    def write(tmp):
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
    atomic_write_with(path, write)


def val_split(side: int) -> str:
    """The split name of the held-out scenes of side ``side``."""
    return f"val_{side}"


def write_world(root, layout: WorldLayout = WorldLayout(), progress: bool = False) -> str:
    """Write (or complete) the world dataset under ``root``; returns ``root``."""
    root = os.fspath(root)
    for sub in ("images", "labels", "splits", "unlabelled"):
        os.makedirs(os.path.join(root, sub), exist_ok=True)
    _write_lines(os.path.join(root, "classes.txt"), list(CLASSES))
    jobs, all_val = [], []
    for side in layout.val_sides:
        ids = [f"val{side}_{i:03d}" for i in range(layout.val_count(side))]
        jobs += [(i, VAL_SEED + side * 1000 + k, (side, side), True) for k, i in enumerate(ids)]
        _write_lines(os.path.join(root, "splits", f"{val_split(side)}.txt"), ids)
        all_val += ids
    _write_lines(os.path.join(root, "splits", "val.txt"), all_val)
    train_ids = [f"train_{i:04d}" for i in range(layout.train_count)]
    jobs += [(i, TRAIN_SEED + k, (layout.train_side,) * 2, True) for k, i in enumerate(train_ids)]
    _write_lines(os.path.join(root, "splits", "train.txt"), train_ids)
    shapes = layout.unlabelled_hw
    jobs += [(f"u_{k:05d}", UNLABELLED_SEED + k, shapes[k % len(shapes)], False)
             for k in range(layout.unlabelled_count)]
    if progress:
        from tqdm.auto import tqdm
        jobs = tqdm(jobs, desc="writing the world", unit="scene")
    for image_id, seed, hw, labelled in jobs:
        _write_scene(root, image_id, seed, hw, labelled)
    return root
