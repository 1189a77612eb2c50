"""NaFlex backbone (docs/NAFLEX.md): input rule vs timm's, dense forward vs the reference built from
timm's own ``forward_features``, pooled output vs timm's ``forward`` / ``forward_head`` (standard and
NaFlex masked mode), packed == batched, budget / window handling, offline hub error.

Tolerance (fp32), as in test_backbones.py: the same math in another order (unfolded matmul with
reordered columns vs timm's patchify + linear, SDPA vs timm's attention, packed varlen vs masked
padded batch); 2e-5 of the output's max magnitude for the 3-block tiny model, 1e-4 for the 12-block
B/16. A wrong patch order, position resize (mode, antialias) or input size shows at 1e-2 or more.
"""
import random

import pytest
import torch
import torch.nn.functional as F

import spar_fast as sf
from spar_fast.backbones.layers import sdpa_attend, varlen_attend
from spar_fast.backbones.naflex_input import budget_hw, resize_to_budget
from spar_fast.backbones.reference import dense_reference
from spar_fast.errors import UserError

from feature_checks import assert_features_close

torch.set_num_threads(2)


@pytest.fixture(scope="module")
def tiny():
    return sf.Backbone.from_pretrained("naflex-tiny", weights="random:3")


def test_budget_matches_timm_and_keeps_ratio():
    from timm.data.naflex_transforms import get_image_size_for_seq
    rng = random.Random(0)
    cases = [(50, 90, 16), (1, 1, 16), (16, 4000, 256), (4000, 16, 256), (1024, 2048, 256),
             (512, 512, 256), (333, 777, 1024), (7, 5, 3)]
    cases += [(rng.randint(1, 3000), rng.randint(1, 3000), rng.randint(1, 2000)) for _ in range(60)]
    for height, width, budget in cases:
        hw = budget_hw(height, width, 16, budget)
        assert hw == get_image_size_for_seq((height, width), 16, budget)[1], (height, width, budget)
        gh, gw = hw[0] // 16, hw[1] // 16
        assert hw[0] % 16 == 0 and hw[1] % 16 == 0 and gh * gw <= budget
        if gh > 1 and gw > 1:  # both sides are ceil(side * r / P): the ratio holds to one patch per side
            assert abs(hw[0] / hw[1] - height / width) <= (height / width) * (16 / hw[0] + 16 / hw[1]) * 1.01
    # the budget is used: one more patch row or column would exceed it
    h, w = budget_hw(480, 640, 16, 256)
    assert (h // 16) * (w // 16) <= 256 < min((h // 16 + 1) * (w // 16), (h // 16) * (w // 16 + 1))


def test_budget_errors():
    with pytest.raises(UserError, match="budget must be >= 1"):
        budget_hw(64, 64, 16, 0)
    with pytest.raises(UserError, match="within a 100x"):
        budget_hw(2_000_000, 16, 16, 1)  # would need a scale below 1e-5
    assert budget_hw(1, 1, 16, 1_000_000) == (112, 112)  # upscaling stops at 100x (ceil(100 / 16) patches)
    with pytest.raises(UserError, match="empty"):
        budget_hw(0, 5, 16, 4)


def test_resize_is_antialiased_bilinear_and_identity_at_size():
    x = torch.randn(2, 3, 64, 96)
    assert resize_to_budget(x, 16, 24) is x
    out = resize_to_budget(x, 16, 6)
    assert out.shape == (2, 3, 32, 48)
    assert torch.equal(out, F.interpolate(x, size=(32, 48), mode="bilinear", align_corners=False, antialias=True))


def test_attributes_budget_and_window(tiny):
    assert (tiny.family, tiny.name, tiny.patch_size, tiny.window, tiny.feature_dim, tiny.num_blocks) == \
        ("naflex", "naflex-tiny", 16, 64, 64, 3)
    assert tiny.max_patches == 16 and tiny.mean == tiny.std == (0.5, 0.5, 0.5)
    assert tiny.grid(50, 90) == (3, 5) and tiny.grid(64, 64) == (4, 4) and tiny.grid(16, 400) == (1, 16)
    try:
        tiny.set_max_patches(40)
        assert tiny.window == 96 and tiny.grid(96, 96) == (6, 6)
        tiny.set_max_patches(None)
        assert tiny.max_patches is None and tiny.grid(50, 90) == (4, 6) and tiny.window == 64
        with pytest.raises(UserError, match="max_patches must be"):
            tiny.set_max_patches(0)
    finally:
        tiny.set_max_patches(16)
    other = sf.Backbone.from_pretrained("siglip2-tiny", weights="random")
    assert other.max_patches is None
    with pytest.raises(UserError, match="NaFlex backbones only"):
        other.set_max_patches(64)


@pytest.mark.parametrize("size,budget", [((50, 90), 16), ((64, 64), 16), ((17, 300), 16), ((200, 120), 40),
                                         ((37, 53), None), ((8, 8), 16)])
def test_dense_matches_reference(tiny, size, budget):
    torch.manual_seed(sum(size))
    image = torch.randn(3, *size)
    try:
        tiny.set_max_patches(budget)
        with torch.no_grad():
            out = sf.dense_features(tiny, image)
            ref = dense_reference(tiny, image)
        assert_features_close(out, ref, 2e-5)
    finally:
        tiny.set_max_patches(16)


def _tokens(bb, images):
    """Final-normed tokens ``[B, n, C]`` of a same-size batch through spar_fast's own path."""
    tower = bb._tower
    x, _ = tower.embed(images)
    for i in range(bb.num_blocks):
        x = tower.run_block(i, x, sdpa_attend)
    return tower.trunk.norm(x)


def test_pooled_output_equals_timm_forward(tiny):
    """Our tokens, pooled by the attention pool, equal timm's whole forward (forward_features +
    forward_head) on the same resized input: embedding, blocks and norm are timm's."""
    trunk = tiny.model.visual.trunk
    for size in ((50, 90), (64, 64), (300, 20)):
        images = torch.randn(2, 3, *size)
        with torch.no_grad():
            pooled = trunk.attn_pool(_tokens(tiny, images))
            resized = F.interpolate(images, size=tiny._tower.input_hw(*size), mode="bilinear",
                                    align_corners=False, antialias=True)
            assert_features_close(pooled, trunk(resized), 2e-5)
            assert_features_close(pooled, trunk.forward_head(trunk.forward_features(resized)), 2e-5)


def test_packed_pooled_equals_timm_naflex_mode(tiny):
    """Packed tokens of images of several sizes, pooled per image, equal timm's NaFlex mode: a
    padded batch of channels-last patches with patch_coord / patch_valid (masked attention)."""
    trunk, tower, p = tiny.model.visual.trunk, tiny._tower, tiny.patch_size
    images = [torch.randn(3, 50, 90), torch.randn(3, 64, 64), torch.randn(3, 200, 30)]
    with torch.no_grad():
        x, packing = tower.embed_packed(images)
        attend = varlen_attend(packing.cu_seqlens, packing.max_seqlen)
        for i in range(tiny.num_blocks):
            x = tower.run_block(i, x, attend)
        x = trunk.norm(x)
        ours = torch.cat([trunk.attn_pool(t[None]) for t in x.split(packing.lengths)])
        n = max(packing.lengths)
        patches = torch.zeros(len(images), n, 3 * p * p)
        coord = torch.zeros(len(images), n, 2, dtype=torch.long)
        valid = torch.zeros(len(images), n, dtype=torch.bool)
        for b, img in enumerate(images):
            r = F.interpolate(img[None], size=tower.input_hw(*img.shape[-2:]), mode="bilinear",
                              align_corners=False, antialias=True)[0]
            h, w = r.shape[1] // p, r.shape[2] // p
            patches[b, :h * w] = r.reshape(3, h, p, w, p).permute(1, 3, 2, 4, 0).reshape(h * w, -1)
            ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
            coord[b, :h * w] = torch.stack([ys.flatten(), xs.flatten()], -1)
            valid[b, :h * w] = True
        theirs = trunk(patches, patch_coord=coord, patch_valid=valid)
    assert_features_close(ours, theirs, 2e-5)


def test_packed_equals_batched(tiny):
    images = [torch.randn(3, 50, 90), torch.randn(3, 16, 16), torch.randn(3, 120, 33)]
    with torch.no_grad():
        packed = sf.dense_features(tiny, images)
        for img, out in zip(images, packed):
            assert_features_close(out, sf.dense_features(tiny, img), 2e-5)


def test_unfreeze_parts(tiny):
    from spar_fast.train.unfreeze import resolve_unfreeze
    names = resolve_unfreeze("posembed,patchembed,attn_pool_kv,blk_-1", tiny).names
    assert "model.visual.trunk.embeds.pos_embed" in names or any(n.endswith("embeds.pos_embed") for n in names)
    assert any("embeds.proj." in n for n in names) and any("attn_pool.kv." in n for n in names)
    assert any(n.startswith(tiny.block_param_prefix(-1)) for n in names)


def test_hub_offline_is_one_line(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError, match=r"cannot fetch the 'siglip2-b16-naflex' hub weights "
                                        r"\(hf-hub:timm/ViT-B-16-SigLIP2-naflex\).*offline") as err:
        sf.Backbone.from_pretrained("siglip2-b16-naflex", weights="hub")
    assert "\n" not in str(err.value)


@pytest.mark.slow
def test_b16_random_init_matches_timm():
    """The registered ViT-B-16-SigLIP2-naflex (timm naflexvit_base_patch16_siglip + the SigLIP2 B/16
    text tower), random init: default budget 256, dense == reference, pooled == timm forward."""
    bb = sf.Backbone.from_pretrained("siglip2-b16-naflex", weights="random:1")
    trunk = bb.model.visual.trunk
    assert type(trunk).__name__ == "NaFlexVit" and bb.max_patches == 256 and bb.window == 256
    assert (bb.patch_size, bb.feature_dim, bb.num_blocks) == (16, 768, 12)
    assert trunk.embeds.pos_embed_interp_mode == "bilinear" and trunk.embeds.pos_embed_antialias
    image = torch.randn(3, 100, 150)
    with torch.no_grad():
        out = sf.dense_features(bb, image)
        assert out.shape == (13, 19, 768)  # 13 * 19 = 247 <= 256
        assert_features_close(out, dense_reference(bb, image), 1e-4)
        resized = F.interpolate(image[None], size=(208, 304), mode="bilinear", align_corners=False, antialias=True)
        assert_features_close(trunk.attn_pool(_tokens(bb, image[None])), trunk(resized), 1e-4)


def test_from_open_clip_and_raw_config_name():
    import open_clip
    from spar_fast.backbones import registry
    registry.ensure_registered()
    bb = sf.Backbone.from_open_clip(open_clip.create_model("SPAR-Tiny-NaFlex"), name="naflex-tiny")
    assert bb.family == "naflex" and bb.max_patches == 16
    raw = sf.Backbone.from_pretrained("SPAR-Tiny-NaFlex", weights="random", max_patches=None)
    assert raw.name == "naflex-tiny" and raw.max_patches is None and raw.grid(50, 90) == (4, 6)
    with pytest.raises(UserError, match="NaFlex backbones only"):
        sf.Backbone.from_pretrained("openclip-tiny", weights="random", max_patches=64)
