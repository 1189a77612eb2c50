"""Fused upsample-stitch (SPEC §2 steps 3-4) over all teacher windows of one image.

Variants (one group per size):
* ``reference`` -- ``stitch_reference``: ``F.interpolate`` on batches of 10 windows, a Python fold
  loop adding each window into an fp32 canvas and count, divide, resize.
* ``cpp`` (CPU) and ``cuda`` (GPU) -- the product's ops forced to that backend: ``upsample_stitch_``
  per batch of 64 windows with host origins, as the teacher does after each window forward, then
  ``stitch_finalize``. Window features are fp16 (the teacher's autocast
output); stride 24 px, patch 16, r = 2 (8-px canvas cells) as for SigLIP2.
"""
from __future__ import annotations

import pytest
import torch

from spar_fast.ops.stitch import stitch_finalize, stitch_reference, upsample_stitch_

from conftest import ON_GPU, pick, require_backend, run_variant  # noqa: E402

PATCH, STRIDE, R = 16, 24, 2
CELL = PATCH // R
BATCH = 64  # windows per teacher forward
# (H, W, window px, C): GPU uses SigLIP2's real window (g = 32) and width; CPU a smaller window
if ON_GPU:
    SIZES = pick([(512, 1024, 512, 768)], [(1024, 2048, 512, 768), (768, 1152, 512, 768)])
    VARIANTS = ["reference", "cuda"]
else:
    SIZES = pick([(256, 384, 128, 64)], [(512, 768, 256, 64), (512, 768, 256, 384)])
    VARIANTS = ["reference", "cpp"]


def plan(L: int, window: int) -> list[int]:
    """SPEC §2 step 1 window starts along one axis (pixels)."""
    starts = list(range(0, L - window + 1, STRIDE))
    if starts[-1] != L - window:
        starts.append(L - window)
    return starts


def fused(feats, origins, canvas_hw, out_hw):
    """The teacher's use of the ops: ``origins`` on the host, features on the device."""
    canvas = torch.zeros(*canvas_hw, feats.shape[-1], device=feats.device)
    count = torch.zeros(*canvas_hw, device=feats.device)
    for s in range(0, feats.shape[0], BATCH):
        upsample_stitch_(canvas, count, feats[s:s + BATCH], origins[s:s + BATCH], R)
    return stitch_finalize(canvas, count, out_hw)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("size", SIZES, ids=lambda s: "{}x{}_win{}_C{}".format(*s))
def test_stitch(benchmark, device, monkeypatch, size, variant):
    H, W, window, C = size
    if variant != "reference":
        require_backend("stitch", variant, device)
        monkeypatch.setenv("SPAR_FAST_BACKEND_STITCH", variant)
        if variant == "cpp":
            monkeypatch.setenv("SPAR_FAST_BACKEND_STITCH_FINALIZE", variant)
    g = window // PATCH
    origins = torch.tensor([(y // CELL, x // CELL) for y in plan(H, window) for x in plan(W, window)])
    feats = torch.randn(len(origins), g, g, C, device=device, dtype=torch.float16)
    canvas_hw, out_hw = (H // CELL, W // CELL), (H // PATCH, W // PATCH)
    if variant == "reference":
        fn = lambda: stitch_reference(feats, origins, R, canvas_hw, out_hw)  # noqa: E731
    else:
        fn = lambda: fused(feats, origins, canvas_hw, out_hw)  # noqa: E731
    run_variant(benchmark, fn, device=device, group=f"stitch {H}x{W} win{window} C{C}",
                variant=variant, rounds=pick(2, 5) if variant == "reference" else pick(3, 10),
                windows=len(origins), threads=torch.get_num_threads())
