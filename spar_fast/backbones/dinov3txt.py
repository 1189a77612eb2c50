"""DINOv3.txt: dense forward (batched and packed), construction and weight loading (SPEC §1).

Dense forward of an image ``[3, H, W]`` (ImageNet-normalized): bicubic *stretch*
(align_corners=False) to ``(16*ceil(H/16), 16*ceil(W/16))`` when the size differs; patch
embedding (stride-16 conv with bias); ``[class, 4 storage, patches]``; the DINOv3 blocks with RoPE
on the patch tokens' queries and keys; the backbone's final ``norm`` over all tokens; the patch
tokens ``[h, w, width]``.

Which patch tokens: SPAR's wrapper takes the THIRD output of the dinov3 ``VisionTower.
get_class_and_patch_tokens`` (``_, _, patch_tokens = ...``), which is the *backbone's* normed
patch tokens: the dino.txt vision head runs in the reference but its output is discarded. That
is the default here (``DinoTxt.dense_tokens = "backbone"``; the head is skipped, which changes
nothing). ``dense_tokens = "head"`` instead runs the vision head (two self-attention blocks over
all tokens of the image, no RoPE; ``ln_final``; identity projection) and returns its patch
tokens, the tokens dino.txt aligns with the text embedding's patch half.

Packed: each image is one segment ``[class, storage, patches]`` of the sequence; RoPE tables are
built once per distinct grid and concatenated, so image k's patches get exactly the positions
they get alone; attention (blocks, and the head when used) goes through
``spar_fast.ops.varlen_attention``.

Training mode follows the reference (which runs the model in train mode under Lightning): every
block draws its own RoPE coordinate factor (log-uniform in [1/2, 2]; in a pack, one factor per
block for all its images, as the reference does for a batch); the head's stochastic depth
(rate 0.3) drops whole samples of a batch, which at the reference's one image per step keeps
the only sample with scale 1, so it is the identity and is not implemented.

Weights: the official files (``dinov3_vitl16_pretrain_lvd1689m-8aa4cbdd.pth`` and
``dinov3_vitl16_dinotxt_vision_head_and_text_encoder-a442d8f5.pth``) as local paths
(:func:`load_official`, or :func:`convert_official` to one safetensors file usable as
``--weights``); a full state dict (spar_fast safetensors, SPAR Lightning ``.ckpt``).
"""
from __future__ import annotations

import logging
import math
import os

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import UserError
from .dinov3txt_model import DinoTxt, DinoTxtConfig, init_random
from .layers import block_forward, sdpa_attend, varlen_attend
from .packing import Packing, patchify, unpack_grids
from .rope import draw_rescale, sequence_rotation

log = logging.getLogger(__name__)

BACKBONE_FILE = "dinov3_vitl16_pretrain_lvd1689m-8aa4cbdd.pth"
HEAD_AND_TEXT_FILE = "dinov3_vitl16_dinotxt_vision_head_and_text_encoder-a442d8f5.pth"
HUB_MESSAGE = (f"DINOv3.txt weights cannot be fetched automatically: download {BACKBONE_FILE} and "
               f"{HEAD_AND_TEXT_FILE} under the DINOv3 licence (https://ai.meta.com/dinov3/), then "
               "`python -m spar_fast.commands.dinov3txt BACKBONE.pth HEAD_AND_TEXT.pth "
               "dinov3txt-l16.safetensors` and pass that file as the weights (--weights / --checkpoint FILE; "
               "API: Backbone.from_dinov3txt(BACKBONE.pth, HEAD_AND_TEXT.pth))")


def is_dinotxt(model: nn.Module) -> bool:
    return isinstance(model, DinoTxt)


