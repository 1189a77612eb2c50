"""SigLIP2 (timm trunk inside open_clip): embedding, blocks and dense head (SPEC §1).

Dense forward of an image ``[3, H, W]``: zero-pad right/bottom to multiples of P, patch
embedding, position embedding bicubically resized (align_corners=False, no antialias) from the
native grid to ``(ceil(H/P), ceil(W/P))`` (always, identity at native size), pos_drop,
patch_drop, norm_pre, blocks, norm, then the attention-pool head without its attention:
``v = value half of attn_pool.kv(x)``, ``v = proj_drop(proj(v))``, ``out = v + mlp(norm(v))``.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import UserError
from .layers import BlockParts, block_forward, residual_add
from .packing import Packing, patchify, unpack_grids


def is_siglip2(model: nn.Module) -> bool:
    trunk = getattr(getattr(model, "visual", None), "trunk", None)
    return trunk is not None and getattr(trunk, "attn_pool", None) is not None and hasattr(trunk, "blocks")


class SigLIP2Tower:
    """Runs ``model.visual.trunk`` (a timm ``VisionTransformer`` with a 'map' attention pool)."""

    family = "siglip2"
    mean = (0.5, 0.5, 0.5)
    std = (0.5, 0.5, 0.5)

    def __init__(self, model: nn.Module):
        self.model = model
        trunk = model.visual.trunk
        _validate(trunk)
        self.patch_size = trunk.patch_embed.patch_size[0]
        self.native_grid = tuple(trunk.patch_embed.grid_size)
        self.window = trunk.patch_embed.img_size[0]
        self.feature_dim = trunk.attn_pool.proj.out_features
        self.num_blocks = len(trunk.blocks)
        self.block_prefix = "visual.trunk.blocks."

    @property
    def trunk(self) -> nn.Module:
        return self.model.visual.trunk

    def grid(self, height: int, width: int) -> tuple[int, int]:
        return math.ceil(height / self.patch_size), math.ceil(width / self.patch_size)

    def stochastic_modules(self) -> list[tuple[str, nn.Module]]:
        t = self.trunk
        return [("patch_drop", t.patch_drop)] + [
            (f"blocks.{i}.drop_path", m) for i, b in enumerate(t.blocks) for m in (b.drop_path1, b.drop_path2)]

    def pos_embed(self, h: int, w: int) -> torch.Tensor:
        """Position embedding resized to ``(h, w)``: ``[h*w, C]`` fp32."""
        pe = self.trunk.pos_embed
        gh, gw = self.native_grid
        grid = pe.float().reshape(1, gh, gw, -1).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, size=(h, w), mode="bicubic", align_corners=False, antialias=False)
        return grid.permute(0, 2, 3, 1).reshape(h * w, -1)

    def _patch_tokens(self, patches: torch.Tensor) -> torch.Tensor:
        """``[..., 3*P*P] -> [..., C]``: the patch-embedding conv as one matmul."""
        pe = self.trunk.patch_embed
        weight = pe.proj.weight
        x = F.linear(patches.to(weight.dtype), weight.flatten(1), pe.proj.bias)
        return pe.norm(x)

    def _pad(self, images: torch.Tensor, h: int, w: int) -> torch.Tensor:
        p = self.patch_size
        return F.pad(images, (0, w * p - images.shape[-1], 0, h * p - images.shape[-2]))

    def _after_pos(self, x: torch.Tensor) -> torch.Tensor:
        t = self.trunk
        return t.norm_pre(t.patch_drop(t.pos_drop(x)))

    def embed(self, images: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """``[B, 3, H, W] -> ([B, h*w, C], (h, w))``."""
        h, w = self.grid(*images.shape[-2:])
        x = self._patch_tokens(patchify(self._pad(images, h, w), self.patch_size))
        x = residual_add(x, self.pos_embed(h, w).to(x.dtype))
        return self._after_pos(x), (h, w)

    def embed_packed(self, images: list[torch.Tensor]) -> tuple[torch.Tensor, Packing]:
        """List of ``[3, Hi, Wi]`` -> packed tokens ``[T, C]`` (one matmul for all patches)."""
        grids = [self.grid(*img.shape[-2:]) for img in images]
        patches = torch.cat([patchify(self._pad(img[None], h, w), self.patch_size)[0]
                             for img, (h, w) in zip(images, grids)])
        x = self._patch_tokens(patches)
        resized = {g: self.pos_embed(*g) for g in dict.fromkeys(grids)}  # once per distinct grid
        pos = torch.cat([resized[g] for g in grids])
        x = residual_add(x, pos.to(x.dtype))
        return self._after_pos(x), Packing.build(grids, 0, x.device)

    def block_parts(self, i: int) -> BlockParts:
        b = self.trunk.blocks[i]
        a = b.attn
        return BlockParts(b.norm1, a.qkv.weight, a.qkv.bias, a.num_heads, a.q_norm, a.k_norm, a.norm,
                          a.proj, (a.proj_drop, b.ls1, b.drop_path1), b.norm2, b.mlp, (b.ls2, b.drop_path2))

    def run_block(self, i: int, x: torch.Tensor, attend) -> torch.Tensor:
        return block_forward(x, self.block_parts(i), attend)

    def head(self, x: torch.Tensor) -> torch.Tensor:
        """Final norm + dense attention-pool head on tokens ``[..., C] -> [..., C_out]``."""
        t = self.trunk
        x = t.norm(x)
        pool = t.attn_pool
        dim = pool.kv.out_features // 2
        bias = pool.kv.bias[dim:] if pool.kv.bias is not None else None
        v = pool.proj_drop(pool.proj(F.linear(x, pool.kv.weight[dim:], bias)))
        return residual_add(v, pool.mlp(pool.norm(v)))

    def finish(self, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """Batched tokens ``[B, h*w, C]`` -> features ``[B, h, w, C_out]``."""
        return self.head(x).unflatten(1, grid)

    def finish_packed(self, x: torch.Tensor, packing: Packing) -> list[torch.Tensor]:
        """Packed tokens ``[T, C]`` -> list of ``[h, w, C_out]``."""
        return unpack_grids(self.head(x), packing.grids)



def block_problems(blocks) -> list[str]:
    """Why timm ``blocks`` are not plain ``Block``/``Attention`` pairs this tower can run (no
    attention gate, no attention dropout): one string per unsupported block, empty when fine."""
    from timm.layers.attention import Attention
    from timm.models.vision_transformer import Block

    problems = []
    for i, b in enumerate(blocks):
        if type(b) is not Block or type(b.attn) is not Attention:
            problems.append(f"block {i} is {type(b).__name__}/{type(b.attn).__name__}, not timm Block/Attention")
        elif getattr(b.attn, "gate", None) is not None or b.attn.attn_drop.p > 0:
            problems.append(f"block {i} attention has a gate or attention dropout")
    return problems

def _validate(trunk: nn.Module) -> None:
    """Reject trunk variants this forward does not implement (one-line UserError)."""
    from timm.layers import AttentionPoolLatent

    problems = []
    if getattr(trunk, "num_prefix_tokens", 0) != 0:
        problems.append("class/register tokens")
    if getattr(trunk, "pos_embed", None) is None:
        problems.append("no absolute position embedding")
    if not isinstance(trunk.attn_pool, AttentionPoolLatent) or trunk.attn_pool.mlp is None:
        problems.append("attention pool is not a 'map' AttentionPoolLatent with an MLP")
    elif trunk.attn_pool.pos_embed is not None:
        problems.append("attention pool with its own position embedding")
    proj = trunk.patch_embed.proj
    if not isinstance(proj, nn.Conv2d) or proj.kernel_size != proj.stride or proj.kernel_size[0] != proj.kernel_size[1]:
        problems.append("patch embedding is not a square stride-P convolution")
    problems += block_problems(trunk.blocks)
    if problems:
        raise UserError(f"unsupported SigLIP2 trunk ({trunk.__class__.__name__}): {'; '.join(problems[:3])}")
