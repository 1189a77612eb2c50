"""Checkpoint formats: each is built from a random tiny model and loaded into a fresh one."""
import os

import open_clip
import pytest
import torch
from safetensors.torch import save_file

import spar_fast as sf
from spar_fast.backbones import load_weights, read_state_dict, registry, save_weights
from spar_fast.errors import UserError


@pytest.fixture(scope="module")
def source():
    registry.ensure_registered()
    torch.manual_seed(2)
    return open_clip.create_model("SPAR-Tiny-OpenCLIP", pretrained=None)


def fresh(name="SPAR-Tiny-OpenCLIP"):
    return open_clip.create_model(name, pretrained=None)


def assert_same(model, source):
    ref = source.state_dict()
    got = model.state_dict()
    assert got.keys() == ref.keys()
    for k in ref:
        assert torch.equal(got[k], ref[k]), k


def _formats(source):
    sd = source.state_dict()
    return {
        "plain.pt": sd,
        "wrapped.pt": {"state_dict": sd, "epoch": 3},
        "ddp.pth": {"module." + k: v for k, v in sd.items()},
        "spar.ckpt": {"state_dict": {**{"segmentor.net.model." + k: v for k, v in sd.items()},
                                     "segmentor.teacher.scale": torch.ones(1)},
                      "epoch": 9, "global_step": 100, "hyper_parameters": {"lr": 2e-5}},
        "model_prefix.pt": {"model." + k: v for k, v in sd.items()},
    }


def test_round_trip_every_format(source, tmp_path):
    for fname, obj in _formats(source).items():
        path = tmp_path / fname
        torch.save(obj, path)
        model = fresh()
        assert load_weights(model, path) is model
        assert_same(model, source)
    path = tmp_path / "student.safetensors"
    save_weights(source, path)
    model = fresh()
    load_weights(model, str(path))
    assert_same(model, source)


def test_from_pretrained_path(source, tmp_path):
    path = tmp_path / "student.safetensors"
    save_weights(source, path)
    bb = sf.Backbone.from_pretrained("openclip-tiny", weights=str(path))
    assert_same(bb.model, source)
    assert not bb.training
    with pytest.raises(UserError, match="weights file not found"):
        sf.Backbone.from_pretrained("openclip-tiny", weights=str(tmp_path / "nope.pt"))


def test_mismatch_names_keys_and_counts(source, tmp_path):
    sd = dict(source.state_dict())
    sd.pop("visual.proj")
    sd.pop("ln_final.weight")
    sd["visual.extra.weight"] = torch.zeros(2)
    path = tmp_path / "bad.pt"
    torch.save(sd, path)
    with pytest.raises(UserError, match=r"2 missing \(ln_final.weight, visual.proj\); 1 unexpected "
                                        r"\(visual.extra.weight\)") as info:
        load_weights(fresh(), path)
    assert "\n" not in str(info.value)


def test_wrong_family_is_user_error(source, tmp_path):
    path = tmp_path / "openclip.safetensors"
    save_weights(source, path)
    with pytest.raises(UserError, match="does not match the model"):
        load_weights(fresh("SPAR-Tiny-Sig2"), path)


def test_shape_mismatch(source, tmp_path):
    sd = dict(source.state_dict())
    sd["visual.proj"] = torch.zeros(3, 3)
    path = tmp_path / "shape.safetensors"
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    with pytest.raises(UserError, match=r"1 with other shapes \(visual.proj: \(3, 3\)"):
        load_weights(fresh(), path)


class Opaque:
    """A pickled Python object that weights_only loading refuses."""


def test_untrusted_pickle_needs_opt_in(source, tmp_path):
    path = tmp_path / "lightning.ckpt"
    torch.save({"state_dict": {"model." + k: v for k, v in source.state_dict().items()},
                "hyper_parameters": {"cfg": Opaque()}}, path)
    with pytest.raises(UserError, match="trusted=True"):
        load_weights(fresh(), path)
    model = fresh()
    load_weights(model, path, trusted=True)
    assert_same(model, source)


def test_unreadable_inputs(tmp_path):
    with pytest.raises(UserError, match="checkpoint not found"):
        read_state_dict(tmp_path / "missing.pt")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a file")
    with pytest.raises(UserError, match="safetensors"):
        read_state_dict(junk)
    text = tmp_path / "notes.pt"
    text.write_text("hello")
    with pytest.raises(UserError, match="not a readable checkpoint"):
        read_state_dict(text)
    assert os.path.exists(text)
