"""Model folders in the Hugging Face layout: save_pretrained / from_pretrained as a path and as a
hub id resolved offline from a cache laid out as the hub client lays it out."""
import hashlib
import json
import os
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from spar_fast.backbones import Backbone
from spar_fast.cli import main
from spar_fast.errors import UserError
from test_delta_checkpoints import make_delta

REVISION = "0123456789abcdef0123456789abcdef01234567"


def hub_cache_copy(folder, cache, repo):
    """Lay ``folder``'s files out as huggingface_hub does: blobs/<sha256>, snapshots/<rev>/<name>
    (relative symlinks to the blobs) and refs/main holding the revision."""
    root = os.path.join(cache, "models--" + repo.replace("/", "--"))
    os.makedirs(os.path.join(root, "blobs"))
    os.makedirs(os.path.join(root, "snapshots", REVISION))
    os.makedirs(os.path.join(root, "refs"))
    for name in sorted(os.listdir(folder)):
        data = open(os.path.join(folder, name), "rb").read()
        blob = hashlib.sha256(data).hexdigest()
        with open(os.path.join(root, "blobs", blob), "wb") as f:
            f.write(data)
        os.symlink(os.path.join("..", "..", "blobs", blob), os.path.join(root, "snapshots", REVISION, name))
    with open(os.path.join(root, "refs", "main"), "w") as f:
        f.write(REVISION)


@pytest.fixture
def student(tmp_path):
    path, state = make_delta(tmp_path / "s.safetensors", unfreeze="blk_-1,blk_-2")
    bb = Backbone.from_pretrained(weights=path)
    folder = bb.save_pretrained(tmp_path / "model", metrics={"VOC21 mIoU": 12.5})
    return folder, state


@pytest.fixture
def offline_cache(tmp_path, monkeypatch):
    cache = tmp_path / "hf" / "hub"
    cache.mkdir(parents=True)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return str(cache)


def _same(bb, state):
    return all(torch.equal(v, state[k]) for k, v in bb.model.state_dict().items())


def test_saved_folder_layout_and_round_trip(student, tmp_path):
    folder, state = student
    assert sorted(os.listdir(folder)) == ["README.md", "config.json", "model.safetensors"]
    config = json.load(open(os.path.join(folder, "config.json")))
    assert config["backbone"] == "siglip2-tiny" and config["unfreeze"] == "blk_-1,blk_-2"
    assert config["weights"]["kind"] == "delta" and config["weights"]["base"] == "random:0"
    assert config["patch_size"] == 16 and config["license"]
    card = open(os.path.join(folder, "README.md")).read()
    assert card.startswith("---\nlicense: ") and "| VOC21 mIoU | 12.5 |" in card and "blk_-1,blk_-2" in card
    assert _same(Backbone.from_pretrained(folder), state)
    assert _same(Backbone.from_pretrained("siglip2-tiny", weights=folder), state)
    with pytest.raises(UserError, match="holds a 'siglip2-tiny' model, not 'openclip-tiny'"):
        Backbone.from_pretrained("openclip-tiny", weights=folder)
    # fp16 for sharing: half the bytes, values within fp16 rounding
    half = Backbone.from_pretrained(folder).save_pretrained(tmp_path / "half", dtype="fp16")
    assert os.path.getsize(os.path.join(half, "model.safetensors")) < 0.6 * os.path.getsize(
        os.path.join(folder, "model.safetensors"))
    loaded = Backbone.from_pretrained(half).model.state_dict()
    for k, v in loaded.items():
        torch.testing.assert_close(v, state[k], rtol=1e-3, atol=1e-3)
    # a full (standalone) folder, and a model that is no delta at all
    full = Backbone.from_pretrained(folder).save_pretrained(tmp_path / "full", full=True)
    assert json.load(open(os.path.join(full, "config.json")))["weights"]["kind"] == "full"
    assert _same(Backbone.from_pretrained(full), state)


@pytest.mark.parametrize("client", ["huggingface_hub", "cache layout"])
def test_hub_id_resolves_offline_from_the_cache(student, offline_cache, monkeypatch, client):
    folder, state = student
    if client == "huggingface_hub":
        pytest.importorskip("huggingface_hub")
    else:  # the fallback when huggingface_hub is not installed
        monkeypatch.setitem(sys.modules, "huggingface_hub", None)
    hub_cache_copy(folder, offline_cache, "spar-org/siglip2-tiny-spar")
    bb = Backbone.from_pretrained("spar-org/siglip2-tiny-spar")
    assert _same(bb, state) and bb.name == "siglip2-tiny"
    assert REVISION in bb.weights_id
    with pytest.raises(UserError, match="hub model spar-org/missing: not in the local Hugging Face cache") as err:
        Backbone.from_pretrained("spar-org/missing")
    assert "\n" not in str(err.value)


def test_cli_weights_take_a_folder_and_a_hub_id(student, offline_cache, tmp_path, capsys):
    folder, _ = student
    hub_cache_copy(folder, offline_cache, "spar-org/tiny")
    image = tmp_path / "x.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 56, 3), dtype=np.uint8)).save(image)
    outs = []
    for weights in (folder, "spar-org/tiny"):
        out = tmp_path / f"f{len(outs)}.npy"
        assert main(["embed", str(image), "--weights", weights, "-o", str(out), "--device", "cpu"]) == 0
        outs.append(np.load(out))
    np.testing.assert_array_equal(outs[0], outs[1])
    exported = tmp_path / "exported"
    summary = tmp_path / "eval.json"  # the shape `spar-fast eval --out` writes
    summary.write_text(json.dumps({"mode": "single", "results": [{"dataset": "voc21", "mIoU": 41.234}],
                                   "Mean6": None}))
    assert main(["export", "spar-org/tiny", "--out", str(exported), "--metrics", str(summary)]) == 0
    assert json.load(open(exported / "config.json"))["weights"]["kind"] == "delta"
    assert "| voc21 mIoU (single) | 41.23 |" in (exported / "README.md").read_text()
    assert main(["embed", str(image), "--weights", "spar-org/nothing", "-o", str(tmp_path / "g.npy"),
                 "--device", "cpu"]) == 2
    assert "not in the local Hugging Face cache" in capsys.readouterr().err
