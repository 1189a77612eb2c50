"""Image -> label map: single pass (fast and reference paths) vs the sliding-window baseline.

Variants (one group per image size, classes = the 19 Cityscapes lines):
* ``reference`` — the reference evaluation path: single pass with an fp32 forward and the
  unfused postprocess (``seg_head_reference``: ``[Q, H, W]`` probabilities materialized).
* ``fast`` — ``spar_fast.segmentation`` defaults: bf16 autocast on GPU, fused ``seg_head``.
* ``slide`` — the sliding-window baseline (SPEC §5.7) at stride 24, sub-batches of 60 windows.
Paper protocol (SPEC §5.8): 10 warm-up passes, then timing (the first timed pass is the 11th);
here the whole image -> label map is timed (text queries are cached during warm-up).
GPU: SigLIP2 B/16-512 at random init (speed does not depend on the weights) on 1024x2048.
CPU (SPAR_FAST_BENCH_QUICK=1): the tiny SigLIP2-family config on a small image.
"""
import pytest
import torch

import spar_fast as sf
from spar_fast.segmentation import BUILTIN

from conftest import ON_GPU, QUICK, pick, run_variant  # noqa: E402

if ON_GPU:
    BACKBONE, SIZE = "siglip2-b16-512", pick((512, 1024), (1024, 2048))
else:
    BACKBONE, SIZE = "siglip2-tiny", pick((96, 192), (256, 512))
CLASSES = list(BUILTIN["cityscapes"])
WARMUP = pick(1, 10)
ROUNDS = pick(2, 5)


@pytest.fixture(scope="module")
def backbone(device):
    return sf.Backbone.from_pretrained(BACKBONE, weights="random").to(device).eval()


@pytest.mark.parametrize("variant", ["reference", "fast", "slide"])
def test_segment(benchmark, backbone, device, variant):
    if variant == "slide" and not ON_GPU and not QUICK:
        pytest.skip("sliding window at full CPU size takes minutes")
    image = torch.randn(3, *SIZE, device=device)
    kwargs = {"reference": dict(precision="fp32", fused=False), "fast": {},
              "slide": dict(mode="slide", stride=24)}[variant]

    def run():
        return sf.segment(backbone, image, CLASSES, **kwargs)

    labels = run_variant(benchmark, run, device=device, group=f"segment {SIZE[0]}x{SIZE[1]} {BACKBONE}",
                         variant=variant, warmup=WARMUP, rounds=ROUNDS, classes=len(CLASSES))
    assert labels.shape == SIZE
