"""Confusion matrix and mIoU conventions against torchmetrics and an MMSeg-style reference."""
import numpy as np
import pytest
import torch
from torchmetrics.classification import MulticlassJaccardIndex

from spar_fast.evaluation.metrics import ConfusionMatrix


def random_maps(gen, k, hw, absent=(), ignore_frac=0.1):
    """Random pred/target label maps; classes in ``absent`` never appear in either."""
    allowed = torch.tensor([c for c in range(k) if c not in absent])
    target = allowed[torch.randint(len(allowed), hw, generator=gen)]
    pred = torch.where(torch.rand(hw, generator=gen) < 0.6, target,
                       allowed[torch.randint(len(allowed), hw, generator=gen)])
    target[torch.rand(hw, generator=gen) < ignore_frac] = 255
    return pred, target


def mmseg_reference(pairs, k):
    """MMSeg IoUMetric: per-image intersect/union areas (numpy), summed, nanmean of IoU."""
    inter, union = np.zeros(k), np.zeros(k)
    for pred, target in pairs:
        p, t = pred.numpy().ravel(), target.numpy().ravel()
        keep = t != 255
        p, t = p[keep], t[keep]
        i = np.bincount(p[p == t], minlength=k)
        ap, at = np.bincount(p, minlength=k), np.bincount(t, minlength=k)
        inter += i
        union += ap + at - i
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = inter / union
    return float(np.nanmean(iou)), iou


@pytest.mark.parametrize("k,absent", [(5, ()), (21, (3, 7, 20)), (150, tuple(range(100, 150))), (2, ())])
def test_against_torchmetrics_and_mmseg(k, absent):
    gen = torch.Generator().manual_seed(k)
    pairs = [random_maps(gen, k, hw, absent) for hw in [(17, 23), (40, 9), (1, 64), (31, 31)]]
    cm = ConfusionMatrix(k)
    tm = MulticlassJaccardIndex(num_classes=k, ignore_index=255)
    tm_none = MulticlassJaccardIndex(num_classes=k, ignore_index=255, average="none")
    for pred, target in pairs:
        cm.update(pred, target)
        tm.update(pred, target)
        tm_none.update(pred, target)
    res = cm.compute()
    # torchmetrics reduces in fp32; the matrix here in fp64
    assert res["mIoU_torchmetrics"] == pytest.approx(float(tm.compute()), abs=1e-6)
    assert res["mIoU_all_classes"] == pytest.approx(float(tm_none.compute().mean()), abs=1e-6)
    miou, iou = mmseg_reference(pairs, k)
    assert res["mIoU"] == pytest.approx(miou, abs=1e-12)
    for c in range(k):
        if np.isnan(iou[c]):
            assert res["IoU"][c] is None and c in absent
        else:
            assert res["IoU"][c] == pytest.approx(iou[c], abs=1e-12)
    if absent:
        assert res["mIoU_all_classes"] < res["mIoU"]
    # pixel accuracy over non-ignored pixels
    correct = sum(int(((p == t) & (t != 255)).sum()) for p, t in pairs)
    counted = sum(int((t != 255).sum()) for _, t in pairs)
    assert res["aAcc"] == pytest.approx(correct / counted)


def test_perfect_and_ignored():
    cm = ConfusionMatrix(4)
    t = torch.tensor([[0, 1, 255], [3, 3, 255]])
    cm.update(t.clone().masked_fill(t == 255, 2), t)  # ignored pixels never count
    res = cm.compute()
    assert res["mIoU"] == 1.0 and res["aAcc"] == 1.0
    assert res["IoU"] == [1.0, 1.0, None, 1.0]
    assert int(cm.mat.sum()) == 4


def test_label_outside_classes_is_dropped():
    cm = ConfusionMatrix(3)
    cm.update(torch.tensor([0, 1, 2, 1]), torch.tensor([0, 1, 7, 255]))
    assert int(cm.mat.sum()) == 2


def test_shape_mismatch():
    with pytest.raises(ValueError, match="differ"):
        ConfusionMatrix(3).update(torch.zeros(2, 3), torch.zeros(3, 2))
