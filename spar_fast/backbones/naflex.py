"""SigLIP2 NaFlex (timm ``NaFlexVit`` trunk inside open_clip): input rule, embedding, dense head.

Dense forward of an image ``[3, H, W]`` (docs/NAFLEX.md):
1. Input rule (:mod:`spar_fast.backbones.naflex_input`): resize keeping the ratio to the most
   patches within ``max_patches`` (default: the position grid's count, 256 for B/16), sides
   multiples of P; grid ``(h, w) = (H'/P, W'/P)``. No padding.
2. Patch embedding: timm's linear projection of flattened ``(py, px, c)`` patches, run here as one
   matmul over ``(c, py, px)`` rows with the weight's columns reordered (the same products).
3. Position embedding ``[1, gh, gw, C]`` (16x16 for B/16) resized to ``(h, w)`` exactly as
   ``NaFlexEmbeds._apply_learned_pos_embed``: untouched at the native grid, else
   ``F.interpolate`` in fp32 with the module's mode / align_corners / antialias (bilinear, False,
   True for B/16), then cast to the tokens' dtype. Added; pos_drop, norm_pre.
4. Blocks (timm ``Block``), final norm, then the dense head of the attention pool as for SigLIP2
   (:class:`~spar_fast.backbones.siglip2.SigLIP2Tower.head`): ``v`` = value half of
   ``attn_pool.kv(x)``, ``v = proj_drop(proj(v))``, ``v + mlp(norm(v))``.
Packed: each image's grid from its own size; per-image attention (timm's NaFlex mode reaches the
same with ``patch_valid`` masks over a padded batch).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import UserError
from .layers import residual_add
from .naflex_input import budget_hw, image_budget, resize_to_budget
from .packing import Packing, patchify
from .siglip2 import SigLIP2Tower, block_problems


def is_naflex(model: nn.Module) -> bool:
    trunk = getattr(getattr(model, "visual", None), "trunk", None)
    return trunk is not None and hasattr(trunk, "embeds") and getattr(trunk, "attn_pool", None) is not None


class NaFlexTower(SigLIP2Tower):
    """Runs ``model.visual.trunk`` (a timm ``NaFlexVit`` with a 'map' attention pool).

    ``max_patches``: the patch budget of the input rule (None: each image's own patch count, i.e.
    its resolution kept); ``window``: ``P * floor(sqrt(max_patches))``, the square image whose
    grid fits the budget unresized (the sliding-window size); with ``max_patches`` None the
    native grid's side.
    """

    family = "naflex"

    def __init__(self, model: nn.Module):
        self.model = model
        trunk = model.visual.trunk
        _validate(trunk)
        self.patch_size = trunk.embeds.patch_size[0]
        self.native_grid = tuple(trunk.embeds.pos_embed.shape[1:3])
        self.feature_dim = trunk.attn_pool.proj.out_features
        self.num_blocks = len(trunk.blocks)
        self.block_prefix = "visual.trunk.blocks."
        self.set_max_patches(self.native_grid[0] * self.native_grid[1])

    def set_max_patches(self, max_patches: int | None) -> None:
        if max_patches is not None and (isinstance(max_patches, bool) or int(max_patches) != max_patches
                                        or max_patches < 1):
            raise UserError(f"max_patches must be a whole number >= 1 or None, got {max_patches!r}")
        self.max_patches = None if max_patches is None else int(max_patches)
        side = math.isqrt(self.max_patches) if self.max_patches is not None else self.native_grid[0]
        self.window = self.patch_size * side

    def input_hw(self, height: int, width: int) -> tuple[int, int]:
        """The resized input size ``(H', W')`` of an ``H x W`` image (the input rule)."""
        budget = image_budget(height, width, self.patch_size) if self.max_patches is None else self.max_patches
        return budget_hw(height, width, self.patch_size, budget)

    def grid(self, height: int, width: int) -> tuple[int, int]:
        h, w = self.input_hw(height, width)
        return h // self.patch_size, w // self.patch_size

    def stochastic_modules(self) -> list[tuple[str, nn.Module]]:
        t = self.trunk
        drop = [("patch_drop", t.patch_drop)] if t.patch_drop is not None else []
        return drop + [(f"blocks.{i}.drop_path", m) for i, b in enumerate(t.blocks)
                       for m in (b.drop_path1, b.drop_path2)]

    def pos_embed(self, h: int, w: int) -> torch.Tensor:
        """Position embedding resized to ``(h, w)``: ``[h*w, C]`` (timm's rule, step 3)."""
        e = self.trunk.embeds
        gh, gw = self.native_grid
        if (h, w) == (gh, gw):
            return e.pos_embed.reshape(gh * gw, -1)
        size = (max(h, w),) * 2 if e.pos_embed_ar_preserving else (h, w)
        grid = F.interpolate(e.pos_embed.permute(0, 3, 1, 2).float(), size=size, mode=e.pos_embed_interp_mode,
                             align_corners=e.pos_embed_align_corners, antialias=e.pos_embed_antialias)
        return grid[:, :, :h, :w].flatten(2).transpose(1, 2)[0]

    def _patch_tokens(self, patches: torch.Tensor) -> torch.Tensor:
        """``[..., 3*P*P]`` rows ordered ``(c, py, px)`` -> ``[..., C]`` (one matmul)."""
        e = self.trunk.embeds
        weight = e.proj.weight
        if e.is_linear and getattr(e, "channels_last", True):  # columns (py, px, c) -> (c, py, px)
            p = self.patch_size
            weight = weight.reshape(weight.shape[0], p, p, -1).permute(0, 3, 1, 2)
        x = F.linear(patches.to(weight.dtype), weight.reshape(weight.shape[0], -1), e.proj.bias)
        return e.norm(x)

    def _after_pos(self, x: torch.Tensor) -> torch.Tensor:
        t = self.trunk
        return t.norm_pre(t.embeds.pos_drop(x))

    def _resize(self, images: torch.Tensor) -> torch.Tensor:
        return resize_to_budget(images, self.patch_size, self.max_patches)

    def embed(self, images: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """``[B, 3, H, W] -> ([B, h*w, C], (h, w))`` after the input rule."""
        x = self._resize(images)
        h, w = x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size
        x = self._patch_tokens(patchify(x, self.patch_size))
        x = residual_add(x, self.pos_embed(h, w).to(x.dtype))
        return self._after_pos(x), (h, w)

    def embed_packed(self, images: list[torch.Tensor]) -> tuple[torch.Tensor, Packing]:
        """List of ``[3, Hi, Wi]`` -> packed tokens ``[T, C]`` (each image resized by the rule)."""
        resized = [self._resize(img[None]) for img in images]
        grids = [(x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size) for x in resized]
        x = self._patch_tokens(torch.cat([patchify(r, self.patch_size)[0] for r in resized]))
        tables = {g: self.pos_embed(*g) for g in dict.fromkeys(grids)}  # once per distinct grid
        x = residual_add(x, torch.cat([tables[g] for g in grids]).to(x.dtype))
        return self._after_pos(x), Packing.build(grids, 0, x.device)


def _validate(trunk: nn.Module) -> None:
    """Reject NaFlex variants this forward does not implement (one-line UserError)."""
    from timm.layers import AttentionPoolLatent

    e = trunk.embeds
    problems = []
    if getattr(trunk, "num_prefix_tokens", 0) != 0:
        problems.append("class/register tokens")
    if getattr(trunk, "rope", None) is not None:
        problems.append("rotary position embedding")
    if e.pos_embed_type != "learned" or e.pos_embed_use_grid_sample:
        problems.append(f"position embedding {e.pos_embed_type!r} (grid_sample={e.pos_embed_use_grid_sample})")
    if e.norm_input is not None:
        problems.append("a norm on the input patches")
    p = e.patch_size
    if p[0] != p[1] or not e.is_linear and e.proj.kernel_size != e.proj.stride:
        problems.append("patch embedding is not square stride-P")
    if not isinstance(trunk.attn_pool, AttentionPoolLatent) or trunk.attn_pool.mlp is None:
        problems.append("attention pool is not a 'map' AttentionPoolLatent with an MLP")
    elif trunk.attn_pool.pos_embed is not None:
        problems.append("attention pool with its own position embedding")
    if not isinstance(trunk.fc_norm, nn.Identity):
        problems.append("a norm after the pool (fc_norm)")
    problems += block_problems(trunk.blocks)
    if problems:
        raise UserError(f"unsupported NaFlex trunk ({trunk.__class__.__name__}): {'; '.join(problems[:3])}")
