"""spar_fast.ops.stitch: every available backend against the reference fold, plus input errors.

Error rule (as flash-attention's tests): all backends interpolate in fp32 (fp16/bf16 features
convert to fp32 exactly), so a backend passes when its max error against an fp64 evaluation of
the reference is at most twice the error of the fp32 reference itself, plus a floor of a few fp32
ulps of the largest value (the fp32 reference can be exact where another summation order is not).
Counts are small integers in fp32 and must match exactly.
"""
from __future__ import annotations

import pytest
import torch

from backends import backend_params
from spar_fast import _backend, ops
from spar_fast.errors import UserError
from spar_fast.ops.stitch import (stitch_finalize, stitch_finalize_reference, stitch_reference,
                                  upsample_stitch_, upsample_stitch_reference)

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
ULP_FLOOR = 8 * torch.finfo(torch.float32).eps  # a few fp32 roundings of the largest value


def _backends():
    ext = pytest.mark.skipif(_backend.extension() is None, reason="spar_fast._C not built")
    return backend_params("torch", pytest.param("cpp", marks=ext))


@pytest.fixture(params=_backends())
def backend(request, monkeypatch):
    """Forces both table ops of the stitch (the fold and its finalize) to one backend."""
    monkeypatch.setenv("SPAR_FAST_BACKEND_STITCH", request.param)
    monkeypatch.setenv("SPAR_FAST_BACKEND_STITCH_FINALIZE", request.param)
    return request.param


def _assert_close(out, ref32, ref64):
    err = (out.double() - ref64).abs().max().item()
    ref_err = (ref32.double() - ref64).abs().max().item()
    bound = 2 * ref_err + ULP_FLOOR * max(ref64.abs().max().item(), 1.0)
    assert err <= bound, f"max error {err:.3g} > bound {bound:.3g} (fp32 reference error {ref_err:.3g})"


def _origins(n, G, Hc, Wc, gen):
    rows = torch.randint(0, Hc - G + 1, (n,), generator=gen)
    cols = torch.randint(0, Wc - G + 1, (n,), generator=gen)
    return torch.stack([rows, cols], 1)


# (N, g, r, C, Hc, Wc): odd channel counts (not multiples of a vector width), g=1..5, r=1,2,4,
# irregular overlaps; kept tiny so every forced backend runs them in seconds.
CASES = [
    (1, 1, 1, 3, 1, 1),      # single 1x1 window filling a 1x1 canvas
    (6, 2, 4, 5, 13, 11),    # r=4, windows overlapping at random offsets
    (5, 5, 2, 19, 17, 23),   # g=5 odd, C=19
    (4, 3, 2, 67, 9, 10),    # C=67: wider than one 64-channel tile
    (3, 4, 1, 2, 4, 9),      # r=1 (plain copy), windows spanning the full height
]


def _check_case(case, dtype, device):
    N, g, r, C, Hc, Wc = case
    gen = torch.Generator().manual_seed(torch.seed() % 2**31)  # fresh inputs every run
    feats = torch.randn(N, g, g, C, generator=gen).to(dtype)
    origins = _origins(N, g * r, Hc, Wc, gen)
    # start from a non-empty canvas: the op accumulates
    canvas0 = torch.randn(Hc, Wc, C, generator=gen)
    count0 = torch.randint(0, 3, (Hc, Wc), generator=gen).float()
    canvas, count = canvas0.to(device, copy=True), count0.to(device, copy=True)
    upsample_stitch_(canvas, count, feats.to(device), origins.to(device), r)
    ref32, ref_count = canvas0.clone(), count0.clone()
    upsample_stitch_reference(ref32, ref_count, feats, origins, r)
    ref64 = canvas0.double()
    upsample_stitch_reference(ref64, count0.clone(), feats.double(), origins, r)
    assert torch.equal(count.cpu(), ref_count)
    _assert_close(canvas.cpu(), ref32, ref64)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[-1])
@pytest.mark.parametrize("case", CASES, ids=lambda c: "N{}_g{}_r{}_C{}_{}x{}".format(*c))
def test_upsample_stitch_matches_reference(backend, case, dtype):
    _check_case(case, dtype, "cpu")


