"""The world's affinity model (spar_fast.world.affinity): its pieces on tiny inputs, and that LPOSS's
DINO loader reads a saved one as it reads DINO (the architecture from the file's metadata)."""
from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from spar_fast.errors import UserError
from spar_fast.runtime import Weights
from spar_fast.segmentation.dino_affinity import _architecture, dino_features, last_block_values, load_dino
from spar_fast.world.affinity import (AffinityConfig, affinity_key, build_model, grouping_loss, patch_segments,
                                      save_affinity, world_affinity)

TINY = AffinityConfig(dim=24, depth=2, heads=2, patch=8, steps=3, batch=2, sides=(16, 32), pool_scenes=2,
                      pool_side=64)


def test_patch_segments_takes_the_majority_and_drops_uncovered_patches():
    seg = torch.zeros(1, 4, 8, dtype=torch.int64)
    seg[0, :, :4] = 3                 # left patch: all segment 3
    seg[0, :3, 4:] = 5                # right patch: 12 of 16 pixels segment 5, 4 uncovered
    assert patch_segments(seg, 4).tolist() == [[3, 5]]
    seg[0, :, 4:] = 0                 # right patch: no segment
    seg[0, 0, 4] = 7                  # one pixel of 7 does not make the majority
    assert patch_segments(seg, 4).tolist() == [[3, -1]]


def test_label_segments_number_as_the_panoptic_probe_does():
    from spar_fast.probe.panoptic import folder_segments
    from spar_fast.world.affinity import label_segments
    from spar_fast.world.scenes import render_scene

    label = render_scene(7, 512, 512)[1]
    segments = label_segments(label)
    assert (segments == folder_segments(label, None, set())[0]).all()
    assert segments.max() > 3 and ((segments == 0) == (label == 255)).all()


def test_grouping_loss_is_zero_only_for_grouped_values():
    segments = torch.tensor([[0, 0, 1, -1]])
    grouped = torch.tensor([[[1.0, 0.0], [2.0, 0.0], [-1.0, 0.0], [0.0, 5.0]]])  # cos -1 across
    assert grouping_loss(grouped, segments, margin=0.3, hardest=8).item() == pytest.approx(0.0, abs=1e-7)
    mixed = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 5.0]]])
    # same-segment pairs (self pairs included): (0,1), (1,0) at cos 0 cost 1 each, 3 self pairs 0;
    # other pairs: (0,2), (2,0) at cos 1 cost 1.3^2, (1,2), (2,1) at cos 0 cost 0.3^2
    want = 2 / 5 + (2 * 1.69 + 2 * 0.09) / 4
    assert grouping_loss(mixed, segments, margin=0.3, hardest=8).item() == pytest.approx(want, rel=1e-6)
    # hardest 1: per patch only its worst other-segment pair: patches 0 and 1 -> 2, patch 2 -> 0
    want = 2 / 5 + (1.69 + 0.09 + 1.69) / 3
    assert grouping_loss(mixed, segments, margin=0.3, hardest=1).item() == pytest.approx(want, rel=1e-6)


def test_saved_model_loads_as_dino_weights_and_gives_its_values(tmp_path):
    model = build_model(TINY).eval()
    path = str(tmp_path / "affinity.safetensors")
    save_affinity(model, TINY, path, "k")
    name, kwargs = _architecture(path)
    assert kwargs == TINY.timm_kwargs() and name.startswith("vit_")
    loaded = load_dino(Weights.parse(path), "cpu")
    x = torch.rand(1, 3, 24, 40)

    class Identity:  # an image already in [0, 1]: bb.mean 0, std 1
        mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    feats, patch = dino_features(Identity, x[0], [(0, 0, 24, 40)], Weights.parse(path))
    assert patch == 8 and feats[0].shape == (3, 5, 24)
    mean = torch.tensor((0.485, 0.456, 0.406))[:, None, None]
    std = torch.tensor((0.229, 0.224, 0.225))[:, None, None]
    with torch.no_grad():
        want = last_block_values(model, (x - mean) / std).reshape(3, 5, 24)
    torch.testing.assert_close(feats[0], want)
    assert loaded is not model


