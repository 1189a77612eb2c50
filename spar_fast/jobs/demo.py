"""The demo job: distill on real photos shipped with scikit-image, then show what changed.

Steps (each timed): write the photos (train set + held-out set) as PNGs, extract sliding-window
teacher features (the store), train the student, then compare the student before and after
distillation with the teacher: first on the training images (how well it fit its targets), then
on the held-out photos (mean per-position cosine similarity, single-pass vs sliding-window time,
and a titled PCA figure: image | teacher | student before | student after, one 3-component basis
fit on the teacher's features, mapped to RGB as in the paper's Fig. 7). Without hub weights the
seeded random init ``random:0`` is used by teacher and student alike (nothing written). A rerun
reuses the store, the finished run and, for the same student file, the evaluation.

Default settings are sized so the whole job stays under 10 minutes on 2 CPU cores with the real
SigLIP2 B/16-512 architecture (numbers in :data:`SETTINGS`); ``tiny`` uses the tiny config.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..atomic import atomic_write

TRAIN_PHOTOS = ("astronaut", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry", "retina")
HELDOUT_PHOTOS = ("chelsea", "coins")
REPORT = "report.json"


@dataclass(frozen=True)
class DemoSettings:
    """``image_hw``: every photo is center-cropped to this aspect and resized (a 512x768 image
    gives the B/16-512 teacher 12 windows at stride 24).

    Real architecture: the reference recipe (lr 2e-5, last 2 blocks) for 2 epochs of 6 images
    (12 steps). Measured time (README, "The main job": 2 CPU cores shared with a CI run, random
    weights): 7 min 42 s wall, of which teacher features 169 s (~28 s per image), training 100 s
    (~8 s per step) and evaluation 159 s. Tiny config: lr 1e-3 and 8 epochs (48 steps), so that a 3-block random model
    moves visibly in about 10 s."""

    backbone: str
    image_hw: tuple[int, int]
    stride: int
    epochs: int
    unfreeze: str
    lr: float


SETTINGS = {
    "real": DemoSettings("siglip2-b16-512", (512, 768), 24, 2, "blk_-1,blk_-2", 2e-5),
    "tiny": DemoSettings("siglip2-tiny", (512, 768), 24, 8, "blk_-1,blk_-2", 1e-3),
}


def write_photos(folder: str, names, hw: tuple[int, int]) -> list[str]:
    """Save skimage.data photos ``names`` center-cropped and resized to ``hw`` as PNGs."""
    import skimage.data
    from PIL import Image

    os.makedirs(folder, exist_ok=True)
    paths = []
    for name in names:
        path = os.path.join(folder, f"{name}.png")
        if not os.path.exists(path):
            img = np.asarray(getattr(skimage.data, name)())
            img = np.stack([img] * 3, -1) if img.ndim == 2 else img[..., :3]
            h, w = img.shape[:2]
            scale = min(h / hw[0], w / hw[1])
            ch, cw = int(hw[0] * scale), int(hw[1] * scale)
            top, left = (h - ch) // 2, (w - cw) // 2
            crop = Image.fromarray(img[top:top + ch, left:left + cw])
            crop.resize((hw[1], hw[0]), Image.BICUBIC).save(path)
        paths.append(path)
    return paths


def _timed(fn):
    t0 = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - t0


def _load_backbone(name: str, weights):
    from ..backbones import Backbone

    return Backbone.from_pretrained(name, weights=weights).eval()


def _hub_reachable(host: str = "huggingface.co", timeout: float = 3.0) -> bool:
    import socket

    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def choose_weights(settings: DemoSettings, tiny: bool, say) -> str:
    """``"hub"`` when the hub weights of the backbone load, else ``"random:0"``: a seeded random
    init that the teacher and the student rebuild identically, no file written (the tiny config;
    :func:`run_demo` runs the synthetic world instead of random real-size weights).

    Without a route to the hub only the local cache is tried (no download retries)."""
    if tiny:
        say("tiny config: random initialization random:0 (no pretrained weights exist for it)")
        return "random:0"
    import huggingface_hub.constants as hub

    offline = hub.HF_HUB_OFFLINE
    hub.HF_HUB_OFFLINE = offline or not _hub_reachable()
    try:
        _load_backbone(settings.backbone, "hub")
        return "hub"
    except Exception as exc:  # no route to the hub and no cached copy, ...
        say(f"NOTICE: pretrained {settings.backbone} weights could not be loaded "
            f"({exc.__class__.__name__}); running the demo on the synthetic world instead "
            "(spar_fast.world: a small ViT pretrained here, offline, at 128 px only, where the "
            "sliding-window teacher beats the single pass and distillation can be measured).")
        return "random:0"
    finally:
        hub.HF_HUB_OFFLINE = offline


@torch.no_grad()
def evaluate_heldout(before, after, paths, stride: int, device) -> tuple[list[dict], list]:
    """Per held-out image: cosine(student, teacher) before/after and timings; PCA panels
    (image, teacher, student before, student after; basis fit on the teacher)."""
    from ..data import read_rgb
    from ..segmentation.pca import pca_rgb
    from ..segmentation.preprocess import model_input
    from ..teacher import teacher_features

    rows, panels = [], []
    for path in paths:
        image = read_rgb(path)
        x = model_input(image, before, resize=None, for_teacher=True, device=device)
        teacher, t_slide = _timed(lambda: teacher_features(before, x, stride=stride).float())
        s0, t_single = _timed(lambda: before(x[None])[0].float())
        s1 = after(x[None])[0].float()
        cos0 = F.cosine_similarity(s0, teacher, dim=-1).mean().item()
        cos1 = F.cosine_similarity(s1, teacher, dim=-1).mean().item()
        rows.append({"image": os.path.basename(path), "cos_before": cos0, "cos_after": cos1,
                     "sliding_window_s": t_slide, "single_pass_s": t_single})
        panels.append([image] + pca_rgb([teacher.cpu(), s0.cpu(), s1.cpu()], fit_on=[0]))
    return rows, panels


@torch.no_grad()
def fit_on_training_images(before, after, store_path: str, device) -> tuple[float, float]:
    """Mean cosine(student, stored teacher target) over the training images, before/after: how
    well distillation fit its own targets (the held-out numbers say how well that transfers)."""
    from ..data import normalize
    from ..store import FeatureStore

    store = FeatureStore(store_path)
    cos = []
    for rec in store.records:
        target = store.get(rec.image_id)[0].float().to(device)
        x = normalize(store.input_image(rec.image_id), before.mean, before.std).to(device)
        cos.append([F.cosine_similarity(m(x[None])[0].float(), target, dim=-1).mean().item()
                    for m in (before, after)])
    mean = np.mean(cos, axis=0)
    return float(mean[0]), float(mean[1])


def save_figure(panels, rows, path: str) -> None:
    """One titled row per held-out image: image | teacher | student before | student after."""
    from ..segmentation.pca import save_panels

    titles = [[row["image"], "teacher (sliding window)", f"student before, cos {row['cos_before']:.3f}",
               f"student after, cos {row['cos_after']:.3f}"] for row in rows]
    save_panels(panels, titles, path)


def _finished_report(out_dir: str, settings: DemoSettings, weights: str, student: str) -> dict | None:
    """The report of an earlier run of the same settings whose student is the same file, or None."""
    from ..runtime import Weights

    from ..jsonfile import read_json_file

    try:
        report = read_json_file(os.path.join(out_dir, REPORT), "demo report")
    except (OSError, ValueError):
        return None
    if not isinstance(report, dict) or not isinstance(report.get("figure", ""), str):
        return None  # recomputed
    same = (report.get("settings") == json.loads(json.dumps(asdict(settings)))
            and report.get("weights") == weights and report.get("student_id") == Weights.parse(student).identity()
            and os.path.exists(report.get("figure", "")))
    return report if same else None


def run_demo(out_dir: str = "runs/demo", tiny: bool = False, device=None, progress: bool = True,
             say=print) -> dict:
    """Run the demo into ``out_dir``; returns the report (also ``out_dir/report.json``).

    A rerun reuses every finished stage: the store and the training run resume (finished: no
    work), and the held-out evaluation is reused when ``report.json`` belongs to the same
    settings and the same student weights file."""
    from ..backbones.weights import load_weights
    from ..runtime import Weights, resolve_device
    from .extract import extract_features
    from ..train import train

    settings = SETTINGS["tiny" if tiny else "real"]
    device = resolve_device(device)
    stages = {}
    t0 = time.perf_counter()
    train_paths = write_photos(os.path.join(out_dir, "images", "train"), TRAIN_PHOTOS, settings.image_hw)
    held_paths = write_photos(os.path.join(out_dir, "images", "heldout"), HELDOUT_PHOTOS, settings.image_hw)
    weights = choose_weights(settings, tiny, say)
    if weights != "hub" and not tiny:
        from .world_demo import run_world_demo
        return run_world_demo(out_dir, progress=progress, say=say)
    stages["prepare_s"] = time.perf_counter() - t0
    say(f"demo: {settings.backbone} ({weights}), {len(train_paths)} train + {len(held_paths)} held-out "
        f"photos at {settings.image_hw[0]}x{settings.image_hw[1]}, stride {settings.stride}, "
        f"{settings.epochs} epochs, unfreeze {settings.unfreeze}, lr {settings.lr:g}")
    run_dir = os.path.join(out_dir, "run")
    t0 = time.perf_counter()
    store = os.path.join(run_dir, "store")
    extract_features(train_paths, store, backbone=settings.backbone, weights=weights,
                     stride=settings.stride, augment="none", device=device, progress=progress)
    stages["teacher_features_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    student = train(store, run_dir, epochs=settings.epochs, unfreeze=settings.unfreeze, lr=settings.lr,
                    device=str(device), workers=0, progress=progress)
    stages["train_s"] = time.perf_counter() - t0
    earlier = _finished_report(out_dir, settings, weights, student)
    if earlier is not None:
        say(f"held-out evaluation: reusing {os.path.join(out_dir, REPORT)} (same settings and student)")
        earlier["stages"] = dict(earlier["stages"], **{k: v for k, v in stages.items() if k != "evaluate_s"})
        return earlier
    before = _load_backbone(settings.backbone, weights).to(device)
    after = _load_backbone(settings.backbone, weights)
    load_weights(after.model, student)
    after.to(device)
    t0 = time.perf_counter()
    train_cos = fit_on_training_images(before, after, store, device)
    rows, panels = evaluate_heldout(before, after, held_paths, settings.stride, device)
    stages["evaluate_s"] = time.perf_counter() - t0
    figure = os.path.join(out_dir, "pca.png")
    save_figure(panels, rows, figure)
    report = {"settings": asdict(settings), "weights": weights, "pretrained": weights == "hub",
              "run_dir": run_dir, "device": str(device), "stages": stages,
              "train_cos_before": train_cos[0], "train_cos_after": train_cos[1], "heldout": rows,
              "cos_before": float(np.mean([r["cos_before"] for r in rows])),
              "cos_after": float(np.mean([r["cos_after"] for r in rows])),
              "student": student, "student_id": Weights.parse(student).identity(), "figure": figure}
    atomic_write(os.path.join(out_dir, REPORT), json.dumps(report, indent=2).encode())
    return report
