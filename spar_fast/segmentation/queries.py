"""Text queries of open-vocabulary segmentation (SPEC §1, text side).

A class is one line of text; its names (synonyms) are separated by ", ". Every name is formatted
into the 80 OpenAI ImageNet prompt templates, each prompt encoded and L2-normalized, the prompts
averaged and L2-normalized again: one query per name. ``query_to_class`` maps queries to lines.

Embeddings are cached in memory per (backbone, class lines, device). With ``cache_dir`` they are
also kept on disk under ``<cache_dir>/<key>.pt``, the key being a hash of the backbone's
``weights_name`` and the class text (``default_cache_dir()``).
"""
from __future__ import annotations

import hashlib
import os
import weakref
from pathlib import Path

import torch

from ..atomic import atomic_write_with
from ..errors import UserError

# The 80 prompt templates of CLIP's ImageNet zero-shot evaluation, in their original order.
TEMPLATES = (
    "a bad photo of a {}.", "a photo of many {}.", "a sculpture of a {}.",
    "a photo of the hard to see {}.", "a low resolution photo of the {}.", "a rendering of a {}.",
    "graffiti of a {}.", "a bad photo of the {}.", "a cropped photo of the {}.",
    "a tattoo of a {}.", "the embroidered {}.", "a photo of a hard to see {}.",
    "a bright photo of a {}.", "a photo of a clean {}.", "a photo of a dirty {}.",
    "a dark photo of the {}.", "a drawing of a {}.", "a photo of my {}.", "the plastic {}.",
    "a photo of the cool {}.", "a close-up photo of a {}.", "a black and white photo of the {}.",
    "a painting of the {}.", "a painting of a {}.", "a pixelated photo of the {}.",
    "a sculpture of the {}.", "a bright photo of the {}.", "a cropped photo of a {}.",
    "a plastic {}.", "a photo of the dirty {}.", "a jpeg corrupted photo of a {}.",
    "a blurry photo of the {}.", "a photo of the {}.", "a good photo of the {}.",
    "a rendering of the {}.", "a {} in a video game.", "a photo of one {}.", "a doodle of a {}.",
    "a close-up photo of the {}.", "a photo of a {}.", "the origami {}.",
    "the {} in a video game.", "a sketch of a {}.", "a doodle of the {}.", "a origami {}.",
    "a low resolution photo of a {}.", "the toy {}.", "a rendition of the {}.",
    "a photo of the clean {}.", "a photo of a large {}.", "a rendition of a {}.",
    "a photo of a nice {}.", "a photo of a weird {}.", "a blurry photo of a {}.",
    "a cartoon {}.", "art of a {}.", "a sketch of the {}.", "a embroidered {}.",
    "a pixelated photo of a {}.", "itap of the {}.", "a jpeg corrupted photo of the {}.",
    "a good photo of a {}.", "a plushie {}.", "a photo of the nice {}.",
    "a photo of the small {}.", "a photo of the weird {}.", "the cartoon {}.", "art of the {}.",
    "a drawing of the {}.", "a photo of the large {}.", "a black and white photo of a {}.",
    "the plushie {}.", "a dark photo of a {}.", "itap of a {}.", "graffiti of the {}.",
    "a toy {}.", "itap of my {}.", "a photo of a cool {}.", "a photo of a small {}.",
    "a tattoo of the {}.",
)
assert len(TEMPLATES) == 80

def default_cache_dir() -> Path:
    """``$SPAR_FAST_CACHE_DIR/text``, by default ``~/.cache/spar_fast/text``."""
    base = os.environ.get("SPAR_FAST_CACHE_DIR") or Path.home() / ".cache" / "spar_fast"
    return Path(base) / "text"

# Prompts encoded per text-tower call: bounds activation memory (80 prompts per name).
_ENCODE_CHUNK = 1024

_memory: "weakref.WeakKeyDictionary[object, dict]" = weakref.WeakKeyDictionary()


