"""The feature-quality probes (spar_fast/probe): linear probe, kNN retrieval, panoptic quality
and the mask oracle, on tiny inputs with known answers, and ``spar-fast probe`` end to end."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from spar_fast.errors import UserError
from spar_fast.probe.features import FeatureSet, load_feature_set, save_feature_set
from spar_fast.probe.knn import (KnnSettings, build_bank, knn_probe, nearest, nearest_reference,
                                 patch_label_distribution)
from spar_fast.probe.linear import LinearSettings, linear_probe
from spar_fast.probe.panoptic import classify_segments, folder_segments
from spar_fast.probe.pq import PanopticQuality


def _separable(n_images: int, seed: int, patch: int = 1, grid=(5, 7), dim: int = 6, k: int = 3):
    """Features whose class is the argmax of a fixed random linear map; labels constant per patch
    (each patch's class repeated ``patch x patch``; 1: labels at the feature grid, where the
    bilinear upsampling of the logits is the identity)."""
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(dim, k, generator=torch.Generator().manual_seed(123))
    feats, labels = [], []
    for _ in range(n_images):
        f = torch.randn(*grid, dim, generator=gen) * 3
        cls = (f @ w).argmax(-1)
        feats.append(f)
        labels.append(cls.repeat_interleave(patch, 0).repeat_interleave(patch, 1).to(torch.uint8))
    return FeatureSet([f"i{j}" for j in range(n_images)], feats, labels)


def test_linear_probe_reaches_100_on_a_separable_toy():
    train, val = _separable(40, 0), _separable(10, 1)
    result = linear_probe(train, val, 3, LinearSettings(lrs=(0.05,), epochs=30))
    # separable by construction: only val points within a hair of a class boundary may be missed
    assert result["best"]["aAcc"] > 0.98
    assert result["best"]["mIoU"] > 0.96
    assert result["runs"][0]["lr"] == 0.05


def test_linear_probe_learns_nothing_from_noise():
    """Control: features unrelated to the labels stay far below the separable case."""
    train, val = _separable(12, 0), _separable(6, 1)
    gen = torch.Generator().manual_seed(5)
    noise = FeatureSet(val.ids, [torch.randn(f.shape, generator=gen) for f in val.feats], val.labels)
    result = linear_probe(train, noise, 3, LinearSettings(lrs=(0.05,), epochs=20))
    assert result["best"]["aAcc"] < 0.8


@pytest.mark.parametrize("m,n,k,qc,bc", [(37, 101, 5, 8, 13), (5, 3, 10, 2, 1), (64, 257, 1, 64, 256)])
def test_chunked_nearest_matches_the_one_matrix_search(m, n, k, qc, bc):
    gen = torch.Generator().manual_seed(m * n)
    keys = torch.nn.functional.normalize(torch.randn(n, 9, generator=gen), dim=1)
    queries = torch.nn.functional.normalize(torch.randn(m, 9, generator=gen), dim=1)
    s, i = nearest(queries, keys, k, query_chunk=qc, bank_chunk=bc)
    rs, ri = nearest_reference(queries, keys, k)
    torch.testing.assert_close(s, rs)
    assert torch.equal(i, ri)  # continuous random data: no ties


def test_knn_returns_the_exact_neighbour():
    gen = torch.Generator().manual_seed(1)
    keys = torch.nn.functional.normalize(torch.randn(500, 16, generator=gen), dim=1)
    pick = torch.randperm(500, generator=gen)[:40]
    s, i = nearest(keys[pick], keys, 1, query_chunk=7, bank_chunk=33)
    assert torch.equal(i[:, 0], pick)
    torch.testing.assert_close(s[:, 0], torch.ones(40))


def test_knn_probe_on_a_copy_of_the_bank_is_exact():
    """Val = train, k = 1: every val patch finds itself and takes its own label."""
    train = _separable(3, 2)
    result = knn_probe(train, train, 3, KnnSettings(k=1, bank_chunk=17, query_chunk=5))
    assert result["bank_size"] == 3 * 5 * 7
    assert result["aAcc"] > 0.97


def test_bank_sampling_and_size():
    train = _separable(4, 3)
    assert len(build_bank(train, 3, KnnSettings(sample_fraction=0.5)).keys) == 4 * round(35 * 0.5)
    assert len(build_bank(train, 3, KnnSettings(bank_size=50)).keys) == 50
    with pytest.raises(UserError, match="sampling fraction"):
        knn_probe(train, train, 3, KnnSettings(sample_fraction=0.0))


def test_patch_label_distribution_counts_labelled_pixels():
    label = torch.tensor([[0, 0, 1, 255], [0, 1, 255, 255]], dtype=torch.uint8)
    dist = patch_label_distribution(label, (1, 2), 2)
    torch.testing.assert_close(dist[0, 0], torch.tensor([0.75, 0.25]))
    torch.testing.assert_close(dist[0, 1], torch.tensor([0.0, 1.0]))
    assert dist.sum() == pytest.approx(2.0)


def test_pq_on_a_hand_made_case():
    """GT: segment 1 (class 0, 8 px), segment 2 (class 1, 8 px), 4 px void. Prediction: segment
    7 covers 6 px of segment 1 and 2 void px (class 0): IoU 6 / (8 + 8 - 6 - 2) = 0.75, a match;
    segment 8 (class 1) covers 4 px of segment 2 and 2 of segment 1 plus 2 void: IoU 4/(8+8-4-2)
    = 0.4, no match -> FP of class 1, FN of class 1; the remaining 4 px of segment 2 are void."""
    gt = torch.tensor([[1, 1, 1, 1, 2, 2, 2, 2],
                       [1, 1, 1, 1, 2, 2, 2, 2],
                       [0, 0, 0, 0, 0, 0, 0, 0]])
    pred = torch.tensor([[7, 7, 7, 8, 8, 8, 0, 0],
                         [7, 7, 7, 8, 8, 8, 0, 0],
                         [7, 7, 8, 8, 0, 0, 0, 0]])
    pq = PanopticQuality(2)
    pq.update(pred, {7: 0, 8: 1}, gt, {1: 0, 2: 1})
    r = pq.compute()
    # class 0: TP 1, IoU 6 / (8 + 8 - 6 - 2) = 0.75 -> PQ 0.75
    assert r["per_class"][0] == {"PQ": 0.75, "SQ": 0.75, "RQ": 1.0, "TP": 1, "FP": 0, "FN": 0}
    # class 1: pred 8 has 8 px, 2 on void (not over half) -> FP; GT 2 unmatched -> FN; PQ 0
    assert r["per_class"][1]["FP"] == 1 and r["per_class"][1]["FN"] == 1 and r["per_class"][1]["PQ"] == 0.0
    assert r["PQ"] == pytest.approx(0.375)
    assert r["RQ"] == pytest.approx(0.5)


def test_pq_void_and_crowd_rules():
    """A prediction mostly on void is no false positive; crowd GT is no false negative."""
    gt = torch.tensor([[0, 0, 0, 5], [0, 0, 3, 3]])
    pred = torch.tensor([[9, 9, 9, 9], [0, 0, 4, 4]])
    pq = PanopticQuality(2)
    pq.update(pred, {9: 1, 4: 0}, gt, {5: 1, 3: 0}, crowd={5})
    r = pq.compute(things={0})
    assert r["per_class"][1] is None  # 3 of 4 px on void: ignored; crowd 5: not a FN
    assert r["per_class"][0]["TP"] == 1 and r["PQ"] == pytest.approx(1.0)
    assert r["PQ_things"] == pytest.approx(1.0) and r["PQ_stuff"] == 0.0


def test_folder_segments_components_and_stuff():
    label = np.array([[0, 0, 1, 1, 0, 1],
                      [0, 255, 1, 1, 0, 1],
                      [2, 2, 0, 0, 0, 0]], np.uint8)
    seg, cats = folder_segments(label, None, {0})
    assert sorted(cats.values()) == [0, 1, 1, 2]  # one background, two class-1 blobs, one class-2
    assert seg[1, 1] == 0  # ignore stays void
    inst = np.zeros_like(label)
    inst[:2, 5] = 3  # the class-1 column is instance 3; the other class-1 pixels instance 0
    seg2, cats2 = folder_segments(label, inst, set())
    assert sorted(cats2.values()) == [0, 1, 1, 2]


def test_mask_oracle_classifies_by_pooled_features():
    feats = torch.zeros(2, 2, 3)
    feats[0, :, 0] = 1.0   # top row looks like class 0
    feats[1, :, 2] = 1.0   # bottom row like class 2
    segments = torch.tensor([[1] * 4] * 2 + [[2] * 4] * 2)
    queries = torch.eye(3)[[0, 1, 2, 2]]  # class 2 has two synonyms
    cats = classify_segments(feats, segments, [1, 2], queries, torch.tensor([0, 1, 2, 2]), 3)
    assert cats == {1: 0, 2: 2}


def test_feature_cache_round_trip(tmp_path):
    fs = _separable(2, 4)
    save_feature_set(fs, str(tmp_path / "c.safetensors"))
    back = load_feature_set(str(tmp_path / "c.safetensors"))
    assert back.ids == fs.ids
    for a, b in zip(back.feats, fs.feats):
        torch.testing.assert_close(a, b.half().float())
    assert all(torch.equal(a, b) for a, b in zip(back.labels, fs.labels))
    assert load_feature_set(str(tmp_path / "missing.safetensors")) is None


class _Oracle(torch.nn.Module):
    """Features [B, h, w, 3]: the one-hot class read from an image's grey level."""
    name, family, patch_size, window, feature_dim = "oracle", "", 16, 64, 3
    mean, std = (0.0,) * 3, (1.0,) * 3
    weights_id = "oracle"

    def __init__(self):
        super().__init__()
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x):
        cls = (x[:, 0, 8::16, 8::16] * 255 / 100).round().long().clamp(0, 2)
        return torch.nn.functional.one_hot(cls, 3).float()


