"""The compiled extension spar_fast._C, the op table it serves, and the import contract."""
from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest
import torch

from spar_fast import _backend, ops
from spar_fast.ops.triton_kernels import triton_kernels


def _extension():
    if importlib.util.find_spec("spar_fast._C") is None:
        pytest.skip("spar_fast._C is not built (pip install -e . --no-build-isolation)")
    import spar_fast._C as ext  # a built but unloadable module is a failure, not a skip
    return ext


def _compiled(kind: str) -> list[tuple[str, str, str]]:
    """(op, backend, compiled op name) of every table implementation of ``kind`` (cpp / cuda)."""
    return [(op.name, impl.backend, impl.compiled) for op in ops.table().values()
            for impl in op.impls.values() if impl.backend == kind]


def test_extension_loads():
    ext = _extension()
    assert isinstance(ext.has_cuda(), bool)
    assert ext.has_openmp(), "CPU kernels were compiled without OpenMP (single-threaded)"
    assert _backend.extension() is ext


def test_every_op_has_its_cpu_kernel():
    """Each cpp implementation of the table names a torch.ops.spar_fast op with a CPU kernel."""
    _extension()
    rows = _compiled("cpp")
    assert {op for op, _, _ in rows} >= {"stitch", "stitch_finalize", "seg_head"}
    for op, backend, name in rows:
        assert name, f"{op}/{backend} does not name its compiled op"
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"spar_fast::{name}", "CPU"), \
            f"{op}: spar_fast::{name} has no CPU kernel in spar_fast._C"


def test_every_cuda_op_has_its_kernel():
    """With CUDA kernels compiled in, every cuda implementation has its CUDA kernel."""
    ext = _extension()
    if not ext.has_cuda():
        pytest.skip("spar_fast._C built without CUDA kernels")
    rows = _compiled("cuda")
    assert {op for op, _, _ in rows} >= {"stitch"}
    for op, backend, name in rows:
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"spar_fast::{name}", "CUDA"), \
            f"{op}: spar_fast::{name} has no CUDA kernel in spar_fast._C"


def test_has_cuda_matches_the_build():
    """CUDA kernels exist only in a CUDA build of torch, and never serve CPU tensors."""
    ext = _extension()
    if torch.version.cuda is None:
        assert not ext.has_cuda()
    assert _backend.extension_has_cuda() == ext.has_cuda()
    assert not _backend.cuda_extension(torch.device("cpu"))


def test_cpu_dispatch_prefers_the_extension(monkeypatch):
    _extension()
    monkeypatch.delenv("SPAR_FAST_BACKEND", raising=False)
    for name in ("stitch", "stitch_finalize", "seg_head"):
        monkeypatch.delenv(f"SPAR_FAST_BACKEND_{name.upper()}", raising=False)
        assert ops.table()[name].pick(torch.device("cpu")).backend == "cpp"


@pytest.mark.parametrize("module", ["spar_fast", "spar_fast.ops"])
def test_import_needs_only_torch(module):
    code = (f"import sys, {module}\n"
            "heavy = [m for m in ('open_clip', 'triton', 'spar_fast._C') if m in sys.modules]\n"
            "print(','.join(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"import {module} loaded {out.stdout.strip()}"


def test_triton_kernels_package_resolves():
    pytest.importorskip("triton")
    kernels = triton_kernels("seg_head")
    assert kernels.__name__ == "spar_fast.kernels.seg_head"
    assert callable(kernels.seg_head_pass)
