"""Packed attention, Triton kernels (forward, dQ/dK/dV, custom ops) against the references.

Kernels run through Triton's interpreter on CPU (tests/conftest.py sets TRITON_INTERPRET=1 when
no GPU is present); shapes stay small (T <= ~250, H = 2) so the file runs in well under a minute.
The whole file needs Triton; the reference and dispatch tests (test_varlen_attention.py) do not.
Accuracy rule: tests/attention_checks.py.
"""
from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys

import pytest
import torch

from attention_checks import LENGTH_CASES, check_against_reference, cu_of, fresh_seed, inputs, lengths_of
from spar_fast import _backend
from spar_fast.errors import UserError
from spar_fast.ops import varlen_attention
from spar_fast.ops.triton_kernels import triton_kernels

pytest.importorskip("triton")
kernels = triton_kernels("varlen_attention")


@pytest.mark.parametrize("case", list(LENGTH_CASES))
@pytest.mark.parametrize("dim", [64, 128])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_kernel_matches_reference(dtype, dim, case):
    seed = fresh_seed()
    lengths = lengths_of(case)
    cu = cu_of(lengths)
    q, k, v, do = inputs(lengths, 2, dim, dtype)
    fn = lambda a, b, c: kernels.varlen_attention(a, b, c, cu, max(lengths))  # noqa: E731
    check_against_reference(fn, q, k, v, do, cu, seed)


@pytest.mark.parametrize("dim", [16, 32, 40, 80])
def test_other_head_dims(dim):
    """Smallest power of two, D=32, and non-powers of two masked inside the kernel."""
    seed = fresh_seed()
    lengths = [33, 1, 50]
    cu = cu_of(lengths)
    q, k, v, do = inputs(lengths, 2, dim, torch.float16)
    fn = lambda a, b, c: kernels.varlen_attention(a, b, c, cu, max(lengths))  # noqa: E731
    check_against_reference(fn, q, k, v, do, cu, seed)


def _gpu_config(monkeypatch, dim):
    """The tile configuration a GPU run uses (``default_config`` outside the interpreter)."""
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    cfg = kernels.default_config(dim)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    return cfg


@pytest.mark.parametrize("dim", [64, 128])
def test_gpu_tile_config(monkeypatch, dim):
    """The sm_90 tile sizes (128-row forward / dQ tiles, 64-128-key dK/dV tiles) on lengths that
    leave ragged tails and sequences shorter than one tile."""
    seed = fresh_seed()
    lengths = [200, 1, 129, 40]
    cu = cu_of(lengths)
    q, k, v, do = inputs(lengths, 2, dim, torch.float16)
    cfg = _gpu_config(monkeypatch, dim)
    fn = lambda a, b, c: kernels.varlen_attention(a, b, c, cu, max(lengths), cfg=cfg)  # noqa: E731
    check_against_reference(fn, q, k, v, do, cu, seed)


SM90_BUILD = """
import json, sys, triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from spar_fast.errors import UserError
from spar_fast.ops.triton_kernels import triton_kernels
kernels = triton_kernels("varlen_attention")
dim = int(sys.argv[1])
cfg = kernels.default_config(dim)
pointers = {name: "*bf16" for name in ("Q", "K", "V", "O", "DO", "DQ", "DK", "DV")}
pointers.update(LSE="*fp32", DELTA="*fp32", CU="*i32")
common = dict(HEAD_DIM=dim, BLOCK_D=dim, PRECISION="tf32", EVEN_D=True)
jobs = [(kernels._fwd_kernel, dict(common, BLOCK_M=cfg.fwd_m, BLOCK_N=cfg.fwd_n), cfg.fwd_stages),
        (kernels._bwd_dkdv_kernel, dict(common, BLOCK_M=cfg.kv_m, BLOCK_N=cfg.kv_n), cfg.bwd_stages),
        (kernels._bwd_dq_kernel, dict(common, BLOCK_M=cfg.q_m, BLOCK_N=cfg.q_n), cfg.bwd_stages)]
shared = {}
for fn, constexprs, stages in jobs:
    signature = {name: "constexpr" if name in constexprs else pointers.get(
        name, "fp32" if name in ("qk_scale", "sm_scale") else "i32") for name in fn.arg_names}
    compiled = triton.compile(ASTSource(fn=fn, signature=signature, constexprs=constexprs),
                              target=GPUTarget("cuda", 90, 32),
                              options=dict(num_warps=cfg.num_warps, num_stages=stages))
    shared[fn.__name__] = compiled.metadata.shared
print(json.dumps(shared))
"""


