"""DINOv3.txt family on the tiny config (no dinov3 checkout needed; the parity test against the
dinov3 code is tests/test_dinov3txt_parity.py).

Checks: attributes; packed == one image at a time (batched forward) at odd sizes, both dense-token
choices; the stretch rule; RoPE tables per image inside a pack, computed once per distinct grid;
training-mode RoPE augmentation; packed gradients; unfreeze sets; official key names and
checkpoint formats (mismatches name the keys); text side; hub error; teacher, segmentation and a
few training steps through the trainer API.
Tolerance (fp32, 3 blocks, width 64): packing changes only the row grouping of matmuls and the
attention kernel, so outputs agree to a few fp32 ulps; we allow 2e-5 of the max magnitude, far
below the ~1e-2 that attention leaking across images or a wrong RoPE position produces.
"""
import os

import pytest
import torch
import torch.nn.functional as F

import spar_fast as sf
from spar_fast.backbones import Backbone, rope
from spar_fast.backbones.dinov3txt import convert_official
from spar_fast.commands.dinov3txt import main as convert_main
from spar_fast.backbones.dinov3txt_model import DinoTxt
from spar_fast.backbones.weights import save_weights
from spar_fast.errors import UserError
from spar_fast.teacher.reference import teacher_features_reference
from spar_fast.train.unfreeze import resolve_unfreeze

from feature_checks import assert_features_close


def close(a, b, rel=2e-5):
    assert_features_close(a, b, rel)


torch.set_num_threads(2)
NAME = "dinov3txt-tiny"
SIZES = [(50, 83), (16, 16), (96, 33), (64, 64), (17, 144)]


def perturbed(bb):
    """Random init zeroes biases and sets layer scales to 1e-5; perturb so every part matters."""
    torch.manual_seed(3)
    with torch.no_grad():
        for name, p in bb.model.named_parameters():
            p.add_(torch.randn_like(p) * (0.3 if name.endswith("gamma") else 0.05))
    return bb


@pytest.fixture(scope="module")
def bb():
    return perturbed(Backbone.from_pretrained(NAME, weights="random:1"))


def test_attributes(bb):
    assert (bb.family, bb.name, bb.patch_size, bb.window, bb.feature_dim, bb.num_blocks) == \
        ("dinov3txt", NAME, 16, 64, 64, 3)
    assert bb.mean == (0.485, 0.456, 0.406) and bb.std == (0.229, 0.224, 0.225)
    assert bb.grid(50, 83) == (4, 6) and bb.grid(64, 64) == (4, 4)
    assert bb.block_param_prefix(-1) == "visual_model.backbone.blocks.2."


@pytest.mark.parametrize("dense_tokens", ["backbone", "head"])
def test_packed_equals_each_alone(bb, dense_tokens):
    bb.model.dense_tokens = dense_tokens
    try:
        images = [torch.randn(3, *s) for s in SIZES]
        with torch.no_grad():
            for img, out in zip(images, bb.forward_packed(images)):
                assert out.shape == (*bb.grid(*img.shape[-2:]), 64)
                close(out, bb(img[None])[0])
            same = torch.randn(3, 3, 48, 80)
            for out, ref in zip(bb.forward_packed(list(same)), bb(same)):
                close(out, ref)
    finally:
        bb.model.dense_tokens = "backbone"


def test_head_option_changes_the_output(bb):
    img = torch.randn(1, 3, 32, 48)
    with torch.no_grad():
        plain = bb(img)
        bb.model.dense_tokens = "head"
        try:
            head = bb(img)
        finally:
            bb.model.dense_tokens = "backbone"
    assert (plain - head).abs().max() > 1e-2
    with pytest.raises(UserError, match="dense_tokens"):
        DinoTxt(bb.model.config, dense_tokens="cls")


def test_stretch_rule(bb):
    img = torch.randn(1, 3, 50, 83)
    stretched = F.interpolate(img, size=(64, 96), mode="bicubic", align_corners=False)
    assert torch.equal(bb._tower.stretch(img, 4, 6), stretched)
    exact = torch.randn(1, 3, 48, 64)
    assert bb._tower.stretch(exact, 3, 4) is exact  # multiples of 16: untouched
    with torch.no_grad():
        close(bb(img), bb(stretched))
        # not padding: a zero-padded image gives other features
        assert (bb(img) - bb(F.pad(img, (0, 13, 0, 14)))).abs().max() > 1e-3