def parse_classes(classes) -> list[str]:
    """Class lines from a list/tuple of lines, a path to a class file, or a ";"-joined string.

    A string naming an existing file is read (one class per line, blank lines skipped); any other
    string is split at ";" (the CLI form ``"road, street; car; sky"``). Names inside a line are
    separated by ", ". Raises ``UserError`` for an empty list or an empty name.
    """
    if isinstance(classes, (str, os.PathLike)) and os.path.isfile(classes):
        text = Path(classes).read_text(encoding="utf-8")
        lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
        where = f"class file {os.fspath(classes)}"
    elif isinstance(classes, str):
        lines = [part.strip() for part in classes.split(";") if part.strip()]
        where = "class string"
    else:
        lines = [str(ln).strip() for ln in classes]
        where = "class list"
    if not lines:
        raise UserError(f"{where} has no classes")
    for i, line in enumerate(lines):
        if any(not name.strip() for name in line.split(",")):
            raise UserError(f"{where}: class {i} ({line!r}) has an empty name")
    return lines


def class_names(lines: list[str]) -> tuple[list[str], torch.Tensor]:
    """Split lines into names: ``names [Q]`` and ``query_to_class`` int64 ``[Q]``."""
    names, owner = [], []
    for k, line in enumerate(lines):
        for name in line.split(","):
            names.append(name.strip())
            owner.append(k)
    return names, torch.tensor(owner, dtype=torch.int64)


@torch.no_grad()
def embed_names(encode_text, names: list[str]) -> torch.Tensor:
    """Template-averaged text embeddings ``[Q, D]`` fp32, unit norm.

    ``encode_text(list[str]) -> [N, D]``. Each prompt embedding is L2-normalized, the 80 of a
    name averaged, the mean L2-normalized again.
    """
    prompts = [t.format(name) for name in names for t in TEMPLATES]
    parts = [encode_text(prompts[i:i + _ENCODE_CHUNK]).float()
             for i in range(0, len(prompts), _ENCODE_CHUNK)]
    emb = torch.nn.functional.normalize(torch.cat(parts), dim=-1)
    emb = emb.view(len(names), len(TEMPLATES), -1).mean(dim=1)
    return torch.nn.functional.normalize(emb, dim=-1)


def cache_key(bb, lines: list[str]) -> str | None:
    """Disk cache key: hash of ``bb.weights_name`` (set by ``load_backbone``) and the class text.

    None (no disk caching) for a backbone without ``weights_name``, e.g. random weights.
    """
    name = getattr(bb, "weights_name", None)
    if not name:
        return None
    text = name + "\n" + "\n".join(lines)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


def text_queries(bb, classes, device=None, cache_dir: str | os.PathLike | None = None):
    """Queries of ``classes`` for backbone ``bb``.

    Returns ``(queries [Q, D] fp32 unit-norm, query_to_class int64 [Q], lines list[str])`` on
    ``device`` (default: the device of the backbone's parameters).
    """
    lines = parse_classes(classes)
    if device is None:
        device = next(iter(bb.parameters())).device if hasattr(bb, "parameters") else "cpu"
    device = torch.device(device)
    per_bb = _memory.setdefault(bb, {})
    key = (tuple(lines), str(device))
    if key not in per_bb:
        names, q2c = class_names(lines)
        key_hash = cache_key(bb, lines) if cache_dir is not None else None
        path = Path(cache_dir) / f"{key_hash}.pt" if key_hash is not None else None
        queries = None
        if path is not None and path.is_file():
            queries = torch.load(path, map_location="cpu", weights_only=True)
            if queries.shape[0] != len(names):
                queries = None
        if queries is None:
            queries = embed_names(bb.encode_text, names).cpu()
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
                atomic_write_with(str(path), lambda tmp: torch.save(queries, tmp))
        per_bb[key] = (queries.to(device), q2c.to(device))
    queries, q2c = per_bb[key]
    return queries, q2c, lines
