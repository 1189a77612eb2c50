"""Segmentation head: the reference against SPAR's literal postprocess, and every fused backend
(C++, Triton through the interpreter on CPU) against the reference on fresh random inputs."""
import pytest
import torch
import torch.nn.functional as F

from spar_fast import _backend
from spar_fast.errors import UserError
from spar_fast.ops.seg_head import bilinear_taps, seg_head, seg_head_reference

# Near-tie width, as a probability gap. The fused paths compare scaled logits z = scale * up where
# the reference compares softmax outputs, and their bilinear taps may differ from ATen's by one ulp
# of the source coordinate (ATen's index arithmetic varies with the sizes): |d up| <= ulp(16) * 2
# ~ 4e-6 for grids under 16 and inputs in [-1, 1], times scale <= 65 gives |d z| < 3e-4, so two
# classes whose probabilities are closer than that may swap. Any larger gap is a bug.
TIE_EPS = 3e-4
MIN_IDENTICAL = 0.999  # required fraction of identical pixels in every comparison


def _has_cpp() -> bool:
    ext = _backend.extension()
    return ext is not None and hasattr(ext, "seg_head_pass")


BACKENDS = [
    pytest.param("cpp", marks=pytest.mark.skipif(not _has_cpp(), reason="spar_fast._C without seg_head")),
    pytest.param("triton", marks=pytest.mark.skipif(not _backend.triton_available(), reason="no Triton")),
]


def _smooth_logits(h, w, Q, dtype=torch.float32, class_shift=None, q2c=None):
    """Cosine-like logits in [-1, 1] [h, w, Q]: smooth random fields (so classes form regions)."""
    coarse = torch.randn(max(1, h // 3), max(1, w // 3), Q)
    x = F.interpolate(coarse.permute(2, 0, 1)[None], size=(h, w), mode="bilinear", align_corners=False)[0]
    x = x.permute(1, 2, 0) + 0.3 * torch.randn(h, w, Q)
    if class_shift is not None:
        x = x + class_shift[q2c]
    return (x / x.abs().max().clamp_min(1e-6)).to(dtype)


def _class_probs(logits, q2c, out_hw, scale, bias, area_thd):
    """[K, H, W] per-class probabilities as the reference computes them (after the area filter)."""
    K = int(q2c.max()) + 1
    up = F.interpolate(logits.float().permute(2, 0, 1)[None], size=out_hw, mode="bilinear", align_corners=False)[0]
    probs = (up * scale + bias).softmax(0)
    index = q2c[:, None, None].expand(probs.shape)
    cls = probs.new_zeros((K, *out_hw)).scatter_reduce_(0, index, probs, "amax")
    if area_thd is not None:
        area = torch.bincount(cls.argmax(0).flatten(), minlength=K)[1:].float()
        cls[1:] *= (area > area_thd * area.sum()).float()[:, None, None]
    return cls


def _assert_match(out, logits, q2c, out_hw, scale=40.0, bias=0.0, prob_thd=0.0, area_thd=None):
    """``out`` equals the reference on >= 99.9% of pixels; every other pixel is a near-tie:
    top-2 class probabilities within TIE_EPS, or the best probability within TIE_EPS of prob_thd."""
    ref = seg_head_reference(logits, q2c, out_hw, scale, bias, prob_thd, area_thd)
    assert out.dtype == torch.int64 and out.shape == ref.shape == tuple(out_hw)
    diff = out != ref
    if not bool(diff.any()):
        return
    assert 1 - diff.float().mean().item() >= MIN_IDENTICAL, f"{int(diff.sum())} of {diff.numel()} pixels differ"
    cls = _class_probs(logits, q2c, out_hw, scale, bias, area_thd)
    top = cls.topk(min(2, cls.shape[0]), dim=0).values[:, diff]
    gap = top[0] - top[1] if top.shape[0] > 1 else torch.full_like(top[0], float("inf"))
    near_thd = (top[0] - prob_thd).abs() < TIE_EPS
    assert bool(((gap < TIE_EPS) | near_thd).all()), f"non-tie differences, min gap {gap.min().item():.3g}"


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
    got = seg_head_reference(logits, q2c, (17, 23), 40.0, 0.0, prob_thd, area_thd)
    assert torch.equal(got, _spar_literal(logits, q2c, (17, 23), 40.0, prob_thd, area_thd))


@pytest.mark.parametrize("n_in,n_out", [(1, 5), (5, 5), (7, 23), (64, 1024), (42, 37), (9, 3), (3, 16)])
def test_bilinear_taps_match_interpolate(n_in, n_out):
    x = torch.randn(3, n_in, n_in + 1)
    (yi, yw), (xi, xw) = bilinear_taps(n_in, n_out, x.device), bilinear_taps(n_in + 1, n_out + 2, x.device)
    yi, xi = yi.long(), xi.long()
    rows = xw[0] * x[:, :, xi[0]] + xw[1] * x[:, :, xi[1]]  # along x first, as ATen
    up = yw[0][:, None] * rows[:, yi[0]] + yw[1][:, None] * rows[:, yi[1]]
    ref = F.interpolate(x[None], size=(n_out, n_out + 2), mode="bilinear", align_corners=False)[0]
    # a convex combination of the same taps; the weights may be one ulp of the source coordinate
    # (<= n_in) away from ATen's, and the products round differently: a few ulps of n_in * max|x|
    atol = 8 * torch.finfo(torch.float32).eps * max(n_in, 2) * x.abs().max().item()
    torch.testing.assert_close(up, ref, rtol=0, atol=atol)


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
    thd = _class_probs(logits, q2c, (H, W), scale, 0.0, area_thd).amax(0).median().item()
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
