"""The demo job: distill on real photos shipped with scikit-image, then show what changed.

Steps (each timed): write the photos (train set + held-out set) as PNGs, extract sliding-window
teacher features (the store), train the student, then on the held-out photos compare the student
before and after distillation with the teacher: mean per-position cosine similarity, single-pass
vs sliding-window time, and a PCA figure (image | teacher | student before | student after; one
3-component basis fit on the teacher's features, mapped to RGB as in the paper's Fig. 7).

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

TRAIN_PHOTOS = ("astronaut", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry", "retina")
HELDOUT_PHOTOS = ("chelsea", "coins")


@dataclass(frozen=True)
class DemoSettings:
    """``image_hw``: every photo is center-cropped to this aspect and resized (a 512x768 image
    gives the B/16-512 teacher 12 windows at stride 24, ~18 s per image on 2 CPU cores).

    Real architecture: the reference recipe (lr 2e-5, last 2 blocks) for 2 epochs of 6 images
    (12 steps, ~4 s each on 2 CPU cores); features, training and evaluation together took 3 min
    48 s there. Tiny config: lr 1e-3 and 8 epochs (48 steps), so that a 3-block random model
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


def teacher_pca_rgb(teacher: torch.Tensor, others: list[torch.Tensor]) -> list[np.ndarray]:
    """Project ``[h,w,C]`` features on the top-3 PCA basis of ``teacher`` -> ``uint8 [h,w,3]`` each
    (teacher first); colors scaled by the teacher projection's 1st-99th percentiles."""
    flat = teacher.reshape(-1, teacher.shape[-1]).double()
    mean = flat.mean(0, keepdim=True)
    basis = torch.linalg.svd(flat - mean, full_matrices=False)[2][:3].t()  # [C, 3]
    ref = (flat - mean) @ basis
    lo, hi = torch.quantile(ref, 0.01, dim=0), torch.quantile(ref, 0.99, dim=0)
    out = []
    for f in [teacher] + others:
        proj = (f.reshape(-1, f.shape[-1]).double() - mean) @ basis
        rgb = ((proj - lo) / (hi - lo).clamp_min(1e-12)).clamp(0, 1).mul(255).round().to(torch.uint8)
        out.append(rgb.reshape(f.shape[0], f.shape[1], 3).numpy())
    return out


def _timed(fn):
    t0 = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - t0


def _load_backbone(name: str, pretrained):
    from ..backbones import Backbone

    return Backbone.from_pretrained(name, pretrained=pretrained).eval()


def _hub_reachable(host: str = "huggingface.co", timeout: float = 3.0) -> bool:
    import socket

    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def choose_init(settings: DemoSettings, tiny: bool, say) -> bool:
    """``True`` when the hub weights of the backbone load, else ``False`` (random init, with a notice).

    Without a route to the hub only the local cache is tried (no download retries)."""
    if tiny:
        say("tiny config: random initialization (no pretrained weights exist for it)")
        return False
    import huggingface_hub.constants as hub

    offline = hub.HF_HUB_OFFLINE
    hub.HF_HUB_OFFLINE = offline or not _hub_reachable()
    try:
        _load_backbone(settings.backbone, True)
        return True
    except Exception as exc:  # no route to the hub and no cached copy, ...
        say(f"NOTICE: pretrained {settings.backbone} weights could not be loaded "
            f"({exc.__class__.__name__}); using a seeded random initialization. The numbers below "
            "show the mechanics, not the paper's quality.")
        return False
    finally:
        hub.HF_HUB_OFFLINE = offline


