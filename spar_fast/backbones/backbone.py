"""``Backbone``: an open_clip model run with spar_fast's own dense forward (SPEC §1).

``forward`` takes a same-size batch ``[B, 3, H, W]`` through batched SDPA (the teacher's path);
``forward_packed`` takes images of any sizes as one packed token sequence ``[T, C]`` with
attention restricted to each image (``spar_fast.ops.varlen_attention``; the training path).
"""
from __future__ import annotations

import logging
import os

import torch
import torch.nn as nn

from ..errors import UserError
from ..runtime import Weights
from . import registry
from .dinov3txt import DinoTxtTower, is_dinotxt
from .layers import require_inactive, sdpa_attend, varlen_attend
from .naflex import NaFlexTower, is_naflex
from .openclip_vit import OpenCLIPTower, is_openclip_vit
from .siglip2 import SigLIP2Tower, is_siglip2

log = logging.getLogger(__name__)


def _delta_base(path: str, meta: dict, base) -> Weights:
    """The base weights of the delta file ``path``: ``base`` when given, else the recorded one."""
    try:
        return Weights.parse(base if base is not None else meta.get("base_weights"))
    except UserError as exc:
        raise UserError(f"{path}: its base weights {meta.get('base_weights')!r} cannot be loaded ({exc}); "
                        "pass the base (base=..., --base-weights PATH)") from None


