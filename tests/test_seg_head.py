"""Segmentation head: the reference against SPAR's literal postprocess, and every fused backend
(C++, Triton through the interpreter on CPU) against the reference on fresh random inputs.
Triton cases need Triton (skipped without it); the C++ cases fail when ``_C`` lacks seg_head."""
import pytest
import torch
import torch.nn.functional as F

from backends import backend_params
from labelmaps import assert_labels_match, class_scores
from spar_fast import _backend
from spar_fast.errors import UserError
from spar_fast.ops.seg_head import HeadSettings, seg_head, seg_head_reference

# Near-tie width in scaled-logit units. The fused paths compare z = scale * up where the reference
# compares softmax outputs, and the reference runs ATen's channels-first kernel, whose taps may
# differ from the host taps by one ulp of the source coordinate: |d up| <= ulp(16) * 2 ~ 4e-6 for
# grids under 16 and inputs in [-1, 1], times scale <= 65 gives |d z| < 3e-4. Any larger gap is a bug.
TIE_EPS = 3e-4


def _has_cpp() -> bool:
    return _backend.cpu_extension(torch.device("cpu"))


BACKENDS = backend_params(
    pytest.param("cpp", marks=pytest.mark.skipif(not _has_cpp(), reason="spar_fast._C not built")),
    pytest.param("triton", marks=pytest.mark.skipif(not _backend.triton_available(), reason="no Triton")),
)


