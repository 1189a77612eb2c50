"""DINOv3.txt modules with the official parameter names (SPEC §1, DINOv3.txt).

The module tree and every state-dict key equal those of the facebookresearch/dinov3 ``DINOTxt``
model, so the official files and SPAR's checkpoints load without renaming:

* ``visual_model.backbone``: the DINOv3 ViT (``cls_token``, ``storage_tokens``, ``mask_token``,
  ``patch_embed.proj``, ``rope_embed.periods``, ``blocks.i.{norm1, attn.qkv[.bias_mask],
  attn.proj, ls1.gamma, norm2, mlp.fc1, mlp.fc2, ls2.gamma}``, ``norm``);
* ``visual_model.head``: ``blocks.{0,1}`` (qkv without bias, SwiGLU ``mlp.w1/w2/w3``), ``ln_final``;
  the projection is the identity when ``2 * width == embed_dim`` (ViT-L: 2 x 1024 = 2048);
* ``text_model.backbone``: ``token_embedding``, ``positional_embedding``, ``blocks.i.
  {attention_norm, attention.qkv (no bias), attention.proj, ffn_norm, feed_forward.fc1/fc2}``,
  ``ln_final``; ``text_model.head.linear_projection`` (no bias); ``logit_scale``.

The vision forward lives in :mod:`spar_fast.backbones.dinov3txt` (batched and packed); the text
forward is :meth:`DinoTxt.encode_text`.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import UserError
from .layers import BlockParts, block_forward, identity
from .rope import rope_periods

CONFIG_DIR = Path(__file__).parent / "configs"


@dataclass(frozen=True)
class DinoTxtConfig:
    """Architecture of a DINOv3.txt model (``configs/<name>.json``)."""
    patch_size: int
    window: int                 # teacher window (the reference's slide_crop)
    width: int                  # vision width; dense features have this many channels
    depth: int
    heads: int
    storage_tokens: int
    layerscale_init: float
    rope_base: float
    rope_rescale: float         # training-mode coordinate augmentation factor
    head_blocks: int
    head_ffn_align: int         # SwiGLU hidden size rounded up to a multiple of this
    embed_dim: int              # joint image-text space (2 x width: class half, patch half)
    text_context: int
    text_vocab: int
    text_width: int
    text_heads: int
    text_layers: int

    @classmethod
    def load(cls, name: str) -> "DinoTxtConfig":
        return cls(**json.loads((CONFIG_DIR / f"{name}.json").read_text()))


class LayerScale(nn.Module):
    def __init__(self, dim: int, init: float):
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), init))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class Mlp(nn.Module):
    """``fc2(gelu(fc1(x)))`` (exact GELU)."""

    def __init__(self, dim: int, hidden: int, bias: bool = True):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden, bias=bias)
        self.fc2 = nn.Linear(hidden, dim, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class SwiGLU(nn.Module):
    """``w3(silu(w1(x)) * w2(x))``; hidden ``int(2/3 * 4 * dim)`` rounded up to ``align``."""

    def __init__(self, dim: int, align: int):
        super().__init__()
        d = int(4 * dim * 2 / 3)
        hidden = d + (-d % align)
        self.w1 = nn.Linear(dim, hidden)
        self.w2 = nn.Linear(dim, hidden)
        self.w3 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w3(F.silu(self.w1(x)) * self.w2(x))


class Attention(nn.Module):
    """Fused ``qkv`` and ``proj``. ``mask_k_bias``: the key third of the qkv bias is multiplied by
    the ``bias_mask`` buffer (ones, zeros, ones in the official weights), as in DINOv3."""

    def __init__(self, dim: int, qkv_bias: bool, mask_k_bias: bool = False):
        super().__init__()
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        if mask_k_bias:
            mask = torch.ones(3 * dim)
            mask[dim:2 * dim] = 0
            self.qkv.register_buffer("bias_mask", mask)

    def qkv_bias(self) -> torch.Tensor | None:
        bias, mask = self.qkv.bias, getattr(self.qkv, "bias_mask", None)
        return bias * mask.to(bias.dtype) if bias is not None and mask is not None else bias


class Block(nn.Module):
    """A DINOv3 ``SelfAttentionBlock`` (pre-norm, layer scale), run through :func:`block_forward`."""

    def __init__(self, dim: int, heads: int, mlp: nn.Module, layerscale: float, qkv_bias: bool,
                 mask_k_bias: bool, eps: float):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = Attention(dim, qkv_bias, mask_k_bias)
        self.ls1 = LayerScale(dim, layerscale)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = mlp
        self.ls2 = LayerScale(dim, layerscale)

    def parts(self, rotate=None) -> BlockParts:
        """The block's pieces; ``rotate`` (RoPE) is applied to per-head queries and keys."""
        rot = rotate or identity()
        return BlockParts(self.norm1, self.attn.qkv.weight, self.attn.qkv_bias(), self.heads, rot, rot,
                          identity(), self.attn.proj, (self.ls1,), self.norm2, self.mlp, (self.ls2,))


class PatchEmbed(nn.Module):
    def __init__(self, patch: int, dim: int):
        super().__init__()
        self.proj = nn.Conv2d(3, dim, kernel_size=patch, stride=patch)


class RopeEmbed(nn.Module):
    """Holds the ``periods`` buffer (a key of the official state dict)."""

    def __init__(self, head_dim: int, base: float):
        super().__init__()
        self.register_buffer("periods", rope_periods(head_dim, base))


