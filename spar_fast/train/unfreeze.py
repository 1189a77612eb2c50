"""Unfreeze strings (SPEC §4) -> the set of trainable parameters of a backbone.

An unfreeze string is a comma list of:

* ``blk_i``  — every parameter of block ``i`` (negative ``i`` counts from the end; DINOv3.txt:
  the blocks of the ViT backbone, not of the vision head);
* ``qkv_i``  — the attention input projection of block ``i``: SigLIP2 and DINOv3.txt
  ``attn.qkv.*``, OpenCLIP ``attn.in_proj_*`` (OpenCLIP fuses q, k, v into ``in_proj``);
* ``mlp_i``  — the MLP of block ``i``: SigLIP2 / DINOv3.txt ``mlp.fc1/fc2``, OpenCLIP
  ``mlp.c_fc/c_proj``;
* ``posembed`` — SigLIP2 ``trunk.pos_embed``, OpenCLIP ``positional_embedding``; refused for
  DINOv3.txt, whose RoPE has no parameters (the reference's rule matches nothing there);
* ``patchembed`` — SigLIP2 ``trunk.patch_embed.*``, OpenCLIP ``conv1.*``, DINOv3.txt
  ``visual_model.backbone.patch_embed.*``;
* ``attn_pool_kv`` — SigLIP2 only: ``trunk.attn_pool.kv.*`` (its value half feeds the dense head);
* ``head`` — the dense head after the last block, as the dense path uses it: SigLIP2 / NaFlex
  ``trunk.norm`` and the ``attn_pool`` value path (``kv``, ``proj``, ``norm``, ``mlp``; not the
  pooling query, which the dense path never uses), OpenCLIP ``ln_post`` and ``proj``; not for
  DINOv3.txt. Not in SPAR's recipe (its default leaves the head frozen); offered because a small
  backbone may need it (docs/WORLD.md, "Second round");
* ``all`` — every parameter of the visual tower (DINOv3.txt: ``visual_model.*``; the reference
  also marks the text tower, which gets no gradient from the dense loss).

Only the listed parameters train; the dense head (SigLIP2 ``attn_pool``, OpenCLIP
``ln_post``/``proj``) stays frozen unless named (``all``, ``head`` or ``attn_pool_kv``).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import UserError

VALID_FORMS = ("blk_i, qkv_i, mlp_i (i an integer, negative from the end), posembed, patchembed, attn_pool_kv, "
               "head, all")

# Substrings of a parameter name (relative to the visual tower) per family.
_PARTS = {
    "siglip2": {"qkv": "attn.qkv.", "mlp": "mlp.", "posembed": "trunk.pos_embed",
                "patchembed": "trunk.patch_embed.", "attn_pool_kv": "trunk.attn_pool.kv."},
    "naflex": {"qkv": "attn.qkv.", "mlp": "mlp.", "posembed": "trunk.embeds.pos_embed",
               "patchembed": "trunk.embeds.proj.", "attn_pool_kv": "trunk.attn_pool.kv."},
    "openclip": {"qkv": "attn.in_proj_", "mlp": "mlp.", "posembed": "positional_embedding",
                 "patchembed": "conv1."},
    "dinov3txt": {"qkv": "attn.qkv.", "mlp": "mlp.", "patchembed": "backbone.patch_embed."},
}
_SIGLIP_HEAD = ("trunk.norm.", "trunk.attn_pool.kv.", "trunk.attn_pool.proj.", "trunk.attn_pool.norm.",
                "trunk.attn_pool.mlp.")
# Name prefixes of the dense head (``head``) per family.
_HEAD = {"siglip2": _SIGLIP_HEAD, "naflex": _SIGLIP_HEAD, "openclip": ("ln_post.", "proj")}
# Tokens a family refuses, with the reason.
_REFUSED = {("dinov3txt", "posembed"): "DINOv3.txt encodes positions with RoPE, which has no parameters"}
_BLOCK_TOKEN = re.compile(r"^(blk|qkv|mlp)_(-?\d+)$")


@dataclass
class Trainable:
    """The trainable set: ``names`` (full names in ``model.named_parameters()``, model order) and
    ``first_block`` (the first block whose activations need gradients; ``num_blocks`` when only
    parameters after the last block train)."""

    names: list[str]
    first_block: int


def _visual_prefix(model) -> str:
    for name in ("visual", "visual_model"):
        if hasattr(model, name):
            return name + "."
    return ""


def resolve_unfreeze(spec: str, bb) -> Trainable:
    """Parse ``spec`` for backbone ``bb`` (``family``, ``num_blocks``, ``block_param_prefix``,
    ``model``). Raises :class:`UserError` for unknown tokens, out-of-range blocks, tokens the
    family lacks, or a token that matches no parameter."""
    tokens = [t.strip() for t in str(spec).split(",") if t.strip()]
    if not tokens:
        raise UserError(f"empty unfreeze string; valid forms: {VALID_FORMS}")
    parts = _PARTS[bb.family]
    vis = _visual_prefix(bb.model)
    all_names = [n for n, _ in bb.model.named_parameters()]
    visual_names = [n for n in all_names if n.startswith(vis)]
    chosen: set[str] = set()
    first_block = bb.num_blocks
    for token in tokens:
        match = _BLOCK_TOKEN.match(token)
        if match:
            kind, index = match.group(1), int(match.group(2))
            if not -bb.num_blocks <= index < bb.num_blocks:
                raise UserError(f"unfreeze {token!r}: block index out of range for a "
                                f"{bb.num_blocks}-block model (use {-bb.num_blocks}..{bb.num_blocks - 1})")
            index %= bb.num_blocks
            prefix = bb.block_param_prefix(index)
            prefix = prefix if prefix.endswith(".") else prefix + "."  # blocks.1 vs blocks.10
            names = [n for n in all_names if n.startswith(prefix)]
            if kind != "blk":
                names = [n for n in names if parts[kind] in n[len(prefix):]]
            first_block = min(first_block, index)
        elif token == "all":
            names, first_block = visual_names, 0
        elif token == "head":
            if bb.family not in _HEAD:
                raise UserError(f"unfreeze 'head' exists for SigLIP2, NaFlex and OpenCLIP backbones, not {bb.family}")
            names = [n for n in visual_names if n[len(vis):].startswith(_HEAD[bb.family])]
        elif token in ("posembed", "patchembed", "attn_pool_kv"):
            if (bb.family, token) in _REFUSED:
                raise UserError(f"unfreeze {token!r}: {_REFUSED[bb.family, token]}")
            if token not in parts:
                raise UserError(f"unfreeze {token!r} exists only for SigLIP2 backbones, not {bb.family}")
            names = [n for n in visual_names if n[len(vis):].startswith(parts[token])]
            if token != "attn_pool_kv":
                first_block = 0
        else:
            raise UserError(f"bad unfreeze token {token!r}; valid forms: {VALID_FORMS}")
        if not names:
            raise UserError(f"unfreeze {token!r} matches no parameter of this {bb.family} model")
        chosen.update(names)
    return Trainable([n for n in all_names if n in chosen], first_block)


def apply_unfreeze(spec: str, bb) -> Trainable:
    """Freeze every parameter of ``bb.model`` except those named by ``spec``; return the set."""
    trainable = resolve_unfreeze(spec, bb)
    keep = set(trainable.names)
    for name, param in bb.model.named_parameters():
        param.requires_grad_(name in keep)
    return trainable
