"""torch.compile through the Triton custom ops (interpreter on CPU): compiled == eager.

Backend ``aot_eager``, as in test_compile.py (the custom ops are opaque to the compiler; what is
tested is their schema, fake implementation and registered autograd). Needs Triton.
"""
import pytest
import torch

from spar_fast.ops import seg_head, varlen_attention

pytest.importorskip("triton")


def _compile(fn):
    torch._dynamo.reset()
    return torch.compile(fn, backend="aot_eager")


def test_seg_head_triton_compiled_equals_eager(monkeypatch):
    monkeypatch.setenv("SPAR_FAST_BACKEND_SEG_HEAD", "triton")
    logits = torch.randn(5, 6, 7)
    q2c = torch.tensor([0, 1, 2, 1, 3, 4, 0])

    def head(x):
        return seg_head(x, q2c, (13, 11), prob_thd=0.1)

    assert torch.equal(_compile(head)(logits), head(logits))


def test_varlen_attention_triton_compiled_equals_eager(monkeypatch):
    monkeypatch.setenv("SPAR_FAST_BACKEND_VARLEN_ATTENTION", "triton")
    cu = torch.tensor([0, 9, 10, 40], dtype=torch.int32)
    q, k, v = (torch.randn(40, 2, 16, requires_grad=True) for _ in range(3))

    def loss(q, k, v):
        return varlen_attention(q, k, v, cu, 30).square().sum()

    eager = (loss(q, k, v),) + torch.autograd.grad(loss(q, k, v), (q, k, v))
    value = _compile(loss)(q, k, v)
    compiled = (value,) + torch.autograd.grad(value, (q, k, v))
    for a, b in zip(compiled, eager):
        assert torch.equal(a, b)  # the same kernels on the same inputs