class VisionBackbone(nn.Module):
    """DINOv3 ViT: class + storage tokens, RoPE, layer scale, qkv bias with a masked key part."""

    def __init__(self, c: DinoTxtConfig):
        super().__init__()
        dim = c.width
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.storage_tokens = nn.Parameter(torch.zeros(1, c.storage_tokens, dim))
        self.mask_token = nn.Parameter(torch.zeros(1, dim))  # masked-image training only; unused here
        self.patch_embed = PatchEmbed(c.patch_size, dim)
        self.rope_embed = RopeEmbed(dim // c.heads, c.rope_base)
        self.blocks = nn.ModuleList(
            Block(dim, c.heads, Mlp(dim, 4 * dim), c.layerscale_init, qkv_bias=True, mask_k_bias=True, eps=1e-5)
            for _ in range(c.depth))
        self.norm = nn.LayerNorm(dim, eps=1e-5)


class VisionHead(nn.Module):
    """The dino.txt vision head: self-attention blocks (SwiGLU, no RoPE), final LayerNorm."""

    def __init__(self, c: DinoTxtConfig):
        super().__init__()
        dim = c.width
        self.blocks = nn.ModuleList(
            Block(dim, c.heads, SwiGLU(dim, c.head_ffn_align), 1e-5, qkv_bias=False, mask_k_bias=False, eps=1e-5)
            for _ in range(c.head_blocks))
        self.ln_final = nn.LayerNorm(dim)


class VisionTower(nn.Module):
    def __init__(self, c: DinoTxtConfig):
        super().__init__()
        if 2 * c.width != c.embed_dim:
            raise ValueError(f"DINOv3.txt config: embed_dim {c.embed_dim} must be 2 x width {c.width} "
                             "(identity vision projection)")
        self.backbone = VisionBackbone(c)
        self.head = VisionHead(c)


class TextBlock(nn.Module):
    """Causal pre-norm block (qkv without bias, no layer scale)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.attention_norm = nn.LayerNorm(dim)
        self.attention = Attention(dim, qkv_bias=False)
        self.ffn_norm = nn.LayerNorm(dim)
        self.feed_forward = Mlp(dim, 4 * dim)

    def parts(self) -> BlockParts:
        a = self.attention
        return BlockParts(self.attention_norm, a.qkv.weight, None, self.heads, identity(), identity(),
                          identity(), a.proj, (), self.ffn_norm, self.feed_forward, ())


class TextBackbone(nn.Module):
    def __init__(self, c: DinoTxtConfig):
        super().__init__()
        self.token_embedding = nn.Embedding(c.text_vocab, c.text_width)
        self.positional_embedding = nn.Parameter(torch.zeros(c.text_context, c.text_width))
        self.blocks = nn.ModuleList(TextBlock(c.text_width, c.text_heads) for _ in range(c.text_layers))
        self.ln_final = nn.LayerNorm(c.text_width)


class TextHead(nn.Module):
    def __init__(self, c: DinoTxtConfig):
        super().__init__()
        self.linear_projection = nn.Linear(c.text_width, c.embed_dim, bias=False)


class TextTower(nn.Module):
    def __init__(self, c: DinoTxtConfig):
        super().__init__()
        self.backbone = TextBackbone(c)
        self.head = TextHead(c)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Token ids ``[N, L]`` -> ``[N, embed_dim]``: causal blocks, ``ln_final``, the row of each
        sequence's largest token id (end of text), linear projection."""
        t = self.backbone
        x = t.token_embedding(tokens) + t.positional_embedding[: tokens.shape[1]]
        for block in t.blocks:
            x = block_forward(x, block.parts(), _causal_attend)
        x = t.ln_final(x)
        x = x[torch.arange(x.shape[0], device=x.device), tokens.argmax(dim=-1)]
        return self.head.linear_projection(x)


def _causal_attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``[B, N, H, D]`` causal attention."""
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True)
    return out.transpose(1, 2)


DENSE_TOKENS = ("backbone", "head")


class DinoTxt(nn.Module):
    """The DINOv3.txt model (official key names). ``config``: its :class:`DinoTxtConfig`;
    ``vocab_path``: the BPE vocabulary file (None: open_clip's copy of the same file);
    ``dense_tokens``: which patch tokens are the dense features, "backbone" (SPAR's reference)
    or "head" (after the dino.txt vision head), see :mod:`spar_fast.backbones.dinov3txt`."""

    def __init__(self, config: DinoTxtConfig, vocab_path: str | None = None, dense_tokens: str = "backbone"):
        super().__init__()
        if dense_tokens not in DENSE_TOKENS:
            raise UserError(f"dense_tokens must be one of {', '.join(DENSE_TOKENS)}, got {dense_tokens!r}")
        self.config = config
        self.vocab_path = vocab_path
        self.dense_tokens = dense_tokens
        self.visual_model = VisionTower(config)
        self.text_model = TextTower(config)
        self.logit_scale = nn.Parameter(torch.zeros(1))

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """``[N, L]`` token ids -> ``[N, width]``: the patch half ``[:, width:]`` of the text
        embedding, the part SPAR compares with the dense patch features (not normalized)."""
        return self.text_model(tokens)[:, self.config.width:]


def init_random(model: DinoTxt) -> None:
    """Random initialization in the manner of the reference's ``init_weights`` (truncated normal
    0.02 for vision linears, normal for tokens/text; layer scales keep their init values)."""
    for module in model.modules():
        if isinstance(module, nn.Linear):
            nn.init.trunc_normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
    vis = model.visual_model.backbone
    for p in (vis.cls_token, vis.storage_tokens):
        nn.init.normal_(p, std=0.02)
    text = model.text_model.backbone
    nn.init.normal_(text.token_embedding.weight, std=0.02)
    nn.init.normal_(text.positional_embedding, std=0.01)
    nn.init.normal_(model.text_model.head.linear_projection.weight, std=model.config.text_width ** -0.5)
    nn.init.constant_(model.logit_scale, 2.6592)  # log(1 / 0.07), the reference's initial value
