"""Single-pass and sliding-window segmentation against step-by-step references (SPEC §5)."""
import math
import zlib

import pytest
import torch
import torch.nn.functional as F

from labelmaps import assert_labels_match
from spar_fast.errors import UserError
from spar_fast.ops.seg_head import HeadSettings
from spar_fast.segmentation import keep_ratio_hw, segment, segment_batch
from spar_fast.segmentation.infer import slide_logits
from spar_fast.segmentation.queries import text_queries


class FakeBackbone(torch.nn.Module):
    """Tiny stand-in with the Backbone interface: a random patch embedding (SigLIP2 geometry:
    zero pad to a multiple of P, grid ceil(H/P)), and hashed text embeddings."""

    family = "siglip2"
    patch_size = 8
    window = 32
    feature_dim = 12
    mean = (0.5, 0.5, 0.5)
    std = (0.5, 0.5, 0.5)

    def __init__(self, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.proj = torch.nn.Parameter(torch.randn(self.feature_dim, 3, self.patch_size,
                                                   self.patch_size, generator=g))
        self.text_calls = 0

    def forward(self, images):
        P = self.patch_size
        H, W = images.shape[-2:]
        x = F.pad(images, (0, -W % P, 0, -H % P))
        # a nonlinearity so windows differ from crops of the full-image features
        return torch.tanh(F.conv2d(x, self.proj.to(x.dtype), stride=P)).permute(0, 2, 3, 1)

    def forward_packed(self, images):
        return [self(im[None])[0] for im in images]

    def encode_text(self, texts):
        self.text_calls += 1
        rows = []
        for t in texts:
            g = torch.Generator().manual_seed(zlib.crc32(t.encode()))
            rows.append(torch.randn(self.feature_dim, generator=g))
        return F.normalize(torch.stack(rows), dim=-1)


def reference_postprocess(logits, q2c, out_hw, scale, prob_thd, area_thd):
    """SPEC §5 step 3 written out directly, fp64."""
    up = F.interpolate(logits.double().permute(2, 0, 1)[None], size=out_hw, mode="bilinear",
                       align_corners=False)[0]
    probs = (up * scale).softmax(0)
    K = int(q2c.max()) + 1
    cls = torch.stack([probs[q2c == k].amax(0) for k in range(K)])
    if area_thd is not None:
        area = torch.bincount(cls.argmax(0).flatten(), minlength=K)[1:].double()
        for k in range(1, K):
            if area[k - 1] <= area_thd * area.sum():
                cls[k] = 0
    pred = cls.argmax(0)
    pred[cls.amax(0) < prob_thd] = 0
    return pred


def reference_logits(bb, image, classes):
    """fp64 patch logits ``[h, w, Q]`` of the single pass and the query classes ``[Q]``."""
    queries, q2c, _ = text_queries(bb, classes)
    feats = bb(image[None])[0].double()
    return (feats / feats.norm(dim=-1, keepdim=True)) @ queries.double().t(), q2c


def reference_single(bb, image, classes, out_hw, scale=40.0, prob_thd=0.0, area_thd=None):
    logits, q2c = reference_logits(bb, image, classes)
    return reference_postprocess(logits, q2c, out_hw, scale, prob_thd, area_thd)


# Near-tie width in scaled-logit units (tests/labelmaps.py). fp32 normalization and dot products
# of unit vectors (C = 12) err by ~1e-6; the fused head's bilinear taps may differ from fp64 ATen's
# by one fp32 ulp of the source coordinate (grids <= 25 cells: ~2e-6 times |v1 - v0| <= 2), so
# |d up| < 6e-6 and, at logit scale <= 50, |d z| < 3e-4.
TIE_EPS = 3e-4
# Sliding windows: the logits themselves are checked to 1e-5 below; at scale 40, |d z| < 5e-4.
SLIDE_TIE_EPS = 5e-4


CLASSES = ["sky, cloud", "road", "car, truck, van", "tree"]


@pytest.mark.parametrize("hw,out_hw", [((37, 53), None), ((64, 48), (101, 77)), ((8, 200), None)])
@pytest.mark.parametrize("prob_thd,area_thd", [(0.0, None), (0.3, None), (0.0, 0.2)])
def test_single_matches_reference(hw, out_hw, prob_thd, area_thd):
    bb = FakeBackbone()
    image = torch.randn(3, *hw)
    out = out_hw or hw
    got = segment(bb, image, CLASSES, logit_scale=50.0, prob_thd=prob_thd, area_thd=area_thd,
                  out_hw=out_hw)
    logits, q2c = reference_logits(bb, image, CLASSES)
    want = reference_postprocess(logits, q2c, out, 50.0, prob_thd, area_thd)
    assert got.shape == out and got.dtype == torch.int64
    assert_labels_match(got, want, logits, q2c, out, eps=TIE_EPS, logit_scale=50.0,
                        prob_thd=prob_thd, area_thd=area_thd)


def test_fused_and_unfused_agree():
    bb = FakeBackbone(1)
    image = torch.randn(3, 45, 70)
    a = segment(bb, image, CLASSES, prob_thd=0.2, fused=True)
    b = segment(bb, image, CLASSES, prob_thd=0.2, fused=False)
    logits, q2c = reference_logits(bb, image, CLASSES)
    assert_labels_match(a, b, logits, q2c, (45, 70), eps=TIE_EPS, prob_thd=0.2)


def test_head_record_equals_its_keywords():
    """HeadSettings carries the four head settings from segment to the kernel: the record and the
    keywords give the same labels; precision= is the keyword, amp= its deprecated spelling."""
    bb = FakeBackbone(3)
    image = torch.randn(3, 37, 52)
    head = HeadSettings(logit_scale=30.0, logit_bias=-0.2, prob_thd=0.3, area_thd=0.05)
    by_keywords = segment(bb, image, CLASSES, logit_scale=30.0, logit_bias=-0.2, prob_thd=0.3,
                          area_thd=0.05, precision="fp32")
    assert torch.equal(segment(bb, image, CLASSES, head=head, precision="fp32"), by_keywords)
    assert torch.equal(segment_batch(bb, [image], CLASSES, head=head, precision="fp32")[0], by_keywords)
    with pytest.warns(DeprecationWarning, match="precision="):
        assert torch.equal(segment(bb, image, CLASSES, head=head, amp="fp32"), by_keywords)
    with pytest.raises(UserError, match="not both"):
        segment(bb, image, CLASSES, precision="fp32", amp="fp32")
    with pytest.raises(UserError, match="prob_thd must be a finite number"):
        segment(bb, image, CLASSES, head=HeadSettings(prob_thd=float("nan")))


def test_batch_equals_one_at_a_time():
    bb = FakeBackbone(2)
    images = [torch.randn(3, h, w) for h, w in [(40, 40), (23, 61), (64, 17)]]
    outs = [(50, 50), None, (64, 17)]
    batch = segment_batch(bb, images, CLASSES, out_hws=outs)
    for im, hw, got in zip(images, outs, batch):
        assert torch.equal(got, segment(bb, im, CLASSES, out_hw=hw))


def naive_slide(bb, image, classes, stride, out_hw, scale):
    """One window at a time, fp64, windows clamped to the image as documented."""
    queries, q2c, _ = text_queries(bb, classes)
    _, H, W = image.shape
    wh, ww = min(bb.window, H), min(bb.window, W)

    def origins(L, win):
        o = list(range(0, L - win + 1, stride))
        return o if o[-1] == L - win else o + [L - win]

    canvas = torch.zeros(len(q2c), H, W, dtype=torch.float64)
    count = torch.zeros(H, W, dtype=torch.float64)
    for y in origins(H, wh):
        for x in origins(W, ww):
            f = bb(image[None, :, y:y + wh, x:x + ww])[0].double()
            lg = (f / f.norm(dim=-1, keepdim=True)) @ queries.double().t()
            lg = F.interpolate(lg.permute(2, 0, 1)[None], size=(wh, ww), mode="bilinear",
                               align_corners=False)[0]
            canvas[:, y:y + wh, x:x + ww] += lg
            count[y:y + wh, x:x + ww] += 1
    logits = (canvas / count).permute(1, 2, 0)
    return logits, reference_postprocess(logits, q2c, out_hw, scale, 0.0, None)


@pytest.mark.parametrize("hw,stride", [((64, 88), 24), ((40, 33), 8), ((20, 75), 24)])
def test_slide_matches_naive(hw, stride):
    bb = FakeBackbone(3)
    image = torch.randn(3, *hw)
    queries, _, _ = text_queries(bb, CLASSES)
    want_logits, want = naive_slide(bb, image, CLASSES, stride, hw, 40.0)
    got_logits = slide_logits(bb, image, queries, stride=stride, batch_size=5)
    # fp32 accumulation of a few windows of unit-bounded cosines: ~1e-6 absolute
    torch.testing.assert_close(got_logits.double(), want_logits, atol=1e-5, rtol=0)
    got = segment(bb, image, CLASSES, mode="slide", stride=stride)
    _, q2c, _ = text_queries(bb, CLASSES)
    assert_labels_match(got, want, want_logits, q2c, hw, eps=SLIDE_TIE_EPS)


def test_slide_with_one_window_equals_single():
    bb = FakeBackbone(4)
    image = torch.randn(3, bb.window, bb.window)
    single = segment(bb, image, CLASSES, out_hw=(50, 50), fused=False)
    slide = segment(bb, image, CLASSES, mode="slide", out_hw=(50, 50))
    # one window: the same logits upsampled once to the window, then resized to out_hw twice
    # vs once, so only pixels at near-ties may flip
    assert (single != slide).float().mean() < 0.02


def test_bad_inputs():
    bb = FakeBackbone()
    with pytest.raises(UserError, match=r"\[3, H, W\]"):
        segment(bb, torch.randn(1, 3, 16, 16), CLASSES)
    with pytest.raises(UserError, match="float"):
        segment(bb, torch.zeros(3, 16, 16, dtype=torch.uint8), CLASSES)
    with pytest.raises(UserError, match="mode"):
        segment(bb, torch.randn(3, 16, 16), CLASSES, mode="tiles")
    with pytest.raises(UserError, match="stride"):
        segment(bb, torch.randn(3, 40, 40), CLASSES, mode="slide", stride=0)
    with pytest.raises(UserError, match="no classes"):
        segment(bb, torch.randn(3, 16, 16), [])


@pytest.mark.parametrize("hw,scale,want", [
    ((375, 500), (2048, 672), (672, 896)),      # short side limited
    ((100, 4000), (2048, 672), (51, 2048)),     # long side limited: 2048/4000 = 0.512
    ((1024, 2048), (2048, 1024), (1024, 2048)),  # Cityscapes: unchanged
    ((333, 333), (2048, 672), (672, 672)),
])
def test_keep_ratio_hw(hw, scale, want):
    assert keep_ratio_hw(*hw, scale) == want
    f = min(max(scale) / max(hw), min(scale) / min(hw))
    assert want == (int(hw[0] * f + 0.5), int(hw[1] * f + 0.5))
    assert math.isclose(want[0] / want[1], hw[0] / hw[1], rel_tol=0.05)
