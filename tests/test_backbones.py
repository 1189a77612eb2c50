"""Backbone construction, attributes, text side, and the batched dense forward vs the reference.

Reference: spar_fast.backbones.reference (the open_clip / timm modules' own calls, SPEC §1).
Tolerance (fp32): both sides run the same fp32 math in a different order (conv vs unfolded matmul,
nn.MultiheadAttention vs SDPA, fused vs split projections); each matmul reduces over <= 3072
terms, so rounding differs by ~sqrt(3072) * 6e-8 ~ 3e-6 relative per layer. We allow 2e-5 of the
output's max magnitude for the tiny models (3 blocks) and 1e-4 for the 12-block B/16 models;
an error in the forward (wrong padding, pos-embed mode, head) shows up at 1e-2 or more.
"""
import open_clip
import pytest
import torch

import spar_fast as sf
from spar_fast.backbones import registry
from spar_fast.backbones.reference import dense_reference
from spar_fast.errors import UserError

from feature_checks import assert_features_close

torch.set_num_threads(2)


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return {n: sf.Backbone.from_pretrained(n, weights="random") for n in ("siglip2-tiny", "openclip-tiny")}


@pytest.fixture(scope="module")
def b16():
    """Real B/16 vision towers, random init. SigLIP2's 256k-token text tower is swapped for a small
    one (the vision tower is untouched) to keep the set-up time of this file low."""
    torch.manual_seed(0)
    small_text = dict(context_length=16, vocab_size=1000, width=64, heads=2, layers=1,
                      no_causal_mask=True, proj_bias=True, pool_type="last")
    siglip = open_clip.create_model("ViT-B-16-SigLIP2-512", pretrained=None, text_cfg=small_text).eval()
    return {"siglip2-b16-512": sf.Backbone.from_open_clip(siglip, name="siglip2-b16-512"),
            "openclip-b16": sf.Backbone.from_pretrained("openclip-b16", weights="random")}


def test_tiny_attributes(tiny):
    s, o = tiny["siglip2-tiny"], tiny["openclip-tiny"]
    assert (s.family, s.name, s.patch_size, s.window, s.feature_dim, s.num_blocks) == \
        ("siglip2", "siglip2-tiny", 16, 64, 64, 3)
    assert (o.family, o.name, o.patch_size, o.window, o.feature_dim, o.num_blocks) == \
        ("openclip", "openclip-tiny", 16, 48, 32, 3)
    assert s.mean == s.std == (0.5, 0.5, 0.5)
    assert o.mean == pytest.approx((0.48145466, 0.4578275, 0.40821073))
    assert s.grid(50, 90) == (4, 6) and o.grid(50, 90) == (3, 5)
    assert s.grid(64, 64) == o.grid(64, 64) == (4, 4)


def test_block_param_prefix(tiny):
    for bb in tiny.values():
        names = [n for n, _ in bb.model.named_parameters()]
        for i in (0, 1, 2, -1, -3):
            prefix = bb.block_param_prefix(i)
            assert any(n.startswith(prefix) for n in names), prefix
        assert bb.block_param_prefix(-1) == bb.block_param_prefix(2)
        with pytest.raises(UserError, match="out of range"):
            bb.block_param_prefix(3)
        with pytest.raises(UserError, match="out of range"):
            bb.block_param_prefix(-4)


def test_unknown_name_lists_known():
    with pytest.raises(UserError, match="siglip2-b16-512.*openclip-tiny"):
        sf.Backbone.from_pretrained("no-such-model", weights="random")


def test_raw_open_clip_name_and_from_open_clip():
    registry.ensure_registered()
    bb = sf.Backbone.from_pretrained("SPAR-Tiny-OpenCLIP", weights="random")
    assert bb.family == "openclip" and bb.name == "openclip-tiny"
    model = open_clip.create_model("SPAR-Tiny-Sig2", pretrained=None)
    wrapped = sf.Backbone.from_open_clip(model, name="siglip2-tiny")
    assert wrapped.family == "siglip2" and wrapped.model is model
    assert wrapped.encode_text(["a photo of a dog."]).shape == (1, 64)


