"""The world backbone's pretraining terms and the block-token read-out they use."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from spar_fast.backbones import Backbone
from spar_fast.errors import UserError
from spar_fast.world.pretrain import PretrainConfig, _scene_pool, aux_loss, norm_spread, off_span_energy


@pytest.fixture(scope="module")
def bb():
    return Backbone.from_pretrained("world-s16", weights="random:3").eval()


def test_block_tokens_are_the_forward_pass_before_the_head(bb):
    """All blocks' tokens through the tower's own head give the forward pass; 0 blocks: the embedding."""
    x = torch.randn(2, 3, 96, 160)
    tokens, grid = bb.block_tokens(x, bb.num_blocks)
    assert grid == (6, 10) and tokens.shape == (2, 60, tokens.shape[-1])
    assert torch.allclose(bb._tower.finish(tokens, grid), bb(x), atol=1e-6)
    first, _ = bb.block_tokens(x, 0)
    assert not torch.allclose(first, tokens)
    with pytest.raises(UserError, match="blocks must be in"):
        bb.block_tokens(x, bb.num_blocks + 1)


def test_block_tokens_drop_prefix_tokens():
    tiny = Backbone.from_pretrained("openclip-tiny", weights="random:0").eval()
    tokens, (h, w) = tiny.block_tokens(torch.randn(1, 3, 48, 64), 1)
    assert tokens.shape[1] == h * w == 12


def test_norm_spread_is_zero_only_at_unit_norm():
    f = F.normalize(torch.randn(2, 3, 4, 8), dim=-1)
    assert norm_spread(f).item() == pytest.approx(0.0, abs=1e-10)
    assert norm_spread(3 * f).item() == pytest.approx(torch.log(torch.tensor(3.0)).item() ** 2, rel=1e-5)


def test_off_span_energy_is_zero_inside_the_span():
    emb = torch.randn(5, 16)
    inside = torch.randn(2, 3, 3, 5) @ emb
    assert off_span_energy(inside, emb).item() == pytest.approx(0.0, abs=1e-5)
    assert off_span_energy(torch.randn(2, 3, 3, 16), emb).item() > 0.3


def test_aux_loss_trains_only_the_first_blocks(bb):
    """The auxiliary term reaches the embedding and the first ``aux_blocks`` blocks, nothing after."""
    cfg = PretrainConfig(pool_scenes=2, pool_side=256, aux_sides=(128, 256))
    images, labels = _scene_pool(cfg)
    classifier = torch.nn.Linear(bb.feature_dim, 5)
    bb.model.zero_grad(set_to_none=True)
    loss = aux_loss(bb, classifier, images, labels, cfg, torch.Generator().manual_seed(0))
    loss.backward()
    assert torch.isfinite(loss)
    grads = {n: p.grad is not None and bool(p.grad.abs().sum() > 0) for n, p in bb.model.named_parameters()}
    prefix = bb.block_param_prefix
    assert any(v for n, v in grads.items() if n.startswith(prefix(0)))
    assert any(v for n, v in grads.items() if n.startswith(prefix(cfg.aux_blocks - 1)))
    assert not any(v for n, v in grads.items() if n.startswith(prefix(cfg.aux_blocks)))
    assert classifier.weight.grad is not None