def _folder(root, n_train=4, n_val=3):
    from PIL import Image

    for sub in ("images", "labels", "splits"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    (root / "classes.txt").write_text("a\nb\nc\n")
    rng = np.random.default_rng(0)
    ids = [f"t{i}" for i in range(n_train)] + [f"v{i}" for i in range(n_val)]
    for i in ids:
        cells = np.repeat(rng.integers(0, 3, (4, 1)), 5, 1)
        label = np.kron(cells, np.ones((16, 16), np.int64)).astype(np.uint8)
        Image.fromarray((np.stack([label] * 3, -1) * 100).astype(np.uint8)).save(root / "images" / f"{i}.png")
        Image.fromarray(label).save(root / "labels" / f"{i}.png")
    (root / "splits" / "train.txt").write_text("\n".join(ids[:n_train]) + "\n")
    (root / "splits" / "val.txt").write_text("\n".join(ids[n_train:]) + "\n")


def test_run_probes_with_an_oracle_backbone(tmp_path):
    """One-hot features of the true class: linear and kNN reach 100 % (labels constant per row of
    patches, so bilinear upsampling switches class exactly at the patch edge) and the mask
    oracle classifies every segment right (PQ 1); a second run reads the feature cache."""
    from spar_fast.probe import ProbeOptions, run_probes
    from spar_fast.segmentation.query_file import QuerySet

    _folder(tmp_path / "d")
    qs = QuerySet(torch.eye(3), torch.arange(3), ("a", "b", "c"), "oracle", "", "test", "")
    opts = ProbeOptions(linear=LinearSettings(lrs=(0.1,), epochs=30), knn=KnnSettings(k=5),
                        cache_dir=str(tmp_path / "cache"), stuff=())
    r = run_probes(_Oracle(), "folder", tmp_path / "d", opts, queries=qs)
    assert r["num_train"] == 4 and r["num_val"] == 3
    assert r["linear"]["best"]["mIoU"] == pytest.approx(1.0)
    assert r["knn"]["mIoU"] == pytest.approx(1.0)
    assert r["panoptic"]["PQ"] == pytest.approx(1.0) and r["panoptic"]["SQ"] == pytest.approx(1.0)
    assert len(list((tmp_path / "cache").iterdir())) == 2
    again = run_probes(_Oracle(), "folder", tmp_path / "d", opts, queries=qs)
    assert again["knn"] == r["knn"]


def test_probe_cli(tmp_path):
    _folder(tmp_path / "d", n_train=2, n_val=2)
    out = subprocess.run([sys.executable, "-m", "spar_fast", "probe", "--root", str(tmp_path / "d"),
                          "--backbone", "siglip2-tiny", "--weights", "random:0", "--device", "cpu",
                          "--probes", "linear,knn", "--lrs", "0.01", "--epochs", "2", "--no-cache",
                          "--resolution", "64", "--out", str(tmp_path / "r.json")],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "linear   lr 0.01" in out.stdout and "kNN      mIoU" in out.stdout
    assert (tmp_path / "r.json").is_file()
    bad = subprocess.run([sys.executable, "-m", "spar_fast", "probe", "--root", str(tmp_path / "d"),
                          "--probes", "linear,nope", "--backbone", "siglip2-tiny", "--weights", "random:0"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1


def test_ade20k_panoptic_layout_and_oracle(tmp_path):
    """A hand-made ADE20K-style COCO panoptic set: ids as R + 256 G + 256² B, categories in
    JSON order, a crowd segment; the oracle backbone classifies every non-crowd segment right."""
    import json

    from PIL import Image

    from spar_fast.probe.panoptic import coco_panoptic_samples, load_panoptic, mask_oracle

    base = tmp_path / "ADEChallengeData2016"
    (base / "images" / "validation").mkdir(parents=True)
    (base / "ade20k_panoptic_val").mkdir()
    ids = np.zeros((32, 48), np.int64)
    ids[:, :16], ids[:, 16:32], ids[:16, 32:] = 300, 70000, 5  # 70000 = (112, 17, 1) in RGB
    rgb = np.stack([ids % 256, ids // 256 % 256, ids // 65536], -1).astype(np.uint8)
    Image.fromarray(rgb).save(base / "ade20k_panoptic_val" / "ADE_val_1.png")
    grey = np.zeros((32, 48), np.uint8)
    grey[:, 16:32] = 200  # category index 2 (grey 200 -> class 2 in the oracle)
    Image.fromarray(np.stack([grey] * 3, -1)).save(base / "images" / "validation" / "ADE_val_1.jpg")
    doc = {"categories": [{"id": 10, "name": "wall", "isthing": 0}, {"id": 11, "name": "car", "isthing": 1},
                          {"id": 12, "name": "person", "isthing": 1}],
           "images": [{"id": "ADE_val_1", "file_name": "ADE_val_1.jpg"}],
           "annotations": [{"image_id": "ADE_val_1", "file_name": "ADE_val_1.png", "segments_info": [
               {"id": 300, "category_id": 10, "iscrowd": 0}, {"id": 70000, "category_id": 12, "iscrowd": 0},
               {"id": 5, "category_id": 11, "iscrowd": 1}]}]}
    (base / "ade20k_panoptic_val.json").write_text(json.dumps(doc))
    samples, lines, things = coco_panoptic_samples(tmp_path, "ade20k")
    assert lines == ["wall", "car", "person"] and things == {1, 2} and len(samples) == 1
    seg, cats, crowd = load_panoptic(samples[0])
    assert cats == {300: 0, 70000: 2, 5: 1} and crowd == {5}
    assert int(seg[0, 20]) == 70000 and int(seg[20, 40]) == 0  # pixels of no segment are void

    def feature_fn(sample):
        from spar_fast.data.images import read_rgb
        x = torch.from_numpy(read_rgb(sample.image)).permute(2, 0, 1).float()[None] / 255
        return _Oracle()(x)[0]  # grey 0 -> class 0, grey 200 -> class 2

    r = mask_oracle(feature_fn, samples, torch.eye(3), torch.arange(3), 3, things=things)
    assert r["PQ"] == pytest.approx(1.0) and r["per_class"][1] is None  # crowd: neither TP nor FN


def test_folder_instances_layout(tmp_path):
    from PIL import Image

    from spar_fast.probe.panoptic import folder_panoptic_samples, load_panoptic

    _folder(tmp_path / "d", n_train=1, n_val=1)
    assert folder_panoptic_samples(tmp_path / "d", "val")[0].source == "folder:components"
    (tmp_path / "d" / "instances").mkdir()
    inst = np.zeros((64, 80), np.uint16)
    inst[:, 40:] = 300  # a 16-bit instance id over the right half
    Image.fromarray(inst).save(tmp_path / "d" / "instances" / "v0.png")
    sample = folder_panoptic_samples(tmp_path / "d", "val")[0]
    assert sample.source == "folder:folder"
    seg, cats, crowd = load_panoptic(sample)
    label = np.array(Image.open(tmp_path / "d" / "labels" / "v0.png"))
    # one segment per (label, instance) pair present
    assert len(cats) == len({(int(a), int(b)) for a, b in zip(label.flatten(), (inst > 0).flatten())})
    assert crowd == set() and int(seg.min()) >= 1
    _folder(tmp_path / "e", 1, 1)
    with pytest.raises(UserError, match="no instances"):
        folder_panoptic_samples(tmp_path / "e", "val", "folder")


@pytest.mark.parametrize("name", ["voc21", "context59", "cityscapes", "ade20k"])
def test_benchmark_train_splits(tmp_path, name):
    """The benchmark readers list their training images for the probes (val is unchanged)."""
    import shutil

    from spar_fast.evaluation.datasets import list_samples
    from test_datasets import make_dataset

    make_dataset(tmp_path, name)
    val = list_samples(name, tmp_path, "val")
    with pytest.raises(UserError):
        list_samples(name, tmp_path, "train")  # no training images written yet
    for s in val:  # copy the val images into the train layout
        for path in (s.image, s.label):
            dst = (path.replace("/val/", "/train/").replace("validation", "training")
                   .replace("val.txt", "train.txt"))
            if dst != path:  # VOC / Context: one image folder for every split
                os.makedirs(os.path.dirname(dst), exist_ok=True)
                shutil.copy(path, dst)
    for split_file in tmp_path.rglob("val.txt"):
        shutil.copy(split_file, split_file.with_name("train.txt"))
    train = list_samples(name, tmp_path, "train")
    assert [s.id for s in train] == [s.id for s in val]
    assert all(("train" in s.image) or ("JPEGImages" in s.image) for s in train)
