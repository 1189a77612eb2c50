"""Backbone names -> open_clip model configs (and hub pretrained tags).

``siglip2-b16-512`` and ``openclip-b16`` are the SPAR backbones (SPEC §1). ``siglip2-tiny`` and
``openclip-tiny`` are small configs of the same families, registered with open_clip from
``configs/*.json`` (config names without "siglip", which would make open_clip pick the Gemma
tokenizer that needs the hub), so tests run the real code paths of each family in milliseconds:

* ``siglip2-tiny``: a timm SigLIP-style trunk (no class token, ``attn_pool`` 'map'), patch 16,
  native 64, width 64, 2 heads, 3 blocks; a tiny text tower with the OpenCLIP BPE tokenizer.
* ``world-s16``: the trunk of the synthetic world's backbone (:mod:`spar_fast.world`), patch 16,
  native 128, width 64, 2 heads, 4 blocks, so the paper's geometry (P = 16, s = 24, r = 2) holds.
* ``openclip-tiny``: an open_clip ``VisionTransformer``, patch 16, native 48, width 64, 2 heads,
  3 blocks, output 32; a tiny text tower.

``siglip2-b16-naflex`` is the single-pass NaFlex baseline of the paper's Fig. 3: open_clip config
``ViT-B-16-SigLIP2-naflex`` (``configs/``, the same file as newer open_clip sources), whose vision
tower is timm's ``naflexvit_base_patch16_siglip``; its weights come from the hub repository
``timm/ViT-B-16-SigLIP2-naflex`` (``hub_source``). ``naflex-tiny`` is a small config of that family
(timm NaFlex trunk, patch 16, position grid 4x4, width 64, 2 heads, 3 blocks; tiny text tower).
Both run through :mod:`spar_fast.backbones.naflex` (family ``naflex``, docs/NAFLEX.md).

``dinov3txt-l16`` (the third SPAR backbone) and ``dinov3txt-tiny`` (patch 16, window 64, width 64,
4 heads, 3 blocks + the 2-block head; a 2-layer text tower) are not open_clip models: family
``dinov3txt``, built by :mod:`spar_fast.backbones.dinov3txt` from ``configs/<name>.json``.

Raw open_clip model names (``open_clip.list_models()``) are accepted too.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError

_CONFIG_DIR = Path(__file__).parent / "configs"
TINY_TIMM_SIGLIP = "spar_vit_tiny_patch16_siglip_64"
WORLD_TIMM_SIGLIP = "spar_vit_world_patch16_siglip_128"

TINY_TIMM_NAFLEX = "spar_naflexvit_tiny_patch16_siglip"

# timm SigLIP-style trunks of the small configs: name -> (native size, width, depth, heads)
_TIMM_TRUNKS = {
    TINY_TIMM_SIGLIP: (64, 64, 3, 2),
    WORLD_TIMM_SIGLIP: (128, 64, 4, 2),
}
# timm NaFlex trunks of the small configs: name -> (position-embedding grid side, width, depth, heads)
_TIMM_NAFLEX_TRUNKS = {
    TINY_TIMM_NAFLEX: (4, 64, 3, 2),
}


@dataclass(frozen=True)
class ModelEntry:
    """One known backbone: its open_clip config name and hub pretrained tag (None: no hub weights);
    ``family`` names a non-open_clip family (its own builder), None for open_clip models;
    ``hub_source``: an open_clip model source (``hf-hub:ORG/REPO``) that holds the hub weights,
    used instead of the config name + tag when the installed open_clip lists no tag for it."""
    open_clip_name: str | None
    pretrained_tag: str | None
    family: str | None = None
    hub_source: str | None = None


KNOWN = {
    "siglip2-b16-512": ModelEntry("ViT-B-16-SigLIP2-512", "webli"),
    "openclip-b16": ModelEntry("ViT-B-16", "laion2b_s34b_b88k"),
    "siglip2-tiny": ModelEntry("SPAR-Tiny-Sig2", None),
    "openclip-tiny": ModelEntry("SPAR-Tiny-OpenCLIP", None),
    "world-s16": ModelEntry("SPAR-World-Sig2", None),
    "siglip2-b16-naflex": ModelEntry("ViT-B-16-SigLIP2-naflex", "webli",
                                     hub_source="hf-hub:timm/ViT-B-16-SigLIP2-naflex"),
    "naflex-tiny": ModelEntry("SPAR-Tiny-NaFlex", None),
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

    for trunk_name, (size, width, depth, heads) in _TIMM_TRUNKS.items():
        if trunk_name not in timm.list_models(trunk_name):
            register_model(_trunk_factory(trunk_name, size, width, depth, heads, _create_vision_transformer))
    for trunk_name, (side, width, depth, heads) in _TIMM_NAFLEX_TRUNKS.items():
        if trunk_name not in timm.list_models(trunk_name):
            register_model(_naflex_trunk_factory(trunk_name, side, width, depth, heads))
    if not all(e.open_clip_name in open_clip.list_models() for e in KNOWN.values() if e.open_clip_name):
        open_clip.add_model_config(_CONFIG_DIR)
    _registered = True


def _trunk_factory(trunk_name: str, size: int, width: int, depth: int, heads: int, create):
    """A timm model function for a small SigLIP-style trunk (the module types of
    ``vit_base_patch16_siglip_512``: no class token, a 'map' attention pool), patch 16."""
    def factory(pretrained: bool = False, **kwargs):
        args = dict(img_size=size, patch_size=16, embed_dim=width, depth=depth, num_heads=heads,
                    class_token=False, global_pool="map")
        kwargs["pretrained_cfg"] = kwargs.get("pretrained_cfg") or dict(
            input_size=(3, size, size), mean=(0.5,) * 3, std=(0.5,) * 3)
        return create(trunk_name, pretrained=pretrained, **dict(args, **kwargs))
    factory.__name__ = trunk_name
    factory.__qualname__ = trunk_name
    factory.__module__ = __name__
    return factory


def _naflex_trunk_factory(trunk_name: str, side: int, width: int, depth: int, heads: int):
    """A timm model function for a small NaFlex trunk with the settings of
    ``naflexvit_base_patch16_siglip`` (tanh GELU, 'map' pool, bilinear position-embedding resize),
    patch 16, a ``side x side`` learned position grid."""
    def factory(pretrained: bool = False, **kwargs):
        from timm.models.naflexvit import NaFlexVitCfg, _create_naflexvit
        cfg = NaFlexVitCfg(patch_size=16, embed_dim=width, depth=depth, num_heads=heads, act_layer="gelu_tanh",
                           global_pool="map", pos_embed_interp_mode="bilinear", pos_embed_grid_size=(side, side))
        kwargs["pretrained_cfg"] = kwargs.get("pretrained_cfg") or dict(
            input_size=(3, 16 * side, 16 * side), mean=(0.5,) * 3, std=(0.5,) * 3)
        return _create_naflexvit(trunk_name, pretrained=pretrained, cfg=cfg, **kwargs)
    factory.__name__ = trunk_name
    factory.__qualname__ = trunk_name
    factory.__module__ = __name__
    return factory


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


def config_path(open_clip_name: str) -> Path:
    """The JSON config file of one of the project's own open_clip configs."""
    return _CONFIG_DIR / f"{open_clip_name}.json"


def trunk_shape(name: str) -> tuple | None:
    """``(native size, width, depth, heads)`` of a small registered timm trunk, else None."""
    entry = KNOWN.get(name)
    if entry is None or entry.open_clip_name is None or not config_path(entry.open_clip_name).is_file():
        return None
    cfg = json.loads(config_path(entry.open_clip_name).read_text(encoding="utf-8"))
    return _TIMM_TRUNKS.get(cfg.get("vision_cfg", {}).get("timm_model_name"))
