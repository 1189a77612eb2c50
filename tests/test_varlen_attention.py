"""Packed attention: the Triton kernels (forward, dQ/dK/dV) against per-sequence references.

Kernels run through Triton's interpreter on CPU (tests/conftest.py sets TRITON_INTERPRET=1 when
no GPU is present); shapes stay small (T <= ~250, H = 2) so the file runs in well under a minute.

Accuracy rule (flash-attention's): with the float64 reference as truth, the kernel's max error
must be at most twice the max error of plain torch attention (``softmax(q k^T) v`` computed by
eager torch ops in the same dtype), plus a floor counted in units of the unavoidable rounding of
the exact result to that dtype (half an ulp of its largest value), see ``FLOOR_ROUNDINGS``.
Inputs are fresh random draws; the seed is in every failure message.
"""
from __future__ import annotations

import importlib
import json
import os
import random
import subprocess
import sys

import pytest
import torch

from spar_fast import _backend
from spar_fast.errors import UserError
from spar_fast.ops import varlen_attention, varlen_attention_reference

va_module = importlib.import_module("spar_fast.ops.varlen_attention")  # the module, not the function

pytest.importorskip("triton")
kernels = _backend.triton_kernels("varlen_attention")

LENGTH_CASES = {
    "mixed_with_1": [1, 37, 64, 70, 3],  # 1-token image, non-multiples of the 32-tile, exact multiple
    "single": [97],
    "many_short": [5, 1, 9, 2, 16, 1, 7, 3, 11, 4, 6, 1],
    "random": None,  # 2-5 lengths drawn in 1..90 per run
}


# fp16 / bf16: both errors are dominated by rounding P and the output to the dtype, so a few
# roundings suffice. fp32: both errors are a few ulps set only by summation order (the kernel's
# delta = rowsum(dO * O) vs torch's rowsum(P * dP), blockwise vs one-shot sums); measured excess
# over 2x torch reached ~8 roundings on dK/dQ, so 16.
FLOOR_ROUNDINGS = {torch.float32: 16, torch.float16: 4, torch.bfloat16: 4}


def _seed() -> int:
    seed = random.randrange(2**31)
    torch.manual_seed(seed)
    return seed


def _cu(lengths: list[int]) -> torch.Tensor:
    return torch.tensor([0] + torch.tensor(lengths).cumsum(0).tolist(), dtype=torch.int32)


def _lengths(case: str) -> list[int]:
    lengths = LENGTH_CASES[case]
    if lengths is None:
        lengths = torch.randint(1, 91, (int(torch.randint(2, 6, ())),)).tolist()
    return lengths


