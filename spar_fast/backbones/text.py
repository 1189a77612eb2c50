"""Text side: the open_clip tokenizer of a backbone and L2-normalized text embeddings."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import UserError


def load_tokenizer(open_clip_name: str):
    """open_clip's tokenizer for a config name; one-line UserError when it cannot be loaded
    (e.g. SigLIP2's Hugging Face tokenizer without hub access or without ``transformers``)."""
    import open_clip

    try:
        return open_clip.get_tokenizer(open_clip_name)
    except Exception as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
        raise UserError(f"cannot load the text tokenizer of {open_clip_name!r} ({exc.__class__.__name__}: "
                        f"{reason}); it may need the Hugging Face hub (and `transformers`) once to cache it") from exc


def encode_text(model: nn.Module, tokenizer, texts: list[str]) -> torch.Tensor:
    """``texts`` (N strings) -> ``[N, D]`` fp32, L2-normalized, through ``model.encode_text``."""
    if isinstance(texts, str):
        texts = [texts]
    device = next(model.parameters()).device
    with torch.no_grad():
        tokens = tokenizer(list(texts)).to(device)
        return F.normalize(model.encode_text(tokens).float(), dim=-1)
