"""LPOSS's kNN graph against faiss (the library the LPOSS code uses), where faiss is installed.

LPOSS builds its patch graph with ``faiss.IndexFlatIP`` (exact inner-product search);
:func:`spar_fast.segmentation.propagation.knn` is a blocked ``topk`` instead. Both are exact, so
on fresh random unit features the similarities must agree to fp32 rounding and the neighbour
lists must be the same sets (ties aside: random fp32 features have none in practice).
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from spar_fast.segmentation import propagation

faiss = pytest.importorskip("faiss", reason="faiss-cpu not installed (pip install faiss-cpu)")


@pytest.mark.parametrize("n,c,k,block", [(3000, 64, 400, None), (777, 32, 50, 5000)])
def test_knn_equals_faiss_flat_ip(n, c, k, block, monkeypatch):
    if block is not None:  # several blocks of rows, as on a large image
        monkeypatch.setattr(propagation, "KNN_BLOCK_ELEMENTS", block)
    feats = F.normalize(torch.randn(n, c, generator=torch.Generator().manual_seed(n)), dim=-1)
    sims, index = propagation.knn(feats, k)
    flat = faiss.IndexFlatIP(c)
    flat.add(feats.numpy())
    f_sims, f_index = flat.search(feats.numpy(), k)
    torch.testing.assert_close(sims, torch.from_numpy(f_sims), rtol=0, atol=2e-6)
    ours = index.sort(dim=1).values
    theirs = torch.from_numpy(f_index).long().sort(dim=1).values
    assert (ours == theirs).float().mean() > 0.999  # equal sets up to fp32 near-ties at the k-th
