"""The NaFlex backbone through segment / embed / eval / the API, offline with random weights."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

import spar_fast as sf
from spar_fast.cli import main
from test_datasets import make_dataset

TINY = ["--backbone", "naflex-tiny", "--device", "cpu", "--weights", "random:2"]


@pytest.fixture(autouse=True)
def _cache_in_tmp(tmp_path, monkeypatch):
    monkeypatch.setenv("SPAR_FAST_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture
def photo(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "photo.png"
    Image.fromarray(rng.integers(0, 256, (50, 75, 3), dtype=np.uint8)).save(path)
    return str(path)


@pytest.mark.parametrize("mode", ["single", "slide"])
def test_segment(tmp_path, photo, capsys, mode):
    mask = tmp_path / "m.png"
    rc = main(["segment", photo, "--classes", "person; sky; ground", "--mode", mode, "--no-resize", *TINY,
               "-o", str(tmp_path / "o.png"), "--save-mask", str(mask)])
    assert rc == 0, capsys.readouterr().err
    labels = np.array(Image.open(mask))
    assert labels.shape == (50, 75) and labels.max() < 3


@pytest.mark.parametrize("budget,grid", [("6", (2, 3)), ("image", (4, 5)), (None, (3, 5))])
def test_embed_follows_the_budget(tmp_path, photo, budget, grid):
    out = tmp_path / "f.npy"
    extra = [] if budget is None else ["--max-patches", budget]
    assert main(["embed", photo, "--no-resize", *TINY, *extra, "-o", str(out)]) == 0
    feats = np.load(out)
    assert feats.shape == (*grid, 64)  # 50x75 keeps its ratio: 2x3 <= 6, 4x5 its own, 3x5 <= 16


def test_max_patches_errors(tmp_path, photo, capsys):
    rc = main(["embed", photo, "--backbone", "siglip2-tiny", "--device", "cpu", "--weights", "random",
               "--max-patches", "64", "-o", str(tmp_path / "f.npy")])
    err = capsys.readouterr().err
    assert rc == 2 and "NaFlex backbones only" in err and err.count("\n") == 1
    rc = main(["embed", photo, *TINY, "--max-patches", "0", "-o", str(tmp_path / "f.npy")])
    err = capsys.readouterr().err
    assert rc == 2 and "--max-patches: must be >= 1" in err and err.count("\n") == 1


def test_eval_uses_siglip2_settings(tmp_path, capsys):
    make_dataset(tmp_path, "voc21")
    out = tmp_path / "r.json"
    rc = main(["eval", "--dataset", "voc21", "--root", str(tmp_path), *TINY, "--limit", "2", "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    summary = json.loads(out.read_text())
    r = summary["results"][0]
    assert r["num_images"] == 2 and 0 <= r["mIoU"] <= 100 and r["settings"]["logit_scale"] == 65.0
    assert summary["max_patches"] == 16


def test_api_segment_batch_and_lposs():
    bb = sf.Backbone.from_pretrained("naflex-tiny", weights="random:2", max_patches=12)
    assert bb.max_patches == 12 and bb.window == 48
    images = [torch.randn(3, 40, 70), torch.randn(3, 64, 30)]
    single = [sf.segment(bb, img, ["a", "b", "c"]) for img in images]
    from spar_fast.segmentation.infer import segment_batch
    batch = segment_batch(bb, images, ["a", "b", "c"], precision="fp32")
    assert all(torch.equal(s, b) for s, b in zip(single, batch))
    refined = sf.segment(bb, images[0], ["a", "b", "c"], refine="lposs")
    assert refined.shape == (40, 70)


@pytest.mark.slow
def test_b16_segment_cli_random(tmp_path, photo, capsys):
    mask = tmp_path / "m.png"
    rc = main(["segment", photo, "--classes", "person; sky", "--backbone", "siglip2-b16-naflex",
               "--weights", "random:1", "--device", "cpu", "-o", str(tmp_path / "o.png"), "--save-mask", str(mask)])
    assert rc == 0, capsys.readouterr().err
    assert np.array(Image.open(mask)).shape == (50, 75)


def test_distill_naflex_student(tmp_path, capsys):
    """A NaFlex teacher (its windows fit the budget unresized) and a NaFlex student trained at each
    crop's own resolution, so its grid is the target's [H/P, W/P]."""
    rng = np.random.default_rng(0)
    photos = tmp_path / "photos"
    photos.mkdir()
    for i, (h, w) in enumerate([(40, 56), (48, 40)]):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(photos / f"{i}.png")
    run = str(tmp_path / "run")
    rc = main(["distill", str(photos), "--out", run, "--backbone", "naflex-tiny", "--weights", "random:1",
               "--augment", "none", "--epochs", "1", "--workers", "0", "--quiet", "--device", "cpu"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "final weights:" in captured.out


def test_lposs_patch_centres_follow_the_resized_grid(monkeypatch):
    """A NaFlex grid cell covers H/h x W/w input pixels: LPOSS's patch centres span the image."""
    from spar_fast.segmentation import lposs
    seen = {}

    def capture(feats, centres, scores, *args):
        seen["centres"] = centres
        return scores
    monkeypatch.setattr(lposs, "propagate_patches", capture)
    bb = sf.Backbone.from_pretrained("naflex-tiny", weights="random:2", max_patches=6)
    h, w = bb.grid(40, 70)
    assert (h, w) == (2, 3)  # cells of 20 x 23.3 px, not 16 x 16
    sf.segment(bb, torch.randn(3, 40, 70), ["a", "b"], refine="lposs")
    cy, cx = 40 / h, 70 / w
    want = torch.tensor([[cy / 2 + cy * i, cx / 2 + cx * j] for i in range(h) for j in range(w)])
    assert torch.allclose(seen["centres"], want)


@pytest.mark.parametrize("mode", ["single", "slide"])
def test_eval_world_folder(tmp_path, capsys, mode):
    """The synthetic world's labelled folder through eval, packed batches of two, both modes."""
    from spar_fast.world.dataset import WorldLayout, val_split, write_world
    root = write_world(tmp_path / "w", WorldLayout(val_sides=(64, 128), val_pixels=128 * 128 * 2,
                                                   train_count=1, unlabelled_count=1))
    out = tmp_path / "r.json"
    rc = main(["eval", "--dataset", "folder", "--root", root, "--split", val_split(128), "--mode", mode,
               "--batch-size", "2", *TINY, "--max-patches", "image", "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    summary = json.loads(out.read_text())
    assert summary["results"][0]["num_images"] == 2 and 0 <= summary["results"][0]["mIoU"] <= 100
    assert summary["max_patches"] == "image"
