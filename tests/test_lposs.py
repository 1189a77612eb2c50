"""LPOSS / LPOSS+: both propagation stages against a dense direct solve (torch.linalg.solve) of
independently built dense systems on small inputs, the 10-step CG error against its theoretical
bound, a check that a broken normalization is caught, and the refinement wired into segment."""
import math

import pytest
import torch
import torch.nn.functional as F
from test_segment import FakeBackbone

from spar_fast.errors import UserError
from spar_fast.segmentation import lposs, propagation, segment
from spar_fast.segmentation.lposs import LpossSettings, default_gamma
from spar_fast.segmentation.propagation import (
    conjugate_gradient,
    propagate_patches,
    propagate_pixels,
    rgb_to_lab,
)


def dense_patch_system(feats, centres, k, gamma, sigma, power, alpha):
    """``I - alpha D^-1/2 W D^-1/2`` [N, N] fp64, written from the definition with a full sort."""
    f = F.normalize(feats.double(), dim=-1)
    sims = f @ f.t()
    N = len(f)
    W = torch.zeros(N, N, dtype=torch.float64)
    for i in range(N):
        for j in sims[i].argsort(descending=True)[:k].tolist():
            d = (centres[i] - centres[j]).double().norm()
            W[i, j] = max(0.0, float(sims[i, j])) ** gamma * math.exp(-sigma * float(d) ** power)
    W = W + W.t()
    W.fill_diagonal_(0)
    deg = W.sum(1)
    deg[deg == 0] = 1
    dinv = deg.rsqrt()
    return torch.eye(N, dtype=torch.float64) - alpha * dinv[:, None] * W * dinv[None, :]


def dense_pixel_system(rgb, radius, tau, alpha):
    """The LPOSS+ system [H*W, H*W] fp64 from a per-pixel loop over the window."""
    lab = (rgb_to_lab(rgb.double()) / torch.tensor([100.0, 128.0, 128.0], dtype=torch.float64)[:, None, None])
    _, H, W = lab.shape
    A = torch.zeros(H * W, H * W, dtype=torch.float64)
    for y in range(H):
        for x in range(W):
            for ny in range(max(0, y - radius), min(H, y + radius + 1)):
                for nx in range(max(0, x - radius), min(W, x + radius + 1)):
                    if (ny, nx) != (y, x):
                        A[y * W + x, ny * W + nx] = math.exp(-float((lab[:, y, x] - lab[:, ny, nx]).norm()) / tau)
    deg = A.sum(1)
    deg[deg == 0] = 1
    dinv = deg.rsqrt()
    return torch.eye(H * W, dtype=torch.float64) - alpha * dinv[:, None] * A * dinv[None, :]


def cg_bound(L, iters):
    """Relative L-norm error bound of ``iters`` CG steps from 0: 2 ((sqrt k - 1)/(sqrt k + 1))^n."""
    ev = torch.linalg.eigvalsh(L)
    root = math.sqrt(float(ev.max() / ev.min()))
    return 2 * ((root - 1) / (root + 1)) ** iters


def l_norm_error(L, x, exact):
    """Per column ||x - exact||_L / ||exact||_L."""
    e = x.double() - exact
    return ((e * (L @ e)).sum(0) / (exact * (L @ exact)).sum(0)).sqrt()


def _patch_problem(N=48, C=6, Q=5, k=12):
    feats = torch.randn(N, C)
    centres = torch.randint(0, 200, (N, 2)).float()
    scores = torch.randn(N, Q) * 0.2
    return feats, centres, scores, k


def test_patch_stage_matches_dense_solve():
    feats, centres, scores, k = _patch_problem()
    gamma, sigma, power, alpha = 3.0, 0.01, 1.0, 0.95
    L = dense_patch_system(feats, centres, k, gamma, sigma, power, alpha)
    exact = torch.linalg.solve(L, scores.double())
    unit = F.normalize(feats, dim=-1)
    converged = propagate_patches(unit, centres, scores, k, gamma, sigma, power, alpha, iters=200)
    torch.testing.assert_close(converged.double(), exact, rtol=1e-4, atol=1e-5)  # fp32 CG, 200 steps
    ten = propagate_patches(unit, centres, scores, k, gamma, sigma, power, alpha, iters=10)
    err = l_norm_error(L, ten, exact)
    assert bool((err <= cg_bound(L, 10)).all()), (err, cg_bound(L, 10))


