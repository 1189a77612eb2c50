"""LPOSS+ pixel stage: the matrix-free ``lab_affinity`` against the explicit sparse matrix.

Groups (one per problem size, ``H x W`` image, ``Q`` classes, radius 6 = 168 neighbours):
* ``pixel stage`` — :func:`spar_fast.segmentation.propagation.propagate_pixels`: Lab conversion,
  degree, 10 CG iterations. ``reference``: the explicit CSR matrix, built once, 11 sparse
  products; ``cpp`` (CPU) / ``triton`` (GPU): matrix-free, weights recomputed in every product.
  Peak memory of each variant is measured in a fresh process (``peak_rss_mb``: peak resident
  memory above the memory once the inputs exist; ``cuda_peak_mb`` on GPU) and stored in
  ``extra_info`` with that run's time (``seconds``).
* ``product`` — one ``S W S x``: ``reference`` = the prebuilt CSR matrix (build not timed).
Sizes: 1024x2048 with 19 classes (Cityscapes) in full mode, 128x256 under SPAR_FAST_BENCH_QUICK=1.

Probe mode (used by the memory measurement):
    python benchmarks/bench_lab_affinity.py VARIANT H W Q DEVICE   -> one JSON line
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from conftest import ON_GPU, pick, require_backend, run_variant

from spar_fast.ops.lab_affinity import lab_affinity, lab_affinity_matrix
from spar_fast.segmentation.propagation import propagate_pixels

SIZE = pick((128, 256, 19), (1024, 2048, 19))  # H, W, Q
RADIUS, TAU, ALPHA = 6, 0.01, 0.95


def make_inputs(H, W, Q, device):
    """An image-like sRGB ``[3, H, W]`` (smooth regions plus noise) and scores ``[H, W, Q]``."""
    gen = torch.Generator().manual_seed(0)
    coarse = torch.rand(1, 3, max(1, H // 32), max(1, W // 32), generator=gen)
    rgb = torch.nn.functional.interpolate(coarse, size=(H, W), mode="bilinear", align_corners=False)[0]
    rgb = (rgb + 0.02 * torch.randn(3, H, W, generator=gen)).clamp(0, 1)
    scores = 0.1 * torch.randn(H, W, Q, generator=gen)
    return rgb.to(device), scores.to(device)


def _stage(rgb, scores, variant):
    return propagate_pixels(rgb, scores, ALPHA, TAU, RADIUS, iters=10, fused=variant != "reference")


def _peak_rss_mb() -> float:
    """This process image's peak resident memory (VmHWM; getrusage's ru_maxrss would carry over
    the peak of the process that forked it, here the benchmark session)."""
    with open("/proc/self/status") as f:
        line = next(line for line in f if line.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024


def _probe(variant, H, W, Q, device):
    """Run the pixel stage once in this (fresh) process; its peak memory and time as a dict."""
    device = torch.device(device)
    if variant != "reference":
        os.environ["SPAR_FAST_BACKEND_LAB_AFFINITY"] = variant
    rgb, scores = make_inputs(H, W, Q, device)
    _stage(*make_inputs(8, 8, Q, device), variant)  # lazy loads (_C, Triton, OpenMP) before the baseline
    with open("/proc/self/statm") as f:
        base_mb = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base_cuda = torch.cuda.memory_allocated()
    start = time.perf_counter()
    _stage(rgb, scores, variant)
    if device.type == "cuda":
        torch.cuda.synchronize()
    facts = {"seconds": round(time.perf_counter() - start, 3), "peak_rss_mb": round(_peak_rss_mb() - base_mb, 1)}
    if device.type == "cuda":
        facts["cuda_peak_mb"] = round((torch.cuda.max_memory_allocated() - base_cuda) / 2**20, 1)
    return facts


def _peak_memory(variant, H, W, Q, device) -> dict:
    out = subprocess.run([sys.executable, os.path.abspath(__file__), variant, str(H), str(W), str(Q), str(device)],
                         capture_output=True, text=True, timeout=3600, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


VARIANTS = ["reference", "cpp", "triton"]


@pytest.mark.parametrize("variant", VARIANTS)
def test_pixel_stage(benchmark, device, variant, monkeypatch):
    H, W, Q = SIZE
    if variant != "reference":
        require_backend("lab_affinity", variant, device)
        monkeypatch.setenv("SPAR_FAST_BACKEND_LAB_AFFINITY", variant)
    rgb, scores = make_inputs(H, W, Q, device)
    memory = _peak_memory(variant, H, W, Q, device)
    run_variant(benchmark, lambda: _stage(rgb, scores, variant), device=device,
                group=f"lab_affinity pixel stage {H}x{W} Q{Q} r{RADIUS}", variant=variant,
                rounds=pick(2, 3 if ON_GPU else 1), warmup=pick(1, 1 if ON_GPU else 0),
                threads=torch.get_num_threads(), megapixels=H * W / 1e6, **memory)


@pytest.mark.parametrize("variant", VARIANTS)
def test_product(benchmark, device, variant, monkeypatch):
    H, W, Q = SIZE
    rgb, scores = make_inputs(H, W, Q, device)
    lab = rgb.permute(1, 2, 0).contiguous()  # any [H, W, 3] values do for timing
    x = scores.reshape(H * W, Q)
    scale = torch.rand(H * W, device=device) + 0.5
    if variant == "reference":
        mat = lab_affinity_matrix(lab, RADIUS, TAU)

        def fn():
            return scale[:, None] * (mat @ (scale[:, None] * x))
    else:
        require_backend("lab_affinity", variant, device)
        monkeypatch.setenv("SPAR_FAST_BACKEND_LAB_AFFINITY", variant)

        def fn():
            return lab_affinity(lab, x, scale, RADIUS, TAU)
    run_variant(benchmark, fn, device=device, group=f"lab_affinity product {H}x{W} Q{Q} r{RADIUS}",
                variant=variant, rounds=pick(3, 5 if ON_GPU else 2), warmup=1,
                threads=torch.get_num_threads(), megapixels=H * W / 1e6)


if __name__ == "__main__":
    name, h, w, q, dev = sys.argv[1:6]
    print(json.dumps(_probe(name, int(h), int(w), int(q), dev)))
