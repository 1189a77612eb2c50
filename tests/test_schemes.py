"""The Table 9 distillation schemes (spar_fast/train/schemes.py): each loss against a
hand-written reference on tiny inputs, their options and refusals, and a run of each."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from spar_fast.errors import UserError
from spar_fast.train.config import TrainConfig
from spar_fast.train.schemes import ClassSimilarity, MultiResolution, make_scheme


def _bilinear_reference(x: list, out_h: int, out_w: int) -> list:
    """Hand-written bilinear resize (align_corners=False, edge clamped) of a nested list
    ``[h][w][C]`` of floats."""
    h, w, c = len(x), len(x[0]), len(x[0][0])
    out = []
    for i in range(out_h):
        sy = max((i + 0.5) * h / out_h - 0.5, 0.0)
        y0 = min(int(math.floor(sy)), h - 1)
        y1, fy = min(y0 + 1, h - 1), sy - y0
        row = []
        for j in range(out_w):
            sx = max((j + 0.5) * w / out_w - 0.5, 0.0)
            x0 = min(int(math.floor(sx)), w - 1)
            x1, fx = min(x0 + 1, w - 1), sx - x0
            row.append([(1 - fy) * ((1 - fx) * x[y0][x0][k] + fx * x[y0][x1][k])
                        + fy * ((1 - fx) * x[y1][x0][k] + fx * x[y1][x1][k]) for k in range(c)])
        out.append(row)
    return out


@pytest.mark.parametrize("src,dst", [((3, 5), (4, 7)), ((6, 4), (3, 5)), ((2, 2), (2, 2)), ((1, 3), (5, 2))])
def test_multires_loss_matches_hand_written_reference(src, dst):
    gen = torch.Generator().manual_seed(src[0] * 10 + dst[1])
    feats = torch.randn(*src, 3, generator=gen, dtype=torch.float64)
    target = torch.randn(*dst, 3, generator=gen, dtype=torch.float64)
    resized = _bilinear_reference(feats.tolist(), *dst)
    t = target.tolist()
    n = dst[0] * dst[1] * 3
    expect = sum((resized[i][j][k] - t[i][j][k]) ** 2 for i in range(dst[0]) for j in range(dst[1])
                 for k in range(3)) / n
    got = MultiResolution(0.5, 1.5, 0, 16).loss(feats.float(), target.float())
    assert float(got) == pytest.approx(expect, rel=1e-5, abs=1e-6)


def test_multires_rescale_draw_is_seeded_and_in_range():
    m = MultiResolution(0.5, 1.5, seed=3, patch=16)
    draws = [m.factor(e, i) for e in range(3) for i in range(20)]
    assert all(0.5 <= d <= 1.5 for d in draws) and len(set(draws)) == len(draws)
    assert m.factor(1, 7) == MultiResolution(0.5, 1.5, seed=3, patch=16).factor(1, 7)
    assert m.factor(1, 7) != MultiResolution(0.5, 1.5, seed=4, patch=16).factor(1, 7)
    image = torch.randn(3, 96, 160)
    out = m.rescale(image, 0.7)
    assert tuple(out.shape) == (3, 64, 112)  # 67.2 -> 64, 112 -> 112: multiples of the patch
    assert tuple(m.rescale(image, 0.01).shape) == (3, 16, 16)  # at least one patch
    torch.testing.assert_close(m.rescale(image, 1.0), image)


def _class_maps_reference(feats, queries, q2c, form, scale):
    """Loops: per position, cosines to every query, softmax (form softmax), max per class."""
    h, w, _ = feats.shape
    k = int(q2c.max()) + 1
    out = torch.empty(h, w, k, dtype=torch.float64)
    for i in range(h):
        for j in range(w):
            f = feats[i, j].double()
            f = f / f.norm()
            cos = [float(f @ (q.double() / q.double().norm())) * scale for q in queries]
            if form == "softmax":
                m = max(cos)
                e = [math.exp(c - m) for c in cos]
                cos = [v / sum(e) for v in e]
            for c in range(k):
                out[i, j, c] = max(v for v, owner in zip(cos, q2c.tolist()) if owner == c)
    return out


@pytest.mark.parametrize("form,scale", [("softmax", 40.0), ("softmax", 3.0), ("cosine", 1.0), ("cosine", 7.5)])
def test_class_similarity_loss_matches_hand_written_reference(form, scale):
    gen = torch.Generator().manual_seed(int(scale * 10))
    feats, target = torch.randn(3, 5, 8, generator=gen), torch.randn(3, 5, 8, generator=gen)
    queries = torch.randn(5, 8, generator=gen)
    q2c = torch.tensor([0, 1, 1, 2, 0])  # classes 0 and 1 have two synonyms
    scheme = ClassSimilarity(queries, q2c, form, scale)
    ref_s, ref_t = (_class_maps_reference(x, queries, q2c, form, scale) for x in (feats, target))
    torch.testing.assert_close(scheme.maps(feats).double(), ref_s, rtol=1e-5, atol=1e-6)
    expect = float(((ref_s - ref_t) ** 2).mean())
    assert float(scheme.loss(feats, target)) == pytest.approx(expect, rel=1e-4, abs=1e-7)


def test_class_similarity_ignores_what_the_classes_do_not_see():
    """Features differing only orthogonally to every query give zero loss (unlike the MSE)."""
    queries = torch.eye(4)[:2]
    f = torch.tensor([1.0, 2.0, 0.0, 0.0]).expand(2, 2, 4).clone()
    g = f.clone()
    g[..., 2:] = 0.0  # same
    g2 = f * 3.0      # same direction: same cosines
    scheme = ClassSimilarity(queries, torch.tensor([0, 1]), "softmax", 40.0)
    assert float(scheme.loss(f, g)) == 0.0 and float(scheme.loss(f, g2)) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("kw,words", [
    (dict(rescale_min=0.7), "--rescale-min apply only to --scheme multires"),
    (dict(scheme="class_sim"), "needs the class list"),
    (dict(scheme="multires", class_scale=2.0), "--class-scale apply only to --scheme class_sim"),
    (dict(scheme="multires", rescale_min=1.5, rescale_max=1.0), "is above rescale_max"),
    (dict(scheme="multires", rescale_max=9.0), "rescale_max must be in"),
    (dict(scheme="nope"), "scheme must be one of"),
])
def test_scheme_options_are_refused_where_they_do_not_apply(kw, words):
    with pytest.raises(UserError, match=words):
        TrainConfig(**kw)


def test_scheme_record_and_resume_key():
    assert "scheme" not in TrainConfig().resume_key(1)  # SPAR runs saved before schemes still resume
    cfg = TrainConfig(scheme="class_sim", class_queries="a; b", class_form="cosine")
    assert cfg.scheme_record() == {"scheme": "class_sim", "class_queries": "a; b", "class_form": "cosine",
                                   "class_scale": 1.0}
    assert cfg.resume_key(1)["class_form"] == "cosine"
    assert TrainConfig(scheme="multires").scheme_record() == {"scheme": "multires", "rescale": [0.5, 1.5]}


def test_make_scheme_refusals():
    with pytest.raises(UserError, match="teacher single"):
        make_scheme(TrainConfig(scheme="multires"), 16, 8, "sliding")
    with pytest.raises(UserError, match="single-pass targets"):
        make_scheme(TrainConfig(), 16, 8, "single")
    cfg = TrainConfig(scheme="class_sim", class_queries="a;b")
    with pytest.raises(UserError, match="needs its text queries"):
        make_scheme(cfg, 16, 8, "sliding")
    with pytest.raises(UserError, match="8-dim features"):
        make_scheme(cfg, 16, 8, "sliding", (torch.randn(2, 5), torch.arange(2)))
    assert make_scheme(TrainConfig(), 16, 8, "sliding") is None


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """Two tiny stores of the same images: sliding-window and single-pass targets."""
    from spar_fast.jobs.extract import extract_features

    root = str(tmp_path_factory.mktemp("schemes"))
    rng = np.random.default_rng(0)
    os.makedirs(os.path.join(root, "img"))
    for i, (h, w) in enumerate([(64, 64), (60, 90)]):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(os.path.join(root, "img", f"{i}.png"))
    out = {}
    for teacher in ("sliding", "single"):
        out[teacher] = os.path.join(root, teacher)
        extract_features(os.path.join(root, "img"), out[teacher], backbone="siglip2-tiny", weights="random:0",
                         augment="none", device="cpu", progress=False, workers=0, teacher=teacher, stride=64)
    return out


def test_single_pass_store_holds_the_backbone_output(stores):
    from spar_fast.backbones import Backbone
    from spar_fast.store import FeatureStore
    from spar_fast.train.loader import StoreDataset

    fs = FeatureStore(stores["single"])
    assert fs.config.teacher == "single"
    assert FeatureStore(stores["sliding"]).config.teacher == "sliding"
    assert "teacher" not in json.load(open(os.path.join(stores["sliding"], "store.json")))
    bb = Backbone.from_pretrained("siglip2-tiny", weights="random:0").eval()
    ds = StoreDataset(stores["single"], bb.mean, bb.std)
    sample = ds[0]
    with torch.no_grad():
        want = bb(sample.image[None])[0]
    torch.testing.assert_close(sample.target.decode().float(), want, rtol=1e-2, atol=1e-2)  # fp16 store


def test_each_scheme_trains_and_is_recorded(stores, tmp_path):
    from spar_fast.jobs.distill import train_run

    common = dict(epochs=1, weights="random:0", progress=False, device="cpu", lr=1e-4)
    train_run(stores["single"], str(tmp_path / "mr"), scheme="multires", rescale_min=0.6, rescale_max=0.9, **common)
    summary = json.load(open(tmp_path / "mr" / "summary.json"))
    assert summary["scheme"] == "multires" and summary["rescale"] == [0.6, 0.9] and summary["steps"] == 2
    train_run(stores["sliding"], str(tmp_path / "cs"), scheme="class_sim",
              class_queries=_query_file(tmp_path), **common)
    summary = json.load(open(tmp_path / "cs" / "summary.json"))
    assert summary["scheme"] == "class_sim" and summary["class_count"] == 3
    assert summary["class_form"] == "softmax" and summary["class_scale"] == 40.0
    losses = [json.loads(line)["loss"] for line in open(tmp_path / "cs" / "metrics.jsonl")]
    assert all(math.isfinite(v) and v >= 0 for v in losses)
    with pytest.raises(UserError, match="teacher single"):
        train_run(stores["sliding"], str(tmp_path / "bad"), scheme="multires", **common)


def _query_file(tmp_path) -> str:
    from spar_fast.backbones import Backbone
    from spar_fast.segmentation.query_file import QuerySet, save_query_set

    dim = Backbone.from_pretrained("siglip2-tiny", weights="random:0").feature_dim
    q = torch.nn.functional.normalize(torch.randn(4, dim, generator=torch.Generator().manual_seed(0)), dim=1)
    path = str(tmp_path / "q.safetensors")
    save_query_set(QuerySet(q, torch.tensor([0, 1, 2, 2]), ("a", "b", "c"), "siglip2-tiny", "", "test", ""), path)
    return path


def test_cli_refuses_in_one_line(stores, tmp_path):
    out = subprocess.run([sys.executable, "-m", "spar_fast", "train", stores["sliding"], "--out",
                          str(tmp_path / "r"), "--scheme", "features", "--class-form", "cosine",
                          "--device", "cpu"], capture_output=True, text=True)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "--class-form apply only to --scheme class_sim" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
