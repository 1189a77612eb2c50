"""torch.compile traces through the ops (torch.library registrations): compiled == eager on CPU.

Backend ``aot_eager`` (FakeTensor tracing, functionalization of the mutating stitch, autograd
graphs) checks exactly what the registrations must provide; inductor's CPU C++ code generation
would add minutes on this 2-core machine and test inductor, not the ops. The compiled ops are
traced with ``fullgraph=True`` (no graph break allowed); the public functions validate their
inputs on the host first (bounds from host origins), which may break the graph there.
The Triton cases (custom ops, run by the interpreter on CPU) skip without Triton.
"""
import pytest
import torch

from backends import backend_params
from spar_fast import _backend
from spar_fast.ops import seg_head, stitch_finalize, upsample_stitch_, varlen_attention
from spar_fast.ops.bilinear import bilinear_taps

needs_cpp = pytest.mark.skipif(_backend.extension() is None, reason="spar_fast._C not built")
needs_triton = pytest.mark.skipif(not _backend.triton_available(), reason="no Triton")


def _compile(fn, **kwargs):
    torch._dynamo.reset()
    return torch.compile(fn, backend="aot_eager", **kwargs)


def _stitch_inputs():
    g, r, C, Hc, Wc = 3, 2, 5, 11, 13
    feats = torch.randn(4, g, g, C)
    origins = torch.tensor([[0, 0], [5, 7], [2, 3], [4, 6]])
    return feats, origins, r, (Hc, Wc, C)


@needs_cpp
def test_compiled_kernels_trace_in_one_graph():
    feats, origins, r, (Hc, Wc, C) = _stitch_inputs()
    g = feats.shape[1]
    taps = (*bilinear_taps(g, g * r, scale_factor=r), *bilinear_taps(2, 2 * r, scale_factor=r))
    out_taps = (*bilinear_taps(Hc, 5), *bilinear_taps(Wc, 6))

    def fold(canvas, count):
        torch.ops.spar_fast.upsample_stitch_(canvas, count, feats, origins, *taps, r, 0, Hc, 0, Wc)
        return torch.ops.spar_fast.stitch_finalize(canvas, count, *out_taps)

    eager = fold(torch.zeros(Hc, Wc, C), torch.zeros(Hc, Wc))
    canvas, count = torch.zeros(Hc, Wc, C), torch.zeros(Hc, Wc)
    compiled = _compile(fold, fullgraph=True)(canvas, count)
    assert torch.equal(compiled, eager)
    assert count.sum() == 4 * (g * r) ** 2  # the in-place update reached the caller's tensors


@pytest.mark.parametrize("backend", backend_params(pytest.param("cpp", marks=needs_cpp), "torch"))
def test_stitch_compiled_equals_eager(backend, monkeypatch):
    monkeypatch.setenv("SPAR_FAST_BACKEND_STITCH", backend)
    monkeypatch.setenv("SPAR_FAST_BACKEND_STITCH_FINALIZE", backend)
    feats, origins, r, (Hc, Wc, C) = _stitch_inputs()

    def teacher_fold(feats):
        canvas, count = torch.zeros(Hc, Wc, C), torch.zeros(Hc, Wc)
        upsample_stitch_(canvas, count, feats, origins, r)
        return stitch_finalize(canvas, count, (5, 6))

    compiled, eager = _compile(teacher_fold)(feats), teacher_fold(feats)
    if backend == "cpp":
        assert torch.equal(compiled, eager)  # the same kernels on the same inputs
    else:  # AOT tracing decomposes F.interpolate into other fp32 ops: a few ulps of |x| ~ 1
        torch.testing.assert_close(compiled, eager, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("backend", backend_params(pytest.param("cpp", marks=needs_cpp), "torch",
                                                   pytest.param("triton", marks=needs_triton)))
def test_seg_head_compiled_equals_eager(backend, monkeypatch):
    monkeypatch.setenv("SPAR_FAST_BACKEND_SEG_HEAD", backend)
    logits = torch.randn(6, 7, 5)
    q2c = torch.tensor([0, 1, 2, 1, 3])

    def head(x):
        return seg_head(x, q2c, (17, 19), prob_thd=0.2)

    assert torch.equal(_compile(head)(logits), head(logits))


@pytest.mark.parametrize("backend", backend_params("torch", pytest.param("triton", marks=needs_triton)))
def test_varlen_attention_compiled_equals_eager(backend, monkeypatch):
    """Forward and backward (Triton: the custom ops' registered autograd)."""
    monkeypatch.setenv("SPAR_FAST_BACKEND_VARLEN_ATTENTION", backend)
    cu = torch.tensor([0, 9, 10, 40], dtype=torch.int32)
    q, k, v = (torch.randn(40, 2, 16, requires_grad=True) for _ in range(3))

    def loss(q, k, v):
        return varlen_attention(q, k, v, cu, 30).square().sum()

    eager = torch.autograd.grad(loss(q, k, v), (q, k, v))
    compiled = torch.autograd.grad(_compile(loss)(q, k, v), (q, k, v))
    for a, b in zip(compiled, eager):
        if backend == "triton":
            assert torch.equal(a, b)  # the same kernels on the same inputs
        else:  # the traced reference may decompose SDPA into other fp32 ops
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
