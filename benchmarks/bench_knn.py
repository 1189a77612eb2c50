"""kNN retrieval search of the probes (``spar_fast.probe.knn``): the chunked running top-k against
the one-matrix search it must equal.

Variants (one group per size):
* ``reference`` -- :func:`nearest_reference`: ``topk(queries @ bank.T)``, the whole ``[M, N]``
  similarity matrix at once (memory ``M x N`` floats).
* ``chunked`` -- :func:`nearest`: 4,096 queries against 65,536 bank rows at a time, merged into a
  running top-k (memory ``4096 x (65536 + k)`` floats whatever ``N``).
Sizes: val patches of a few 512² images against a bank of train patches, width of the world
backbone (64) and of SigLIP2 (768); k = 30.
"""
from __future__ import annotations

import pytest
import torch

from spar_fast.probe.knn import nearest, nearest_reference

from conftest import ON_GPU, pick, run_variant  # noqa: E402

K = 30
# (val patches M, bank patches N, width C)
SIZES = pick([(2048, 20000, 64)], [(8192, 100000, 64), (8192, 100000, 768)] if not ON_GPU
             else [(65536, 1000000, 768)])


@pytest.mark.parametrize("variant", ["reference", "chunked"])
@pytest.mark.parametrize("size", SIZES, ids=lambda s: "M{}_N{}_C{}".format(*s))
def test_knn(benchmark, device, size, variant):
    m, n, c = size
    gen = torch.Generator().manual_seed(0)
    bank = torch.nn.functional.normalize(torch.randn(n, c, generator=gen), dim=1).to(device)
    queries = torch.nn.functional.normalize(torch.randn(m, c, generator=gen), dim=1).to(device)
    if variant == "reference":
        fn = lambda: nearest_reference(queries, bank, K)  # noqa: E731
    else:
        fn = lambda: nearest(queries, bank, K)  # noqa: E731
    run_variant(benchmark, fn, device=device, group=f"knn M{m} N{n} C{c}", variant=variant,
                rounds=pick(2, 5), threads=torch.get_num_threads())