def literal_rope(periods, h, w):
    """RoPE tables written out per patch (the formula of spar_fast.backbones.rope's docstring)."""
    d4 = periods.numel()
    sin = torch.zeros(h * w, 4 * d4)
    cos = torch.zeros(h * w, 4 * d4)
    for i in range(h):
        for j in range(w):
            y, x = 2 * (i + 0.5) / h - 1, 2 * (j + 0.5) / w - 1
            ang = torch.cat([2 * torch.pi * y / periods, 2 * torch.pi * x / periods]).repeat(2)
            sin[i * w + j], cos[i * w + j] = ang.sin(), ang.cos()
    return sin, cos


def test_rope_per_image_in_a_pack(monkeypatch):
    periods = rope.rope_periods(16, 100.0)
    grids, prefix = [(3, 5), (1, 1), (3, 5), (4, 2)], 5
    calls = []
    real = rope.rope_tables
    monkeypatch.setattr(rope, "rope_tables", lambda *a, **k: calls.append(a[1:3]) or real(*a, **k))
    packed = rope.sequence_rotation(periods, grids, prefix)
    assert sorted(calls) == sorted({(3, 5), (1, 1), (4, 2)})  # once per distinct grid
    start = 0
    for h, w in grids:
        alone = rope.sequence_rotation(periods, [(h, w)], prefix)
        n = prefix + h * w
        assert torch.equal(packed.sin[start:start + n], alone.sin)
        assert torch.equal(packed.cos[start:start + n], alone.cos)
        assert torch.equal(alone.sin[:prefix], torch.zeros(prefix, 1, 16))  # prefix: not rotated
        assert torch.equal(alone.cos[:prefix], torch.ones(prefix, 1, 16))
        sin, cos = literal_rope(periods, h, w)
        torch.testing.assert_close(alone.sin[prefix:, 0], sin, rtol=0, atol=1e-6)
        torch.testing.assert_close(alone.cos[prefix:, 0], cos, rtol=0, atol=1e-6)
        start += n
    x = torch.randn(start, 4, 16)
    y = packed(x)
    starts = [0]
    for h, w in grids[:-1]:
        starts.append(starts[-1] + prefix + h * w)
    for s in starts:
        assert torch.equal(y[s:s + prefix], x[s:s + prefix])


def test_training_mode_rope_augmentation(bb):
    img = torch.randn(1, 3, 48, 64)
    with torch.no_grad():
        bb.train()
        try:
            torch.manual_seed(0)
            a = bb(img)
            b = bb(img)
            torch.manual_seed(0)
            c = bb(img)
        finally:
            bb.eval()
        d, e = bb(img), bb(img)
    assert (a - b).abs().max() > 1e-4  # a new coordinate factor per block and forward
    assert torch.equal(a, c) and torch.equal(d, e)


def test_packed_gradients_equal_per_image_sum(bb):
    images = [torch.randn(3, *s) for s in SIZES[:3]]
    weights = [torch.randn(*bb.grid(*img.shape[-2:]), 64) for img in images]
    names = [n for n, _ in bb.model.named_parameters() if n.startswith(bb.block_param_prefix(-1))]
    params = dict(bb.model.named_parameters())
    bb.model.zero_grad(set_to_none=True)
    sum((o * w).sum() for o, w in zip(bb.forward_packed(images, grad_from_block=-1), weights)).backward()
    packed = {n: params[n].grad.clone() for n in names}
    assert params[bb.block_param_prefix(0) + "attn.qkv.weight"].grad is None  # frozen prefix: no graph
    bb.model.zero_grad(set_to_none=True)
    for img, w in zip(images, weights):
        (bb(img[None])[0] * w).sum().backward()
    for n in names:
        close(packed[n], params[n].grad)
    bb.model.zero_grad(set_to_none=True)


