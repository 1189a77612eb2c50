"""Resolution sweeps: the resolution syntax and resize rule, ``evaluate(resolution=...)`` against
a hand-written loop, the sweep's report, and ``spar-fast eval --sweep`` end to end."""
import json

import numpy as np
import pytest
import torch
from PIL import Image
from test_segment import FakeBackbone
from test_segment_cli import TINY, _cache_in_tmp  # noqa: F401 (fixture)

from spar_fast.cli import main
from spar_fast.errors import UserError
from spar_fast.evaluation import evaluate, list_samples
from spar_fast.evaluation.datasets import load_sample
from spar_fast.evaluation.metrics import ConfusionMatrix
from spar_fast.jobs.sweep import SweepRow, format_table, sweep
from spar_fast.segmentation import segment
from spar_fast.segmentation.resolution import Resolution, parse_resolution, parse_resolutions
from spar_fast.world.scenes import CLASSES, render_scene

SIZES = [(48, 80), (72, 40), (56, 56)]  # odd ratios, both orientations


def write_folder(root, sizes=SIZES, seed=0):
    """A tiny labelled folder (the ``folder`` dataset) of world scenes of the given sizes."""
    for sub in ("images", "labels"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    (root / "classes.txt").write_text("".join(f"{c}\n" for c in CLASSES))
    for k, (h, w) in enumerate(sizes):
        image, label = render_scene(seed + k, h, w)
        Image.fromarray(image).save(root / "images" / f"s{k}.png")
        Image.fromarray(label).save(root / "labels" / f"s{k}.png")
    return root


@pytest.mark.parametrize("text,kind,values", [
    ("short:256,512,768", "short", [256, 512, 768]),
    ("long:1024", "long", [1024]),
    ("area:512x1024, 1000", "area", [512 * 1024, 1000]),
    ("AREA:64X64", "area", [4096]),
])
def test_parse_resolutions(text, kind, values):
    out = parse_resolutions(text)
    assert [r.kind for r in out] == [kind] * len(values) and [r.value for r in out] == values
    assert parse_resolutions(",".join(f"{kind}:{v}" if i == 0 else str(v)
                                      for i, v in enumerate(values))) == out  # str round trip


@pytest.mark.parametrize("text,message", [
    ("256,512", "KIND:V1"), ("side:256", "KIND:V1"), ("short:", "KIND:V1"), ("short:0", "positive"),
    ("short:12.5", "side in pixels"), ("area:2x3x4", "positive whole"), ("short:64,64", "repeats"),
])
def test_parse_resolutions_rejects(text, message):
    with pytest.raises(UserError, match=message):
        parse_resolutions(text)


def test_parse_resolution_one():
    assert parse_resolution("short:512") == Resolution("short", 512)
    with pytest.raises(UserError, match="one resolution"):
        parse_resolution("short:256,512")


def test_resolution_hw():
    rng = np.random.default_rng(0)
    for _ in range(50):
        h, w = (int(v) for v in rng.integers(1, 3000, 2))
        value = int(rng.integers(16, 2048))
        sh, sw = Resolution("short", value).hw(h, w)
        assert abs(min(sh, sw) - value) <= 1 and abs(sh / sw - h / w) <= 1.0 / min(sh, sw) + 1e-9
        lh, lw = Resolution("long", value).hw(h, w)
        assert abs(max(lh, lw) - value) <= 1
        ah, aw = Resolution("area", value * value).hw(h, w)
        assert abs(ah * aw - value * value) <= ah + aw + 1  # within a rounding of each side
    assert Resolution("long", 2048).hw(1024, 2048) == (1024, 2048)  # Cityscapes: identity
    assert Resolution("short", 512).hw(300, 500) == (512, int(500 * 512 / 300 + 0.5))
    assert Resolution("area", 1).hw(10, 1000) == (1, 10)  # never an empty side


class SizeLog(FakeBackbone):
    """A fake backbone that records the size of every input it sees."""

    def __init__(self, seed=0):
        super().__init__(seed)
        self.sizes = []

    def forward(self, images):
        self.sizes.append(tuple(images.shape[-2:]))
        return super().forward(images)


def manual_miou(bb, root, resolution, mode="single", stride=24):
    """mIoU (%) written out: each image resized to ``resolution`` by hand, segmented, scored at
    its label's size."""
    lines = list(CLASSES)
    cm = ConfusionMatrix(len(lines))
    for sample in list_samples("folder", root):
        image, label = load_sample(sample, False)
        h, w = label.shape
        x = torch.from_numpy(image).permute(2, 0, 1).float()[None] / 255
        x = torch.nn.functional.interpolate(x, size=resolution.hw(h, w), mode="bilinear",
                                            align_corners=False)[0]
        x = (x - torch.tensor(bb.mean)[:, None, None]) / torch.tensor(bb.std)[:, None, None]
        pred = segment(bb, x, lines, mode=mode, stride=stride, out_hw=(h, w))
        cm.update(pred, torch.from_numpy(label))
    return 100 * cm.compute()["mIoU"]


@pytest.mark.parametrize("mode", ["single", "slide"])
def test_evaluate_at_resolution_matches_manual(tmp_path, mode):
    root = write_folder(tmp_path / "f")
    bb = SizeLog()
    res = Resolution("short", 40)
    got = evaluate(bb, "folder", root, mode=mode, stride=8, resolution=res)
    assert got["resolution"] == "short:40" and got["seconds_per_image"] > 0
    if mode == "single":  # the model saw each image at short side 40
        assert sorted(bb.sizes) == sorted(res.hw(h, w) for h, w in SIZES)
    assert got["mIoU"] == pytest.approx(manual_miou(bb, root, res, mode, stride=8), abs=1e-6)
    # the text form is the same option; the dataset's own size without it
    assert evaluate(bb, "folder", root, mode=mode, stride=8, resolution="short:40")["mIoU"] == got["mIoU"]
    plain = evaluate(bb, "folder", root, mode=mode, stride=8)
    assert plain["resolution"] is None
    assert plain["mIoU"] != got["mIoU"]  # the resize changes the prediction


def test_sweep_report(tmp_path):
    root = write_folder(tmp_path / "f")
    teacher, student = SizeLog(0), SizeLog(1)
    rows = [(SweepRow("single pass", "t", "single"), teacher),
            (SweepRow("sliding window s=8", "t", "slide", 8), teacher),
            (SweepRow("student", "s", "single"), student)]
    resolutions = parse_resolutions("short:24,40,64")
    report = sweep(rows, "folder", root, resolutions)
    assert report["sweep"] == {"kind": "short", "values": [24, 40, 64]}
    assert [r["label"] for r in report["rows"]] == ["single pass", "sliding window s=8", "student"]
    assert [r["stride"] for r in report["rows"]] == [None, 8, None]
    for (row, bb), out in zip(rows, report["rows"]):
        assert [p["resolution"] for p in out["points"]] == ["short:24", "short:40", "short:64"]
        for p, res in zip(out["points"], resolutions):
            assert p["num_images"] == len(SIZES) and p["seconds_per_image"] > 0
            direct = evaluate(bb, "folder", root, mode=row.mode, stride=row.stride, resolution=res)
            assert p["mIoU"] == direct["mIoU"] and p["mIoU_torchmetrics"] == direct["mIoU_torchmetrics"]
    single = [p["mIoU"] for p in report["rows"][0]["points"]]
    assert single != [p["mIoU"] for p in report["rows"][2]["points"]]  # two different models
    table = format_table(report)
    assert "mIoU" in table and "seconds per image" in table and table.count("student") == 2
    with pytest.raises(ValueError, match="one kind"):
        sweep(rows, "folder", root, [Resolution("short", 24), Resolution("long", 64)])


def test_eval_sweep_cli(tmp_path, capsys):
    root = write_folder(tmp_path / "f")
    out = tmp_path / "sweep.json"
    rc = main(["eval", "--dataset", "folder", "--root", str(root), *TINY, "--weights", "random:1",
               "--weights", "random:2", "--sweep", "short:48,64", "--mode", "single,slide",
               "--stride", "32", "--out", str(out)])
    text = capsys.readouterr().out
    assert rc == 0
    report = json.loads(out.read_text())
    assert [r["label"] for r in report["rows"]] == ["single pass", "sliding window s=32", "student"]
    assert [r["weights"] for r in report["rows"]] == ["random:1", "random:1", "random:2"]
    assert all(len(r["points"]) == 2 for r in report["rows"]) and report["device"].startswith("cpu")
    assert "seconds per image" in text and "sliding window s=32" in text
    assert (tmp_path / "sweep.png").is_file()  # the plot beside --out


@pytest.mark.parametrize("args,message", [
    (["--sweep", "short:0"], "positive"),
    (["--sweep", "pixels:64"], "KIND:V1"),
    (["--weights", "random", "--weights", "random:2"], "need --sweep"),
    (["--mode", "single,slide"], "need --sweep"),
    (["--mode", "tiles"], "mode must be"),
    (["--sweep", "short:64", "--out", "x.txt"], ".json"),
])
def test_eval_sweep_cli_errors(tmp_path, capsys, args, message):
    root = write_folder(tmp_path / "f", sizes=[(32, 32)])
    rc = main(["eval", "--dataset", "folder", "--root", str(root), *TINY, *args])
    err = capsys.readouterr().err
    assert rc == 2 and message in err and err.count("\n") == 1, err


def test_eval_sweep_include(tmp_path, capsys):
    """Another backbone's sweep (Fig. 3's baseline) joins the table and plot of this one."""
    root = write_folder(tmp_path / "f", sizes=[(48, 80), (64, 64)])
    base = ["eval", "--dataset", "folder", "--root", str(root), "--device", "cpu", "--weights", "random"]
    other = tmp_path / "other.json"
    assert main([*base, "--backbone", "openclip-tiny", "--sweep", "short:48,64", "--out", str(other)]) == 0
    out = tmp_path / "both.json"
    assert main([*base, "--backbone", "siglip2-tiny", "--sweep", "short:48,64", "--include", str(other),
                 "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert [r["label"] for r in report["rows"]] == ["siglip2-tiny: single pass", "openclip-tiny: single pass"]
    assert report["rows"][1]["points"] == json.loads(other.read_text())["rows"][0]["points"]
    assert "openclip-tiny: single pass" in capsys.readouterr().out
    for bad, message in ((["--sweep", "short:48"], "this run sweeps"), (["--sweep", "short:48,64", "--dataset", "voc21"], "this run sweeps")):
        rc = main([*base, "--backbone", "siglip2-tiny", *bad, "--include", str(other)])
        err = capsys.readouterr().err
        assert rc == 2 and message in err and err.count("\n") == 1, err
    rc = main([*base, "--backbone", "siglip2-tiny", "--include", str(other)])
    assert rc == 2 and "need --sweep" in capsys.readouterr().err
