"""The compiled extension spar_fast._C and the import contract of the package."""
from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest
import torch

from spar_fast import _backend


def _extension():
    if importlib.util.find_spec("spar_fast._C") is None:
        pytest.skip("spar_fast._C is not built (pip install -e . --no-build-isolation)")
    import spar_fast._C as ext  # a built but unloadable module is a failure, not a skip
    return ext


def test_extension_loads_and_exposes_ops():
    ext = _extension()
    assert isinstance(ext.has_cuda(), bool)
    assert ext.has_openmp(), "CPU kernels were compiled without OpenMP (single-threaded)"
    for name in ("upsample_stitch_", "stitch_finalize"):
        assert callable(getattr(ext, name))
    assert _backend.extension() is ext


def test_has_cuda_matches_the_build():
    """CUDA kernels exist only in a CUDA build of torch, and never serve CPU tensors."""
    ext = _extension()
    if torch.version.cuda is None:
        assert not ext.has_cuda()
    assert _backend.extension_has_cuda() == ext.has_cuda()
    if not torch.cuda.is_available():
        assert not _backend.available("cuda", torch.device("cpu"))
        assert _backend.choose("stitch", torch.device("cpu")) in ("cpp", "torch")


def test_cpu_dispatch_prefers_the_extension(monkeypatch):
    _extension()
    monkeypatch.delenv("SPAR_FAST_BACKEND", raising=False)
    monkeypatch.delenv("SPAR_FAST_BACKEND_STITCH", raising=False)
    assert _backend.choose("stitch", torch.device("cpu")) == "cpp"


@pytest.mark.parametrize("module", ["spar_fast", "spar_fast.ops"])
def test_import_needs_only_torch(module):
    code = (f"import sys, {module}\n"
            "heavy = [m for m in ('open_clip', 'triton', 'spar_fast._C') if m in sys.modules]\n"
            "print(','.join(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"import {module} loaded {out.stdout.strip()}"


def test_triton_kernels_package_resolves():
    pytest.importorskip("triton")
    kernels = _backend.triton_kernels("stitch")
    assert kernels.__name__ == "spar_fast.kernels.stitch"
    assert callable(kernels.upsample_stitch)
