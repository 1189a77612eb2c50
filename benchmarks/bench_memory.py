"""Peak memory (the teacher's headline is bounded memory), each case in a fresh process.

* ``teacher`` — ``spar_fast.teacher_features`` on a 4096² image. GPU: SigLIP2 B/16-512,
  stride 24; CPU: the tiny SigLIP2-family config at stride 64 (4,096 windows; 1024² under
  SPAR_FAST_BENCH_QUICK=1, so CI stays fast). ``reference_window_gb``: what the reference would materialize up front (every
  window's fp32 pixels; SPEC §2), arithmetic, not run.
* ``train step`` — one :class:`spar_fast.train.step.TrainStep` on an SA-1B-like 1024x1536 image
  (GPU: B/16 bf16; CPU: tiny fp32).
``extra_info``: ``peak_rss_mb`` (peak resident memory above the process's memory after model
load), ``cuda_peak_mb`` (``max_memory_allocated`` above the model's, CUDA). The timing includes
the process start and model load; read the memory, not the time.
"""
import json
import os
import subprocess
import sys

import pytest

from conftest import ON_GPU, QUICK  # noqa: E402

PROBE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "memory_probe.py")
CASES = {
    "teacher": ["--size", "1024" if QUICK and not ON_GPU else "4096", "--stride", "24" if ON_GPU else "64"],
    "train_step": ["--size", "1024" if ON_GPU or not QUICK else "512"],
}


def _probe(case):
    out = subprocess.run([sys.executable, PROBE, case, *CASES[case]], capture_output=True, text=True,
                         timeout=900, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("case", list(CASES))
def test_memory(benchmark, case):
    facts = {}
    benchmark.group = f"memory {case}"
    benchmark.pedantic(lambda: facts.update(_probe(case)), rounds=1, iterations=1)
    benchmark.extra_info.update(variant="fast", quick=QUICK, **facts)
    if case == "teacher":
        from spar_fast.teacher import plan_windows

        window, size = (512 if ON_GPU else 64), facts["size"]
        windows = len(plan_windows(size, size, window, facts["stride"], 16))
        benchmark.extra_info.update(windows=windows, reference_window_gb=round(windows * 3 * window ** 2 * 4 / 1e9, 1))
