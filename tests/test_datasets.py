"""Dataset readers on synthetic mini-datasets in each MMSeg layout, and evaluate() end to end."""
import numpy as np
import pytest
import torch
from PIL import Image

from spar_fast.errors import UserError
from spar_fast.evaluation import DATASETS, evaluate, list_samples, load_label
from spar_fast.evaluation.datasets import BENCHMARKS
from spar_fast.evaluation.datasets import load_sample
from spar_fast.evaluation.metrics import ConfusionMatrix
from spar_fast.segmentation import prepare_image, segment
from test_segment import FakeBackbone

SIZES = [(30, 44), (41, 27), (24, 24)]


def _write_pair(img_path, lab_path, hw, num_labels, rng, palette=False):
    img_path.parent.mkdir(parents=True, exist_ok=True)
    lab_path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (*hw, 3), dtype=np.uint8)).save(img_path)
    lab = rng.integers(0, num_labels, hw).astype(np.uint8)
    lab[0, :3] = 255
    img = Image.fromarray(lab, mode="L")
    if palette:  # VOC labels are palette PNGs
        img = img.convert("P")
        img.putpalette([v for k in range(256) for v in (k, 255 - k, k // 2)])
    img.save(lab_path)
    return lab


def make_dataset(root, name, rng=None):
    """A 3-image validation set of ``name`` in its standard layout under data folder ``root``;
    returns the raw labels as written."""
    rng = rng or np.random.default_rng(0)
    labels = []
    if name in ("voc21", "voc20", "context60", "context59"):
        voc = name.startswith("voc")
        d = root / "VOCdevkit" / ("VOC2012" if voc else "VOC2010")
        split = d / "ImageSets" / ("Segmentation" if voc else "SegmentationContext") / "val.txt"
        ann = "SegmentationClass" if voc else "SegmentationClassContext"
        ids = [f"2008_00{i}" for i in range(len(SIZES))]
        for i, hw in zip(ids, SIZES):
            labels.append(_write_pair(d / "JPEGImages" / f"{i}.jpg", d / ann / f"{i}.png", hw,
                                      21 if voc else 60, rng, palette=voc))
        split.parent.mkdir(parents=True, exist_ok=True)
        split.write_text("\n".join(ids) + "\n")
    elif name == "cityscapes":
        d = root / "cityscapes"
        for k, hw in enumerate(SIZES):
            city = ["frankfurt", "lindau", "munster"][k]
            stem = f"{city}/{city}_000000_00001{k}"
            labels.append(_write_pair(d / "leftImg8bit/val" / f"{stem}_leftImg8bit.png",
                                      d / "gtFine/val" / f"{stem}_gtFine_labelTrainIds.png",
                                      hw, 19, rng))
    else:
        d = root / "ade" / "ADEChallengeData2016"
        for k, hw in enumerate(SIZES):
            stem = f"ADE_val_0000000{k + 1}"
            labels.append(_write_pair(d / "images/validation" / f"{stem}.jpg",
                                      d / "annotations/validation" / f"{stem}.png", hw, 151, rng))
    return labels


@pytest.mark.parametrize("name", list(BENCHMARKS))
def test_reader_layouts(tmp_path, name):
    raw = make_dataset(tmp_path, name)
    spec = DATASETS[name]
    samples = list_samples(name, tmp_path)
    assert len(samples) == 3
    # the dataset folder itself works as root too
    folder = {"VOC2012": "VOCdevkit/VOC2012", "VOC2010": "VOCdevkit/VOC2010",
              "cityscapes": "cityscapes", "ADEChallengeData2016": "ade/ADEChallengeData2016"}
    assert list_samples(name, tmp_path / folder[spec.folder]) == samples
    for sample, want in zip(samples, raw):
        image, label = load_sample(sample, spec.reduce_zero_label)
        assert image.shape == (*want.shape, 3) and image.dtype == np.uint8
        if spec.reduce_zero_label:
            expect = want.astype(np.int64) - 1
            expect[(want == 0) | (want == 255)] = 255
        else:
            expect = want
        np.testing.assert_array_equal(label, expect)
        assert label.max() < spec.num_classes or label.max() == 255


def test_reduce_zero_label_values(tmp_path):
    p = tmp_path / "l.png"
    Image.fromarray(np.array([[0, 1, 2, 150, 255]], dtype=np.uint8)).save(p)
    assert load_label(str(p), True).tolist() == [[255, 0, 1, 149, 255]]
    assert load_label(str(p), False).tolist() == [[0, 1, 2, 150, 255]]


def test_missing_and_malformed_roots(tmp_path):
    with pytest.raises(UserError, match="not a directory"):
        list_samples("voc21", tmp_path / "nope")
    with pytest.raises(UserError, match=r"VOCdevkit/VOC2012/\{JPEGImages"):
        list_samples("voc21", tmp_path)
    make_dataset(tmp_path, "ade20k")
    (tmp_path / "ade/ADEChallengeData2016/annotations/validation/ADE_val_00000002.png").unlink()
    with pytest.raises(UserError, match="missing file .*ADE_val_00000002.png"):
        list_samples("ade20k", tmp_path)
    with pytest.raises(UserError, match="unknown dataset"):
        list_samples("coco", tmp_path)
    rgb = tmp_path / "rgb.png"
    Image.new("RGB", (4, 4)).save(rgb)
    with pytest.raises(UserError, match="single-channel"):
        load_label(str(rgb), False)


@pytest.mark.parametrize("name", ["voc21", "context59", "cityscapes", "ade20k"])
def test_evaluate_matches_manual_loop(tmp_path, name):
    make_dataset(tmp_path, name)
    bb = FakeBackbone()
    spec = DATASETS[name]
    res = evaluate(bb, name, tmp_path, batch_size=2, workers=2)
    assert res["num_images"] == 3 and len(res["IoU"]) == spec.num_classes
    assert res["settings"]["logit_scale"] == {"voc21": 65.0}.get(name, 40.0)
    cm = ConfusionMatrix(spec.num_classes)
    for sample in list_samples(name, tmp_path):
        image, label = load_sample(sample, spec.reduce_zero_label)
        x = prepare_image(image, bb.mean, bb.std, spec.scale)
        assert x.shape[1:] != label.shape  # the model sees the test-resized image
        pred = segment(bb, x, spec.classes, out_hw=label.shape, **res["settings"])
        cm.update(pred, torch.from_numpy(label))
    want = cm.compute()
    for key in ("mIoU", "mIoU_torchmetrics", "mIoU_all_classes", "aAcc"):  # percentages
        assert res[key] == pytest.approx(100 * want[key], abs=1e-7)
    assert list(res["per_class"].values()) == res["IoU"] and len(res["per_class"]) == spec.num_classes


def test_evaluate_options(tmp_path):
    make_dataset(tmp_path, "context60")
    bb = FakeBackbone()
    res = evaluate(bb, "context60", tmp_path, mode="slide", limit=1, prob_thd=0.0)
    assert res["num_images"] == 1 and res["mode"] == "slide"
    assert res["settings"] == {"logit_scale": 50.0, "prob_thd": 0.0, "area_thd": None}
    with pytest.raises(UserError, match="60 classes but 2"):
        evaluate(bb, "context60", tmp_path, classes=["a", "b"])
    with pytest.raises(UserError, match="mode"):
        evaluate(bb, "context60", tmp_path, mode="tiles")
