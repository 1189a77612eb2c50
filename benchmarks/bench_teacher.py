"""Teacher targets for one image, compute and storage timed apart.

Group ``teacher HxW`` (compute: image on the device -> target ``[H/P, W/P, C]`` fp32):
* ``reference`` — the official execution: every window materialized, 10 per forward (fp16
  autocast on GPU), per-window ``F.interpolate`` + Python fold loop.
* ``fast`` — ``spar_fast.teacher_features`` (window batches cut on the fly, bf16 autocast on GPU,
  fused stitch op).
Group ``target write HxW`` (storage: the target on the device -> bytes on disk):
* ``reference`` — fp32 pickle of ``[1, h, w, C]`` (the reference's per-image file).
* ``fp16`` / ``fp8_e4m3`` — the store's encodings (:mod:`spar_fast.store.codec`) written as one
  safetensors file.
GPU: SigLIP2 B/16-512 (random init: speed does not depend on the weights) on the SA-1B-like size
mix; ``tflops`` and ``mfu`` from SPEC §7 (benchmarks/flops.py). CPU: the tiny SigLIP2-family config
on small images.
"""
import pickle

import pytest
import torch
from safetensors.torch import save_file

import spar_fast as sf
from spar_fast.store.codec import FP8, encode_target, stored_tensors
from spar_fast.teacher import plan_windows, teacher_features_reference

from conftest import ON_GPU, QUICK, run_variant  # noqa: E402
from flops import mfu, teacher_flop  # noqa: E402

if ON_GPU:
    BACKBONE, SIZES = "siglip2-b16-512", [(1024, 1536), (768, 1152), (512, 768), (1024, 2048)]
    if QUICK:
        SIZES = SIZES[2:3]
else:
    BACKBONE, SIZES = "siglip2-tiny", [(128, 192)] if QUICK else [(256, 384), (512, 768)]
ROUNDS = 1 if (QUICK or not ON_GPU) else 3


@pytest.fixture(scope="module")
def backbone(device):
    return sf.Backbone.from_pretrained(BACKBONE, weights="random").to(device).eval()


@pytest.mark.parametrize("variant", ["reference", "fast"])
@pytest.mark.parametrize("hw", SIZES, ids=lambda hw: f"{hw[0]}x{hw[1]}")
def test_teacher(benchmark, backbone, device, hw, variant):
    image = torch.randn(3, *hw, device=device)
    fn = teacher_features_reference if variant == "reference" else sf.teacher_features
    windows = len(plan_windows(*hw, backbone.window, 24, backbone.patch_size))
    with torch.inference_mode():
        run_variant(benchmark, lambda: fn(backbone, image, stride=24), device=device, variant=variant,
                    group=f"teacher {BACKBONE} {hw[0]}x{hw[1]}", rounds=ROUNDS, warmup=1, windows=windows)
    seconds = benchmark.extra_info.get("gpu_ms", benchmark.stats.stats.median * 1e3) / 1e3
    benchmark.extra_info["images_per_s"] = 1.0 / seconds
    if ON_GPU:
        flop = teacher_flop(backbone, windows)
        benchmark.extra_info.update(tflops=flop / seconds / 1e12, mfu=mfu(flop, seconds))


@pytest.mark.parametrize("variant", ["reference", "fp16", FP8])
@pytest.mark.parametrize("hw", SIZES, ids=lambda hw: f"{hw[0]}x{hw[1]}")
def test_target_write(benchmark, backbone, device, hw, variant, tmp_path):
    h, w = hw[0] // backbone.patch_size, hw[1] // backbone.patch_size
    target = torch.randn(h, w, backbone.feature_dim, device=device)
    path = str(tmp_path / "target")

    def reference():
        with open(path, "wb") as f:
            pickle.dump(target[None].cpu().numpy(), f)

    def store():
        stored = encode_target(target, variant)
        save_file({k: v.cpu() for k, v in stored_tensors("t", stored).items()}, path)

    run_variant(benchmark, reference if variant == "reference" else store, device=device, variant=variant,
                group=f"target write {h}x{w}x{backbone.feature_dim}", rounds=3, warmup=1)