def _create_seeded(create_model, open_clip_name: str, seed: int) -> nn.Module:
    """``create_model(open_clip_name)`` without weights, initialized from ``seed`` on the CPU
    generator (forked: the caller's random state is untouched), so ``random:SEED`` gives the same
    weights in every process. open_clip's "No pretrained weights loaded ... initialized randomly"
    warning is silenced: the weights are either a file loaded right after or announced here."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return create_model(open_clip_name, pretrained=None)
    finally:
        logging.disable(previous)


class Backbone(nn.Module):
    """Dense features of an open_clip model (SigLIP2 timm trunk or OpenCLIP VisionTransformer).

    Attributes: ``family`` ("siglip2" | "naflex" | "openclip" | "dinov3txt"), ``name``,
    ``patch_size``, ``window`` (native size; NaFlex: the square fitting its patch budget),
    ``feature_dim``, ``mean``/``std`` (tuples), ``num_blocks``, ``model`` (open_clip model),
    ``weights_id`` (which weights, for cache keys; None for a wrapped model).
    """

    def __init__(self, model: nn.Module, name: str | None = None, open_clip_name: str | None = None):
        super().__init__()
        if is_dinotxt(model):
            tower = DinoTxtTower(model)
        elif is_naflex(model):
            tower = NaFlexTower(model)
        elif is_siglip2(model):
            tower = SigLIP2Tower(model)
        elif is_openclip_vit(model):
            tower = OpenCLIPTower(model)
        else:
            visual = getattr(model, "visual", None)
            raise UserError(f"unsupported open_clip model: vision tower {type(visual).__name__} is neither a timm "
                            "SigLIP2 trunk with an attention pool nor an open_clip VisionTransformer")
        self.model = model
        self.training = model.training  # mirror the wrapped model's train/eval mode
        self._tower = tower
        self._open_clip_name = open_clip_name
        self._tokenizer = None
        self.weights_id = None  # set by from_pretrained: which weights (Weights.identity())
        self.delta = None  # set by from_pretrained for a delta student (delta.DeltaInfo)
        # a distilled student (a spar_fast trainer output or an official SPAR .ckpt): LPOSS's
        # paper gamma depends on it (segmentation.lposs.default_gamma)
        self.distilled = False
        self.family = tower.family
        self.name = name or (registry.spar_name(open_clip_name) if open_clip_name else None) or open_clip_name
        self.patch_size = tower.patch_size
        self.window = tower.window
        self.feature_dim = tower.feature_dim
        self.mean = tuple(tower.mean)
        self.std = tuple(tower.std)
        self.num_blocks = tower.num_blocks

    # construction ---------------------------------------------------------------------------
    @classmethod
    def from_open_clip(cls, model: nn.Module, name: str | None = None) -> "Backbone":
        """Wrap an existing open_clip model (``name``: spar_fast or open_clip config name, for text)."""
        open_clip_name = registry.KNOWN[name].open_clip_name if name in registry.KNOWN else name
        return cls(model, name=name, open_clip_name=open_clip_name)

    @classmethod
    def from_pretrained(cls, name: str | None = None, weights="hub", device=None, trusted: bool = False,
                        base=None, max_patches="default", **deprecated) -> "Backbone":
        """Build through open_clip with ``weights``: ``"hub"`` (the published weights, needs the
        network once), ``"random"`` / ``"random:SEED"`` (a seeded random init, the same in every
        process), a local checkpoint path (any format of
        :func:`spar_fast.backbones.weights.load_weights`; ``trusted`` allows full unpickling), a
        delta student file (its base rebuilt, checked and the delta applied; ``base`` replaces
        the base weights it records), a saved model folder or Hugging Face hub id ``org/name``
        (:mod:`spar_fast.backbones.pretrained`), or a :class:`spar_fast.runtime.Weights`.
        ``name`` may itself be such a folder or hub id; ``None`` takes the backbone a delta or
        folder records (else ``siglip2-b16-512``). Sets ``weights_id`` (:meth:`Weights.identity`)
        and, for a delta, ``delta`` (its metadata and tensor names). The older
        ``pretrained=True | False | PATH`` still works, with a deprecation warning.
        ``max_patches``: NaFlex backbones' patch budget (:meth:`set_max_patches`; "default" keeps
        the model's own)."""
        from . import delta as deltas
        from . import pretrained as folders

        chosen = Weights.parse(weights) if not deprecated else Weights.deprecated_keyword(deprecated, "from_pretrained")
        if name is not None and name not in registry.KNOWN and folders.names_a_folder_or_repo(name):
            name, chosen = None, Weights.parse(name)
        if chosen.kind == "pretrained":
            folder = folders.resolve_folder(chosen)
            config = folders.read_config(folder)
            if name is not None and name != config["backbone"]:
                raise UserError(f"{chosen} holds a {config['backbone']!r} model, not {name!r} (use --backbone "
                                f"{config['backbone']} or leave --backbone out)")
            bb = cls.from_pretrained(config["backbone"], weights=folders.model_file(folder), device=device,
                                     trusted=trusted, base=base, max_patches=max_patches)
            bb.weights_id = Weights("pretrained", path=folder).identity()
            return bb
        meta = deltas.read_delta_metadata(chosen.path) if chosen.kind == "file" else None
        if meta is not None:
            name = name or meta["backbone"]
            deltas.check_backbone(meta, name, chosen.path)
            base_weights = _delta_base(chosen.path, meta, base)
            if base_weights.kind == "file" and os.path.samefile(base_weights.path, chosen.path):
                raise UserError(f"{chosen.path}: a delta cannot be its own base; pass the weights it was "
                                "trained from (base=..., --base-weights)")
            bb = cls.from_pretrained(name, weights=base_weights, trusted=trusted, max_patches=max_patches)
            deltas.apply_delta(bb.model, chosen.path, backbone=name, meta=meta, given=str(base_weights))
            bb.delta = deltas.DeltaInfo(meta, tuple(deltas.read_delta_names(chosen.path)))
            bb.distilled = True
            bb.weights_id = chosen.identity()
            return bb.to(device) if device is not None else bb
        return cls._from_weights(name or "siglip2-b16-512", chosen, device, trusted, max_patches)

    @classmethod
    def _from_weights(cls, name: str, chosen: Weights, device, trusted: bool,
                      max_patches="default") -> "Backbone":
        """:meth:`from_pretrained` for hub, random and full-file weights."""
        import open_clip

        from .weights import load_weights

        entry = registry.resolve(name)
        if entry.family == "dinov3txt":
            if max_patches != "default":
                raise UserError(f"max_patches applies to NaFlex backbones only, not dinov3txt ({name})")
            return cls._from_dinov3txt_weights(name, chosen, device, trusted)
        registry.ensure_registered()
        if chosen.kind == "hub":
            if entry.pretrained_tag is None:
                raise UserError(f"{name!r} has no hub weights; use random weights (weights='random[:SEED]', "
                                "--weights random) or a local file (weights=PATH, --weights PATH)")
            try:
                if entry.hub_source:
                    model = open_clip.create_model(entry.hub_source)
                else:
                    model = open_clip.create_model(entry.open_clip_name, pretrained=entry.pretrained_tag)
            except Exception as exc:
                source = entry.hub_source or f"{entry.open_clip_name}, {entry.pretrained_tag}"
                raise UserError(f"cannot fetch the {name!r} hub weights ({source}): "
                                f"{str(exc).splitlines()[0] if str(exc) else exc!r}; "
                                "offline, use a local file (weights=PATH, --weights PATH) or random "
                                "weights (weights='random', --weights random)") from exc
        else:
            model = _create_seeded(open_clip.create_model, entry.open_clip_name, chosen.seed or 0)
            if chosen.kind == "random":
                log.info("backbone %s: random initialization %s (no pretrained weights)", name, chosen)
            else:
                load_weights(model, chosen.path, trusted=trusted)
        model.eval()
        if device is not None:
            model.to(device)
        bb = cls(model, name=name if name in registry.KNOWN else None, open_clip_name=entry.open_clip_name)
        bb.weights_id = chosen.identity()
        if chosen.kind == "file":
            from .weights import is_student_file

            bb.distilled = is_student_file(chosen.path)
        if max_patches != "default":
            bb.set_max_patches(max_patches)
        return bb

    def save_pretrained(self, folder, full: bool = False, dtype=None, metrics: dict | None = None) -> str:
        """Write a Hugging Face style model folder (``config.json``, ``model.safetensors``,
        ``README.md``): a delta over the recorded base when this backbone was loaded from one
        (``full=True``: the whole state dict, standalone); ``dtype`` ("fp16", "bf16") casts the
        stored tensors; ``metrics`` (name -> number) go into the model card. Returns the folder."""
        from .pretrained import save_pretrained
        return save_pretrained(self, folder, full=full, dtype=dtype, metrics=metrics)

    @classmethod
    def _from_dinov3txt_weights(cls, name: str, weights: Weights, device=None, trusted: bool = False) -> "Backbone":
        """DINOv3.txt family: ``weights`` as in :meth:`from_pretrained` (hub: one-line UserError
        telling how to get the official files)."""
        from .dinov3txt import build_dinov3txt

        bb = cls(build_dinov3txt(name, weights, trusted), name=name)
        bb.weights_id = weights.identity()
        return bb.to(device) if device is not None else bb

    @classmethod
    def from_dinov3txt(cls, backbone_path: str, head_and_text_path: str, vocab_path: str | None = None,
                       device=None, dense_tokens: str = "backbone") -> "Backbone":
        """``dinov3txt-l16`` from the official files (local paths; the tokenizer vocabulary
        defaults to open_clip's copy of ``bpe_simple_vocab_16e6``). ``dense_tokens``: "backbone"
        (SPAR's reference) or "head" (see :mod:`spar_fast.backbones.dinov3txt`)."""
        from .dinov3txt import load_official

        bb = cls(load_official(backbone_path, head_and_text_path, vocab_path, dense_tokens), name="dinov3txt-l16")
        return bb.to(device) if device is not None else bb

    # geometry / parameters ------------------------------------------------------------------
    @property
    def max_patches(self) -> int | None:
        """NaFlex: the patch budget of the input rule (None: each image's own patch count);
        None for the other families, which take any size as it is."""
        return getattr(self._tower, "max_patches", None)

    def set_max_patches(self, max_patches: int | None) -> None:
        """Set a NaFlex backbone's patch budget (docs/NAFLEX.md); ``window`` follows it."""
        if not hasattr(self._tower, "set_max_patches"):
            raise UserError(f"max_patches applies to NaFlex backbones only, not {self.family} ({self.name})")
        self._tower.set_max_patches(max_patches)
        self.window = self._tower.window

    def grid(self, height: int, width: int) -> tuple[int, int]:
        """Patch grid ``(h, w)`` of an ``H x W`` image (SigLIP2: ceil; OpenCLIP: floor)."""
        return self._tower.grid(height, width)

    def block_param_prefix(self, i: int) -> str:
        """Prefix of block ``i``'s names in ``model.named_parameters()`` (negative ``i`` allowed)."""
        return f"{self._tower.block_prefix}{self._block_index(i)}."

    def _block_index(self, i: int, allow_end: bool = False) -> int:
        n = self.num_blocks
        if not -n <= i < n + int(allow_end):
            raise UserError(f"block index {i} out of range for a backbone with {n} blocks")
        return i + n if i < 0 else i

    # dense forward --------------------------------------------------------------------------
    def _check_images(self, images: torch.Tensor, batched: bool) -> None:
        want = 4 if batched else 3
        if images.dim() != want or images.shape[-3] != 3:
            shape = "[B, 3, H, W]" if batched else "[3, H, W]"
            raise UserError(f"expected images {shape}, got {list(images.shape)}")
        h, w = self.grid(*images.shape[-2:])
        if h < 1 or w < 1:
            raise UserError(f"image {images.shape[-2]}x{images.shape[-1]} is smaller than one "
                            f"{self.patch_size}x{self.patch_size} patch")

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Same-size batch ``[B, 3, H, W]`` (normalized) -> features ``[B, h, w, C]``."""
        self._check_images(images, batched=True)
        if self.training:
            require_inactive(self._tower.stochastic_modules())
        tower = self._tower
        x, grid = tower.embed(images)
        for i in range(self.num_blocks):
            x = tower.run_block(i, x, sdpa_attend)
        return tower.finish(x, grid)

    def block_tokens(self, images: torch.Tensor, blocks: int) -> tuple[torch.Tensor, tuple[int, int]]:
        """The patch tokens after the first ``blocks`` blocks (no dense head):
        ``[B, 3, H, W]`` (normalized) -> ``([B, h * w, C] row-major, (h, w))``.

        Families whose embedding adds prefix tokens (class / register tokens) drop them here."""
        self._check_images(images, batched=True)
        if not 0 <= blocks <= self.num_blocks:
            raise UserError(f"blocks must be in [0, {self.num_blocks}], got {blocks}")
        tower = self._tower
        x, grid = tower.embed(images)
        for i in range(blocks):
            x = tower.run_block(i, x, sdpa_attend)
        return x[:, x.shape[1] - grid[0] * grid[1]:], grid

    def forward_packed(self, images: list[torch.Tensor], grad_from_block: int = 0) -> list[torch.Tensor]:
        """Images ``[3, Hi, Wi]`` of any sizes -> list of ``[hi, wi, C]``, as one packed sequence.

        Embedding and blocks before ``grad_from_block`` (negative counts from the end;
        ``num_blocks`` = only the head) run under ``torch.no_grad()``: no activations are kept.
        """
        if not images:
            return []
        for img in images:
            self._check_images(img, batched=False)
        if self.training:
            require_inactive(self._tower.stochastic_modules())
        first = self._block_index(grad_from_block, allow_end=True)
        grad = torch.is_grad_enabled()
        tower = self._tower
        with torch.set_grad_enabled(grad and first == 0):
            x, packing = tower.embed_packed(images)
        attend = varlen_attend(packing.cu_seqlens, packing.max_seqlen)
        for i in range(self.num_blocks):
            with torch.set_grad_enabled(grad and i >= first):
                x = tower.run_block(i, x, attend)
        return tower.finish_packed(x, packing)

    # text -----------------------------------------------------------------------------------
    tokenizer_path: str | None = None  # a local tokenizer file or folder (set_tokenizer)

    def set_tokenizer(self, path) -> None:
        """Use the local tokenizer at ``path`` (``--tokenizer``; see ``spar_fast.backbones.text``);
        None goes back to open_clip's tokenizer."""
        from .text import check_tokenizer_path
        path = None if path is None else check_tokenizer_path(path)
        if path != self.tokenizer_path:
            self.tokenizer_path, self._tokenizer = path, None

    @property
    def tokenizer(self):
        """The text tokenizer, loaded on first use: ``tokenizer_path``, else open_clip's (offline:
        from the Hugging Face cache), else for random weights only a stand-in; one-line UserError."""
        if self._tokenizer is None and hasattr(self._tower, "load_tokenizer"):
            self._tokenizer = self._tower.load_tokenizer()  # families with their own tokenizer
        if self._tokenizer is None:
            if self._open_clip_name is None:
                raise UserError("this backbone was wrapped without a model name; pass name= to "
                                "Backbone.from_open_clip to use its tokenizer")
            from .text import has_random_weights, load_tokenizer
            registry.ensure_registered()
            self._tokenizer = load_tokenizer(self._open_clip_name, self.tokenizer_path,
                                             random_weights=has_random_weights(self))
        return self._tokenizer

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        """Token ids ``[N, context_length]``."""
        return self.tokenizer(list(texts))

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        """``[N, D]`` fp32 L2-normalized text embeddings (``model.encode_text`` under no_grad)."""
        from .text import encode_text
        return encode_text(self.model, self.tokenizer, texts)

    def extra_repr(self) -> str:
        return (f"name={self.name}, family={self.family}, patch={self.patch_size}, window={self.window}, "
                f"dim={self.feature_dim}, blocks={self.num_blocks}")