def test_unfreeze_sets(bb):
    p0 = bb.block_param_prefix(0)
    assert resolve_unfreeze("qkv_0", bb).names == [p0 + "attn.qkv.weight", p0 + "attn.qkv.bias"]
    assert resolve_unfreeze("mlp_0", bb).names == [p0 + s for s in ("mlp.fc1.weight", "mlp.fc1.bias",
                                                                     "mlp.fc2.weight", "mlp.fc2.bias")]
    default = resolve_unfreeze("blk_-1,blk_-2", bb)
    assert default.first_block == 1 and default.names
    assert all(n.startswith(("visual_model.backbone.blocks.1.", "visual_model.backbone.blocks.2."))
               for n in default.names)
    patch = resolve_unfreeze("patchembed", bb)
    assert patch.names == ["visual_model.backbone.patch_embed.proj.weight",
                           "visual_model.backbone.patch_embed.proj.bias"] and patch.first_block == 0
    everything = resolve_unfreeze("all", bb).names
    assert everything == [n for n, _ in bb.model.named_parameters() if n.startswith("visual_model.")]
    with pytest.raises(UserError, match="RoPE") as err:
        resolve_unfreeze("posembed", bb)
    assert "\n" not in str(err.value)
    with pytest.raises(UserError, match="only for SigLIP2"):
        resolve_unfreeze("attn_pool_kv", bb)


# key names of the official files, read from the dinov3 sources (DinoVisionTransformer with
# n_storage_tokens=4, mask_k_bias=True; VisionHead; TextTransformer; TextHead; DINOTxt)
OFFICIAL_KEYS = [
    "logit_scale", "visual_model.backbone.cls_token", "visual_model.backbone.storage_tokens",
    "visual_model.backbone.mask_token", "visual_model.backbone.patch_embed.proj.bias",
    "visual_model.backbone.rope_embed.periods", "visual_model.backbone.blocks.0.attn.qkv.bias_mask",
    "visual_model.backbone.blocks.0.ls1.gamma", "visual_model.backbone.blocks.0.mlp.fc2.weight",
    "visual_model.backbone.norm.weight", "visual_model.head.blocks.1.mlp.w3.weight",
    "visual_model.head.blocks.0.attn.qkv.weight", "visual_model.head.ln_final.bias",
    "text_model.backbone.token_embedding.weight", "text_model.backbone.positional_embedding",
    "text_model.backbone.blocks.1.attention.qkv.weight", "text_model.backbone.blocks.0.feed_forward.fc1.bias",
    "text_model.backbone.blocks.0.ffn_norm.weight", "text_model.backbone.ln_final.weight",
    "text_model.head.linear_projection.weight",
]


def official_files(bb, folder):
    state = bb.model.state_dict()
    prefix = "visual_model.backbone."
    backbone = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    rest = {k: v for k, v in state.items() if not k.startswith(prefix)}
    paths = os.path.join(folder, "backbone.pth"), os.path.join(folder, "head_and_text.pth")
    torch.save(backbone, paths[0])
    torch.save(rest, paths[1])
    return paths, backbone, rest


def test_official_key_names_and_files(bb, tmp_path):
    from spar_fast.backbones.dinov3txt import load_official

    state = bb.model.state_dict()
    assert not [k for k in OFFICIAL_KEYS if k not in state]
    assert "visual_model.head.linear_projection.weight" not in state  # identity projection
    (bpath, hpath), backbone, rest = official_files(bb, str(tmp_path))
    loaded = load_official(bpath, hpath, name=NAME)
    for k, v in loaded.state_dict().items():
        assert torch.equal(v, state[k]), k
    rest.pop("text_model.head.linear_projection.weight")
    rest["visual_model.head.extra.weight"] = torch.zeros(1)
    torch.save(rest, hpath)
    with pytest.raises(UserError, match=r"1 missing \(text_model.head.linear_projection.weight\); "
                                        r"1 unexpected \(visual_model.head.extra.weight\)") as err:
        load_official(bpath, hpath, name=NAME)
    assert "\n" not in str(err.value)