@torch.no_grad()
def evaluate_heldout(before, after, paths, stride: int, device) -> tuple[list[dict], list]:
    """Per held-out image: cosine(student, teacher) before/after and timings; PCA panels."""
    from ..data import load_image, normalize
    from ..teacher import teacher_features

    rows, panels = [], []
    for path in paths:
        img01 = torch.from_numpy(load_image(path)).permute(2, 0, 1).float().div(255)
        x = normalize(img01, before.mean, before.std).to(device)
        teacher, t_slide = _timed(lambda: teacher_features(before, x, stride=stride).float())
        s0, t_single = _timed(lambda: before(x[None])[0].float())
        s1 = after(x[None])[0].float()
        cos0 = F.cosine_similarity(s0, teacher, dim=-1).mean().item()
        cos1 = F.cosine_similarity(s1, teacher, dim=-1).mean().item()
        rows.append({"image": os.path.basename(path), "cos_before": cos0, "cos_after": cos1,
                     "sliding_window_s": t_slide, "single_pass_s": t_single})
        panels.append((img01.permute(1, 2, 0).numpy(), teacher_pca_rgb(teacher.cpu(), [s0.cpu(), s1.cpu()])))
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
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    titles = ("image", "teacher (sliding window)", "student before", "student after")
    fig, axes = plt.subplots(len(panels), 4, figsize=(16, 3.2 * len(panels)), squeeze=False)
    for r, ((img, pcs), row) in enumerate(zip(panels, rows)):
        for c, (ax, pic) in enumerate(zip(axes[r], [img] + pcs)):
            ax.imshow(pic, interpolation="nearest")
            ax.set_axis_off()
            extra = {2: f" cos {row['cos_before']:.3f}", 3: f" cos {row['cos_after']:.3f}"}.get(c, "")
            ax.set_title(titles[c] + extra, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def run_demo(out_dir: str = "runs/demo", tiny: bool = False, device=None, progress: bool = True,
             say=print) -> dict:
    """Run the demo into ``out_dir``; returns the report (also ``out_dir/report.json``)."""
    from ..store import extract_features
    from ..backbones.weights import load_weights
    from .distill import fixed_random_init
    from .trainer import train

    settings = SETTINGS["tiny" if tiny else "real"]
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    stages = {}
    t0 = time.perf_counter()
    train_paths = write_photos(os.path.join(out_dir, "images", "train"), TRAIN_PHOTOS, settings.image_hw)
    held_paths = write_photos(os.path.join(out_dir, "images", "heldout"), HELDOUT_PHOTOS, settings.image_hw)
    hub = choose_init(settings, tiny, say)
    stages["prepare_s"] = time.perf_counter() - t0
    say(f"demo: {settings.backbone}, {len(train_paths)} train + {len(held_paths)} held-out photos at "
        f"{settings.image_hw[0]}x{settings.image_hw[1]}, stride {settings.stride}, {settings.epochs} epochs, "
        f"unfreeze {settings.unfreeze}, lr {settings.lr:g}")
    run_dir = os.path.join(out_dir, "run")
    os.makedirs(run_dir, exist_ok=True)
    pretrained = hub or fixed_random_init(settings.backbone, os.path.join(run_dir, "init.safetensors"), 0)
    t0 = time.perf_counter()
    store = os.path.join(run_dir, "store")
    extract_features(train_paths, store, backbone=settings.backbone, pretrained=pretrained,
                     stride=settings.stride, augment="none", device=device, progress=progress)
    stages["teacher_features_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    weights = train(store, run_dir, epochs=settings.epochs, unfreeze=settings.unfreeze, lr=settings.lr,
                    device=device, num_workers=0, progress=progress)
    stages["train_s"] = time.perf_counter() - t0
    before = _load_backbone(settings.backbone, pretrained).to(device)
    after = _load_backbone(settings.backbone, pretrained)
    load_weights(after.model, weights)
    after.to(device)
    t0 = time.perf_counter()
    rows, panels = evaluate_heldout(before, after, held_paths, settings.stride, device)
    train_cos = fit_on_training_images(before, after, store, device)
    stages["evaluate_s"] = time.perf_counter() - t0
    figure = os.path.join(out_dir, "pca.png")
    save_figure(panels, rows, figure)
    report = {"settings": asdict(settings), "pretrained": hub, "run_dir": run_dir, "device": str(device),
              "stages": stages, "heldout": rows, "weights": weights, "figure": figure,
              "cos_before": float(np.mean([r["cos_before"] for r in rows])),
              "cos_after": float(np.mean([r["cos_after"] for r in rows])),
              "train_cos_before": train_cos[0], "train_cos_after": train_cos[1]}
    with open(os.path.join(out_dir, "report.json"), "w") as f:
        json.dump(report, f, indent=2)
    return report
