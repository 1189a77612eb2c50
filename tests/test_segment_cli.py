"""segment / embed / pca / eval commands end to end with the tiny SigLIP2 backbone (random init)."""
import json

import numpy as np
import pytest
from PIL import Image

from spar_fast.cli import main
from spar_fast.evaluation.datasets import BENCHMARKS
from test_datasets import make_dataset

TINY = ["--backbone", "siglip2-tiny", "--device", "cpu"]


@pytest.fixture(autouse=True)
def _cache_in_tmp(tmp_path, monkeypatch):
    monkeypatch.setenv("SPAR_FAST_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture
def photo(tmp_path):
    from skimage import data
    img = Image.fromarray(data.astronaut()).resize((75, 50))  # W x H
    path = tmp_path / "photo.png"
    img.save(path)
    return str(path)


@pytest.mark.parametrize("command", ["segment", "embed", "pca", "eval"])
def test_help(command, capsys):
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "--backbone" in out and "--weights" in out and "--checkpoint" not in out
    assert "(default: siglip2-b16-512)" in out and "(default: hub)" in out
    if command in ("segment", "eval"):
        assert "(default: single)" in out and "(default: 24)" in out


def test_segment_overlay_and_mask(tmp_path, photo, capsys):
    out, mask = tmp_path / "o.png", tmp_path / "m.png"
    rc = main(["segment", photo, "--classes", "person, astronaut; flag; sky", *TINY, "--weights", "random",
               "-o", str(out), "--save-mask", str(mask)])
    assert rc == 0, capsys.readouterr().err
    labels = np.array(Image.open(mask))
    assert labels.shape == (50, 75) and labels.max() < 3
    overlay = Image.open(out)
    assert overlay.height >= 50 and overlay.width > 75  # photo plus legend


def test_segment_slide_class_file(tmp_path, photo):
    classes = tmp_path / "c.txt"
    classes.write_text("person\nground, floor\n")
    rc = main(["segment", photo, "--class-file", str(classes), "--mode", "slide", "--no-resize",
               *TINY, "--weights", "random", "-o", str(tmp_path / "o.jpg"), "--save-mask", str(tmp_path / "m.png")])
    assert rc == 0
    assert np.array(Image.open(tmp_path / "m.png")).shape == (50, 75)


@pytest.mark.parametrize("args,message", [
    (["missing.png", "--classes", "a; b", "-o", "o.png"], "image not found"),
    (["{photo}", "--classes", " ; ", "-o", "o.png"], "no classes"),
    (["{photo}", "--classes", "a; b", "-o", "o.gif"], "must end with"),
    (["{photo}", "--class-file", "nope.txt", "-o", "o.png"], "class file not found"),
    (["{photo}", "--classes", "a", "--weights", "nope.ckpt", "-o", "o.png"], "weights file not found"),
    (["{photo}", "--classes", "a", "--prob-thd", "2", "-o", "o.png"], "must be in [0, 1], got 2"),
    (["{photo}", "--classes", "a", "--area-thd", "-1", "-o", "o.png"], "must be >= 0"),
    (["{photo}", "--classes", "a", "--logit-scale", "nan", "-o", "o.png"], "finite"),
    (["{photo}", "--classes", "a", "--stride", "0", "-o", "o.png"], "must be >= 1"),
    (["{photo}", "--classes", "a", "-o", "."], "is a folder"),
    (["{photo}", "--classes", "a", "-o", "no/such/dir/o.png"], "does not exist"),
])
def test_segment_errors(tmp_path, photo, capsys, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    rc = main(["segment", *[a.format(photo=photo) for a in args], *TINY])
    err = capsys.readouterr().err
    assert rc == 2 and message in err and err.count("\n") == 1


@pytest.mark.parametrize("suffix", [".npy", ".safetensors"])
def test_embed(tmp_path, photo, suffix):
    out = tmp_path / f"f{suffix}"
    assert main(["embed", photo, "--no-resize", *TINY, "--weights", "random", "-o", str(out)]) == 0
    if suffix == ".npy":
        feats = np.load(out)
    else:
        from safetensors.numpy import load_file
        feats = load_file(out)["features"]
    assert feats.shape == (4, 5, 64) and feats.dtype == np.float32  # ceil(50/16), ceil(75/16)
    assert np.abs(np.linalg.norm(feats, axis=-1) - 1).max() > 1e-3  # raw, not normalized


def test_pca_two_weights(tmp_path, photo):
    from spar_fast.backbones import Backbone, save_weights
    from spar_fast.segmentation.pca import TITLE_PX
    path = tmp_path / "m1.safetensors"
    save_weights(Backbone.from_pretrained("siglip2-tiny", weights="random:1").model, path)
    out = tmp_path / "pca.png"
    assert main(["pca", photo, "--weights", "random:0", "--weights", str(path), *TINY, "-o", str(out)]) == 0
    sheet = np.array(Image.open(out))
    assert sheet.shape == (TITLE_PX + 50, 75 * 3, 3)
    panels = sheet[TITLE_PX:]
    assert not np.array_equal(panels[:, 75:150], panels[:, 150:])  # two different models
    titles = sheet[:TITLE_PX]
    for col in range(3):  # every panel has a title drawn above it
        assert (titles[:, col * 75:(col + 1) * 75] < 128).any(), col


def test_eval_one(tmp_path, capsys):
    make_dataset(tmp_path, "voc21")
    out = tmp_path / "r.json"
    rc = main(["eval", "--dataset", "voc21", "--root", str(tmp_path), *TINY, "--weights", "random",
               "--limit", "2", "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    res = json.loads(out.read_text())
    r = res["results"][0]
    assert r["dataset"] == "voc21" and r["num_images"] == 2 and len(r["IoU"]) == 21
    assert 0 <= r["mIoU"] <= 100 and r["settings"]["logit_scale"] == 65.0 and r["units"] == "percent"
    assert list(r["per_class"])[:2] == ["background", "aeroplane"] and len(r["per_class"]) == 21


def test_eval_all(tmp_path, capsys, monkeypatch):
    # the six datasets' 359 class lines x 80 prompts through a real text tower take a minute on
    # 2 CPU cores; the stand-in backbone keeps this test to the command's own work
    import spar_fast.commands.model_args as cli_args
    from test_segment import FakeBackbone
    monkeypatch.setattr(cli_args, "load_model", lambda args, weights=None: FakeBackbone())
    for name in ("voc21", "context60", "cityscapes", "ade20k"):
        make_dataset(tmp_path, name)
    out = tmp_path / "all.json"
    rc = main(["eval", "--all", "--root", str(tmp_path), *TINY, "--weights", "random", "--limit", "2",
               "--batch-size", "2", "--per-class", "--out", str(out)])
    printed = capsys.readouterr().out
    assert rc == 0 and "Mean6" in printed
    res = json.loads(out.read_text())
    assert [r["dataset"] for r in res["results"]] == list(BENCHMARKS)
    assert res["Mean6"] == pytest.approx(sum(r["mIoU"] for r in res["results"]) / 6)


def test_eval_missing_root(tmp_path, capsys):
    rc = main(["eval", "--dataset", "ade20k", "--root", str(tmp_path), *TINY, "--weights", "random"])
    err = capsys.readouterr().err
    assert rc == 2 and "ADEChallengeData2016" in err and err.count("\n") == 1