@pytest.mark.parametrize("dim", [64, 128])
def test_kernels_compile_for_sm90(dim):
    """Ahead-of-time build of every kernel for an H100 (sm_90, bf16, GPU tile config) with
    Triton's bundled ptxas, in a fresh process without the interpreter: catches code that the
    interpreter accepts but the compiler rejects, and shared memory beyond an SM's 228 KB."""
    env = dict(os.environ, TRITON_INTERPRET="0")
    run = subprocess.run([sys.executable, "-c", SM90_BUILD, str(dim)], env=env, capture_output=True,
                         text=True, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    if run.returncode != 0 and "ptxas" in run.stderr and "not found" in run.stderr.lower():
        pytest.skip("no ptxas for an sm_90 build")
    assert run.returncode == 0, run.stderr[-3000:]
    shared = json.loads(run.stdout.strip().splitlines()[-1])
    assert set(shared) == {"_fwd_kernel", "_bwd_dkdv_kernel", "_bwd_dq_kernel"}
    assert all(0 < size <= 228 * 1024 for size in shared.values()), shared


def test_custom_scale_and_oversized_max_seqlen():
    """A non-default softmax scale; a max_seqlen larger than needed launches programs that exit."""
    seed = fresh_seed()
    lengths = [45, 20]
    cu = cu_of(lengths)
    q, k, v, do = inputs(lengths, 2, 64, torch.float32)
    fn = lambda a, b, c: kernels.varlen_attention(a, b, c, cu, 300, scale=0.3)  # noqa: E731
    check_against_reference(fn, q, k, v, do, cu, seed, scale=0.3)


def test_logsumexp_is_saved_in_fp32_base2():
    fresh_seed()
    lengths = [30, 1, 41]
    cu = cu_of(lengths)
    q, k, v, _ = inputs(lengths, 2, 64, torch.float32)
    scale = 64 ** -0.5
    _, lse = kernels.forward(q, k, v, cu, max(lengths), scale, kernels.default_config(64))
    assert lse.dtype == torch.float32 and lse.shape == (2, sum(lengths))
    for start, end in zip(cu[:-1].tolist(), cu[1:].tolist()):
        s = torch.einsum("thd,shd->hts", q[start:end].double(), k[start:end].double()) * scale
        expected = torch.logsumexp(s, dim=-1) * kernels.LOG2E
        torch.testing.assert_close(lse[:, start:end].double(), expected, rtol=0, atol=1e-5)


def test_autograd_through_packed_qkv_views(monkeypatch):
    """The packed-backbone pattern: q, k, v are strided views of one [T, 3, H, D] projection; the
    public dispatcher (forced to Triton) must route gradients of a random loss back into it."""
    monkeypatch.setenv("SPAR_FAST_BACKEND_VARLEN_ATTENTION", "triton")
    seed = fresh_seed()
    lengths = [23, 1, 64, 30]
    cu = cu_of(lengths)
    qkv = torch.randn(sum(lengths), 3, 2, 64, dtype=torch.float32, requires_grad=True)
    weight = torch.randn(sum(lengths), 2, 64)
    grads = []
    for backend in ("triton", "torch"):
        monkeypatch.setenv("SPAR_FAST_BACKEND_VARLEN_ATTENTION", backend)
        qkv.grad = None
        q, k, v = qkv.unbind(1)
        loss = (varlen_attention(q, k, v, cu, max(lengths)) * weight).sum()
        loss.backward()
        grads.append(qkv.grad.clone())
    # fp32 with exact (non-TF32) products on both sides: only summation order differs.
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-5, msg=f"seed {seed}")




def test_forced_triton_falls_back_for_wide_heads(monkeypatch):
    """Head dims above the tile configs' 128: the forced Triton backend declines with one
    warning and the reference runs."""
    monkeypatch.setenv("SPAR_FAST_BACKEND_VARLEN_ATTENTION", "triton")
    monkeypatch.setattr(_backend, "_warned", set())
    va_module = importlib.import_module("spar_fast.ops.varlen_attention")
    assert va_module.implementation(torch.randn(4, 1, 64)) == "triton"
    with pytest.warns(RuntimeWarning, match="head dim"):
        assert va_module.implementation(torch.randn(4, 1, 160)) == "torch"
    monkeypatch.setenv("TRITON_INTERPRET", "0")  # CPU tensors without the interpreter
    with pytest.raises(UserError, match="not available"):
        va_module.implementation(torch.randn(4, 1, 64))
