"""The synthetic world's scenes and folders, the folder dataset of ``eval`` and the scaled
SPAR augmentation (fast tests; the distillation gain is in test_world_gain.py)."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from spar_fast.data.augment import sample_augment
from spar_fast.errors import UserError
from spar_fast.evaluation.datasets import folder_class_lines, list_samples
from spar_fast.world.dataset import WorldLayout, val_split, write_world
from spar_fast.world.scenes import CLASSES, IGNORE, RADIUS, render_scene


def test_scene_is_deterministic_and_labelled():
    image, label = render_scene(7, 96, 160)
    again, label_again = render_scene(7, 96, 160)
    assert image.shape == (96, 160, 3) and image.dtype == np.uint8 and label.shape == (96, 160)
    assert np.array_equal(image, again) and np.array_equal(label, label_again)
    assert not np.array_equal(image, render_scene(8, 96, 160)[0])
    assert set(np.unique(label)) <= set(range(len(CLASSES))) | {IGNORE}


def test_objects_keep_their_pixel_size_so_big_scenes_hold_more():
    """Object count grows with the area; the mean object area does not depend on the image size."""
    def objects(side, seeds):
        from scipy import ndimage
        counts, areas = [], []
        for s in seeds:
            _, label = render_scene(s, side, side)
            fg = (label != 0) & (label != IGNORE)
            parts, n = ndimage.label(fg)
            counts.append(n)
            areas += list(np.bincount(parts.ravel())[1:])
        return np.mean(counts), np.median(areas)
    n_small, area_small = objects(128, range(20))
    n_big, area_big = objects(512, range(3))
    assert n_big > 6 * n_small
    assert 0.3 < area_big / area_small < 3.0
    assert area_small < 4 * np.pi * RADIUS[1] ** 2


def test_colour_does_not_give_the_class():
    """Mean colours of the textured classes are alike: the class is in the pattern."""
    sums = {k: [] for k in range(1, len(CLASSES))}
    for s in range(12):  # about 120 objects, 30 per class: the spread of the means is ~15 levels
        image, label = render_scene(s, 512, 512)
        for k in sums:
            if (label == k).sum() > 200:
                sums[k].append(image[label == k].mean(0))
    means = np.array([np.mean(v, 0) for v in sums.values()])
    assert np.ptp(means, axis=0).max() < 40  # grey levels, out of 255


def test_world_folder_and_folder_dataset(tmp_path):
    layout = WorldLayout(val_sides=(64, 128), val_pixels=128 * 128 * 2, train_count=2, unlabelled_count=3)
    root = write_world(tmp_path / "w", layout)
    assert folder_class_lines(root) == list(CLASSES)
    samples = list_samples("folder", root, val_split(128))
    assert [s.id for s in samples] == ["val128_000", "val128_001"]
    assert len(list_samples("folder", root, "val")) == layout.val_count(64) + layout.val_count(128)
    assert len(list((tmp_path / "w" / "unlabelled").iterdir())) == 3
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "w" / "images").iterdir()}
    write_world(tmp_path / "w", layout)  # a rerun rewrites nothing
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "w" / "images").iterdir()} == before


def test_folder_dataset_errors(tmp_path):
    with pytest.raises(UserError, match="images/ and labels/"):
        list_samples("folder", tmp_path)
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    with pytest.raises(UserError, match="classes.txt"):
        folder_class_lines(tmp_path)


def test_eval_folder_with_oracle_queries(tmp_path):
    """``evaluate`` on a folder: a backbone whose features are the one-hot label at each patch,
    with one-hot queries, scores 100 on labels constant per row of patches (bilinear upsampling
    of the logits then switches class exactly at the patch edge)."""
    from PIL import Image

    from spar_fast.evaluation import evaluate
    from spar_fast.segmentation.query_file import QuerySet

    root = tmp_path / "d"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    (root / "classes.txt").write_text("a\nb\nc\n")
    rng = np.random.default_rng(0)
    for i in range(2):
        cells = np.repeat(rng.integers(0, 3, (4, 1)), 6, 1)  # bands: two classes meet at an edge
        label = np.kron(cells, np.ones((16, 16), np.int64)).astype(np.uint8)
        image = (np.stack([label] * 3, -1) * 100).astype(np.uint8)
        Image.fromarray(image).save(root / "images" / f"im{i}.png")
        Image.fromarray(label).save(root / "labels" / f"im{i}.png")

    class Oracle(torch.nn.Module):
        """Reads the class from the grey level: features [B, h, w, 3] one-hot."""
        name, family, patch_size, window, feature_dim = "oracle", "", 16, 64, 3
        mean, std = (0.0,) * 3, (1.0,) * 3

        def __init__(self):
            super().__init__()
            self.dummy = torch.nn.Parameter(torch.zeros(1))

        def forward(self, x):  # [B, 3, H, W] in [0, 1] (mean 0, std 1) -> [B, H/16, W/16, 3]
            cls = (x[:, 0, ::16, ::16] * 255 / 100).round().long().clamp(0, 2)
            return torch.nn.functional.one_hot(cls, 3).float()

    qs = QuerySet(torch.eye(3), torch.arange(3), ("a", "b", "c"), "oracle", "", "test", "")
    result = evaluate(Oracle(), "folder", root, queries=qs)
    assert result["mIoU"] == pytest.approx(100.0)
    assert result["num_images"] == 2


def test_eval_folder_rejects_labels_beyond_the_classes(tmp_path):
    from PIL import Image

    root = tmp_path / "d"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    (root / "classes.txt").write_text("a\nb\n")
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(root / "images" / "x.png")
    Image.fromarray(np.full((32, 32), 7, np.uint8)).save(root / "labels" / "x.png")
    out = subprocess.run([sys.executable, "-m", "spar_fast", "eval", "--dataset", "folder", "--root",
                          str(root), "--backbone", "siglip2-tiny", "--weights", "random:0"],
                         capture_output=True, text=True)
    assert out.returncode == 2, out.stderr
    assert "holds value 7 but only 2 classes" in out.stderr
    assert "Traceback" not in out.stderr


def test_eval_all_with_queries_is_one_line(tmp_path):
    out = subprocess.run([sys.executable, "-m", "spar_fast", "eval", "--all", "--queries", "x",
                          "--root", str(tmp_path)], capture_output=True, text=True)
    assert out.returncode == 2
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1


def test_scaled_augmentation():
    """``scale`` shrinks the RandomResize scale; the SPEC's draw is unchanged at scale 1."""
    for seed in range(20):
        full = sample_augment(1500, 2250, seed)
        small = sample_augment(1500, 2250, seed, min_side=128, scale=0.25)
        assert full == sample_augment(1500, 2250, seed, scale=1.0)
        assert max(small.resize_hw) <= 512 and min(small.final_hw) >= 128
        assert small.rho == full.rho and small.flip == full.flip
        assert abs(max(small.resize_hw) - max(full.resize_hw) / 4) <= 2  # int() of each scale


def test_world_cli_write(tmp_path):
    out = subprocess.run([sys.executable, "-m", "spar_fast", "world", "write"], capture_output=True, text=True)
    assert out.returncode == 2 and "needs the output folder" in out.stderr