GPU_CASES = CASES + [(64, 32, 2, 768, 100, 140)]  # SigLIP2 windows (g=32, C=768), one batch


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU")
@pytest.mark.parametrize("gpu_backend", backend_params("torch", "cuda"))
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[-1])
@pytest.mark.parametrize("case", GPU_CASES, ids=lambda c: "N{}_g{}_r{}_C{}_{}x{}".format(*c))
def test_gpu_upsample_stitch_matches_reference(gpu_backend, case, dtype, monkeypatch):
    if not ops.table()["stitch"].impls[gpu_backend].available(torch.device("cuda")):
        pytest.skip(f"{gpu_backend} not available on cuda")
    monkeypatch.setenv("SPAR_FAST_BACKEND_STITCH", gpu_backend)
    _check_case(case, dtype, "cuda")


def test_canvas_edges_and_duplicates(backend):
    """Windows in all four corners, and the same origin twice."""
    g, r, C, Hc, Wc = 3, 2, 7, 10, 13
    G = g * r
    origins = torch.tensor([[0, 0], [0, Wc - G], [Hc - G, 0], [Hc - G, Wc - G], [2, 3], [2, 3]])
    feats = torch.randn(len(origins), g, g, C, dtype=torch.float16)
    canvas, count = torch.zeros(Hc, Wc, C), torch.zeros(Hc, Wc)
    upsample_stitch_(canvas, count, feats, origins, r)
    ref32, ref_count = torch.zeros(Hc, Wc, C), torch.zeros(Hc, Wc)
    upsample_stitch_reference(ref32, ref_count, feats, origins, r)
    ref64 = torch.zeros(Hc, Wc, C, dtype=torch.float64)
    upsample_stitch_reference(ref64, torch.zeros(Hc, Wc), feats.double(), origins, r)
    assert torch.equal(count, ref_count)
    _assert_close(canvas, ref32, ref64)


def test_noncontiguous_feats_and_no_windows(backend):
    feats = torch.randn(2, 5, 2, 2).permute(0, 2, 3, 1)  # [2, 2, 2, 5], not contiguous
    origins = torch.tensor([[0, 1], [2, 0]], dtype=torch.int32)
    canvas, count = torch.zeros(6, 5, 5), torch.zeros(6, 5)
    upsample_stitch_(canvas, count, feats, origins, 2)
    ref, ref_count = torch.zeros(6, 5, 5), torch.zeros(6, 5)
    upsample_stitch_reference(ref, ref_count, feats, origins, 2)
    torch.testing.assert_close(canvas, ref, rtol=1e-6, atol=1e-6)  # two windows: fp32 roundings
    assert torch.equal(count, ref_count)
    before = canvas.clone()
    upsample_stitch_(canvas, count, feats[:0], origins[:0], 2)  # no windows: nothing changes
    assert torch.equal(canvas, before) and torch.equal(count, ref_count)


@pytest.mark.parametrize("shape", [(16, 20, 8, 10), (15, 9, 7, 4), (5, 6, 11, 13), (1, 1, 3, 2)],
                         ids=lambda s: "{}x{}_to_{}x{}".format(*s))
def test_finalize_matches_reference(backend, shape):
    Hc, Wc, h, w = shape
    C = 37
    canvas = torch.randn(Hc, Wc, C) * 5
    count = torch.randint(0, 4, (Hc, Wc)).float()  # zeros included: divided by max(count, 1)
    out = stitch_finalize(canvas, count, (h, w))
    ref32 = stitch_finalize_reference(canvas, count, (h, w))
    ref64 = stitch_finalize_reference(canvas.double(), count.double(), (h, w))
    assert out.shape == (h, w, C) and out.dtype == torch.float32
    _assert_close(out, ref32, ref64)


def _teacher_plan(L, window, stride):
    """SPEC §2 step 1 window origins along one axis (pixels)."""
    starts = list(range(0, L - window + 1, stride))
    if starts[-1] != L - window:
        starts.append(L - window)
    return starts


