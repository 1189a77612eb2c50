"""The offline demo on the world: report, panels and the CLI (mechanics at a small size; the
gain itself is checked in test_world_gain.py)."""
from __future__ import annotations

import json
import os

from PIL import Image

from spar_fast.jobs.world_demo import run_world_demo
from spar_fast.train.config import TrainConfig
from spar_fast.world.dataset import WorldLayout


def test_world_demo_small(tmp_path):
    lines = []
    layout = WorldLayout(val_sides=(128, 256), val_pixels=2 * 256 * 256, unlabelled_count=6)
    report = run_world_demo(str(tmp_path), progress=False, say=lines.append, layout=layout,
                            train=TrainConfig(epochs=1, lr=3e-4))
    assert [r["side"] for r in report["sides"]] == [128, 256]
    for row in report["sides"]:
        for key in ("single", "teacher", "student"):
            assert 0 <= row[key]["mIoU"] <= 100 and row[key]["seconds_per_image"] > 0
    # at the native side one window is the whole image: the teacher is the single pass
    assert abs(report["sides"][0]["teacher"]["mIoU"] - report["sides"][0]["single"]["mIoU"]) < 1.0
    assert json.load(open(tmp_path / "report.json"))["sides"] == json.loads(json.dumps(report["sides"]))
    with Image.open(report["figure"]) as fig:
        assert fig.width > 2 * fig.height  # two rows of four or five panels
    assert os.path.isfile(report["student"])
    assert any("side 256" in line for line in lines)


def test_world_paper_refuses_a_folder_run_with_other_settings(tmp_path, capsys):
    from dataclasses import replace

    import pytest

    from spar_fast.cli import main
    from spar_fast.errors import UserError
    from spar_fast.jobs.world_paper import PaperSettings, _claim, run_paper

    out = str(tmp_path / "paper")
    os.makedirs(out)
    first = replace(PaperSettings(), layout=WorldLayout(unlabelled_count=5))
    _claim(out, first)
    _claim(out, first)  # the same settings: a resume, accepted
    with pytest.raises(UserError, match=r"layout\.unlabelled_count 5 -> 120\); pass another --out"):
        run_paper(out, PaperSettings())  # refused before any work
    assert main(["world", "paper", "--out", out, "--images", "5", "--epochs", "2", "--quiet"]) == 2
    assert "train.epochs 4 -> 2" in capsys.readouterr().err
    assert main(["world", "paper", "--out", out, "--images", "0"]) == 2
    assert "--images" in capsys.readouterr().err
    record = os.path.join(out, "settings.json")
    with open(record) as f:
        held = json.load(f)
    with open(record, "w") as f:
        json.dump({**held, "world_key": "0" * 16}, f)
    with pytest.raises(UserError, match="world_key 0000000000000000 -> "):
        _claim(out, first)  # written by an older world's code
