"""Unfreeze strings -> trainable parameters (SPEC §4), for both backbone families."""
import pytest

from spar_fast.backbones import Backbone
from spar_fast.errors import UserError
from spar_fast.train.unfreeze import apply_unfreeze, resolve_unfreeze


@pytest.fixture(scope="module", params=["siglip2-tiny", "openclip-tiny"])
def bb(request):
    return Backbone.from_pretrained(request.param, weights="random")


def _names(bb):
    return [n for n, _ in bb.model.named_parameters()]


def test_default_is_last_two_blocks(bb):
    t = resolve_unfreeze("blk_-1,blk_-2", bb)
    n = bb.num_blocks
    expected = [x for x in _names(bb) if x.startswith((bb.block_param_prefix(n - 1), bb.block_param_prefix(n - 2)))]
    assert t.names == expected and len(expected) > 0
    assert t.first_block == n - 2
    assert resolve_unfreeze("blk_1,blk_2", bb).names == expected  # negative == positive index


def test_qkv_and_mlp_mapping(bb):
    prefix = bb.block_param_prefix(0)
    qkv = resolve_unfreeze("qkv_0", bb).names
    mlp = resolve_unfreeze("mlp_0", bb).names
    if bb.family == "siglip2":
        assert qkv == [prefix + "attn.qkv.weight", prefix + "attn.qkv.bias"]
        assert mlp == [prefix + s for s in ("mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight", "mlp.fc2.bias")]
    else:
        assert qkv == [prefix + "attn.in_proj_weight", prefix + "attn.in_proj_bias"]
        assert mlp == [prefix + s for s in ("mlp.c_fc.weight", "mlp.c_fc.bias", "mlp.c_proj.weight", "mlp.c_proj.bias")]
    assert resolve_unfreeze("mlp_-1", bb).first_block == bb.num_blocks - 1


def test_embeddings_head_and_all(bb):
    pos = resolve_unfreeze("posembed", bb)
    patch = resolve_unfreeze("patchembed", bb)
    assert pos.first_block == 0 and patch.first_block == 0
    if bb.family == "siglip2":
        assert pos.names == ["visual.trunk.pos_embed"]
        assert patch.names == ["visual.trunk.patch_embed.proj.weight", "visual.trunk.patch_embed.proj.bias"]
        kv = resolve_unfreeze("attn_pool_kv", bb)
        assert kv.names == ["visual.trunk.attn_pool.kv.weight", "visual.trunk.attn_pool.kv.bias"]
        assert kv.first_block == bb.num_blocks  # only the head needs gradients
    else:
        assert pos.names == ["visual.positional_embedding"]
        assert patch.names == ["visual.conv1.weight"]
        with pytest.raises(UserError, match="only for SigLIP2"):
            resolve_unfreeze("attn_pool_kv", bb)
    head = resolve_unfreeze("head", bb)
    assert head.first_block == bb.num_blocks  # only parameters after the last block
    if bb.family == "siglip2":
        assert head.names == [f"visual.trunk.{n}" for n in (
            "norm.weight", "norm.bias", "attn_pool.kv.weight", "attn_pool.kv.bias", "attn_pool.proj.weight",
            "attn_pool.proj.bias", "attn_pool.norm.weight", "attn_pool.norm.bias", "attn_pool.mlp.fc1.weight",
            "attn_pool.mlp.fc1.bias", "attn_pool.mlp.fc2.weight", "attn_pool.mlp.fc2.bias")]
    else:
        assert head.names == ["visual.proj", "visual.ln_post.weight", "visual.ln_post.bias"]
    both = resolve_unfreeze("blk_-1,head", bb)
    assert both.first_block == bb.num_blocks - 1 and set(head.names) < set(both.names)
    everything = resolve_unfreeze("all", bb)
    assert everything.names == [n for n in _names(bb) if n.startswith("visual.")]
    assert everything.first_block == 0


def test_dense_head_is_frozen_by_default(bb):
    names = resolve_unfreeze("blk_-1,blk_-2", bb).names
    head = ("attn_pool", ) if bb.family == "siglip2" else ("ln_post", "visual.proj")
    assert not [n for n in names if any(h in n for h in head)]


def test_apply_sets_requires_grad(bb):
    t = apply_unfreeze("blk_-1,posembed", bb)
    trainable = [n for n, p in bb.model.named_parameters() if p.requires_grad]
    assert trainable == t.names
    assert t.first_block == 0
    apply_unfreeze("blk_-1,blk_-2", bb)


@pytest.mark.parametrize("spec, message", [
    ("", "empty"), ("blk", "bad unfreeze token"), ("blk_x", "bad unfreeze token"),
    ("block_1", "bad unfreeze token"), ("blk_3", "out of range"), ("qkv_-4", "out of range"),
    ("blk_-1,foo", "bad unfreeze token 'foo'"),
])
def test_bad_strings_are_one_line_user_errors(bb, spec, message):
    with pytest.raises(UserError, match=message) as err:
        resolve_unfreeze(spec, bb)
    assert "\n" not in str(err.value)
    if "bad unfreeze" in message:
        assert "valid forms: blk_i" in str(err.value)
