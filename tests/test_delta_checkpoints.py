"""Delta checkpoints (spar_fast.backbones.delta): a student file holds only its trained tensors
and its base's identity; loading rebuilds the base, checks it and applies the delta."""
import os

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file

from spar_fast.backbones import Backbone, export_weights, full_state_dict_of, registry
from spar_fast.backbones.delta import BaseIdentity, read_delta_metadata, save_delta
from spar_fast.backbones.weights import save_weights
from spar_fast.cli import main
from spar_fast.errors import UserError
from spar_fast.train import train
from spar_fast.train.unfreeze import resolve_unfreeze
from test_trainer import make_tiny_store

CPU = ["--device", "cpu"]


def make_delta(path, base="random:0", backbone="siglip2-tiny", unfreeze="blk_-1", seed=1):
    """A delta over ``base`` whose trained tensors are moved by seeded noise -> (path, the
    student's full state dict)."""
    bb = Backbone.from_pretrained(backbone, weights=base)
    names = resolve_unfreeze(unfreeze, bb).names
    identity = BaseIdentity.of(bb.model, names, backbone, base)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in bb.model.named_parameters():
            if name in names:
                p.add_(torch.randn(p.shape, generator=gen) * 0.1)
    save_delta(bb.model, names, str(path), identity, {"unfreeze": unfreeze})
    return str(path), {k: v.clone() for k, v in bb.model.state_dict().items()}


def test_delta_holds_only_the_trained_tensors_and_loads_exactly(tmp_path):
    path, student = make_delta(tmp_path / "s.safetensors", unfreeze="blk_-1,posembed")
    meta = read_delta_metadata(path)
    assert meta["backbone"] == "siglip2-tiny" and meta["base_weights"] == "random:0"
    bb = Backbone.from_pretrained(weights=path)  # the backbone comes from the file
    names = set(load_file(path))
    assert names == set(resolve_unfreeze("blk_-1,posembed", bb).names)
    assert bb.name == "siglip2-tiny" and set(bb.delta.names) == names
    for k, v in bb.model.state_dict().items():
        assert torch.equal(v, student[k]), k
    full = tmp_path / "full.safetensors"
    export_weights(path, full)
    assert os.path.getsize(path) * 3 < os.path.getsize(full)
    # the export is a plain open_clip state dict: no spar_fast logic needed to load it
    model = open_clip.create_model(registry.resolve("siglip2-tiny").open_clip_name, pretrained=None)
    model.load_state_dict(load_file(full), strict=True)
    assert all(torch.equal(v, student[k]) for k, v in model.state_dict().items())
    assert read_delta_metadata(str(full)) is None
    # and the full file still loads as weights, as final.safetensors of older versions do
    again = Backbone.from_pretrained("siglip2-tiny", weights=full).model.state_dict()
    assert all(torch.equal(v, student[k]) for k, v in again.items())


def test_a_different_base_is_one_line_naming_what_differs(tmp_path):
    path, _ = make_delta(tmp_path / "s.safetensors")
    with pytest.raises(UserError, match=r"trained from siglip2-tiny weights random:0, but the base given "
                                        r"\(random:5\) differs in the tensors it replaces and the tensors it keeps") as err:
        Backbone.from_pretrained(weights=path, base="random:5")
    assert "\n" not in str(err.value)
    with pytest.raises(UserError, match="delta of backbone 'siglip2-tiny', not 'openclip-tiny'"):
        Backbone.from_pretrained("openclip-tiny", weights=path)
    with pytest.raises(UserError, match="a delta cannot be its own base"):
        Backbone.from_pretrained(weights=path, base=path)
    # a base that differs only in a tensor the delta does not replace
    base = Backbone.from_pretrained("siglip2-tiny", weights="random:0").model
    with torch.no_grad():
        base.visual.trunk.patch_embed.proj.bias.add_(1e-3)
    save_weights(base, str(tmp_path / "other.safetensors"))
    with pytest.raises(UserError, match=r"differs in the tensors it keeps \(checksums\)"):
        Backbone.from_pretrained(weights=path, base=str(tmp_path / "other.safetensors"))


def test_base_file_moved_then_named_with_base_weights(tmp_path, capsys):
    base_file = tmp_path / "teacher.safetensors"
    save_weights(Backbone.from_pretrained("siglip2-tiny", weights="random:4").model, str(base_file))
    path, student = make_delta(tmp_path / "s.safetensors", base=str(base_file))
    moved = tmp_path / "moved.safetensors"
    os.replace(base_file, moved)
    with pytest.raises(UserError, match="its base weights .*teacher.safetensors.* cannot be loaded .*--base-weights"):
        Backbone.from_pretrained(weights=path)
    bb = Backbone.from_pretrained(weights=path, base=str(moved))
    assert all(torch.equal(v, student[k]) for k, v in bb.model.state_dict().items())
    image = tmp_path / "x.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 56, 3), dtype=np.uint8)).save(image)
    out = tmp_path / "f.npy"
    assert main(["embed", str(image), "--weights", path, "--base-weights", str(moved), "-o", str(out), *CPU]) == 0
    assert main(["embed", str(image), "--weights", path, "-o", str(out), *CPU]) == 2
    assert "--base-weights" in capsys.readouterr().err


def test_segment_and_export_cli_take_a_delta_without_backbone(tmp_path, capsys):
    path, student = make_delta(tmp_path / "s.safetensors")
    image = tmp_path / "x.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (50, 70, 3), dtype=np.uint8)).save(image)
    out, mask = tmp_path / "o.png", tmp_path / "m.png"
    rc = main(["segment", str(image), "--weights", path, "--classes", "sky; tree", "-o", str(out),
               "--save-mask", str(mask), *CPU])
    assert rc == 0, capsys.readouterr().err
    assert Image.open(mask).size == (70, 50)
    assert main(["segment", str(image), "--weights", path, "--backbone", "openclip-tiny", "--classes", "sky",
                 "-o", str(out), *CPU]) == 2
    assert "delta of backbone 'siglip2-tiny'" in capsys.readouterr().err
    full = tmp_path / "full.safetensors"
    assert main(["export", path, "--out", str(full)]) == 0
    assert set(load_file(full)) == set(student)
    half = tmp_path / "half.safetensors"
    assert main(["export", path, "--out", str(half), "--dtype", "fp16"]) == 0
    assert all(v.dtype == torch.float16 for v in load_file(half).values() if v.is_floating_point())
    assert os.path.getsize(half) < 0.6 * os.path.getsize(full)


def test_training_writes_a_delta_equal_to_the_full_weights_run(tmp_path):
    """The default delta checkpoint and ``full_weights`` give the same student, bit for bit."""
    store, init = make_tiny_store(str(tmp_path / "s"), sizes=[(64, 64), (60, 90)])
    delta = train(store, str(tmp_path / "a"), epochs=1, device="cpu", workers=0, progress=False)
    full = train(store, str(tmp_path / "b"), epochs=1, full_weights=True, device="cpu", workers=0,
                 progress=False)
    with safe_open(delta, framework="pt") as f:
        meta = f.metadata()
    assert meta["unfreeze"] == "blk_-1,blk_-2" and meta["base_weights"] == init and '"lr": 2e-05' in meta["training"]
    assert os.path.getsize(delta) < os.path.getsize(full) / 2
    reference = load_file(full)
    loaded = full_state_dict_of(delta)
    assert reference.keys() == loaded.keys()
    for k in reference:
        assert torch.equal(reference[k], loaded[k]), k
