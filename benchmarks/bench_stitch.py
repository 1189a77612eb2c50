"""Fused upsample-stitch (SPEC §2 steps 3-4) over all teacher windows of one image, timed through
the product's teacher path with a stand-in backbone whose forward costs nothing.

Variants (one group per size):
* ``reference`` -- :func:`spar_fast.teacher.teacher_features_reference`: windows of 10 per
  forward, ``stitch_reference`` (``F.interpolate`` per batch, a Python fold loop into an fp32
  canvas and count, divide, resize).
* ``cpp`` (CPU) and ``cuda`` (GPU) -- :func:`spar_fast.teacher.teacher_features` with the stitch
  ops forced to that backend: ``upsample_stitch_`` after each batch of 64 windows (host origins),
  then ``stitch_finalize``.
Both cut the windows from the image and plan them with ``teacher.window_plan`` as the teacher
does; the stand-in forward returns fixed fp16 features ``[B, g, g, C]`` (the teacher's autocast
output), so the time is the window cutting plus the stitch. Stride 24 px, patch 16, r = 2 (8-px
canvas cells) as for SigLIP2.
"""
from __future__ import annotations

import pytest
import torch

from spar_fast.teacher import plan_windows, teacher_features, teacher_features_reference

from conftest import ON_GPU, pick, require_backend, run_variant  # noqa: E402

PATCH, STRIDE = 16, 24
BATCH = 64  # windows per teacher forward
# (H, W, window px, C): GPU uses SigLIP2's real window (g = 32) and width; CPU a smaller window
if ON_GPU:
    SIZES = pick([(512, 1024, 512, 768)], [(1024, 2048, 512, 768), (768, 1152, 512, 768)])
    VARIANTS = ["reference", "cuda"]
else:
    SIZES = pick([(256, 384, 128, 64)], [(512, 768, 256, 64), (512, 768, 256, 384)])
    VARIANTS = ["reference", "cpp"]


class StandIn:
    """The attributes the teacher reads from a Backbone; ``forward`` returns fixed features."""
    patch_size = PATCH

    def __init__(self, window: int, channels: int, device):
        self.window, self.feature_dim = window, channels
        g = window // PATCH
        self.feats = torch.randn(BATCH, g, g, channels, device=device, dtype=torch.float16)

    def __call__(self, windows: torch.Tensor) -> torch.Tensor:
        return self.feats[:windows.shape[0]]


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("size", SIZES, ids=lambda s: "{}x{}_win{}_C{}".format(*s))
def test_stitch(benchmark, device, monkeypatch, size, variant):
    H, W, window, C = size
    if variant != "reference":
        require_backend("stitch", variant, device)
        monkeypatch.setenv("SPAR_FAST_BACKEND_STITCH", variant)
        if variant == "cpp":
            monkeypatch.setenv("SPAR_FAST_BACKEND_STITCH_FINALIZE", variant)
    bb = StandIn(window, C, device)
    image = torch.randn(3, H, W, device=device)
    if variant == "reference":
        fn = lambda: teacher_features_reference(bb, image, STRIDE)  # noqa: E731
    else:
        fn = lambda: teacher_features(bb, image, STRIDE, batch_size=BATCH, precision="fp32")  # noqa: E731
    windows = len(plan_windows(H, W, window, STRIDE, PATCH))
    run_variant(benchmark, fn, device=device, group=f"stitch {H}x{W} win{window} C{C}",
                variant=variant, rounds=pick(2, 5) if variant == "reference" else pick(3, 10),
                windows=windows, threads=torch.get_num_threads())

