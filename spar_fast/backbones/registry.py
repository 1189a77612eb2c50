"""Backbone names -> open_clip model configs (and hub pretrained tags).

``siglip2-b16-512`` and ``openclip-b16`` are the SPAR backbones (SPEC §1). ``siglip2-tiny`` and
``openclip-tiny`` are small configs of the same families, registered with open_clip from
``configs/*.json`` (config names without "siglip", which would make open_clip pick the Gemma
tokenizer that needs the hub), so tests run the real code paths of each family in milliseconds:

* ``siglip2-tiny``: a timm SigLIP-style trunk (no class token, ``attn_pool`` 'map'), patch 16,
  native 64, width 64, 2 heads, 3 blocks; a tiny text tower with the OpenCLIP BPE tokenizer.
* ``openclip-tiny``: an open_clip ``VisionTransformer``, patch 16, native 48, width 64, 2 heads,
  3 blocks, output 32; a tiny text tower.

``dinov3txt-l16`` (the third SPAR backbone) and ``dinov3txt-tiny`` (patch 16, window 64, width 64,
4 heads, 3 blocks + the 2-block head; a 2-layer text tower) are not open_clip models: family
``dinov3txt``, built by :mod:`spar_fast.backbones.dinov3txt` from ``configs/<name>.json``.

Raw open_clip model names (``open_clip.list_models()``) are accepted too.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError

_CONFIG_DIR = Path(__file__).parent / "configs"
TINY_TIMM_SIGLIP = "spar_vit_tiny_patch16_siglip_64"


@dataclass(frozen=True)
class ModelEntry:
    """One known backbone: its open_clip config name and hub pretrained tag (None: no hub weights);
    ``family`` names a non-open_clip family (its own builder), None for open_clip models."""
    open_clip_name: str | None
    pretrained_tag: str | None
    family: str | None = None


KNOWN = {
    "siglip2-b16-512": ModelEntry("ViT-B-16-SigLIP2-512", "webli"),
    "openclip-b16": ModelEntry("ViT-B-16", "laion2b_s34b_b88k"),
    "siglip2-tiny": ModelEntry("SPAR-Tiny-Sig2", None),
    "openclip-tiny": ModelEntry("SPAR-Tiny-OpenCLIP", None),
    "dinov3txt-l16": ModelEntry(None, None, "dinov3txt"),
    "dinov3txt-tiny": ModelEntry(None, None, "dinov3txt"),
}

_registered = False


def ensure_registered() -> None:
    """Register the tiny configs with open_clip and the tiny SigLIP trunk with timm (idempotent)."""
    global _registered
    if _registered:
        return
    import open_clip
    import timm
    from timm.models import register_model
    from timm.models.vision_transformer import _create_vision_transformer

    if TINY_TIMM_SIGLIP not in timm.list_models(TINY_TIMM_SIGLIP):
        def spar_vit_tiny_patch16_siglip_64(pretrained: bool = False, **kwargs):
            # same module types as vit_base_patch16_siglip_512, just small
            args = dict(img_size=64, patch_size=16, embed_dim=64, depth=3, num_heads=2,
                        class_token=False, global_pool="map")
            kwargs["pretrained_cfg"] = kwargs.get("pretrained_cfg") or dict(
                input_size=(3, 64, 64), mean=(0.5,) * 3, std=(0.5,) * 3)
            return _create_vision_transformer(TINY_TIMM_SIGLIP, pretrained=pretrained, **dict(args, **kwargs))
        register_model(spar_vit_tiny_patch16_siglip_64)
    if not all(e.open_clip_name in open_clip.list_models() for e in KNOWN.values() if e.open_clip_name):
        open_clip.add_model_config(_CONFIG_DIR)
    _registered = True


def resolve(name: str) -> ModelEntry:
    """The :class:`ModelEntry` for a spar_fast name or a raw open_clip model name.

    Raw open_clip names use their first hub tag (if any) for ``pretrained=True``.
    """
    if name in KNOWN:
        return KNOWN[name]
    ensure_registered()
    import open_clip

    if name in open_clip.list_models():
        tags = open_clip.list_pretrained_tags_by_model(name)
        return ModelEntry(name, tags[0] if tags else None)
    raise UserError(f"unknown backbone {name!r}; known names: {', '.join(KNOWN)} "
                    "(or any open_clip model name, see open_clip.list_models())")


def spar_name(open_clip_name: str) -> str | None:
    """The spar_fast name of an open_clip config name, or None."""
    for key, entry in KNOWN.items():
        if entry.open_clip_name == open_clip_name:
            return key
    return None