def test_end_to_end_teacher_plan(backend):
    """Window 32 px, patch 16, stride 24 -> r=2, 8-px cells; image 48x80 (SPEC §2)."""
    P, window, stride, r, C = 16, 32, 24, 2, 11
    H, W = 48, 80
    cell = P // r
    origins = torch.tensor([(y // cell, x // cell) for y in _teacher_plan(H, window, stride)
                            for x in _teacher_plan(W, window, stride)])
    feats = torch.randn(len(origins), window // P, window // P, C, dtype=torch.bfloat16)
    canvas, count = torch.zeros(H // cell, W // cell, C), torch.zeros(H // cell, W // cell)
    upsample_stitch_(canvas, count, feats, origins, r)
    out = stitch_finalize(canvas, count, (H // P, W // P))
    ref32 = stitch_reference(feats, origins, r, (H // cell, W // cell), (H // P, W // P))
    ref64 = stitch_reference(feats.double(), origins, r, (H // cell, W // cell), (H // P, W // P))
    assert count.min() >= 1  # the plan covers every cell
    _assert_close(out, ref32, ref64.double())


def test_host_origins_and_bbox(backend):
    """Device-free bounds: host origins are checked on the host; a given bbox is used as is."""
    g, r, C, Hc, Wc = 2, 2, 6, 12, 14
    origins = torch.tensor([[2, 3], [6, 8], [4, 4]])
    feats = torch.randn(3, g, g, C)
    canvas, count = torch.zeros(Hc, Wc, C), torch.zeros(Hc, Wc)
    upsample_stitch_(canvas, count, feats, origins, r, bbox=(2, 10, 3, 12))
    ref, ref_count = torch.zeros(Hc, Wc, C), torch.zeros(Hc, Wc)
    upsample_stitch_reference(ref, ref_count, feats, origins, r)
    torch.testing.assert_close(canvas, ref, rtol=1e-6, atol=1e-6)  # few windows: fp32 roundings
    assert torch.equal(count, ref_count)
    with pytest.raises(UserError, match="must fit"):  # host origins are checked even with a bbox
        upsample_stitch_(canvas, count, feats, origins + 5, r, bbox=(0, Hc, 0, Wc))


def test_cpp_is_deterministic(monkeypatch):
    if _backend.extension() is None:
        pytest.skip("spar_fast._C not built")
    monkeypatch.setenv("SPAR_FAST_BACKEND_STITCH", "cpp")
    feats = torch.randn(40, 4, 4, 33)
    origins = _origins(40, 8, 20, 24, torch.Generator().manual_seed(0))
    results = []
    for _ in range(2):
        canvas, count = torch.zeros(20, 24, 33), torch.zeros(20, 24)
        upsample_stitch_(canvas, count, feats, origins, 2)
        results.append(canvas)
    assert torch.equal(results[0], results[1])


def _args():
    return torch.zeros(8, 8, 4), torch.zeros(8, 8), torch.randn(2, 2, 2, 4), torch.tensor([[0, 0], [4, 4]])


@pytest.mark.parametrize("mutate, message", [
    (lambda a: {**a, "r": 0}, "positive int"),
    (lambda a: {**a, "r": 2.0}, "positive int"),
    (lambda a: {**a, "canvas": a["canvas"].double()}, "canvas must be"),
    (lambda a: {**a, "canvas": torch.zeros(8, 4, 8).transpose(1, 2)}, "non-contiguous"),
    (lambda a: {**a, "count": torch.zeros(8, 7)}, "count must be"),
    (lambda a: {**a, "feats": torch.randn(2, 2, 3, 4)}, "feats must be"),
    (lambda a: {**a, "feats": torch.randn(2, 2, 2, 5)}, "feats must be"),
    (lambda a: {**a, "feats": torch.randn(2, 2, 2, 4).double()}, "dtype"),
    (lambda a: {**a, "origins": a["origins"].float()}, "origins must be"),
    (lambda a: {**a, "origins": torch.tensor([[0, 0]])}, "origins must be"),
    (lambda a: {**a, "origins": torch.tensor([[0, 0], [5, 4]])}, "must fit"),
    (lambda a: {**a, "origins": torch.tensor([[0, -1], [4, 4]])}, "must fit"),
], ids=["r0", "r_float", "canvas_fp64", "canvas_noncontig", "count_shape", "feats_nonsquare",
        "feats_channels", "feats_fp64", "origins_float", "origins_rows", "out_of_bounds", "negative"])
def test_bad_inputs_raise_one_line_user_error(mutate, message):
    canvas, count, feats, origins = _args()
    kwargs = mutate({"canvas": canvas, "count": count, "feats": feats, "origins": origins, "r": 2})
    with pytest.raises(UserError, match=message) as info:
        upsample_stitch_(**kwargs)
    assert "\n" not in str(info.value)
    assert canvas.abs().sum() == 0 and count.abs().sum() == 0  # nothing was written


def test_finalize_bad_inputs():
    with pytest.raises(UserError, match="output size"):
        stitch_finalize(torch.zeros(4, 4, 2), torch.zeros(4, 4), (0, 2))
    with pytest.raises(UserError, match="fp32 canvas"):
        stitch_finalize(torch.zeros(4, 4, 2), torch.zeros(4, 3), (2, 2))
