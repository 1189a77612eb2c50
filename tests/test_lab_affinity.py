"""LPOSS+ pixel affinity product: the explicit-matrix reference against a literal per-pixel loop,
and every matrix-free backend (C++, Triton through the interpreter on CPU) against the reference
on fresh random inputs. Triton cases need Triton (skipped without it); the C++ cases fail when
``_C`` lacks lab_affinity."""
import os
import pathlib
import subprocess
import sys

import pytest
import torch
from backends import backend_params

from spar_fast import _backend
from spar_fast.errors import UserError
from spar_fast.ops.lab_affinity import (
    lab_affinity,
    lab_affinity_degree,
    lab_affinity_matrix,
    lab_affinity_reference,
    offsets,
)


def _has_cpp() -> bool:
    return _backend.cpu_extension(torch.device("cpu"))


def _device(backend: str) -> torch.device:
    """Triton runs on the GPU when there is one, else on CPU tensors through its interpreter."""
    return torch.device("cuda" if backend == "triton" and torch.cuda.is_available() else "cpu")


BACKENDS = backend_params(
    pytest.param("cpp", marks=pytest.mark.skipif(not _has_cpp(), reason="spar_fast._C not built")),
    pytest.param("triton", marks=pytest.mark.skipif(not _backend.triton_available(), reason="no Triton")),
)


def _inputs(H, W, Q, dtype, spread=0.1, with_scale=True):
    """Lab-like values (already divided by (100, 128, 128)) in [0, spread)^3, a smooth ramp plus
    noise so neighbours are similar; x [H*W, Q] signed; scale [H*W] in (0.5, 1.5) or None."""
    ramp = torch.linspace(0, 1, H * W, dtype=dtype).reshape(H, W, 1)
    lab = spread * (0.7 * ramp + 0.3 * torch.rand(H, W, 3, dtype=dtype))
    x = torch.randn(H * W, Q, dtype=dtype)
    scale = (0.5 + torch.rand(H * W, dtype=dtype)) if with_scale else None
    return lab, x, scale


def _error_bound(lab, x, scale, radius, tau):
    """Elementwise bound on |fast - reference|: each weight exp(-d) (d = distance / tau) carries a
    relative error of about d ulp from the distance (the fused kernels divide by tau before the
    distance, the reference after) plus ~2 ulp from the exp (the C++ polynomial) and the two
    scale products; the sums over <= K = (2r+1)^2 - 1 neighbours run in a different order
    (<= K ulp). So |error| <= (d_max + K + 8) ulp * (|S W S| |x|), the product on magnitudes."""
    eps = torch.finfo(x.dtype).eps
    d_max = float((lab.max() - lab.min()) * 3 ** 0.5 / tau)
    magnitude = lab_affinity_reference(lab, x.abs(), None if scale is None else scale.abs(), radius, tau)
    return (d_max + len(offsets(radius)) + 8) * eps * magnitude + torch.finfo(x.dtype).tiny


def test_matrix_matches_literal_loop():
    H, W, radius, tau = 5, 7, 2, 0.05
    lab = torch.rand(H, W, 3, dtype=torch.float64) * 0.2
    dense = torch.zeros(H * W, H * W, dtype=torch.float64)
    for y in range(H):
        for x in range(W):
            for dy in range(-radius, radius + 1):
                for dx in range(-radius, radius + 1):
                    ny, nx = y + dy, x + dx
                    if (dy, dx) != (0, 0) and 0 <= ny < H and 0 <= nx < W:
                        d = (lab[y, x] - lab[ny, nx]).norm()
                        dense[y * W + x, ny * W + nx] = torch.exp(-d / tau)
    got = lab_affinity_matrix(lab, radius, tau).to_dense()
    torch.testing.assert_close(got, dense, rtol=1e-14, atol=0)
    assert torch.equal(got, got.t())  # symmetric: the same distance both ways