def test_dense_check_catches_wrong_normalization(monkeypatch):
    """Row normalization D^-1 W instead of D^-1/2 W D^-1/2 must fail the dense comparison."""
    feats, centres, scores, k = _patch_problem()
    L = dense_patch_system(feats, centres, k, 1.0, 0.01, 1.0, 0.95)
    exact = torch.linalg.solve(L, scores.double())
    sym = propagation.normalized_symmetric

    def row_normalized(rows, cols, weights, n):
        wn = sym(rows, cols, weights, n).to_dense()
        dense = torch.sparse_coo_tensor(torch.stack([torch.cat([rows, cols]), torch.cat([cols, rows])]),
                                        torch.cat([weights, weights]), (n, n)).to_dense()
        dense.fill_diagonal_(0)
        return (dense / dense.sum(1, keepdim=True)).to_sparse_csr() if wn.numel() else wn
    monkeypatch.setattr(propagation, "normalized_symmetric", row_normalized)
    broken = propagate_patches(F.normalize(feats, dim=-1), centres, scores, k, 1.0, 0.01, 1.0, 0.95, iters=200)
    assert not torch.allclose(broken.double(), exact, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("hw,radius", [((9, 11), 2), ((7, 15), 6), ((1, 13), 6)])
def test_pixel_stage_matches_dense_solve(fused, hw, radius):
    H, W = hw
    rgb = (torch.linspace(0, 1, H * W).reshape(1, H, W) + 0.15 * torch.rand(3, H, W)).clamp(0, 1)
    scores = torch.randn(H, W, 4) * 0.3
    tau, alpha = 0.05, 0.95  # tau above LPOSS's 0.01 so the small random image stays connected
    L = dense_pixel_system(rgb, radius, tau, alpha)
    exact = torch.linalg.solve(L, scores.double().reshape(H * W, -1))
    converged = propagate_pixels(rgb, scores, alpha, tau, radius, iters=300, fused=fused)
    torch.testing.assert_close(converged.double().reshape(H * W, -1), exact, rtol=1e-4, atol=1e-5)
    ten = propagate_pixels(rgb, scores, alpha, tau, radius, iters=10, fused=fused).reshape(H * W, -1)
    assert bool((l_norm_error(L, ten, exact) <= cg_bound(L, 10)).all())


def test_conjugate_gradient_stops_converged_and_zero_columns():
    A = torch.diag(torch.tensor([1.0, 2.0, 3.0]))
    b = torch.tensor([[1.0, 0.0], [2.0, 0.0], [3.0, 0.0]])
    x = conjugate_gradient(lambda v: A @ v, b, iters=10)
    torch.testing.assert_close(x, torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]]))


def test_rgb_to_lab_known_colours():
    rgb = torch.tensor([[1.0, 0.0, 1.0], [1.0, 0.0, 0.0], [1.0, 0.0, 0.0]]).reshape(3, 1, 3)
    lab = rgb_to_lab(rgb)[:, 0].t()
    want = torch.tensor([[100.0, 0.0, 0.0], [0.0, 0.0, 0.0], [53.24, 80.09, 67.20]])  # white, black, red
    torch.testing.assert_close(lab, want, atol=0.05, rtol=0)