def test_unsupported_model_is_user_error():
    with pytest.raises(UserError, match="unsupported open_clip model"):
        sf.Backbone.from_open_clip(torch.nn.Linear(2, 2))


def test_pretrained_true_offline_message(monkeypatch):
    def no_network(*args, **kwargs):
        raise OSError("network unreachable")
    monkeypatch.setattr(open_clip.factory, "download_pretrained", no_network)
    with pytest.raises(UserError, match="--weights PATH.*--weights random") as info:
        sf.Backbone.from_pretrained("openclip-b16", weights="hub")
    assert "\n" not in str(info.value)
    with pytest.raises(UserError, match="no hub weights"):
        sf.Backbone.from_pretrained("siglip2-tiny", weights="hub")


def test_text(tiny):
    for bb in tiny.values():
        emb = bb.encode_text(["a photo of a cat.", "a bad photo of a dog.", "sky"])
        assert emb.shape == (3, bb.model.text_projection.shape[-1] if bb.family == "openclip" else 64)
        assert emb.dtype == torch.float32 and not emb.requires_grad
        torch.testing.assert_close(emb.norm(dim=-1), torch.ones(3))
        assert bb.tokenize(["a cat"]).shape == (1, 32)


def test_tokenizer_failure_is_one_line(monkeypatch):
    model = open_clip.create_model("SPAR-Tiny-Sig2", pretrained=None)
    bb = sf.Backbone.from_open_clip(model, name="siglip2-b16-512")
    bb.weights_id = "hub"  # real weights: an error, never the stand-in tokenizer

    def needs_hub(*args, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co'\nmore details")
    monkeypatch.setattr(open_clip, "get_tokenizer", needs_hub)
    with pytest.raises(UserError, match="tokenizer of 'ViT-B-16-SigLIP2-512'") as info:
        bb.encode_text(["a cat"])
    assert "\n" not in str(info.value)


# sizes: native, odd grids, non-multiples of 16 (SigLIP2 pads, OpenCLIP floors), one patch,
# extreme aspect ratio, and 16x144 (openclip-tiny: h*w == N = 9 with h != w, pos used as stored)
TINY_SIZES = [(64, 64), (48, 48), (48, 80), (50, 83), (16, 16), (17, 31), (16, 144), (112, 32)]


@pytest.mark.parametrize("name", ["siglip2-tiny", "openclip-tiny"])
def test_tiny_forward_matches_reference(tiny, name):
    bb = tiny[name]
    for size in TINY_SIZES:
        images = torch.randn(2, 3, *size)
        with torch.no_grad():
            out = bb(images)
            for img, o in zip(images, out):
                assert o.shape == (*bb.grid(*size), bb.feature_dim)
                assert_features_close(o, dense_reference(bb, img), 2e-5)


def test_dense_features_api(tiny):
    bb = tiny["siglip2-tiny"]
    img = torch.randn(3, 40, 56)
    out = sf.dense_features(bb, img)
    assert out.shape == (3, 4, 64) and out.dtype == torch.float32 and not out.requires_grad
    outs = sf.dense_features(bb, [img, torch.randn(3, 16, 33)])
    assert [o.shape for o in outs] == [(3, 4, 64), (1, 3, 64)]
    torch.testing.assert_close(outs[0], out, rtol=0, atol=2e-5 * out.abs().max().item())
    with pytest.raises(UserError, match=r"\[3, H, W\]"):
        sf.dense_features(bb, torch.randn(1, 3, 32, 32))
    with pytest.raises(UserError, match="smaller than one"):
        sf.dense_features(tiny["openclip-tiny"], torch.randn(3, 15, 40))


def test_b16_attributes(b16):
    s, o = b16["siglip2-b16-512"], b16["openclip-b16"]
    assert (s.family, s.patch_size, s.window, s.feature_dim, s.num_blocks) == ("siglip2", 16, 512, 768, 12)
    assert (o.family, o.patch_size, o.window, o.feature_dim, o.num_blocks) == ("openclip", 16, 224, 512, 12)
    assert s.block_param_prefix(3) == "visual.trunk.blocks.3."
    assert o.block_param_prefix(-1) == "visual.transformer.resblocks.11."
    assert s.grid(1024, 2048) == (64, 128) and o.grid(230, 250) == (14, 15)


@pytest.mark.parametrize("name,sizes", [
    ("siglip2-b16-512", [(40, 73)]),                # padded to 48x80: 3x5 grid
    ("openclip-b16", [(50, 83), (112, 448)]),       # floored to 3x5; 7x28: h*w == N, pos as stored
])
def test_b16_forward_matches_reference(b16, name, sizes):
    bb = b16[name]
    for size in sizes:
        img = torch.randn(3, *size)
        with torch.no_grad():
            assert_features_close(bb(img[None])[0], dense_reference(bb, img), 1e-4)


def test_b16_packed_matches_reference(b16):
    bb = b16["siglip2-b16-512"]
    images = [torch.randn(3, 32, 48), torch.randn(3, 16, 16)]
    with torch.no_grad():
        for out, img in zip(bb.forward_packed(images), images):
            assert_features_close(out, dense_reference(bb, img), 1e-4)


@pytest.mark.parametrize("name", ["siglip2-tiny", "openclip-tiny"])
def test_autocast_bf16(tiny, name):
    # bf16 keeps 8 mantissa bits (rel. rounding 4e-3 per op); through 3 blocks we allow 5e-2 of
    # the max magnitude. Checks the autocast path runs (mixed fp32 residual / bf16 branches).
    bb = tiny[name]
    imgs = [torch.randn(3, 48, 80), torch.randn(3, 16, 16)]
    ref = [sf.dense_features(bb, img) for img in imgs]
    for out, r in zip(sf.dense_features(bb, imgs, precision="bf16"), ref):
        assert_features_close(out.float(), r, 5e-2)
    assert_features_close(sf.dense_features(bb, imgs[0], precision="bf16").float(), ref[0], 5e-2)


def test_weights_vocabulary_and_weights_id(tmp_path, caplog):
    """hub | random[:SEED] | PATH, the older pretrained= (deprecated), and weights_id naming what
    was loaded."""
    import logging

    from spar_fast.backbones import save_weights

    a = sf.Backbone.from_pretrained("siglip2-tiny", weights="random:3")
    torch.manual_seed(123)  # the caller's random state plays no part
    b = sf.Backbone.from_pretrained("siglip2-tiny", weights="random:3")
    state_a, state_b = a.model.state_dict(), b.model.state_dict()
    assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)
    c = sf.Backbone.from_pretrained("siglip2-tiny", weights="random:4")
    assert not torch.equal(state_a["visual.trunk.blocks.0.attn.qkv.weight"],
                           c.model.state_dict()["visual.trunk.blocks.0.attn.qkv.weight"])
    assert (a.weights_id, c.weights_id) == ("random:3", "random:4")
    with pytest.warns(DeprecationWarning, match="use weights="):
        assert sf.Backbone.from_pretrained("siglip2-tiny", pretrained=False).weights_id == "random:0"
    assert sf.Backbone.from_open_clip(a.model).weights_id is None
    path = tmp_path / "w.safetensors"
    save_weights(a.model, path)
    with caplog.at_level(logging.INFO):
        f = sf.Backbone.from_pretrained("siglip2-tiny", weights=str(path))
    assert "initialized randomly" not in caplog.text  # open_clip's warning is silenced for a file
    stat = path.stat()
    assert f.weights_id == f"file:{path}:{stat.st_size}:{stat.st_mtime_ns}"
    assert all(torch.equal(f.model.state_dict()[k], v) for k, v in state_a.items())
    with pytest.raises(UserError, match="seed"):
        sf.Backbone.from_pretrained("siglip2-tiny", weights="random:x")


def test_random_weights_same_in_another_process():
    """random:SEED builds the same weights in a fresh process (no init file needed)."""
    import subprocess
    import sys

    code = ("import spar_fast as sf, torch; m = sf.Backbone.from_pretrained('openclip-tiny', weights='random:7')"
            ".model; print(float(sum(p.double().sum() for p in m.parameters())))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    m = sf.Backbone.from_pretrained("openclip-tiny", weights="random:7").model
    assert float(out) == float(sum(p.double().sum() for p in m.parameters()))
