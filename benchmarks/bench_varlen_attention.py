"""Packed (variable-length) attention over a mixed-size batch: forward, backward, both.

The batch is one packed sequence of four images' patch grids at P = 16: 1024x1536, 768x1152,
512x768 and 1024x2048 px -> lengths 6144, 3456, 1536, 8192 (H = 12 heads, D = 64, bf16) on GPU.
On CPU the lengths shrink (by 16, or 64 under SPAR_FAST_BENCH_QUICK=1) and run in fp32.

Variants (one group per mode and size):
* ``reference`` -- ``varlen_attention_reference``: one SDPA call per image.
* ``padded`` -- one SDPA call on the batch padded to the longest image, keys masked.
* ``torch_varlen``, ``flash_attn``, ``triton`` -- the product's ``varlen_attention`` forced to that
  backend (``SPAR_FAST_BACKEND_VARLEN_ATTENTION``); CUDA (torch_varlen: torch >= 2.10;
  flash_attn: the flash-attn package). Their medians decide the automatic CUDA order.
``extra_info["tflops"]``: attention FLOPs (4 n^2 D H per image forward, 2.5x that backward) over
the median time (CUDA-event median on GPU).
"""
from __future__ import annotations

import pytest
import torch

from spar_fast.ops.varlen_attention import varlen_attention, varlen_attention_reference

from conftest import ON_GPU, pick, require_backend, run_variant  # noqa: E402

FULL_LENGTHS = [6144, 3456, 1536, 8192]
if ON_GPU:
    LENGTHS, HEADS, DIM, DTYPE = FULL_LENGTHS, 12, 64, torch.bfloat16
    VARIANTS = ["reference", "padded", "flash_attn", "torch_varlen", "triton"]
else:
    shrink = pick(64, 16)
    LENGTHS, HEADS, DIM, DTYPE = [n // shrink for n in FULL_LENGTHS], pick(2, 12), 64, torch.float32
    VARIANTS = ["reference", "padded"]
MODES = ["fwd", "bwd", "fwd+bwd"]
FLOP_FACTOR = {"fwd": 1.0, "bwd": 2.5, "fwd+bwd": 3.5}  # backward = 2.5 forwards (FA2 count)


def padded_attention(q, k, v, index, mask, batch, longest):
    """SDPA on ``[B, H, Lmax, D]`` built from packed ``[T, H, D]``; ``index`` [T] maps each token
    to its padded row, ``mask`` [B, 1, 1, Lmax] marks real keys. Returns packed ``[T, H, D]``."""
    def pad(t):
        rows = t.new_zeros(batch * longest, *t.shape[1:]).index_copy(0, index, t)
        return rows.view(batch, longest, *t.shape[1:]).transpose(1, 2)
    out = torch.nn.functional.scaled_dot_product_attention(pad(q), pad(k), pad(v), attn_mask=mask)
    return out.transpose(1, 2).reshape(batch * longest, *q.shape[1:])[index]


def make_attention(variant, cu_seqlens, monkeypatch):
    """``attn(q, k, v) -> o`` for ``variant`` over the packed batch described by ``cu_seqlens``."""
    lengths = LENGTHS
    longest = max(lengths)
    if variant == "reference":
        return lambda q, k, v: varlen_attention_reference(q, k, v, cu_seqlens, longest)
    if variant == "padded":
        device = cu_seqlens.device
        index = torch.cat([b * longest + torch.arange(n, device=device) for b, n in enumerate(lengths)])
        mask = (torch.arange(longest, device=device)[None, :]
                < torch.tensor(lengths, device=device)[:, None]).view(len(lengths), 1, 1, longest)
        return lambda q, k, v: padded_attention(q, k, v, index, mask, len(lengths), longest)
    require_backend("varlen_attention", variant, cu_seqlens.device)
    monkeypatch.setenv("SPAR_FAST_BACKEND_VARLEN_ATTENTION", variant)
    return lambda q, k, v: varlen_attention(q, k, v, cu_seqlens, longest)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("mode", MODES)
def test_varlen_attention(benchmark, device, monkeypatch, mode, variant):
    monkeypatch.delenv("SPAR_FAST_BACKEND_VARLEN_ATTENTION", raising=False)
    cu = torch.tensor([0] + torch.tensor(LENGTHS).cumsum(0).tolist(), dtype=torch.int32, device=device)
    total = sum(LENGTHS)
    q, k, v = (torch.randn(total, HEADS, DIM, device=device, dtype=DTYPE, requires_grad=mode != "fwd")
               for _ in range(3))
    do = torch.randn(total, HEADS, DIM, device=device, dtype=DTYPE)
    attn = make_attention(variant, cu, monkeypatch)
    if mode == "fwd":
        def fn():
            with torch.no_grad():
                return attn(q, k, v)
    elif mode == "bwd":
        out = attn(q, k, v)

        def fn():
            return torch.autograd.grad(out, (q, k, v), do, retain_graph=True)
    else:
        def fn():
            return torch.autograd.grad(attn(q, k, v), (q, k, v), do)
    flops = FLOP_FACTOR[mode] * sum(4 * n * n * DIM * HEADS for n in LENGTHS)
    run_variant(benchmark, fn, device=device, variant=variant,
                group=f"varlen_attention {mode} lengths {'/'.join(map(str, LENGTHS))} H{HEADS} D{DIM}",
                rounds=pick(2, 10) if variant == "reference" else pick(3, 20),
                tokens=total, dtype=str(DTYPE).removeprefix("torch."), threads=torch.get_num_threads())
    seconds = benchmark.extra_info["gpu_ms"] / 1e3 if "gpu_ms" in benchmark.extra_info \
        else benchmark.stats.stats.median
    benchmark.extra_info["tflops"] = round(flops / seconds / 1e12, 4)