class DinoTxtTower:
    """Runs a :class:`DinoTxt` model's vision side through the Backbone tower interface."""

    family = "dinov3txt"
    mean = (0.485, 0.456, 0.406)
    std = (0.229, 0.224, 0.225)
    block_prefix = "visual_model.backbone.blocks."

    def __init__(self, model: DinoTxt):
        self.model = model
        c = model.config
        self.patch_size = c.patch_size
        self.window = c.window
        self.feature_dim = c.width
        self.num_blocks = c.depth
        self.prefix = 1 + c.storage_tokens  # class + storage tokens before each image's patches
        self._grids: list[tuple[int, int]] = []
        self._rotation = None  # eval-mode RoPE of the sequence being run (built on first use)

    @property
    def vit(self) -> nn.Module:
        return self.model.visual_model.backbone

    def grid(self, height: int, width: int) -> tuple[int, int]:
        return math.ceil(height / self.patch_size), math.ceil(width / self.patch_size)

    def stochastic_modules(self) -> list[tuple[str, nn.Module]]:
        return []  # RoPE augmentation is handled per block; see the module docstring

    def stretch(self, images: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """``[B, 3, H, W]`` -> ``[B, 3, h*P, w*P]``, bicubic (align_corners=False) when sizes differ."""
        size = (h * self.patch_size, w * self.patch_size)
        if tuple(images.shape[-2:]) == size:
            return images
        return F.interpolate(images, size=size, mode="bicubic", align_corners=False)

    def _patch_tokens(self, patches: torch.Tensor) -> torch.Tensor:
        """``[..., 3*P*P] -> [..., C]``: the patch-embedding conv as one matmul."""
        proj = self.vit.patch_embed.proj
        return F.linear(patches.to(proj.weight.dtype), proj.weight.flatten(1), proj.bias)

    def _prefix_tokens(self) -> torch.Tensor:
        vit = self.vit
        return torch.cat([vit.cls_token[0], vit.storage_tokens[0]])  # [prefix, C]

    def _begin(self, grids: list[tuple[int, int]]) -> None:
        self._grids, self._rotation = grids, None

    def _block_rotation(self):
        periods = self.vit.rope_embed.periods
        if self.model.training and self.model.config.rope_rescale:
            scale = draw_rescale(self.model.config.rope_rescale, periods.device)
            return sequence_rotation(periods, self._grids, self.prefix, scale)
        if self._rotation is None:
            self._rotation = sequence_rotation(periods, self._grids, self.prefix)
        return self._rotation

    def embed(self, images: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """``[B, 3, H, W] -> ([B, prefix + h*w, C], (h, w))``."""
        h, w = self.grid(*images.shape[-2:])
        x = self._patch_tokens(patchify(self.stretch(images, h, w), self.patch_size))
        prefix = self._prefix_tokens()
        dtype = torch.promote_types(x.dtype, prefix.dtype)  # the reference's torch.cat promotes
        x = torch.cat([prefix.to(dtype).expand(x.shape[0], -1, -1), x.to(dtype)], dim=1)
        self._begin([(h, w)])
        return x, (h, w)

    def embed_packed(self, images: list[torch.Tensor]) -> tuple[torch.Tensor, Packing]:
        """List of ``[3, Hi, Wi]`` -> packed ``[T, C]``; each segment ``[class, storage, patches]``."""
        grids = [self.grid(*img.shape[-2:]) for img in images]
        patches = torch.cat([patchify(self.stretch(img[None], h, w), self.patch_size)[0]
                             for img, (h, w) in zip(images, grids)])
        x = self._patch_tokens(patches)
        prefix = self._prefix_tokens()
        dtype = torch.promote_types(x.dtype, prefix.dtype)
        prefix, x = prefix.to(dtype), x.to(dtype)
        x = torch.cat([t for part in x.split([h * w for h, w in grids]) for t in (prefix, part)])
        self._begin(grids)
        return x, Packing.build(grids, self.prefix, x.device)

    def run_block(self, i: int, x: torch.Tensor, attend) -> torch.Tensor:
        return block_forward(x, self.vit.blocks[i].parts(self._block_rotation()), attend)

    def head(self, x: torch.Tensor, attend) -> torch.Tensor:
        """Backbone ``norm`` on all tokens ``[..., C]``, then the vision head (identity
        projection) when ``dense_tokens == "head"``."""
        x = self.vit.norm(x)
        if self.model.dense_tokens == "backbone":
            return x
        head = self.model.visual_model.head
        for block in head.blocks:
            x = block_forward(x, block.parts(), attend)
        return head.ln_final(x)

    def finish(self, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """Batched tokens ``[B, prefix + h*w, C]`` -> features ``[B, h, w, C]``."""
        return self.head(x, sdpa_attend)[:, self.prefix:].unflatten(1, grid)

    def finish_packed(self, x: torch.Tensor, packing: Packing) -> list[torch.Tensor]:
        """Packed tokens ``[T, C]`` -> list of ``[h, w, C]`` (prefix tokens dropped)."""
        x = self.head(x, varlen_attend(packing.cu_seqlens, packing.max_seqlen))
        starts = packing.cu_seqlens[:-1].long()
        keep = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
        keep[(starts[:, None] + torch.arange(self.prefix, device=x.device)).flatten()] = False
        return unpack_grids(x[keep], packing.grids)

    def load_tokenizer(self):
        """open_clip's CLIP BPE ``SimpleTokenizer`` (context 77) over the model's vocabulary file
        (default: open_clip's copy of ``bpe_simple_vocab_16e6``, the file the reference uses)."""
        from open_clip.tokenizer import SimpleTokenizer

        c = self.model.config
        path = self.model.vocab_path
        if path is not None and not os.path.isfile(path):
            raise UserError(f"tokenizer vocabulary not found: {path}")
        kwargs = {"bpe_path": path} if path is not None else {}
        return SimpleTokenizer(context_length=c.text_context, **kwargs)


# construction ---------------------------------------------------------------------------------
def build_dinov3txt(name: str, weights=None, trusted: bool = False) -> DinoTxt:
    """A :class:`DinoTxt` of config ``name``. ``weights``: a ``spar_fast.runtime.Weights`` (random
    with its seed, or a file holding the full state dict; ``hub``: one-line UserError), or None
    for a random initialization from the global RNG."""
    from .weights import check_finite, load_state_dict_strict, read_state_dict

    config = DinoTxtConfig.load(name)
    if weights is not None and weights.kind == "hub":
        raise UserError(HUB_MESSAGE)
    if weights is not None and weights.kind == "file":
        model = _uninitialized(config)
        state = read_state_dict(weights.path, trusted=trusted)
        check_finite(state, weights.path)
        load_state_dict_strict(model, state, weights.path)
        return model.eval()
    log.warning("backbone %s: random initialization (no pretrained weights)", name)
    with torch.random.fork_rng(devices=[], enabled=weights is not None):
        if weights is not None:
            torch.manual_seed(weights.seed)
        model = DinoTxt(config)
        init_random(model)
    return model.eval()


def _uninitialized(config: DinoTxtConfig, **kwargs) -> DinoTxt:
    """A :class:`DinoTxt` with allocated but unset tensors (3x faster than initializing ViT-L and
    the text tower); only for a strict load, which overwrites every parameter and buffer."""
    with torch.device("meta"):
        model = DinoTxt(config, **kwargs)
    return model.to_empty(device="cpu")


def official_state_dict(backbone_path: str, head_and_text_path: str) -> dict[str, torch.Tensor]:
    """The full state dict from the two official files: the backbone's keys under
    ``visual_model.backbone.``, then the head-and-text file's keys (which win, as in the
    reference's loading order)."""
    from .weights import read_state_dict

    state = {f"visual_model.backbone.{k}": v for k, v in read_state_dict(backbone_path).items()}
    state.update(read_state_dict(head_and_text_path))
    return state


def load_official(backbone_path: str, head_and_text_path: str, vocab_path: str | None = None,
                  dense_tokens: str = "backbone", name: str = "dinov3txt-l16") -> DinoTxt:
    """:class:`DinoTxt` loaded strictly from the official files (a mismatch names the keys)."""
    from .weights import load_state_dict_strict

    model = _uninitialized(DinoTxtConfig.load(name), vocab_path=vocab_path, dense_tokens=dense_tokens)
    load_state_dict_strict(model, official_state_dict(backbone_path, head_and_text_path),
                           f"{backbone_path} + {head_and_text_path}")
    return model.eval()


def convert_official(backbone_path: str, head_and_text_path: str, out_path: str,
                     name: str = "dinov3txt-l16") -> None:
    """Write the official files as one safetensors full state dict (checked against the model)."""
    from .weights import save_weights

    save_weights(load_official(backbone_path, head_and_text_path, name=name), out_path)

