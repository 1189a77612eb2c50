"""The paper's timing protocol (SPEC §5.8, :mod:`spar_fast.jobs.timing`) as a benchmark: Fig. 1's
rows, the protocol's eager forwards beside spar_fast's own paths.

Groups ``timing <row> HxW`` (row: ``single`` or ``teacher s=S``), variants:
* ``reference`` — the protocol: forward passes only (sliding window: sub-batches of 60 windows,
  their forward times summed); one pass per round after the warm-up passes. ``extra_info``
  ``protocol_s`` is the protocol's own number for the last pass (CUDA events on GPU).
* ``fast`` — spar_fast's path timed the same way: single pass = forward + cosine logits + fused
  seg head to a full-size label map; teacher = ``teacher_features`` (batched windows, fused
  stitch). It does more than the forwards, so a ratio near 1 means its extra work is hidden.
GPU: SigLIP2 B/16-512 at random init (speed does not depend on the weights) on 1024x2048 with 10
warm-up passes and one timed pass (the protocol). CPU: the tiny SigLIP2-family config on a small
image, 1 warm-up pass.
"""
import pytest
import torch

import spar_fast as sf
from spar_fast.jobs import timing

from conftest import ON_GPU, QUICK, pick, run_variant  # noqa: E402

if ON_GPU:
    BACKBONE, SIZE, STRIDES = "siglip2-b16-512", pick((512, 1024), (1024, 2048)), (24, 48, 64, 128)
    WARMUP, ROUNDS = pick(2, timing.WARMUP), 1
else:
    BACKBONE, SIZE, STRIDES = "siglip2-tiny", pick((64, 128), (128, 256)), (24, 64)
    WARMUP, ROUNDS = 1, pick(1, 3)
ROWS = ["single"] + [f"teacher s={s}" for s in STRIDES]


@pytest.fixture(scope="module")
def backbone(device):
    return sf.Backbone.from_pretrained(BACKBONE, weights="random").to(device).eval()


@pytest.mark.parametrize("variant", ["reference", "fast"])
@pytest.mark.parametrize("row", ROWS)
def test_timing(benchmark, backbone, device, row, variant):
    image = timing.timing_image(backbone, *SIZE, device)
    if row == "single":
        queries = timing.random_queries(backbone, 19, device)
        fn = {"reference": lambda: timing.protocol_single(backbone, image, warmup=0),
              "fast": lambda: timing.fast_single(backbone, image, queries, warmup=0)}[variant]
    else:
        stride = int(row.split("=")[1])
        fn = {"reference": lambda: timing.protocol_slide(backbone, image, stride, warmup=0),
              "fast": lambda: timing.fast_teacher(backbone, image, stride, warmup=0)}[variant]
    with torch.inference_mode():
        last = run_variant(benchmark, fn, device=device, variant=variant, rounds=ROUNDS, warmup=WARMUP,
                           group=f"timing {row} {BACKBONE} {SIZE[0]}x{SIZE[1]}")
    benchmark.extra_info.update(protocol_s=last.seconds, windows=last.windows, forwards=last.spans,
                                quick=QUICK)
