"""``lposs_logits`` against LPOSS's evaluation recipe written out step by step (docs/LPOSS.md):
per-window features, a full-sort kNN on the concatenated unit features, ``max(0, cos)^gamma *
exp(-sigma d^p)`` edges, ``W + W^T``, diagonal removed, ``D^-1/2 W D^-1/2``, then one
``scipy.sparse.linalg.cg(rtol=1e-6, maxiter=10)`` per class (LPOSS's cupyx solver has the same
iterates), windows resized and averaged, and for LPOSS+ the per-offset pixel graph of the Lab
image. Ten CG steps from 0 are compared, not the converged solution, so a different start, step
count, stopping rule, graph or window layout fails."""
from itertools import product

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_segment import FakeBackbone

from spar_fast.segmentation import lposs
from spar_fast.segmentation.lposs import LpossSettings
from spar_fast.segmentation.propagation import rgb_to_lab

sparse = pytest.importorskip("scipy.sparse")
linalg = pytest.importorskip("scipy.sparse.linalg")


class PositionalFake(FakeBackbone):
    """FakeBackbone plus a fixed per-grid-position term, as a ViT's position embedding: the same
    image patch seen by two overlapping windows gets two different features (no kNN ties)."""

    def __init__(self, seed=0):
        super().__init__(seed)
        self.pos = torch.randn(16, 16, self.feature_dim, generator=torch.Generator().manual_seed(seed + 1))

    def forward(self, images):
        f = super().forward(images)
        return f + 0.3 * self.pos[:f.shape[1], :f.shape[2]]


def _normalized_system(W, alpha):
    """``I - alpha D^-1/2 W D^-1/2`` with W's diagonal removed and zero degrees set to 1."""
    W = sparse.csr_matrix(W - sparse.diags(W.diagonal()))
    S = np.asarray(W.sum(axis=1)).ravel()
    S[S == 0] = 1
    D = sparse.diags(1.0 / np.sqrt(S))
    return sparse.identity(W.shape[0]) - alpha * (D @ W @ D)


def _cg_per_class(L, Y):
    return np.stack([linalg.cg(L, Y[:, c], rtol=1e-6, maxiter=10)[0] for c in range(Y.shape[1])], 1)


def _mmseg_boxes(H, W, win, stride):
    """MMSeg's slide grid: origins i * stride, the last window moved back inside the image."""
    h_grids = max(H - win + stride - 1, 0) // stride + 1
    w_grids = max(W - win + stride - 1, 0) // stride + 1
    boxes = []
    for i, j in product(range(h_grids), range(w_grids)):
        y2, x2 = min(i * stride + win, H), min(j * stride + win, W)
        boxes.append((max(y2 - win, 0), max(x2 - win, 0), y2, x2))
    return boxes


