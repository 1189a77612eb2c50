"""DINO ViT-B/16 affinity features of LPOSS: the last block's attention value vectors.

LPOSS builds its patch graph from DINO ViT-B/16 (``facebookresearch/dino``), reading the output
of the last block's ``qkv`` projection and keeping the values (12 heads of 64, concatenated:
``[h, w, 768]``) of the patch tokens. Here the same network is timm's
``vit_base_patch16_224.dino`` (same layout and parameter names), with weights from the weights
vocabulary: ``hub`` (timm's copy of the published weights, needs the network once),
``random[:SEED]`` (seeded, offline) or a local state dict (the official
``dino_vitbase16_pretrain.pth`` or a timm / safetensors file). Windows are padded right and bottom
with black to a multiple of the patch size and normalized with the ImageNet mean / std, as LPOSS
does.

A safetensors file whose metadata holds ``timm_model`` and ``timm_kwargs`` (JSON) is a ViT of
another size in the same layout, built from those: the synthetic world's affinity model
(:mod:`spar_fast.world.affinity`) is one.
"""
from __future__ import annotations

import functools
import json

import torch
import torch.nn.functional as F

from ..errors import UserError
from ..runtime import Weights

DINO_NAME = "vit_base_patch16_224.dino"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
BATCH = 60  # windows per forward


@functools.lru_cache(maxsize=2)
def load_dino(weights: Weights, device: str) -> torch.nn.Module:
    """timm DINO ViT-B/16 (any input size), or the ViT a safetensors file's metadata names, eval
    mode, on ``device``."""
    import timm

    def build(pretrained: bool):
        return timm.create_model(DINO_NAME, pretrained=pretrained, dynamic_img_size=True, num_classes=0)
    arch = _architecture(weights.path) if weights.kind == "file" else None
    if arch is not None:
        name, kwargs = arch
        model = timm.create_model(name, pretrained=False, dynamic_img_size=True, num_classes=0, **kwargs)
        _load_state(model, weights.path)
        return model.eval().to(device)
    if weights.kind == "hub":
        try:
            model = build(True)
        except Exception as exc:
            raise UserError(f"cannot fetch the DINO ViT-B/16 weights ({DINO_NAME}): {exc.__class__.__name__}; "
                            "offline, use dino_weights='random' or a local file") from exc
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(weights.seed or 0)
            model = build(False)
        if weights.kind == "file":
            _load_state(model, weights.path)
    return model.eval().to(device)


def _architecture(path: str) -> tuple[str, dict] | None:
    """``(timm model name, keyword arguments)`` recorded in a safetensors file's metadata, or None."""
    if not path.endswith(".safetensors"):
        return None
    from safetensors import safe_open

    try:
        with safe_open(path, "pt") as f:
            meta = f.metadata() or {}
        if "timm_model" not in meta:
            return None
        name, kwargs = meta["timm_model"], json.loads(meta["timm_kwargs"])
    except Exception as exc:  # a damaged or foreign file: one line
        raise UserError(f"{path}: cannot read it as a safetensors DINO state dict ({exc.__class__.__name__}: "
                        f"{exc})") from exc
    plain = (int, float, bool, str)
    if not (name.startswith("vit_") and isinstance(kwargs, dict)
            and all(isinstance(v, plain) or (isinstance(v, list) and all(isinstance(x, plain) for x in v))
                    for v in kwargs.values())):
        raise UserError(f"{path}: its metadata names {name!r} with {kwargs!r}; expected a timm ViT "
                        "(vit_...) and plain keyword values")
    return name, kwargs


def patch_size(model: torch.nn.Module) -> int:
    """The patch side of a timm ViT (16 for DINO ViT-B/16)."""
    size = model.patch_embed.patch_size
    return int(size[0] if isinstance(size, (tuple, list)) else size)


def _load_state(model: torch.nn.Module, path: str) -> None:
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file
        state = load_file(path)
    else:
        from ..backbones.weights import torch_load
        state = torch_load(path)
    state = state.get("state_dict", state.get("model", state)) if isinstance(state, dict) else state
    state = {k.removeprefix("module.").removeprefix("backbone."): v for k, v in state.items()}
    missing, _ = model.load_state_dict(state, strict=False)
    if any(k.startswith(("blocks.", "patch_embed.", "pos_embed")) for k in missing):
        raise UserError(f"{path} is not a DINO ViT-B/16 state dict (missing e.g. {missing[0]})")


def last_block_values(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The last block's attention value vectors of the patch tokens (heads concatenated), as LPOSS
    reads them: ``x [B, 3, H, W]`` (ImageNet-normalized, sides multiples of the patch) ->
    ``[B, T, C]`` (prefix tokens dropped). Differentiable (the world's affinity model trains it)."""
    captured = {}
    hook = model.blocks[-1].attn.qkv.register_forward_hook(lambda m, i, o: captured.__setitem__("qkv", o))
    try:
        model.forward_features(x)
    finally:
        hook.remove()
    dim = captured["qkv"].shape[-1] // 3
    return captured["qkv"][:, model.num_prefix_tokens:, 2 * dim:]


@torch.no_grad()
def dino_features(bb, image: torch.Tensor, boxes, weights: Weights) -> tuple[list[torch.Tensor], int]:
    """Value vectors ``[ceil(h/P), ceil(w/P), C]`` (DINO ViT-B/16: P 16, C 768) of each window
    ``(y, x, h, w)`` of the normalized ``image [3, H, W]`` (``bb.mean`` / ``bb.std`` undone
    first), and the patch size P."""
    model = load_dino(weights, str(image.device))
    patch = patch_size(model)
    mean = image.new_tensor(bb.mean)[:, None, None]
    std = image.new_tensor(bb.std)[:, None, None]
    rgb = (image.float() * std + mean).clamp(0, 1)
    out = []
    for start in range(0, len(boxes), BATCH):
        chunk = boxes[start:start + BATCH]
        h, w = chunk[0][2], chunk[0][3]  # one window size per call (single pass or sliding)
        crops = torch.stack([rgb[:, y:y + h, x:x + w] for y, x, _, _ in chunk])
        crops = F.pad(crops, (0, -w % patch, 0, -h % patch))
        values = last_block_values(model, (crops - crops.new_tensor(IMAGENET_MEAN)[:, None, None])
                                   / crops.new_tensor(IMAGENET_STD)[:, None, None])  # [B, T, C]
        gh, gw = crops.shape[-2] // patch, crops.shape[-1] // patch
        out.extend(values.float().reshape(len(chunk), gh, gw, values.shape[-1]))
    return out, patch
