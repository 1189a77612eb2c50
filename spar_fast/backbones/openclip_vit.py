"""OpenCLIP VisionTransformer with the MaskCLIP dense head (SPEC §1).

Dense forward of an image ``[3, H, W]``: ``conv1`` (stride P; trailing pixels that do not fill a
patch are dropped), grid ``(H//P, W//P)``, class token prepended; if ``h*w`` differs from the
native patch count N, the patch part of the positional embedding is resized bicubically with
``scale_factor = ((h+0.1)/sqrt(N), (w+0.1)/sqrt(N))`` (the reference's MaskCLIP code; when
``h*w == N`` the embedding is used as stored even if ``h != w``), class position kept; ln_pre;
all blocks but the last as usual; last block ``x += out_proj(v)`` with ``v`` the value third of
``in_proj(ln_1(x))`` (no attention mixing), then ``x += mlp(ln_2(x))``; ln_post; ``@ proj``; drop
the class token.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import UserError
from .layers import BlockParts, block_forward, identity, residual_add
from .packing import Packing, patchify, unpack_grids


def is_openclip_vit(model: nn.Module) -> bool:
    from open_clip.transformer import VisionTransformer
    return isinstance(getattr(model, "visual", None), VisionTransformer)


class OpenCLIPTower:
    """Runs ``model.visual`` (an open_clip ``VisionTransformer``) with the MaskCLIP head."""

    family = "openclip"
    mean = (0.48145466, 0.4578275, 0.40821073)
    std = (0.26862954, 0.26130258, 0.27577711)

    def __init__(self, model: nn.Module):
        self.model = model
        visual = model.visual
        _validate(visual)
        self.patch_size = visual.conv1.kernel_size[0]
        self.window = visual.image_size[0]
        self.feature_dim = visual.proj.shape[1]
        self.num_blocks = len(visual.transformer.resblocks)
        self.native_patches = visual.positional_embedding.shape[0] - 1
        self.block_prefix = "visual.transformer.resblocks."

    @property
    def visual(self) -> nn.Module:
        return self.model.visual

    def grid(self, height: int, width: int) -> tuple[int, int]:
        return height // self.patch_size, width // self.patch_size

    def stochastic_modules(self) -> list[tuple[str, nn.Module]]:
        return [("patch_dropout", self.visual.patch_dropout)]

    def pos_embed(self, h: int, w: int) -> torch.Tensor:
        """Positional embedding for a ``(h, w)`` grid: ``[1 + h*w, C]`` fp32 (class position first)."""
        pe = self.visual.positional_embedding.float()
        n = self.native_patches
        if h * w == n:
            return pe
        side = math.sqrt(n)
        grid = pe[1:].reshape(1, int(side), int(side), -1).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, scale_factor=((h + 0.1) / side, (w + 0.1) / side), mode="bicubic",
                             align_corners=False)
        return torch.cat([pe[:1], grid.permute(0, 2, 3, 1).reshape(h * w, -1)])

    def _patch_tokens(self, patches: torch.Tensor) -> torch.Tensor:
        """``[..., 3*P*P] -> [..., C]``: ``conv1`` (no bias) as one matmul."""
        weight = self.visual.conv1.weight
        return F.linear(patches.to(weight.dtype), weight.flatten(1))

    def _crop(self, images: torch.Tensor, h: int, w: int) -> torch.Tensor:
        return images[..., : h * self.patch_size, : w * self.patch_size]

    def _after_pos(self, x: torch.Tensor) -> torch.Tensor:
        return self.visual.ln_pre(self.visual.patch_dropout(x))

    def embed(self, images: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """``[B, 3, H, W] -> ([B, 1 + h*w, C], (h, w))``, class token first."""
        h, w = self.grid(*images.shape[-2:])
        x = self._patch_tokens(patchify(self._crop(images, h, w), self.patch_size))
        cls = self.visual.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1)
        x = residual_add(x, self.pos_embed(h, w).to(x.dtype))
        return self._after_pos(x), (h, w)

    def embed_packed(self, images: list[torch.Tensor]) -> tuple[torch.Tensor, Packing]:
        """List of ``[3, Hi, Wi]`` -> packed ``[T, C]``; each segment is ``[class, patches...]``."""
        grids = [self.grid(*img.shape[-2:]) for img in images]
        patches = torch.cat([patchify(self._crop(img[None], h, w), self.patch_size)[0]
                             for img, (h, w) in zip(images, grids)])
        x = self._patch_tokens(patches)
        cls = self.visual.class_embedding.to(x.dtype)[None]
        parts = x.split([h * w for h, w in grids])
        x = torch.cat([t for part in parts for t in (cls, part)])
        resized = {g: self.pos_embed(*g) for g in dict.fromkeys(grids)}  # once per distinct grid
        pos = torch.cat([resized[g] for g in grids])
        x = residual_add(x, pos.to(x.dtype))
        return self._after_pos(x), Packing.build(grids, 1, x.device)

    def block_parts(self, i: int) -> BlockParts:
        b = self.visual.transformer.resblocks[i]
        a = b.attn
        return BlockParts(b.ln_1, a.in_proj_weight, a.in_proj_bias, a.num_heads, identity(), identity(),
                          identity(), a.out_proj, (b.ls_1,), b.ln_2, b.mlp, (b.ls_2,))

    def run_block(self, i: int, x: torch.Tensor, attend) -> torch.Tensor:
        if i != self.num_blocks - 1:
            return block_forward(x, self.block_parts(i), attend)
        b = self.visual.transformer.resblocks[i]
        dim = x.shape[-1]
        bias = b.attn.in_proj_bias[2 * dim:] if b.attn.in_proj_bias is not None else None
        v = F.linear(b.ln_1(x), b.attn.in_proj_weight[2 * dim:], bias)
        x = residual_add(x, b.ls_1(b.attn.out_proj(v)))
        return residual_add(x, b.ls_2(b.mlp(b.ln_2(x))))

    def head(self, x: torch.Tensor) -> torch.Tensor:
        """``ln_post`` and ``@ proj`` on patch tokens ``[..., C] -> [..., C_out]``."""
        return self.visual.ln_post(x) @ self.visual.proj

    def finish(self, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """Batched tokens ``[B, 1 + h*w, C]`` -> features ``[B, h, w, C_out]``."""
        return self.head(x[:, 1:]).unflatten(1, grid)

    def finish_packed(self, x: torch.Tensor, packing: Packing) -> list[torch.Tensor]:
        """Packed tokens ``[T, C]`` (class first in each segment) -> list of ``[h, w, C_out]``."""
        keep = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
        keep[packing.cu_seqlens[:-1].long()] = False
        return unpack_grids(self.head(x[keep]), packing.grids)


def _validate(visual: nn.Module) -> None:
    """Reject VisionTransformer variants this forward does not implement (one-line UserError)."""
    from open_clip.transformer import ResidualAttentionBlock

    problems = []
    if getattr(visual, "attn_pool", None) is not None:
        problems.append("attentional pooler")
    if visual.proj is None:
        problems.append("no output projection")
    conv = visual.conv1
    if conv.bias is not None or conv.kernel_size != conv.stride or conv.kernel_size[0] != conv.kernel_size[1]:
        problems.append("conv1 is not a square stride-P convolution without bias")
    n = visual.positional_embedding.shape[0] - 1
    if math.isqrt(n) ** 2 != n:
        problems.append("non-square native grid")
    for i, b in enumerate(visual.transformer.resblocks):
        a = getattr(b, "attn", None)
        if type(b) is not ResidualAttentionBlock or not isinstance(a, nn.MultiheadAttention):
            problems.append(f"block {i} is {type(b).__name__}, not ResidualAttentionBlock")
        elif a.bias_k is not None or a.add_zero_attn or a.dropout > 0 or not a._qkv_same_embed_dim:
            problems.append(f"block {i} attention uses bias_k/zero_attn/dropout/separate q,k,v weights")
    if problems:
        raise UserError(f"unsupported OpenCLIP vision tower: {'; '.join(problems[:3])}")
