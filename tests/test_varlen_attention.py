"""Packed attention without Triton: the public function, its validation and its dispatch.

The Triton kernels have their own file (test_varlen_attention_triton.py), so these run anywhere.
Accuracy rule: tests/attention_checks.py.
"""
from __future__ import annotations

import importlib

import pytest
import torch

from attention_checks import check_against_reference, cu_of, fresh_seed, inputs
from backends import backend_params
from spar_fast.errors import UserError
from spar_fast.ops import varlen_attention, varlen_attention_reference

va_module = importlib.import_module("spar_fast.ops.varlen_attention")  # the module, not the function


def test_dispatch_defaults_and_overrides(monkeypatch):
    q = torch.randn(10, 2, 64)
    for name in ("SPAR_FAST_BACKEND", "SPAR_FAST_BACKEND_VARLEN_ATTENTION"):
        monkeypatch.delenv(name, raising=False)
    assert va_module.implementation(q) == "torch"  # CPU default: the reference
    table = va_module.VARLEN_ATTENTION
    assert set(table.impls) == {"torch", "triton", "torch_varlen", "flash_attn"}
    monkeypatch.setenv("SPAR_FAST_BACKEND_VARLEN_ATTENTION", "torch_varlen")
    with pytest.raises(UserError, match="not available on cpu"):
        va_module.implementation(q)
    monkeypatch.setenv("SPAR_FAST_BACKEND_VARLEN_ATTENTION", "cpp")
    with pytest.raises(UserError, match="no 'cpp' implementation"):
        va_module.implementation(q)


def test_fp32_skips_the_half_only_backends():
    """torch_varlen and flash_attn take fp16/bf16 only: fp32 inputs are refused by their table
    entries, whatever the device (the automatic CUDA order then moves on to triton)."""
    table = va_module.VARLEN_ATTENTION
    q32, q16 = torch.randn(4, 1, 64), torch.randn(4, 1, 64, dtype=torch.float16)
    for backend in ("torch_varlen", "flash_attn"):
        assert "fp16/bf16" in table.impls[backend].accepts(q32)
        assert table.impls[backend].accepts(q16) is None


DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
HALF_ONLY = ("torch_varlen", "flash_attn")


def _other_backends():
    """Every implementation but the reference that can run here (triton: under the interpreter on
    CPU; torch_varlen / flash_attn: on a GPU). Each is forced through the op table and compared
    with the reference, so these checks test code other than the reference itself."""
    names = [name for name, impl in va_module.VARLEN_ATTENTION.impls.items()
             if name != "torch" and impl.available(DEVICE)]
    return backend_params(*names) or [pytest.param(None, marks=pytest.mark.skip(
        reason="no implementation but the reference can run here"))]


def _force(monkeypatch, backend: str, q: torch.Tensor) -> None:
    monkeypatch.setenv("SPAR_FAST_BACKEND_VARLEN_ATTENTION", backend)
    assert va_module.implementation(q) == backend  # the dispatch runs what was forced


@pytest.mark.parametrize("backend", _other_backends())
def test_gradients_through_the_dispatcher(monkeypatch, backend):
    seed = fresh_seed()
    lengths = [7, 1, 12]
    cu = cu_of(lengths).to(DEVICE)
    dtype = torch.float16 if backend in HALF_ONLY else torch.float32
    q, k, v, do = (t.to(DEVICE) for t in inputs(lengths, 2, 16, dtype))
    _force(monkeypatch, backend, q)
    fn = lambda a, b, c: varlen_attention(a, b, c, cu, max(lengths))  # noqa: E731
    check_against_reference(fn, q, k, v, do, cu, seed)


@pytest.mark.parametrize("backend", _other_backends())
def test_public_function_matches_reference_and_validates(monkeypatch, backend):
    fresh_seed()
    lengths = [3, 1, 8]
    dtype = torch.float16 if backend in HALF_ONLY else torch.float32
    q, k, v, _ = (t.to(DEVICE) for t in inputs(lengths, 2, 32, dtype))
    cu64 = cu_of(lengths).long().to(DEVICE)
    _force(monkeypatch, backend, q)
    out = varlen_attention(q, k, v, cu64)  # int64 cu_seqlens and no max_seqlen are accepted
    want = varlen_attention_reference(q.double(), k.double(), v.double(), cu64).to(dtype)
    # fp32: tf32-free accumulation in another order; fp16: a few units of the last place
    tol = dict(atol=2e-5, rtol=2e-5) if dtype == torch.float32 else dict(atol=2e-3, rtol=2e-3)
    torch.testing.assert_close(out, want, **tol)


def test_public_function_validates():
    fresh_seed()
    lengths = [3, 1, 8]
    q, k, v, _ = inputs(lengths, 2, 32, torch.float32)
    cu64 = cu_of(lengths).long()
    with pytest.raises(ValueError, match="same|share"):
        varlen_attention(q, k[:5], v, cu64)
    with pytest.raises(ValueError, match="rise from 0"):
        varlen_attention(q, k, v, torch.tensor([0, 3, 11], dtype=torch.int32))
    with pytest.raises(ValueError, match="max_seqlen"):
        varlen_attention(q, k, v, cu64, max_seqlen=4)
    empty = torch.zeros(0, 2, 32)
    assert varlen_attention(empty, empty, empty, torch.zeros(2, dtype=torch.int32)).shape == (0, 2, 32)