def reference_lposs(bb, image, queries, refine, mode, s: LpossSettings, stride):
    _, H, W = image.shape
    boxes = [(0, 0, H, W)] if mode == "single" else _mmseg_boxes(H, W, bb.window, stride)
    feats = [bb(image[None, :, y1:y2, x1:x2])[0].double() for y1, x1, y2, x2 in boxes]
    P = bb.patch_size
    f = F.normalize(torch.cat([g.reshape(-1, g.shape[-1]) for g in feats]), dim=-1).numpy()
    Y = f @ F.normalize(queries.double(), dim=-1).numpy().T
    locs = np.array([(y1 + P // 2 + i * P, x1 + P // 2 + j * P) for (y1, x1, _, _), g in zip(boxes, feats)
                     for i in range(g.shape[0]) for j in range(g.shape[1])], dtype=np.float64)
    geometry = np.exp(-s.sigma * np.linalg.norm(locs[:, None] - locs[None], axis=-1) ** s.power)
    sims = f @ f.T
    N, k = len(f), s.k
    ks = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    w = np.take_along_axis(sims, ks, 1).clip(min=0) ** s.gamma * np.take_along_axis(geometry, ks, 1)
    Wm = sparse.csr_matrix((w.ravel(), (np.arange(N).repeat(k), ks.ravel())), shape=(N, N))
    X = _cg_per_class(_normalized_system(Wm + Wm.T, s.alpha), Y)
    if mode == "single" and refine == "lposs":
        return X.reshape(*feats[0].shape[:2], -1)
    Q = X.shape[1]
    canvas, count, start = torch.zeros(Q, H, W, dtype=torch.float64), torch.zeros(H, W, dtype=torch.float64), 0
    for (y1, x1, y2, x2), g in zip(boxes, feats):
        n = g.shape[0] * g.shape[1]
        win = torch.from_numpy(X[start:start + n]).reshape(g.shape[0], g.shape[1], Q).permute(2, 0, 1)[None]
        start += n
        canvas[:, y1:y2, x1:x2] += F.interpolate(win, size=(y2 - y1, x2 - x1), mode="bilinear", align_corners=False)[0]
        count[y1:y2, x1:x2] += 1
    full = (canvas / count).permute(1, 2, 0).reshape(H * W, Q).numpy()
    if refine == "lposs":
        return full.reshape(H, W, Q)
    rgb = image.double() * torch.tensor(bb.std, dtype=torch.float64)[:, None, None] + \
        torch.tensor(bb.mean, dtype=torch.float64)[:, None, None]
    lab = (rgb_to_lab(rgb) / torch.tensor([100.0, 128.0, 128.0], dtype=torch.float64)[:, None, None])
    lab = lab.permute(1, 2, 0).reshape(H * W, 3).numpy()
    ys, xs = np.divmod(np.arange(H * W), W)
    rows, cols = [], []
    for dy, dx in product(range(-s.radius, s.radius + 1), repeat=2):
        if (dy, dx) == (0, 0):
            continue
        ok = (ys + dy >= 0) & (ys + dy < H) & (xs + dx >= 0) & (xs + dx < W)
        rows.append(np.nonzero(ok)[0])
        cols.append((ys[ok] + dy) * W + xs[ok] + dx)
    rows, cols = np.concatenate(rows), np.concatenate(cols)
    data = np.exp(-np.sqrt(((lab[rows] - lab[cols]) ** 2).sum(-1)) / s.tau)
    Wp = sparse.csr_matrix((data, (rows, cols)), shape=(H * W, H * W))
    return _cg_per_class(_normalized_system(Wp, s.alpha), full).reshape(H, W, Q)


@pytest.mark.parametrize("mode,hw,k", [("single", (40, 56), 20), ("slide", (44, 60), 40)])
@pytest.mark.parametrize("refine", ["lposs", "lposs+"])
def test_lposs_equals_the_reference_recipe(mode, hw, k, refine):
    g = torch.Generator().manual_seed(3)
    bb = PositionalFake().eval()
    image = torch.rand(3, *hw, generator=g) * 2 - 1
    queries = F.normalize(torch.randn(4, bb.feature_dim, generator=g), dim=-1)
    s = LpossSettings(k=k, gamma=3.0, radius=2, tau=0.05)
    with torch.no_grad():
        got = lposs.lposs_logits(bb, image, queries, refine, mode, s, stride=12)
        want = torch.from_numpy(reference_lposs(bb, image, queries, refine, mode, s, stride=12))
    assert got.shape == want.shape
    scale = float(want.abs().max())
    torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-4 * scale)


def test_reference_recipe_catches_a_different_start(monkeypatch):
    """The comparison above is sensitive to the solver: CG from Y instead of 0 must fail it."""
    from spar_fast.segmentation import propagation

    cg = propagation.conjugate_gradient

    def from_y(apply, b, iters=10, tol=1e-6):
        return b + cg(apply, b - apply(b), iters, tol)
    monkeypatch.setattr(propagation, "conjugate_gradient", from_y)
    g = torch.Generator().manual_seed(3)
    bb = PositionalFake().eval()
    image = torch.rand(3, 40, 56, generator=g) * 2 - 1
    queries = F.normalize(torch.randn(4, bb.feature_dim, generator=g), dim=-1)
    s = LpossSettings(k=20, gamma=3.0)
    with torch.no_grad():
        got = lposs.lposs_logits(bb, image, queries, "lposs", "single", s)
        want = torch.from_numpy(reference_lposs(bb, image, queries, "lposs", "single", s, 12))
    assert not torch.allclose(got.double(), want, rtol=1e-4, atol=1e-4 * float(want.abs().max()))


def test_rgb_to_lab_equals_kornia():
    """LPOSS+ takes its Lab from kornia.color.rgb_to_lab; when kornia is installed, ours must equal
    it, thresholds included (dark colours near 0.04045 / 0.008856, black, white)."""
    kornia_color = pytest.importorskip("kornia.color")
    g = torch.Generator().manual_seed(5)
    rgb = torch.rand(3, 16, 16, generator=g, dtype=torch.float64)
    rgb[:, 0] = torch.linspace(0, 0.06, 16, dtype=torch.float64)  # both sides of the sRGB knee
    rgb[:, 1, :2] = torch.tensor([0.0, 1.0], dtype=torch.float64)[None]
    torch.testing.assert_close(rgb_to_lab(rgb), kornia_color.rgb_to_lab(rgb), rtol=1e-12, atol=1e-10)
