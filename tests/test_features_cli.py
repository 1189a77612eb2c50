"""``spar-fast features`` / ``spar-fast verify`` end to end, with the real sliding-window teacher of
the tiny SigLIP2-family backbone (random init, 512-pixel images: a fraction of a second each)."""
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from spar_fast.cli import main
from spar_fast.data import normalize
from spar_fast.jobs.extract import extract_features
from spar_fast.store import FeatureStore


def _images(folder: Path, n=3) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (40 + 9 * i, 50, 3), dtype=np.uint8)).save(folder / f"p{i}.png")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    return folder


CLI = ["--backbone", "siglip2-tiny", "--weights", "random:3", "--augment", "none", "--device", "cpu",
       "--shard-size", "2", "--no-progress"]


def test_features_and_verify_commands(tmp_path, capsys):
    images = _images(tmp_path / "img")
    store = tmp_path / "store"
    assert main(["features", str(images), "--out", str(store)] + CLI) == 0
    out = capsys.readouterr().out
    assert "images: 4  ok: 3  skipped: 1  computed: 3  resumed: 0" in out
    assert "skipped broken:" in out
    fs = FeatureStore(store)
    assert len(fs) == 3 and fs.config.backbone == "siglip2-tiny" and fs.config.weights == "random:3"
    target, rec = fs.get("p2")
    assert target.dtype == torch.float16 and tuple(target.shape) == (rec.image_hw[0] // 16,
                                                                     rec.image_hw[1] // 16, 64)
    assert main(["features", str(images), "--out", str(store)] + CLI) == 0
    assert "computed: 0  resumed: 4" in capsys.readouterr().out
    assert main(["verify", str(store)]) == 0
    assert "complete; 2 chunks, 3 targets, 1 skipped" in capsys.readouterr().out
    shard = store / "shards" / "r000-000001.safetensors"
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0xFF
    shard.write_bytes(bytes(data))
    assert main(["verify", str(store)]) == 1
    assert "corrupt" in capsys.readouterr().out
    assert main(["features", str(images), "--out", str(store)] + CLI) == 0  # repairs the chunk
    assert "computed: 2  resumed: 2" in capsys.readouterr().out
    assert main(["verify", str(store)]) == 0


def test_real_teacher_targets_match_direct_call(tmp_path):
    from spar_fast.backbones import Backbone
    from spar_fast.teacher import teacher_features

    torch.manual_seed(0)
    bb = Backbone.from_pretrained("siglip2-tiny", weights="random").eval()
    images = tmp_path / "img"
    images.mkdir()
    rng = np.random.default_rng(2)
    Image.fromarray(rng.integers(0, 256, (512, 512, 3), dtype=np.uint8)).save(images / "a.png")
    # "none" keeps the image at 512 px (400 windows); the default augmentation would make it
    # ~1000 px (thousands of windows), too slow for a CPU test
    extract_features(images, tmp_path / "s", backbone=bb, augment="none", dtype="fp32",
                     device="cpu", progress=False)
    fs = FeatureStore(tmp_path / "s")
    for rec in fs.records:
        x = normalize(fs.input_image(rec.image_id), bb.mean, bb.std)
        with torch.no_grad():
            want = teacher_features(bb, x, stride=24)
        torch.testing.assert_close(fs.get(rec.image_id)[0], want, rtol=0, atol=0)


@pytest.mark.parametrize("args,words", [
    (["--backbone", "no-such-net"], "unknown backbone"),
    (["--device", "tpu"], "device"),
    (["--weights", "/no/such/weights.pt"], "not found"),
    (["--stride", "100"], "leaves gaps"),
    (["--device", "cuda:7"], "device"),
])
def test_bad_options_one_line_errors(tmp_path, capsys, args, words):
    images = _images(tmp_path / "img", n=1)
    argv = ["features", str(images), "--out", str(tmp_path / "s")] + CLI + args
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert words in err and len(err.splitlines()) == 1 and err.startswith("spar-fast features: error:")


def test_missing_inputs(tmp_path, capsys):
    assert main(["features", str(tmp_path / "none"), "--out", str(tmp_path / "s")] + CLI) == 2
    assert "no such directory" in capsys.readouterr().err
    assert main(["verify", str(tmp_path / "none")]) == 2
    capsys.readouterr()
    assert main(["features", str(tmp_path), "--shard-size", "0", "--out", "x"]) == 2
    assert capsys.readouterr().err.count("\n") == 1  # usage errors are one line too


def test_help_lists_every_option(capsys):
    with pytest.raises(SystemExit):
        main(["features", "--help"])
    text = capsys.readouterr().out
    for option in ("--out", "--backbone", "--stride", "--augment", "--dtype", "--device",
                   "--weights", "--max-pixels", "--seed", "--shard-size", "--limit", "--no-progress"):
        assert option in text


def test_decode_path_is_recorded_and_followed_by_training(tmp_path, capsys):
    """``--decode torchvision``: the store records it, its targets are the pil store's (same
    pixels for these files), and training on it decodes with the store's path."""
    pytest.importorskip("torchvision")
    from spar_fast.data.decode import training_decode

    images = tmp_path / "img"
    images.mkdir()
    rng = np.random.default_rng(2)
    for i in range(2):
        Image.fromarray(rng.integers(0, 256, (60 + 7 * i, 48, 3), dtype=np.uint8)).save(images / f"j{i}.jpg", quality=90)
    stores = {d: tmp_path / d for d in ("pil", "torchvision")}
    for decode, store in stores.items():
        assert main(["features", str(images), "--out", str(store), *CLI, "--decode", decode]) == 0
    tv, pil = FeatureStore(stores["torchvision"]), FeatureStore(stores["pil"])
    assert tv.config.decode == "torchvision" and "decode" not in pil.config.to_dict()
    assert training_decode(tv.config.decode, None, torch.device("cpu")) == "torchvision"
    for image_id in pil.ids:
        assert torch.equal(tv.get(image_id)[0], pil.get(image_id)[0])
    capsys.readouterr()
