"""The offline demo: SPAR on the synthetic world, where the gain is real and measured.

Used by ``spar-fast demo`` when the hub weights cannot be loaded. The world backbone (pretrained
at 128 px only, cached) is distilled on unlabelled world images (last 2 blocks + dense head), then the
pretrained single pass, the sliding-window teacher (stride 24) and the SPAR student are scored on
held-out scenes at 1x, 2x and 4x the native side, and one 512 px scene is drawn as panels:
image | ground truth | single pass | teacher | SPAR student, and their features on the teacher's
PCA basis (as the paper's Fig. 7).
"""
from __future__ import annotations

import json
import os
import time

import numpy as np
import torch

from ..atomic import atomic_write
from ..train.config import TrainConfig
from ..world.backbone import world_backbone
from ..world.dataset import WorldLayout, val_split, write_world
from .world_paper import DEFAULT_UNFREEZE, distill_world, evaluate_split

DEMO_LAYOUT = WorldLayout(val_sides=(128, 256, 512), unlabelled_count=120)  # the held-out sets of `world paper`
DEMO_TRAIN = TrainConfig(epochs=4, lr=1e-4)
UNFREEZE = DEFAULT_UNFREEZE
REPORT = "report.json"


def _label_rgb(labels: np.ndarray, n: int) -> np.ndarray:
    from ..segmentation.render import palette

    colors = np.concatenate([palette(n), np.full((256 - n, 3), 255, np.uint8)])  # 255: white
    return colors[labels]


@torch.no_grad()
def _panels(pre, student, root: str, split: str, queries, out: str) -> str:
    """Label maps and PCA features of the first scene of ``split`` as one titled sheet."""
    from ..evaluation.datasets import list_samples, load_sample
    from ..segmentation.infer import segment
    from ..segmentation.pca import pca_rgb, save_panels
    from ..segmentation.preprocess import prepare_image
    from ..teacher import teacher_features

    sample = list_samples("folder", root, split)[0]
    image, label = load_sample(sample, False)
    x = prepare_image(image, pre.mean, pre.std, None)
    n = len(queries.lines)
    maps = [segment(pre, x, queries=queries), segment(pre, x, queries=queries, mode="slide"),
            segment(student, x, queries=queries)]
    feats = [teacher_features(pre, x, stride=24), pre(x[None])[0], student(x[None])[0]]
    pca = pca_rgb([f.float() for f in feats], fit_on=[0])
    rows = [[image, _label_rgb(label, n)] + [_label_rgb(m.numpy().astype(np.uint8), n) for m in maps],
            [image] + pca]
    titles = [["image", "ground truth", "single pass", "teacher (s=24)", "SPAR student"],
              ["image", "teacher features (PCA)", "single pass features", "SPAR student features"]]
    path = os.path.join(out, "panels.png")
    save_panels(rows, titles, path)
    return path


def run_world_demo(out: str, progress: bool = True, say=print, layout: WorldLayout = DEMO_LAYOUT,
                   train: TrainConfig = DEMO_TRAIN) -> dict:
    """The demo on the world into ``out``; returns the report (also ``out/report.json``).
    ``layout`` and ``train`` size it (defaults: the demo's)."""
    from ..backbones import Backbone

    stages = {}
    t0 = time.perf_counter()
    world = world_backbone(progress=progress, log=say)
    root = write_world(os.path.join(out, "world"), layout, progress=progress)
    stages["world_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    students = distill_world(world, os.path.join(root, "unlabelled"), os.path.join(out, "run"), (UNFREEZE,),
                             train.replace(progress=progress), log=say)
    stages["distill_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    queries = world.query_set()
    pre = world.load()
    student = Backbone.from_pretrained(world.name, weights=students[UNFREEZE])
    rows = []
    for side in layout.val_sides:
        split = val_split(side)
        row = {"side": side, "single": evaluate_split(pre, root, split, queries),
               "teacher": evaluate_split(pre, root, split, queries, "slide", 24),
               "student": evaluate_split(student, root, split, queries)}
        rows.append(row)
        say(f"side {side}: mIoU single pass {row['single']['mIoU']:.1f}, teacher {row['teacher']['mIoU']:.1f}, "
            f"SPAR student {row['student']['mIoU']:.1f}")
    figure = _panels(pre, student, root, val_split(max(layout.val_sides)), queries, out)
    stages["evaluate_s"] = time.perf_counter() - t0
    report = {"world": True, "backbone": world.name, "world_key": world.key, "weights": world.weights,
              "student": students[UNFREEZE], "unfreeze": UNFREEZE, "stages": stages, "sides": rows,
              "figure": figure, "units": "mIoU in percent (MMSeg), seconds per image on this machine"}
    atomic_write(os.path.join(out, REPORT), (json.dumps(report, indent=1) + "\n").encode())
    return report
