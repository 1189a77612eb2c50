"""Teacher: window plan (SPEC §2 steps 1-2) and stitched features vs the reference execution."""
import pytest
import torch

import spar_fast as sf
from spar_fast.errors import UserError
from spar_fast.teacher import (plan_windows, teacher_features, teacher_features_reference,
                               upsample_factor, window_origins)


class PatchLinear(torch.nn.Module):
    """A cheap stand-in backbone: a random linear map per patch, so window features depend on
    the window content and its position inside the window (pos term)."""

    def __init__(self, patch=16, window=64, dim=24):
        super().__init__()
        self.patch_size, self.window, self.feature_dim = patch, window, dim
        g = window // patch
        self.proj = torch.nn.Conv2d(3, dim, patch, stride=patch)
        self.pos = torch.nn.Parameter(torch.randn(dim, g, g))

    def forward(self, x):  # [B,3,win,win] -> [B,g,g,C]
        return (self.proj(x) + self.pos).permute(0, 2, 3, 1)


@pytest.mark.parametrize("length,window,stride,expected", [
    (512, 512, 24, [0]),
    (528, 512, 24, [0, 16]),
    (560, 512, 24, [0, 24, 48]),
    (576, 512, 24, [0, 24, 48, 64]),
    (64, 48, 24, [0, 16]),
])
def test_window_origins(length, window, stride, expected):
    assert window_origins(length, window, stride) == expected


@pytest.mark.parametrize("patch,stride,r", [(16, 24, 2), (16, 16, 1), (16, 8, 2), (16, 4, 4),
                                            (16, 7, 16), (14, 24, 7), (16, 48, 1)])
def test_upsample_factor(patch, stride, r):
    assert upsample_factor(patch, stride) == r
    assert patch % r == 0 and stride % (patch // r) == 0


@pytest.mark.parametrize("h,w,msg", [(500, 512, "multiple"), (496, 512, "smaller"),
                                     (512, 512, None)])
def test_plan_errors(h, w, msg):
    if msg is None:
        assert len(plan_windows(h, w, 512, 24, 16)) == 1
    else:
        with pytest.raises(UserError, match=msg):
            plan_windows(h, w, 512, 24, 16)


@pytest.mark.parametrize("hw,stride", [((64, 64), 24), ((96, 160), 24), ((80, 208), 16),
                                       ((112, 64), 8), ((128, 96), 40), ((64, 240), 7)])
def test_teacher_matches_reference(hw, stride):
    torch.manual_seed(sum(hw) + stride)
    bb = PatchLinear().eval()
    image = torch.randn(3, *hw)
    fast = teacher_features(bb, image, stride=stride, batch_size=3)
    ref = teacher_features_reference(bb, image, stride=stride)
    assert fast.shape == (hw[0] // 16, hw[1] // 16, bb.feature_dim) and fast.dtype == torch.float32
    # fp32 everywhere; only the order of the per-cell sums differs between the fused stitch and
    # the reference loop (≤ ~10 overlapping windows per cell) -> a few ulps.
    torch.testing.assert_close(fast, ref, rtol=1e-5, atol=1e-5)


def test_teacher_rejects_bad_images():
    bb = PatchLinear()
    with pytest.raises(UserError, match="\\[3, H, W\\]"):
        teacher_features(bb, torch.randn(1, 3, 64, 64))
    with pytest.raises(UserError, match="float"):
        teacher_features(bb, torch.zeros(3, 64, 64, dtype=torch.uint8))
    with pytest.raises(UserError, match="smaller"):
        teacher_features(bb, torch.randn(3, 48, 64))


def test_teacher_4096_image_in_bounded_batches():
    """A 4096² image (4,096 windows of the tiny SigLIP2-family model) runs window batch by window
    batch: no forward ever sees more than ``batch_size`` windows, so memory is one batch plus the
    canvas whatever the number of windows."""
    bb = sf.Backbone.from_pretrained("siglip2-tiny", weights="random").eval()
    seen = []
    bb.register_forward_hook(lambda module, args, out: seen.append(args[0].shape[0]))
    image = torch.randn(3, 4096, 4096)
    out = teacher_features(bb, image, stride=64, batch_size=128)
    assert out.shape == (256, 256, bb.feature_dim) and torch.isfinite(out).all()
    assert sum(seen) == 64 * 64 and max(seen) == 128