def _image(H, W, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(3, H, W, generator=g) * 2 - 1


CLASSES = ["sky", "road", "tree, bush", "car"]


@pytest.mark.parametrize("mode", ["single", "slide"])
def test_alpha_zero_is_the_unrefined_segmentation(mode):
    # alpha = 0: (I - 0 W) X = Y, so one CG step returns Y and the labels are the plain ones
    bb, image = FakeBackbone(), _image(40, 56)
    plain = segment(bb, image, CLASSES, mode=mode, stride=16)
    for refine in ("lposs", "lposs+"):
        got = segment(bb, image, CLASSES, mode=mode, stride=16, refine=refine,
                      lposs=LpossSettings(alpha=0.0, k=20))
        assert torch.equal(got, plain) or refine == "lposs+"  # LPOSS+ resizes once more
        assert got.shape == (40, 56)


@pytest.mark.parametrize("mode", ["single", "slide"])
@pytest.mark.parametrize("refine", ["lposs", "lposs+"])
def test_refined_segment_runs(mode, refine):
    bb, image = FakeBackbone(), _image(37, 50, seed=1)
    labels = segment(bb, image, CLASSES, mode=mode, stride=16, refine=refine, out_hw=(30, 45),
                     lposs=LpossSettings(k=30, radius=2))
    assert labels.shape == (30, 45) and labels.dtype == torch.int64
    assert int(labels.min()) >= 0 and int(labels.max()) < len(CLASSES)


def test_settings_and_gamma_defaults():
    with pytest.raises(UserError, match="k must be"):
        LpossSettings(k=0)
    with pytest.raises(UserError, match="affinity"):
        LpossSettings(affinity="clip")
    with pytest.raises(UserError, match="refine"):
        segment(FakeBackbone(), _image(16, 16), CLASSES, refine="crf")
    assert default_gamma("single", True) == 10.0
    assert default_gamma("slide", True) == 1.0
    assert default_gamma("single", False) == 1.0
    assert lposs.REFINES == ("lposs", "lposs+")


def test_dino_values_are_the_last_blocks_value_projection():
    from spar_fast.runtime import Weights
    from spar_fast.segmentation.dino_affinity import (
        IMAGENET_MEAN,
        IMAGENET_STD,
        dino_features,
        load_dino,
    )

    bb, image, weights = FakeBackbone(), _image(40, 56), Weights.parse("random:1")
    feats, patch = dino_features(bb, image, [(0, 0, 40, 56)], weights)
    assert patch == 16 and feats[0].shape == (3, 4, 768)
    model = load_dino(weights, "cpu")
    block = model.blocks[-1]
    seen = {}
    hook = block.register_forward_pre_hook(lambda m, args: seen.__setitem__("x", args[0]))
    x = F.pad(image * 0.5 + 0.5, (0, 8, 0, 8))  # FakeBackbone mean = std = 0.5; pad to 48 x 64
    x = (x - torch.tensor(IMAGENET_MEAN)[:, None, None]) / torch.tensor(IMAGENET_STD)[:, None, None]
    with torch.no_grad():
        model(x[None])
    hook.remove()
    qkv = block.attn.qkv
    want = F.linear(block.norm1(seen["x"]), qkv.weight[1536:], qkv.bias[1536:])[0, 1:].reshape(3, 4, 768)
    torch.testing.assert_close(feats[0], want.detach(), rtol=1e-5, atol=1e-5)


def test_segment_with_dino_affinity():
    labels = segment(FakeBackbone(), _image(40, 56), CLASSES, refine="lposs", out_hw=(20, 28),
                     lposs=LpossSettings(affinity="dino", dino_weights="random", k=10))
    assert labels.shape == (20, 28)
    with pytest.raises(UserError, match="dino_weights"):
        LpossSettings(affinity="dino", dino_weights="/no/such/file.pth")


@pytest.mark.parametrize("mode", ["single", "slide"])
def test_given_affinity_features_make_the_graph(mode, monkeypatch):
    # a function giving the backbone's own features reproduces affinity="backbone"; its grids are
    # the graph's nodes; a wrong number of grids is one error
    bb, image = FakeBackbone(), _image(40, 56, seed=2)
    queries = F.normalize(torch.randn(4, FakeBackbone.feature_dim, generator=torch.Generator().manual_seed(3)), dim=-1)
    settings = LpossSettings(k=20)

    def own(boxes):
        return [bb(image[:, y:y + h, x:x + w][None])[0] for y, x, h, w in boxes], bb.patch_size
    want = lposs.lposs_logits(bb, image, queries, "lposs", mode, settings, stride=16)
    got = lposs.lposs_logits(bb, image, queries, "lposs", mode, settings, stride=16, affinity=own)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)

    seen = {}

    def capture(feats, centres, scores, *args):
        seen["feats"] = feats
        return scores
    monkeypatch.setattr(lposs, "propagate_patches", capture)
    codes = torch.eye(5)[torch.arange(5 * 7) % 5].reshape(5, 7, 5)  # a 40x56 image's 5x7 grid
    if mode == "single":
        lposs.lposs_logits(bb, image, queries, "lposs", mode, settings, affinity=lambda boxes: ([codes], 8))
        assert torch.equal(seen["feats"], codes.reshape(-1, 5))
    with pytest.raises(UserError, match="gave 0 feature grids"):
        lposs.lposs_logits(bb, image, queries, "lposs", mode, settings, stride=16, affinity=lambda boxes: ([], 8))


def test_slide_nodes_are_all_windows_patches_at_their_image_centres(monkeypatch):
    # FakeBackbone: window 32, patch 8 -> 4x4 patches per window; 40x56 at stride 16: windows at
    # rows (0, 8), columns (0, 16, 24): 6 windows, 96 nodes, centres origin + 4 + 8 * index
    seen = {}

    def capture(feats, centres, scores, *args):
        seen.update(feats=feats, centres=centres)
        return scores
    monkeypatch.setattr(lposs, "propagate_patches", capture)
    segment(FakeBackbone(), _image(40, 56), CLASSES, mode="slide", stride=16, refine="lposs")
    assert seen["feats"].shape == (96, FakeBackbone.feature_dim)
    origins = [(y, x) for y in (0, 8) for x in (0, 16, 24)]
    want = torch.tensor([[y + 4 + 8 * i, x + 4 + 8 * j] for y, x in origins for i in range(4) for j in range(4)])
    assert torch.equal(seen["centres"], want.float())


def test_distilled_flag_follows_the_file(tmp_path):
    """gamma 10 only for students: a trainer-written file (metadata ``global_step``) or a .ckpt,
    not a pretrained model saved to a local file."""
    from spar_fast.backbones import Backbone
    from spar_fast.backbones.weights import is_student_file, save_weights

    bb = Backbone.from_pretrained("siglip2-tiny", weights="random:1")
    assert not bb.distilled
    plain, student = tmp_path / "plain.safetensors", tmp_path / "student.safetensors"
    save_weights(bb.model, str(plain))
    save_weights(bb.model, str(student), metadata={"global_step": "7"})
    assert not is_student_file(str(plain)) and is_student_file(str(student))
    assert not Backbone.from_pretrained("siglip2-tiny", weights=str(plain)).distilled
    assert Backbone.from_pretrained("siglip2-tiny", weights=str(student)).distilled
    assert is_student_file(str(tmp_path / "x.ckpt"))
