"""Shared settings and helpers of the spar_fast benchmarks (pytest-benchmark).

Conventions (benchmarks/README.md): one ``benchmark.group`` per problem size; a ``variant``
parametrization whose ``reference`` runs the reference algorithm and whose other values run fast
paths; facts about the run in ``benchmark.extra_info``. ``SPAR_FAST_BENCH_QUICK=1`` (CI) shrinks
sizes and rounds so ``pytest benchmarks --benchmark-only`` takes minutes on 2 CPU cores.
Benchmark files import from here: ``from conftest import QUICK, pick, sync, run_variant, ...``.
"""
from __future__ import annotations

import os
import statistics

import pytest
import torch

from spar_fast import ops

QUICK = os.environ.get("SPAR_FAST_BENCH_QUICK", "0") == "1"
ON_GPU = torch.cuda.is_available()
ROUNDS = 3 if QUICK else 10  # timed rounds per variant (median reported)
WARMUP = 1 if QUICK else 3  # untimed rounds first: allocator, autotuning, Triton compilation


def pick(quick, full):
    """``quick`` under SPAR_FAST_BENCH_QUICK=1, else ``full`` (sizes, round counts)."""
    return quick if QUICK else full


# Aspect ratios (width / height) of ADE20K-like images after the test resize.
ADE_ASPECTS = (0.6, 0.75, 1.0, 1.33, 1.5, 2.0)


def ade_like_images(count: int, short: int, device) -> list[torch.Tensor]:
    """``count`` random images ``[3, H, W]`` of short side ``short`` cycling through
    :data:`ADE_ASPECTS` (seed 0), on ``device``."""
    g = torch.Generator().manual_seed(0)
    out = []
    for i in range(count):
        a = ADE_ASPECTS[i % len(ADE_ASPECTS)]
        h, w = (short, int(short * a)) if a >= 1 else (int(short / a), short)
        out.append(torch.randn(3, h, w, generator=g).to(device))
    return out


def sync(device: torch.device | str | None = None) -> None:
    """Wait for queued GPU work, so wall-clock timings include it (no-op on CPU)."""
    if ON_GPU and (device is None or torch.device(device).type == "cuda"):
        torch.cuda.synchronize()


@pytest.fixture(scope="session")
def device() -> torch.device:
    """``cuda`` when a GPU is visible, else ``cpu``."""
    return torch.device("cuda" if ON_GPU else "cpu")


def cuda_time_ms(fn, warmup: int = WARMUP, rounds: int = ROUNDS) -> float:
    """Median GPU time of ``fn()`` in ms, from CUDA events around each call after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(rounds):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def require_backend(op: str, backend: str, device: torch.device) -> None:
    """Skip the current benchmark when ``backend`` cannot run ``op`` on ``device``."""
    impl = ops.table()[op].impls.get(backend)
    if impl is None or not impl.available(device):
        pytest.skip(f"{op}: backend {backend!r} not available on {device.type}")


def run_variant(benchmark, fn, *, device: torch.device, group: str, variant: str,
                rounds: int = ROUNDS, warmup: int = WARMUP, **extra_info):
    """Time ``fn()`` with pytest-benchmark after ``warmup`` untimed calls, synchronizing the GPU
    after each call; on GPU also records the CUDA-event median (``gpu_ms``) in extra_info.
    Returns the last result of ``fn``."""
    benchmark.group = group
    benchmark.extra_info.update(variant=variant, device=str(device), quick=QUICK, **extra_info)

    def timed():
        out = fn()
        sync(device)
        return out

    if device.type == "cuda":
        benchmark.extra_info["gpu_ms"] = cuda_time_ms(fn, warmup=warmup, rounds=rounds)
        warmup = 0  # already warm
    for _ in range(warmup):
        timed()
    return benchmark.pedantic(timed, rounds=rounds, iterations=1)
