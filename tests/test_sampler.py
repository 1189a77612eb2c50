"""Packing sampler: budget respected, every image once per epoch, seeded, rank split, resumable."""
import pytest
import torch

from spar_fast.errors import UserError
from spar_fast.train.sampler import PackingSampler, pack_chunks


def _tokens(n, seed):
    g = torch.Generator().manual_seed(seed)
    # odd sizes: 1-token images, typical 1024..8192, a few larger than any budget below
    return torch.randint(1, 9000, (n,), generator=g).tolist() + [1, 20000]


@pytest.mark.parametrize("budget", [None, 0, 4096, 8191, 30000])
def test_epoch_covers_every_image_once_within_budget(budget):
    tokens = _tokens(97, seed=int(torch.randint(0, 10**6, ())))
    sampler = PackingSampler(tokens, budget, seed=3)
    for epoch in range(2):
        plan = sampler.epoch_plan(epoch)
        seen = [i for step in plan for chunk in step for i in chunk]
        assert sorted(seen) == list(range(len(tokens)))
        for step in plan:
            for chunk in step:
                used = sum(tokens[i] for i in chunk)
                if not budget:
                    assert len(chunk) == 1
                else:
                    assert used <= budget or len(chunk) == 1  # oversized images go alone


def test_greedy_packing_is_tight():
    # a chunk closes only when the next image would overflow it
    tokens = [3, 4, 2, 5, 1, 1, 9]
    chunks = pack_chunks(range(len(tokens)), tokens, 7)
    assert chunks == [[0, 1], [2, 3], [4, 5], [6]]
    assert pack_chunks([6, 0], tokens, 5) == [[6], [0]]


def test_seeded_per_epoch_and_deterministic():
    tokens = _tokens(50, seed=1)
    a, b = PackingSampler(tokens, 5000, seed=7), PackingSampler(tokens, 5000, seed=7)
    assert a.epoch_plan(0) == b.epoch_plan(0)
    assert a.epoch_plan(0) != a.epoch_plan(1)
    assert a.epoch_plan(0) != PackingSampler(tokens, 5000, seed=8).epoch_plan(0)


@pytest.mark.parametrize("world,accumulate", [(2, 1), (3, 2), (1, 3)])
def test_rank_split_partitions_each_global_step(world, accumulate):
    tokens = _tokens(41, seed=2)
    sampler = PackingSampler(tokens, 6000, seed=0, world_size=world, accumulate=accumulate)
    for step in sampler.epoch_plan(0):
        parts = [sampler.rank_chunks(step, r) for r in range(world)]
        assert [c for p in parts for c in p] == step
        assert all(len(p) <= accumulate for p in parts)
    # the global plan depends only on world * accumulate
    same = PackingSampler(tokens, 6000, seed=0, world_size=1, accumulate=world * accumulate)
    assert same.epoch_plan(0) == sampler.epoch_plan(0)


def test_resume_position_continues_the_stream():
    tokens = _tokens(30, seed=4)
    sampler = PackingSampler(tokens, 3000, seed=1, world_size=2)
    full = list(sampler.rank_batches(0, rank=1))
    plan = sampler.epoch_plan(0)
    done = sum(len(sampler.rank_chunks(s, 1)) for s in plan[:5])
    assert list(sampler.rank_batches(0, rank=1, start_step=5)) == full[done:]


def test_bad_settings_are_user_errors():
    with pytest.raises(UserError):
        PackingSampler([], 100)
    with pytest.raises(UserError):
        PackingSampler([5], -1)
    with pytest.raises(UserError):
        PackingSampler([5], 10, accumulate=0)
