"""Reference dense forward built from the open_clip / timm modules' own calls (SPEC §1).

The specification the fast forward is tested against: timm ``Block.forward`` and open_clip
``ResidualAttentionBlock.forward`` run the blocks, the patch embedding is the module's own conv,
and the position-embedding resizing follows SPEC §1 literally. One image at a time.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .backbone import Backbone


def siglip2_reference(bb: Backbone, image: torch.Tensor) -> torch.Tensor:
    """SigLIP2 dense features of ``image [3, H, W]`` -> ``[ceil(H/P), ceil(W/P), C]``."""
    trunk = bb.model.visual.trunk
    p = bb.patch_size
    x = image[None]
    h, w = math.ceil(x.shape[-2] / p), math.ceil(x.shape[-1] / p)
    x = F.pad(x, (0, w * p - x.shape[-1], 0, h * p - x.shape[-2]))  # zeros right/bottom
    x = trunk.patch_embed.proj(x).flatten(2).transpose(1, 2)  # [1, h*w, C]
    x = trunk.patch_embed.norm(x)
    gh, gw = trunk.patch_embed.grid_size
    pe = trunk.pos_embed.reshape(1, gh, gw, -1).permute(0, 3, 1, 2)
    pe = F.interpolate(pe, size=(h, w), mode="bicubic", align_corners=False, antialias=False)
    x = x + pe.permute(0, 2, 3, 1).reshape(1, h * w, -1)
    x = trunk.norm_pre(trunk.patch_drop(trunk.pos_drop(x)))
    x = trunk.norm(trunk.blocks(x))
    return _dense_head(trunk.attn_pool, x).reshape(h, w, -1)


def naflex_reference(bb: Backbone, image: torch.Tensor) -> torch.Tensor:
    """NaFlex dense features of ``image [3, H, W]`` -> ``[H'/P, W'/P, C]``: the size from timm's
    ``get_image_size_for_seq``, an antialiased bilinear resize, timm's ``forward_features`` (its
    own patchify, linear embedding and position-embedding resize), then the dense head."""
    from timm.data.naflex_transforms import get_image_size_for_seq

    trunk = bb.model.visual.trunk
    p = bb.patch_size
    budget = bb.max_patches or math.ceil(image.shape[-2] / p) * math.ceil(image.shape[-1] / p)
    _, (h, w) = get_image_size_for_seq(tuple(image.shape[-2:]), p, budget)
    x = F.interpolate(image[None], size=(h, w), mode="bilinear", align_corners=False, antialias=True)
    x = trunk.forward_features(x)
    return _dense_head(trunk.attn_pool, x).reshape(h // p, w // p, -1)


def _dense_head(pool, x: torch.Tensor) -> torch.Tensor:
    """The attention pool without its attention on ``x [1, n, C]`` (SPEC §1 SigLIP2 step 4)."""
    b, n, c = x.shape
    kv = pool.kv(x).reshape(b, n, 2, pool.num_heads, pool.head_dim)
    v = kv[:, :, 1].reshape(b, n, c)
    v = pool.proj_drop(pool.proj(v))
    return v + pool.mlp(pool.norm(v))


def openclip_reference(bb: Backbone, image: torch.Tensor) -> torch.Tensor:
    """OpenCLIP (MaskCLIP head) dense features of ``image [3, H, W]`` -> ``[H//P, W//P, C]``."""
    visual = bb.model.visual
    x = visual.conv1(image[None])  # stride P: trailing pixels dropped
    h, w = x.shape[-2:]
    x = x.flatten(2).transpose(1, 2)
    x = torch.cat([visual.class_embedding.expand(1, 1, -1), x], dim=1)
    pe = visual.positional_embedding
    n = pe.shape[0] - 1
    if h * w != n:
        side = math.sqrt(n)
        grid = pe[1:].reshape(1, int(side), int(side), -1).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, scale_factor=((h + 0.1) / side, (w + 0.1) / side), mode="bicubic",
                             align_corners=False)
        assert grid.shape[-2:] == (h, w)
        pe = torch.cat([pe[:1], grid.permute(0, 2, 3, 1).reshape(h * w, -1)])
    x = visual.ln_pre(visual.patch_dropout(x + pe))
    blocks = visual.transformer.resblocks
    if not visual.transformer.batch_first:
        x = x.transpose(0, 1)
    for blk in blocks[:-1]:
        x = blk(x)
    if not visual.transformer.batch_first:
        x = x.transpose(0, 1)
    last = blocks[-1]
    c = x.shape[-1]
    qkv = F.linear(last.ln_1(x), last.attn.in_proj_weight, last.attn.in_proj_bias)
    v = qkv[..., 2 * c:]
    x = x + last.ls_1(last.attn.out_proj(v))
    x = x + last.ls_2(last.mlp(last.ln_2(x)))
    x = visual.ln_post(x) @ visual.proj
    return x[0, 1:].reshape(h, w, -1)


def dense_reference(bb: Backbone, image: torch.Tensor) -> torch.Tensor:
    """Reference dense features ``[h, w, C]`` of one image for the SigLIP2, NaFlex or OpenCLIP family."""
    fn = {"siglip2": siglip2_reference, "naflex": naflex_reference}.get(bb.family, openclip_reference)
    return fn(bb, image)
