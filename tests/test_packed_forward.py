"""Packed forward (one token sequence for images of different sizes) on the tiny configs
(naflex-tiny at its default budget of 16 patches: every image resized by its input rule).

Checks: packed == each image alone (batched forward and the module reference); parameter
gradients of one packed forward+backward == the sum of per-image gradients; grad_from_block keeps
no graph for the frozen prefix and gives the same suffix gradients.
Tolerance (fp32, 3 blocks, width 64): packing changes only the matmul row grouping, so outputs
agree to a few ulps of fp32; we allow 2e-5 of the max magnitude (values and gradients), far
below the ~1e-2 a leak of attention across images produces.
"""
import pytest
import torch

import spar_fast as sf
from spar_fast.backbones.reference import dense_reference

torch.set_num_threads(2)
NAMES = ["siglip2-tiny", "openclip-tiny", "naflex-tiny"]


def close(a, b, rel=2e-5):
    assert a.shape == b.shape, (a.shape, b.shape)
    scale = max(b.abs().max().item(), 1e-12)
    assert (a - b).abs().max().item() <= rel * scale


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(1)
    return {n: sf.Backbone.from_pretrained(n, weights="random") for n in NAMES}


def _images():
    # different sizes: non-multiples of 16, a 1-patch image, a long thin one
    return [torch.randn(3, 50, 83), torch.randn(3, 16, 16), torch.randn(3, 96, 33), torch.randn(3, 64, 64)]


@pytest.mark.parametrize("name", NAMES)
def test_packed_equals_each_alone(models, name):
    bb = models[name]
    images = _images()
    with torch.no_grad():
        packed = bb.forward_packed(images)
        for img, out in zip(images, packed):
            assert out.shape == (*bb.grid(*img.shape[-2:]), bb.feature_dim)
            close(out, bb(img[None])[0])
            close(out, dense_reference(bb, img))


@pytest.mark.parametrize("name", NAMES)
def test_packed_same_size_equals_batched(models, name):
    bb = models[name]
    images = torch.randn(3, 3, 48, 80)
    with torch.no_grad():
        batched = bb(images)
        for out, ref in zip(bb.forward_packed(list(images)), batched):
            close(out, ref)


def _grads(bb, names):
    return {n: p.grad.clone() if p.grad is not None else None
            for n, p in bb.model.named_parameters() if n in names}


def _visual_params(bb):
    return [n for n, p in bb.model.named_parameters() if n.startswith("visual.")]


@pytest.mark.parametrize("name", NAMES)
def test_packed_gradients_equal_per_image_sum(models, name):
    bb = models[name]
    images = _images()
    weights = [torch.randn(*bb.grid(*img.shape[-2:]), bb.feature_dim) for img in images]
    names = _visual_params(bb)

    bb.model.zero_grad(set_to_none=True)
    sum((out * w).sum() for out, w in zip(bb.forward_packed(images), weights)).backward()
    packed = _grads(bb, names)

    bb.model.zero_grad(set_to_none=True)
    for img, w in zip(images, weights):
        (bb(img[None])[0] * w).sum().backward()
    single = _grads(bb, names)
    bb.model.zero_grad(set_to_none=True)

    unused = {"visual.trunk.attn_pool.latent", "visual.trunk.attn_pool.q.weight", "visual.trunk.attn_pool.q.bias"}
    for n in names:
        if n in unused:  # the dense head does not use the attention-pool query
            assert packed[n] is None and single[n] is None, n
        else:
            close(packed[n], single[n])


def _block_norm2(bb, i):
    timm = bb.family in ("siglip2", "naflex")
    blocks = bb.model.visual.trunk.blocks if timm else bb.model.visual.transformer.resblocks
    return blocks[i].norm2 if timm else blocks[i].ln_2


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("grad_from", [2, -1, 3])
def test_grad_from_block(models, name, grad_from):
    bb = models[name]
    images = _images()[:3]
    weights = [torch.randn(*bb.grid(*img.shape[-2:]), bb.feature_dim) for img in images]
    first = grad_from % (bb.num_blocks + 1) if grad_from >= 0 else grad_from + bb.num_blocks
    names = _visual_params(bb)

    seen = {}
    hooks = [_block_norm2(bb, i).register_forward_hook(
        lambda mod, inp, out, i=i: seen.__setitem__(i, out.requires_grad)) for i in range(bb.num_blocks)]
    try:
        bb.model.zero_grad(set_to_none=True)
        loss = sum((o * w).sum() for o, w in zip(bb.forward_packed(images, grad_from_block=grad_from), weights))
        loss.backward()
    finally:
        for h in hooks:
            h.remove()
    frozen = _grads(bb, names)
    assert seen == {i: i >= first for i in range(bb.num_blocks)}

    bb.model.zero_grad(set_to_none=True)
    sum((o * w).sum() for o, w in zip(bb.forward_packed(images), weights)).backward()
    full = _grads(bb, names)
    bb.model.zero_grad(set_to_none=True)

    head = ("visual.trunk.norm.", "visual.trunk.attn_pool.", "visual.ln_post.", "visual.proj")
    trained = tuple(bb.block_param_prefix(i) for i in range(first, bb.num_blocks)) + head
    for n in names:
        if n.startswith(trained):
            if full[n] is None:  # unused by the dense head (attention-pool query / latent)
                assert frozen[n] is None, n
            else:
                close(frozen[n], full[n])
        else:  # embedding and frozen blocks: no graph, no gradient
            assert frozen[n] is None, n


def test_packed_with_triton_varlen_kernel(models, monkeypatch):
    """The packed forward through the Triton varlen kernel (interpreter on CPU) == the reference.
    Triton's interpreter runs in fp32 like the reference; same 2e-5 bound."""
    pytest.importorskip("triton")
    monkeypatch.setenv("SPAR_FAST_BACKEND_VARLEN_ATTENTION", "triton")
    bb = models["siglip2-tiny"]
    images = [torch.randn(3, 40, 56), torch.randn(3, 16, 16)]
    with torch.no_grad():
        for img, out in zip(images, bb.forward_packed(images)):
            close(out, dense_reference(bb, img))
