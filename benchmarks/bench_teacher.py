"""Teacher features for one image, end to end: windows → backbone → stitch → stored target.

Variants (one group per image size):
* ``reference`` — the official execution: every window materialized, 10 per forward (fp16
  autocast on GPU), per-window ``F.interpolate`` + Python fold loop, fp32 pickle of the target.
* ``fast`` — ``spar_fast.teacher_features`` (window batches cut on the fly, bf16 autocast on GPU,
  fused stitch op) + an fp16 safetensors write.
GPU: SigLIP2 B/16-512 (random init: speed does not depend on the weights) on the SA-1B-like size
mix. CPU: the tiny SigLIP2-family config on small images. MFU on GPU is reported in extra_info
from the FLOP count of SPEC §7 (24·d²·n + 4·n²·d per block per window).
"""
import pickle

import pytest
import torch
from safetensors.torch import save_file

import spar_fast as sf
from spar_fast.teacher import plan_windows, teacher_features_reference

from conftest import QUICK, sync  # noqa: E402

ON_GPU = torch.cuda.is_available()
if ON_GPU:
    BACKBONE, SIZES = "siglip2-b16-512", [(1024, 1536), (768, 1152), (512, 768), (1024, 2048)]
    if QUICK:
        SIZES = SIZES[2:3]
else:
    BACKBONE, SIZES = "siglip2-tiny", [(128, 192)] if QUICK else [(256, 384), (512, 768)]


@pytest.fixture(scope="module")
def backbone():
    device = "cuda" if ON_GPU else "cpu"
    return sf.Backbone.from_pretrained(BACKBONE, pretrained=False).to(device).eval()


def window_flop(bb) -> float:
    """Forward FLOP of one window (SPEC §7): per block 24·d²·n + 4·n²·d."""
    d = bb.model.visual.trunk.embed_dim if bb.family == "siglip2" else bb.model.visual.transformer.width
    n = (bb.window // bb.patch_size) ** 2
    return bb.num_blocks * (24 * d * d * n + 4 * n * n * d)


def run_reference(bb, image, path):
    target = teacher_features_reference(bb, image, stride=24)
    with open(path, "wb") as f:
        pickle.dump(target[None].cpu().numpy(), f)
    sync()


def run_fast(bb, image, path):
    target = teacher_features(bb, image)
    save_file({"target": target.half().cpu()}, str(path))
    sync()


teacher_features = sf.teacher_features


@pytest.mark.parametrize("variant", ["reference", "fast"])
@pytest.mark.parametrize("hw", SIZES, ids=lambda hw: f"{hw[0]}x{hw[1]}")
def test_teacher(benchmark, backbone, hw, variant, tmp_path):
    device = next(backbone.parameters()).device
    image = torch.randn(3, *hw, device=device)
    fn = run_reference if variant == "reference" else run_fast
    benchmark.group = f"teacher {BACKBONE} {hw[0]}x{hw[1]}"
    windows = len(plan_windows(*hw, backbone.window, 24, backbone.patch_size))
    benchmark.extra_info.update(windows=windows, device=str(device))
    fn(backbone, image, tmp_path / "warmup")
    rounds = 1 if (QUICK or not ON_GPU) else 3
    benchmark.pedantic(fn, args=(backbone, image, tmp_path / "t"), rounds=rounds, iterations=1)
    seconds = benchmark.stats.stats.median
    benchmark.extra_info["images_per_s"] = 1.0 / seconds
    if ON_GPU:
        benchmark.extra_info["tflops"] = windows * window_flop(backbone) / seconds / 1e12