def test_a_damaged_file_is_one_line(tmp_path):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(b"not a safetensors file")
    with pytest.raises(UserError, match="cannot read it as a safetensors DINO state dict"):
        _architecture(str(path))
    from safetensors.torch import save_file

    odd = str(tmp_path / "odd.safetensors")
    save_file({"w": torch.zeros(1)}, odd, metadata={"timm_model": "resnet50", "timm_kwargs": "{}"})
    with pytest.raises(UserError, match="expected a timm ViT"):
        _architecture(odd)


def test_world_affinity_trains_once_and_caches(tmp_path):
    lines = []
    path = world_affinity(TINY, root=str(tmp_path), progress=False, log=lines.append)
    assert len(lines) == 1 and "3 steps" in lines[0]
    assert world_affinity(TINY, root=str(tmp_path), progress=False, log=lines.append) == path
    assert len(lines) == 1  # cached
    with open(path.replace("model.safetensors", "affinity.json")) as f:
        assert json.load(f)["key"] == affinity_key(TINY)
    assert affinity_key(replace(TINY, margin=0.5)) != affinity_key(TINY)


def test_world_lposs_refuses_a_folder_run_with_other_settings(tmp_path, capsys):
    from spar_fast.cli import main
    from spar_fast.jobs.world_lposs import LpossWorldSettings, _record, run_lposs_world
    from spar_fast.jobs.world_paper import claim_folder

    out = str(tmp_path)
    first = replace(LpossWorldSettings(), stride=48)
    claim_folder(out, _record(first), "world LPOSS")
    with pytest.raises(UserError, match=r"stride 48 -> 24\); pass another --out"):
        run_lposs_world(out, LpossWorldSettings())  # refused before any work
    assert main(["world", "lposs", "--out", out, "--epochs", "0"]) == 2
    assert "--epochs" in capsys.readouterr().err


def test_world_lposs_runs_end_to_end_on_a_tiny_setting(tmp_path, capsys):
    """The whole job on two 128 px scenes, two training images and a 3-step affinity model: the
    table has every model and column, gammas follow the paper unless set, a rerun reuses it."""
    from spar_fast.jobs.world_lposs import (
        COLUMNS,
        STRENGTHS,
        LpossWorldSettings,
        print_lposs_report,
        run_lposs_world,
    )
    from spar_fast.train.config import TrainConfig
    from spar_fast.world.dataset import WorldLayout

    settings = LpossWorldSettings(side=128, layout=WorldLayout(val_sides=(128,), val_pixels=2 * 128 * 128,
                                                               unlabelled_count=2),
                                  affinity=replace(TINY, patch=16, sides=(32, 64)),
                                  train=TrainConfig(epochs=1, lr=1e-4, progress=False))
    out = str(tmp_path)
    report = run_lposs_world(out, settings, log=lambda *_: None)
    table = report["table"]
    assert list(table) == ["pretrained single pass", "teacher", "SPAR student"]
    assert all(list(row) == list(COLUMNS) for row in table.values())
    assert [table[m]["lposs"]["gamma"] for m in table] == [1.0, 1.0, 10.0]
    assert all(table[m]["lposs+ g10"]["gamma"] == 10.0 for m in table)
    assert table["SPAR student"]["lposs"] == table["SPAR student"]["lposs g10"]  # one evaluation
    assert [table[m]["lposs+, ideal graph"]["gamma"] for m in table] == [1.0, 1.0, 10.0]
    assert [r["strength"] for r in report["graph_sensitivity"].values()] == list(STRENGTHS)
    assert all(0 <= r["mIoU"] <= 100 and r["images"] == 2 for row in table.values() for r in row.values())
    assert run_lposs_world(out, settings, log=lambda *_: None)["table"] == table  # resumed from evals.json
    print_lposs_report(report)
    printed = capsys.readouterr().out
    assert "SPAR student" in printed and report["affinity_weights"] in printed and "s inf" in printed
