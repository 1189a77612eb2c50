"""Teacher targets of the real architectures equal the reference computation (SPEC §2).

The reference runs every window through the independent per-image dense forward built from the
open_clip / timm modules' own calls (``spar_fast.backbones.reference``) and folds them with the
literal per-window loop; the fast path runs batched windows through ``Backbone.forward`` and the
fused stitch op. Random-init weights: parity does not depend on the weights' values.
"""
import pytest
import torch

import spar_fast as sf
from spar_fast.backbones.reference import openclip_reference, siglip2_reference
from spar_fast.teacher import teacher_features_reference

CASES = {
    # name: [(H, W, stride)] — few windows each: a 512² SigLIP2 window is ~0.2 TFLOP on CPU
    "siglip2-b16-512": [(512, 528, 24), (528, 512, 8)],
    "openclip-b16": [(224, 272, 24), (256, 240, 16), (240, 288, 40)],
}
REFERENCE_FORWARD = {"siglip2": siglip2_reference, "openclip": openclip_reference}


@pytest.fixture(scope="module", params=list(CASES))
def backbone(request):
    torch.manual_seed(0)
    return sf.Backbone.from_pretrained(request.param, weights="random").eval()


def rel_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def test_teacher_parity_real_architectures(backbone):
    reference_dense = REFERENCE_FORWARD[backbone.family]

    def forward(windows):
        return torch.stack([reference_dense(backbone, w) for w in windows])

    for height, width, stride in CASES[backbone.name]:
        torch.manual_seed(height * width + stride)
        image = torch.randn(3, height, width)
        fast = sf.teacher_features(backbone, image, stride=stride)
        ref = teacher_features_reference(backbone, image, stride=stride, forward=forward)
        assert fast.shape == (height // 16, width // 16, backbone.feature_dim)
        # fp32 throughout; batched vs per-image matmuls and the stitch's summation order differ
        # only by rounding (~1e-6 relative), well inside the required 1e-4.
        err = rel_error(fast, ref)
        assert err <= 1e-4, f"{backbone.name} {height}x{width} s={stride}: rel error {err:.2e}"
        torch.testing.assert_close(fast, ref, rtol=1e-4, atol=1e-4 * ref.abs().max().item())