def _math_attention(q, k, v, cu, scale=None):
    """Plain eager attention per sequence in the inputs' dtype: the low-precision baseline."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    bounds = cu.tolist()
    outs = []
    for start, end in zip(bounds[:-1], bounds[1:]):
        qs, ks, vs = (t[start:end].transpose(0, 1) for t in (q, k, v))
        p = torch.softmax((qs @ ks.transpose(1, 2)) * scale, dim=-1)
        outs.append((p @ vs).transpose(0, 1))
    return torch.cat(outs)


def _out_and_grads(fn, q, k, v, do):
    q, k, v = (t.detach().clone().requires_grad_() for t in (q, k, v))
    o = fn(q, k, v)
    return (o.detach(),) + torch.autograd.grad(o, (q, k, v), do.to(o.dtype))


def _check_against_reference(fn, q, k, v, do, cu, seed, scale=None):
    """Compare ``fn`` (out, dq, dk, dv) to the float64 reference with the 2x-torch rule."""
    ours = _out_and_grads(fn, q, k, v, do)
    plain = _out_and_grads(lambda a, b, c: _math_attention(a, b, c, cu, scale), q, k, v, do)
    exact = _out_and_grads(lambda a, b, c: varlen_attention_reference(a, b, c, cu, scale=scale),
                           q.double(), k.double(), v.double(), do.double())
    for name, x, y, ref in zip(("out", "dq", "dk", "dv"), ours, plain, exact):
        assert x.dtype == q.dtype and x.shape == q.shape, name
        assert torch.isfinite(x).all(), f"{name}: non-finite values (seed {seed})"
        err = (x.double() - ref).abs().max().item()
        err_torch = (y.double() - ref).abs().max().item()
        rounding = (ref.to(q.dtype).double() - ref).abs().max().item()
        floor = FLOOR_ROUNDINGS[q.dtype] * rounding
        assert err <= 2 * err_torch + floor, (
            f"{name} {q.dtype}: error {err:.3g} > 2 x torch {err_torch:.3g} + floor {floor:.3g} "
            f"(seed {seed})")


def _inputs(lengths, heads, dim, dtype):
    total = sum(lengths)
    return [torch.randn(total, heads, dim, dtype=dtype) for _ in range(4)]


@pytest.mark.parametrize("case", list(LENGTH_CASES))
@pytest.mark.parametrize("dim", [64, 128])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_kernel_matches_reference(dtype, dim, case):
    seed = _seed()
    lengths = _lengths(case)
    cu = _cu(lengths)
    q, k, v, do = _inputs(lengths, 2, dim, dtype)
    fn = lambda a, b, c: kernels.varlen_attention(a, b, c, cu, max(lengths))  # noqa: E731
    _check_against_reference(fn, q, k, v, do, cu, seed)


@pytest.mark.parametrize("dim", [16, 32, 40, 80])
def test_other_head_dims(dim):
    """Smallest power of two, D=32, and non-powers of two masked inside the kernel."""
    seed = _seed()
    lengths = [33, 1, 50]
    cu = _cu(lengths)
    q, k, v, do = _inputs(lengths, 2, dim, torch.float16)
    fn = lambda a, b, c: kernels.varlen_attention(a, b, c, cu, max(lengths))  # noqa: E731
    _check_against_reference(fn, q, k, v, do, cu, seed)


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
    seed = _seed()
    lengths = [200, 1, 129, 40]
    cu = _cu(lengths)
    q, k, v, do = _inputs(lengths, 2, dim, torch.float16)
    cfg = _gpu_config(monkeypatch, dim)
    fn = lambda a, b, c: kernels.varlen_attention(a, b, c, cu, max(lengths), cfg=cfg)  # noqa: E731
    _check_against_reference(fn, q, k, v, do, cu, seed)


SM90_BUILD = """
import json, sys, triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from spar_fast import _backend
kernels = _backend.triton_kernels("varlen_attention")
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
    seed = _seed()
    lengths = [45, 20]
    cu = _cu(lengths)
    q, k, v, do = _inputs(lengths, 2, 64, torch.float32)
    fn = lambda a, b, c: kernels.varlen_attention(a, b, c, cu, 300, scale=0.3)  # noqa: E731
    _check_against_reference(fn, q, k, v, do, cu, seed, scale=0.3)


def test_logsumexp_is_saved_in_fp32_base2():
    _seed()
    lengths = [30, 1, 41]
    cu = _cu(lengths)
    q, k, v, _ = _inputs(lengths, 2, 64, torch.float32)
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
    seed = _seed()
    lengths = [23, 1, 64, 30]
    cu = _cu(lengths)
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


def test_dispatch_defaults_and_overrides(monkeypatch):
    q = torch.randn(10, 2, 64)
    monkeypatch.delenv("SPAR_FAST_BACKEND_VARLEN_ATTENTION", raising=False)
    monkeypatch.delenv("SPAR_FAST_BACKEND", raising=False)
    assert va_module.implementation(q) == "torch"  # CPU default: the reference
    monkeypatch.setenv("SPAR_FAST_BACKEND_VARLEN_ATTENTION", "triton")
    assert va_module.implementation(q) == "triton"
    va_module._noted.discard("triton-dim")
    with pytest.warns(RuntimeWarning, match="head dim"):
        assert va_module.implementation(torch.randn(4, 1, 160)) == "torch"
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="not available"):
        va_module.implementation(q)
    monkeypatch.setenv("SPAR_FAST_VARLEN_IMPL", "cudnn")
    with pytest.raises(UserError, match="SPAR_FAST_VARLEN_IMPL"):
        va_module._cuda_impl()
    monkeypatch.setenv("SPAR_FAST_VARLEN_IMPL", "torch_varlen")
    assert va_module._cuda_impl() == "torch_varlen"


def test_public_function_matches_reference_and_validates():
    _seed()
    lengths = [3, 1, 8]
    q, k, v, _ = _inputs(lengths, 2, 32, torch.float32)
    cu64 = _cu(lengths).long()
    out = varlen_attention(q, k, v, cu64)  # int64 cu_seqlens and no max_seqlen are accepted
    torch.testing.assert_close(out, varlen_attention_reference(q, k, v, cu64))
    with pytest.raises(ValueError, match="same|share"):
        varlen_attention(q, k[:5], v, cu64)
    with pytest.raises(ValueError, match="rise from 0"):
        varlen_attention(q, k, v, torch.tensor([0, 3, 11], dtype=torch.int32))
    with pytest.raises(ValueError, match="max_seqlen"):
        varlen_attention(q, k, v, cu64, max_seqlen=4)
    empty = torch.zeros(0, 2, 32)
    assert varlen_attention(empty, empty, empty, torch.zeros(2, dtype=torch.int32)).shape == (0, 2, 32)