CASES = [  # H, W, Q, radius, tau, with_scale
    (17, 70, 19, 6, 0.01, True),     # W over one Triton block of 64, Cityscapes Q
    (9, 13, 37, 6, 0.01, False),     # Q over one Triton chunk of 32
    (1, 1, 3, 6, 0.01, True),        # one pixel: no neighbour, y = 0
    (1, 41, 2, 6, 0.01, True),       # one row (extreme aspect ratio), H < radius
    (23, 2, 1, 3, 0.05, True),       # W < radius, Q = 1
    (12, 11, 5, 1, 0.2, False),      # radius 1 (8 neighbours)
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("case", CASES)
def test_fast_matches_reference(backend, dtype, case, monkeypatch):
    H, W, Q, radius, tau, with_scale = case
    if backend == "triton" and dtype == torch.float64:
        pytest.skip("the Triton kernel runs float32 (float64 falls back)")
    monkeypatch.setenv("SPAR_FAST_BACKEND_LAB_AFFINITY", backend)
    lab, x, scale = _inputs(H, W, Q, dtype, with_scale=with_scale)
    dev = _device(backend)
    got = lab_affinity(lab.to(dev), x.to(dev), None if scale is None else scale.to(dev), radius, tau).cpu()
    ref = lab_affinity_reference(lab, x, scale, radius, tau)
    assert got.dtype == dtype and got.shape == (H * W, Q)
    bound = _error_bound(lab, x, scale, radius, tau)
    assert bool(((got - ref).abs() <= bound).all()), float(((got - ref).abs() / bound).max())


@pytest.mark.parametrize("backend", BACKENDS)
def test_far_colours_give_zero_weight(backend, monkeypatch):
    # distance / tau of 100 and more: exp underflows (fp32 denormal or 0 in the C++ kernel); the
    # result must stay finite and the isolated pixel's degree at most a denormal
    monkeypatch.setenv("SPAR_FAST_BACKEND_LAB_AFFINITY", backend)
    lab = torch.zeros(5, 6, 3)
    lab[2, 3] = 1.0
    deg = lab_affinity_degree(lab.to(_device(backend)), radius=6, tau=0.01).cpu()
    assert bool(torch.isfinite(deg).all()) and float(deg[2 * 6 + 3]) < 1e-37
    torch.testing.assert_close(deg, lab_affinity_degree(lab, 6, 0.01, fused=False), rtol=1e-6, atol=1e-37)


@pytest.mark.parametrize("backend", BACKENDS)
def test_degree_counts_neighbours_of_a_flat_image(backend, monkeypatch):
    # equal colours: every weight is 1, so the degree is the number of neighbours inside the image
    monkeypatch.setenv("SPAR_FAST_BACKEND_LAB_AFFINITY", backend)
    H, W, r = 9, 15, 3
    deg = lab_affinity_degree(torch.full((H, W, 3), 0.4, device=_device(backend)), radius=r).cpu().reshape(H, W)
    rows = torch.tensor([min(y + r, H - 1) - max(y - r, 0) + 1 for y in range(H)])
    cols = torch.tensor([min(x + r, W - 1) - max(x - r, 0) + 1 for x in range(W)])
    assert torch.equal(deg, (rows[:, None] * cols[None, :] - 1).float())


def test_rejects_bad_arguments():
    lab, x, scale = _inputs(4, 5, 2, torch.float32)
    with pytest.raises(UserError, match="lab must be"):
        lab_affinity(lab[..., :2], x)
    with pytest.raises(UserError, match="x must be"):
        lab_affinity(lab, x[:-1])
    with pytest.raises(UserError, match="share dtype"):
        lab_affinity(lab, x.double())
    with pytest.raises(UserError, match="scale must be"):
        lab_affinity(lab, x, scale[:-1])
    with pytest.raises(UserError, match="radius"):
        lab_affinity(lab, x, radius=0)
    with pytest.raises(UserError, match="tau"):
        lab_affinity(lab, x, tau=0.0)


COMPILE_CHECK = """
import importlib.util, sys
from triton import compile
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
spec = importlib.util.spec_from_file_location("lab_affinity", sys.argv[1])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
signature = {"a_ptr": "*fp32", "x_ptr": "*fp32", "s_ptr": "*fp32", "y_ptr": "*fp32", "H": "i32", "W": "i32",
             "Q": "i32", "R": "i32", "HAS_SCALE": "constexpr", "BLOCK_X": "constexpr", "BLOCK_Q": "constexpr"}
for has_scale in (True, False):
    source = ASTSource(fn=module._lab_affinity_fwd_kernel, signature=signature, constexprs={
        "HAS_SCALE": has_scale, "BLOCK_X": module.BLOCK_X, "BLOCK_Q": module.MAX_BLOCK_Q})
    out = compile(source, target=GPUTarget("cuda", 90, 32), options={"num_warps": module.NUM_WARPS})
    assert out.asm["cubin"]
print("ok")
"""


@pytest.mark.skipif(not _backend.triton_available(), reason="no Triton")
def test_triton_kernel_compiles_for_hopper():
    """The Triton kernel compiles to an sm_90 cubin without a GPU (both HAS_SCALE variants, the
    launcher's block sizes), in a fresh process: Triton imported in interpreter mode cannot."""
    pytest.importorskip("triton.backends.nvidia")
    path = pathlib.Path(__file__).resolve().parent.parent / "kernels" / "lab_affinity.py"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    run = subprocess.run([sys.executable, "-c", COMPILE_CHECK, str(path)], env=env, capture_output=True,
                         text=True, timeout=300, check=False)
    assert run.returncode == 0 and "ok" in run.stdout, run.stderr[-2000:]


@pytest.mark.parametrize("backend", BACKENDS)
def test_compiled_equals_eager(backend, monkeypatch):
    """torch.compile runs through the dispatch and the compiled / Triton op (its fake gives the shape)."""
    monkeypatch.setenv("SPAR_FAST_BACKEND_LAB_AFFINITY", backend)
    lab, x, scale = _inputs(6, 9, 4, torch.float32)
    dev = _device(backend)
    lab, x, scale = lab.to(dev), x.to(dev), scale.to(dev)

    def normalized_step(x):  # one CG operator application, as in LPOSS+
        return x - 0.95 * lab_affinity(lab, x, scale, 2, 0.05)

    torch._dynamo.reset()
    compiled = torch.compile(normalized_step, backend="aot_eager")
    assert torch.equal(compiled(x), normalized_step(x))