def full_state_dict_of(weights, name: str | None = None, base=None) -> dict[str, torch.Tensor]:
    """The full open_clip state dict (CPU) of ``weights`` — a delta student (base rebuilt and
    checked), a full file, a model folder or hub id; what ``spar-fast export`` writes."""
    from .weights import full_state_dict

    return full_state_dict(Backbone.from_pretrained(name, weights=weights, base=base).model)


def export_weights(weights, out, name: str | None = None, base=None, full: bool = False, dtype=None,
                   metrics: dict | None = None) -> str:
    """Write the model of ``weights`` (any form :meth:`Backbone.from_pretrained` takes) to ``out``:
    a ``.safetensors`` path gets the full open_clip state dict (a standalone file, loadable
    without spar_fast's delta logic), any other path a model folder (a delta over the recorded
    base when the weights are one, unless ``full``). ``dtype`` ("fp16", "bf16") casts the
    stored tensors. Returns ``out``."""
    from ..runtime import check_output_file
    from .pretrained import cast_copy
    from .weights import save_weights

    out = os.fspath(out)
    bb = Backbone.from_pretrained(name, weights=weights, base=base)
    if out.lower().endswith(".safetensors"):
        check_output_file(out, (".safetensors",))
        save_weights(cast_copy(bb.model, dtype), out, metadata={"backbone": bb.name or "", "from": str(weights)})
        return out
    return bb.save_pretrained(out, full=full, dtype=dtype, metrics=metrics)