def _smooth_logits(h, w, Q, dtype=torch.float32, class_shift=None, q2c=None):
    """Cosine-like logits in [-1, 1] [h, w, Q]: smooth random fields (so classes form regions)."""
    coarse = torch.randn(max(1, h // 3), max(1, w // 3), Q)
    x = F.interpolate(coarse.permute(2, 0, 1)[None], size=(h, w), mode="bilinear", align_corners=False)[0]
    x = x.permute(1, 2, 0) + 0.3 * torch.randn(h, w, Q)
    if class_shift is not None:
        x = x + class_shift[q2c]
    return (x / x.abs().max().clamp_min(1e-6)).to(dtype)


def _assert_match(out, logits, q2c, out_hw, scale=40.0, bias=0.0, prob_thd=0.0, area_thd=None):
    """``out`` equals the reference except at near-ties (tests/labelmaps.py)."""
    ref = seg_head_reference(logits, q2c, out_hw, HeadSettings(scale, bias, prob_thd, area_thd))
    assert_labels_match(out, ref, logits, q2c, out_hw, eps=TIE_EPS, logit_scale=scale, logit_bias=bias,
                        prob_thd=prob_thd, area_thd=area_thd)


def _spar_literal(logits, q2c, out_hw, scale, prob_thd, area_thd):
    """SPAR's postprocess as written (one-hot [K, Q, H, W] product), for tiny sizes only."""
    K = int(q2c.max()) + 1
    up = F.interpolate(logits.float().permute(2, 0, 1)[None], size=out_hw, mode="bilinear", align_corners=False)[0]
    seg = (up * scale).softmax(0)
    cls_index = F.one_hot(q2c, K).T.view(K, len(q2c), 1, 1)
    seg = (seg[None] * cls_index).max(1)[0]
    if area_thd is not None:
        pred = F.one_hot(seg.argmax(0), K).to(seg.dtype)
        area = pred[:, :, 1:].sum((0, 1), keepdim=True)
        area = (area > area_thd * area.sum()).to(seg.dtype)
        seg[1:] *= area.transpose(0, -1)
    pred = seg.argmax(0, keepdim=True)
    pred[seg.max(0, keepdim=True)[0] < prob_thd] = 0
    return pred[0]


@pytest.mark.parametrize("prob_thd,area_thd", [(0.0, None), (0.3, None), (0.0, 0.1), (0.2, 0.15)])
def test_reference_matches_spar_postprocess(prob_thd, area_thd):
    K, Q = 4, 7
    q2c = torch.cat([torch.arange(K), torch.randint(0, K, (Q - K,))])
    shift = torch.tensor([0.0, 0.0, -0.3, 0.1])  # class 2 small, so area_thd removes it
    logits = _smooth_logits(6, 9, Q, class_shift=shift, q2c=q2c)
    got = seg_head_reference(logits, q2c, (17, 23), HeadSettings(40.0, 0.0, prob_thd, area_thd))
    assert torch.equal(got, _spar_literal(logits, q2c, (17, 23), 40.0, prob_thd, area_thd))


CASES = [  # h, w, Q, H, W, classes, prob_thd, area_thd, scale
    (8, 10, 5, 40, 50, 5, 0.0, None, 40.0),
    (7, 13, 19, 97, 211, 19, 0.0, None, 40.0),        # non-integer factors, Cityscapes-like Q
    (5, 9, 27, 61, 107, 19, 0.1, None, 50.0),          # synonyms, prob_thd
    (6, 6, 40, 50, 47, 12, 0.0, 0.1, 65.0),            # more queries than one Triton chunk, area_thd
    (9, 4, 11, 33, 17, 6, 0.1, 0.1, 65.0),             # both thresholds
    (1, 1, 3, 5, 7, 3, 0.0, None, 40.0),               # 1x1 grid
    (4, 6, 1, 9, 13, 1, 0.5, None, 40.0),              # Q = 1
    (12, 8, 9, 5, 3, 4, 0.0, None, 40.0),              # downsampling
]


def _case_inputs(h, w, Q, K, dtype):
    q2c = torch.cat([torch.randperm(K), torch.randint(0, K, (Q - K,))])[torch.randperm(Q)]
    shift = 0.4 * torch.rand(K) - 0.3  # uneven class areas, so area_thd filters some classes
    return _smooth_logits(h, w, Q, dtype, shift, q2c), q2c


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", CASES)
def test_fused_matches_reference(backend, case, monkeypatch):
    h, w, Q, H, W, K, prob_thd, area_thd, scale = case
    if backend == "triton" and H * W > 3000:  # the interpreter is slow: keep its cases tiny
        H, W = min(H, 40), min(W, 50)
    monkeypatch.setenv("SPAR_FAST_BACKEND_SEG_HEAD", backend)
    logits, q2c = _case_inputs(h, w, Q, K, torch.float32)
    out = seg_head(logits, q2c, (H, W), logit_scale=scale, prob_thd=prob_thd, area_thd=area_thd)
    _assert_match(out, logits, q2c, (H, W), scale, 0.0, prob_thd, area_thd)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_fused_half_inputs(backend, dtype, monkeypatch):
    # the reference upsamples x.float(); both sides see the same fp32 values, so TIE_EPS holds
    monkeypatch.setenv("SPAR_FAST_BACKEND_SEG_HEAD", backend)
    logits, q2c = _case_inputs(8, 10, 13, 7, dtype)
    out = seg_head(logits, q2c, (37, 45), prob_thd=0.1, logit_bias=-0.5)
    _assert_match(out, logits, q2c, (37, 45), 40.0, -0.5, 0.1)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("area_thd", [None, 0.1])
def test_prob_thd_at_median(backend, area_thd, monkeypatch):
    # a threshold at the median best probability zeroes half the pixels, so the fused
    # probability exp(z_best - m) / sum must match the softmax closely, not just the argmax
    monkeypatch.setenv("SPAR_FAST_BACKEND_SEG_HEAD", backend)
    logits, q2c = _case_inputs(7, 9, 17, 8, torch.float32)
    H, W, scale = 31, 43, 12.0
    thd = class_scores(logits, q2c, (H, W), scale, 0.0, area_thd)[1].exp().median().item()
    out = seg_head(logits, q2c, (H, W), logit_scale=scale, prob_thd=thd, area_thd=area_thd)
    _assert_match(out, logits, q2c, (H, W), scale, 0.0, thd, area_thd)


@pytest.mark.parametrize("backend", BACKENDS)
def test_exact_ties_pick_lowest_class(backend, monkeypatch):
    monkeypatch.setenv("SPAR_FAST_BACKEND_SEG_HEAD", backend)
    logits = _smooth_logits(5, 7, 6)
    logits[..., 4] = logits[..., 1] + 2  # queries 1 and 4 always win, with identical values
    q2c = torch.tensor([0, 5, 2, 3, 1, 4])
    out = seg_head(logits, q2c, (23, 31))
    assert bool((out == 1).all())
    assert torch.equal(out, seg_head_reference(logits, q2c, (23, 31)))
    # scale 0: every probability is 1/Q, so the lowest class with a query wins everywhere
    out0 = seg_head(logits, torch.tensor([3, 5, 2, 3, 7, 4]), (9, 4), logit_scale=0.0)
    assert bool((out0 == 2).all())


@pytest.mark.parametrize("backend", BACKENDS)
def test_area_thd_removes_small_classes(backend, monkeypatch):
    monkeypatch.setenv("SPAR_FAST_BACKEND_SEG_HEAD", backend)
    h, w, H, W = 6, 8, 30, 40
    logits = torch.full((h, w, 3), -0.5)
    logits[:, :, 1] = 0.5          # class 1 everywhere ...
    logits[0, 0, 2] = 1.0          # ... except a small blob of class 2 at the corner
    q2c = torch.tensor([0, 1, 2])
    ref = seg_head_reference(logits, q2c, (H, W), area_thd=0.1)
    assert int((seg_head_reference(logits, q2c, (H, W)) == 2).sum()) > 0 and not bool((ref == 2).any())
    assert torch.equal(seg_head(logits, q2c, (H, W), area_thd=0.1), ref)
    # a class without queries (3) and everything filtered: class 0 has no queries -> label 0
    q2c = torch.tensor([4, 1, 2])
    assert torch.equal(seg_head(logits, q2c, (H, W), area_thd=1.0), torch.zeros(H, W, dtype=torch.long))
    assert torch.equal(seg_head_reference(logits, q2c, (H, W), area_thd=1.0), torch.zeros(H, W, dtype=torch.long))


def test_default_dispatch_matches_reference():
    logits, q2c = _case_inputs(11, 17, 23, 9, torch.float32)
    _assert_match(seg_head(logits, q2c, (53, 91), prob_thd=0.05), logits, q2c, (53, 91), prob_thd=0.05)


@pytest.mark.parametrize("args,match", [
    ((torch.zeros(4, 5), torch.zeros(5, dtype=torch.long), (8, 8)), r"\[h, w, Q\]"),
    ((torch.zeros(4, 5, 3, dtype=torch.float64), torch.zeros(3, dtype=torch.long), (8, 8)), "dtype"),
    ((torch.zeros(4, 5, 3), torch.zeros(4, dtype=torch.long), (8, 8)), "3 queries"),
    ((torch.zeros(4, 5, 3), torch.tensor([0, -1, 2]), (8, 8)), ">= 0"),
    ((torch.zeros(4, 5, 3), torch.zeros(3), (8, 8)), "integer"),
    ((torch.zeros(4, 5, 3), torch.zeros(3, dtype=torch.long), (0, 8)), "positive"),
    ((torch.zeros(4, 5, 3), torch.zeros(3, dtype=torch.long), (8,)), "out_hw"),
    ((torch.zeros(4, 5, 3), torch.zeros(3, dtype=torch.long), "big"), "out_hw"),
    ((torch.full((4, 5, 3), float("nan")), torch.zeros(3, dtype=torch.long), (8, 8)), "NaN"),
])
@pytest.mark.parametrize("fn", [seg_head, seg_head_reference])
def test_bad_input_raises_user_error(fn, args, match):
    with pytest.raises(UserError, match=match):
        fn(*args)


def test_bad_thresholds_raise_user_error():
    logits, q2c = torch.zeros(4, 5, 3), torch.zeros(3, dtype=torch.long)
    with pytest.raises(UserError, match="area_thd"):
        seg_head(logits, q2c, (8, 8), area_thd=-0.1)
    with pytest.raises(UserError, match="logit_scale"):
        seg_head(logits, q2c, (8, 8), logit_scale=float("inf"))