def test_checkpoint_formats(bb, tmp_path):
    img = torch.randn(3, 40, 56)
    with torch.no_grad():
        want = bb(img[None])[0]
    st = str(tmp_path / "w.safetensors")
    save_weights(bb.model, st)
    lightning = str(tmp_path / "spar.ckpt")
    torch.save({"state_dict": {f"segmentor.net.model.{k}": v for k, v in bb.model.state_dict().items()}},
               lightning)
    for path in (st, lightning):
        other = Backbone.from_pretrained(NAME, weights=path)
        with torch.no_grad():
            assert torch.equal(other(img[None])[0], want)
    (bpath, hpath), _, _ = official_files(bb, str(tmp_path))
    out = str(tmp_path / "combined.safetensors")
    convert_official(bpath, hpath, out, name=NAME)
    with torch.no_grad():
        assert torch.equal(Backbone.from_pretrained(NAME, weights=out)(img[None])[0], want)
    assert convert_main([bpath, str(tmp_path / "missing.pth"), out]) == 2
    bad = {k: v for k, v in bb.model.state_dict().items() if not k.startswith("visual_model.backbone.blocks.1.")}
    torch.save(bad, str(tmp_path / "bad.pth"))
    with pytest.raises(UserError, match="missing.*visual_model.backbone.blocks.1"):
        Backbone.from_pretrained(NAME, weights=str(tmp_path / "bad.pth"))


def test_hub_is_a_one_line_error():
    with pytest.raises(UserError, match="DINOv3 licence.*--weights") as err:
        Backbone.from_pretrained("dinov3txt-l16", weights="hub")
    assert "\n" not in str(err.value)


def test_text(bb, tmp_path):
    from open_clip.tokenizer import default_bpe

    texts = ["a photo of a cat.", "a bad photo of a dog.", "sky"]
    emb = bb.encode_text(texts)
    assert emb.shape == (3, 64) and emb.dtype == torch.float32 and not emb.requires_grad
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(3))
    tokens = bb.tokenize(texts)
    assert tokens.shape == (3, 77)
    with torch.no_grad():  # the patch half of the projection, normalized
        full = bb.model.text_model(tokens)
    torch.testing.assert_close(emb, F.normalize(full[:, 64:], dim=-1))
    bb.model.vocab_path = default_bpe()
    try:
        assert torch.equal(Backbone(bb.model).tokenize(texts), tokens)
        bb.model.vocab_path = str(tmp_path / "missing.txt.gz")
        with pytest.raises(UserError, match="vocabulary not found"):
            Backbone(bb.model).tokenize(texts)
    finally:
        bb.model.vocab_path = None


def test_teacher_and_segment(bb):
    image = torch.randn(3, 96, 112)
    close(sf.teacher_features(bb, image), teacher_features_reference(bb, image))
    labels = sf.segment(bb, torch.randn(3, 50, 83), ["sky, cloud", "road", "tree"])
    assert labels.shape == (50, 83) and labels.dtype == torch.int64 and int(labels.max()) <= 2


def test_train_steps(tmp_path):
    from test_trainer import make_tiny_store

    from spar_fast.train import train

    store, init = make_tiny_store(str(tmp_path), backbone=NAME, sizes=[(64, 64), (60, 90)])
    out = train(store, str(tmp_path / "run"), epochs=1, progress=False, device="cpu")
    trained = Backbone.from_pretrained(NAME, weights=out)
    start = Backbone.from_pretrained(NAME, weights=init)
    changed = [n for (n, a), b in zip(trained.model.named_parameters(), start.model.parameters())
               if not torch.equal(a, b)]
    assert changed and all(n.startswith(("visual_model.backbone.blocks.1.", "visual_model.backbone.blocks.2."))
                           for n in changed)


def test_packed_with_triton_varlen_kernel(bb, monkeypatch):
    """Packed forward through the Triton varlen kernel (interpreter on CPU, fp32) == batched."""
    pytest.importorskip("triton")
    monkeypatch.setenv("SPAR_FAST_BACKEND_VARLEN_ATTENTION", "triton")
    images = [torch.randn(3, 40, 56), torch.randn(3, 16, 16)]
    with torch.no_grad():
        for img, out in zip(images, bb.forward_packed(images)):
            close(out, bb(img[None])[0])


def test_autocast_bf16(bb):
    # bf16 keeps 8 mantissa bits (rel. rounding 4e-3 per op); through 3 blocks we allow 5e-2 of
    # the max magnitude. Checks the mixed path: fp32 prefix tokens / RoPE tables, bf16 matmuls.
    imgs = [torch.randn(3, 48, 80), torch.randn(3, 16, 16)]
    ref = [sf.dense_features(bb, img) for img in imgs]
    for out, r in zip(sf.dense_features(bb, imgs, precision="bf16"), ref):
        close(out.float(), r, 5e-2)
    close(sf.dense_features(bb, imgs[0], precision="bf16").float(), ref[0], 5e-2)
