"""Text queries of open-vocabulary segmentation (SPEC §1 text side, §5.4), as the reference.

A class is one line of text; its names (synonyms) are separated by ", " exactly, and kept as
written (the official Context60 file ends a line with "wood ", and that space is encoded). Every
name is formatted into the 80 OpenAI ImageNet prompt templates; the 80 prompts of one name are
encoded in one batch, each embedding L2-normalized, averaged and L2-normalized again: one query
per name, bit for bit the reference's loop. ``query_to_class`` maps queries to lines.

Encoding is one text-tower call per name (:data:`PROMPTS_PER_CALL` prompts), each reduced to its
row of a preallocated ``[Q, D]`` output at once: peak memory does not grow with the number of
names beyond that output. Embeddings are cached in memory per (backbone, class lines, tokenizer,
device), the :data:`MEMORY_ENTRIES` most recently used lists per backbone. With
``cache_dir`` they are also kept on disk under ``<cache_dir>/<key>.pt`` (``default_cache_dir()``),
the key hashing the backbone name, its weights id, the tokenizer path and the class text; random
weights are never cached on disk. :func:`~spar_fast.segmentation.query_file.resolve_queries` picks between class text and a
precomputed query file (``spar_fast.segmentation.query_file``).
"""
from __future__ import annotations

import hashlib
import os
import sys
import weakref
from collections import OrderedDict
from pathlib import Path

import torch
import torch.nn.functional as F

from ..atomic import atomic_write_with
from ..errors import UserError
from .classes import NAME_SEPARATOR

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

# sha256 of the templates joined by newlines: recorded in query files.
TEMPLATES_SHA256 = hashlib.sha256("\n".join(TEMPLATES).encode("utf-8")).hexdigest()

# Prompts per text-tower call: one name's templates, one forward (the reference's batch; bit for
# bit its numbers). A list of names is never encoded as one batch.
PROMPTS_PER_CALL = len(TEMPLATES)

# Class lists kept in memory per backbone (least recently used dropped first): a server that sees
# a new list with every request keeps at most this many.
MEMORY_ENTRIES = 8

# The text progress bar appears only when encoding takes longer than this (seconds).
_PROGRESS_DELAY_S = 1.0

_memory: "weakref.WeakKeyDictionary[object, OrderedDict]" = weakref.WeakKeyDictionary()


def default_cache_dir() -> Path:
    """``$SPAR_FAST_CACHE_DIR/text``, by default ``~/.cache/spar_fast/text``."""
    base = os.environ.get("SPAR_FAST_CACHE_DIR") or Path.home() / ".cache" / "spar_fast"
    return Path(base) / "text"


def read_class_file(path) -> list[str]:
    """Class lines of a file as the reference reads them: lines without their newline, nothing
    else removed. Trailing blank lines are ignored; a blank line inside is an error (it would
    shift the class indices)."""
    if not os.path.isfile(path):
        raise UserError(f"class file not found: {os.fspath(path)}")
    from ..jsonfile import read_text

    lines = read_text(path, "class file").split("\n")  # universal newlines, like the reference
    while lines and not lines[-1].strip():
        lines.pop()
    for i, line in enumerate(lines):
        if not line.strip():
            raise UserError(f"class file {os.fspath(path)}: line {i + 1} is blank (one class per line)")
    return lines


def parse_classes(classes) -> list[str]:
    """Class lines from a list/tuple of lines, a path to a class file, or a ";"-joined string.

    A path or a string naming an existing file is read with :func:`read_class_file`; any other
    string is split at ";" and each part stripped (the CLI form ``"road, street; car; sky"``).
    Lines of a list are kept as given. Raises ``UserError`` for no classes or an empty name.
    """
    if isinstance(classes, os.PathLike) or (isinstance(classes, str) and os.path.isfile(classes)):
        lines, where = read_class_file(classes), f"class file {os.fspath(classes)}"
    elif isinstance(classes, str):
        lines = [part.strip() for part in classes.split(";") if part.strip()]
        where = "class string"
    else:
        lines, where = list(classes), "class list"
    if not lines:
        raise UserError(f"{where} has no classes")
    for i, line in enumerate(lines):
        if not isinstance(line, str) or "\n" in line:
            raise UserError(f"{where}: class {i} ({line!r}) is not one line of text")
        if any(not name.strip() for name in line.split(NAME_SEPARATOR)):
            raise UserError(f"{where}: class {i} ({line!r}) has an empty name")
    return lines


def class_names(lines: list[str]) -> tuple[list[str], torch.Tensor]:
    """Split lines at ", " into names as written: ``names [Q]`` and ``query_to_class`` int64 ``[Q]``."""
    names, owner = [], []
    for k, line in enumerate(lines):
        for name in line.split(NAME_SEPARATOR):
            names.append(name)
            owner.append(k)
    return names, torch.tensor(owner, dtype=torch.int64)


@torch.no_grad()
def embed_names(encode_text, names: list[str], progress: bool | None = None) -> torch.Tensor:
    """Template-averaged text embeddings ``[Q, D]`` fp32, unit norm.

    ``encode_text(list[str]) -> [N, D]`` L2-normalized rows (as ``Backbone.encode_text``). Per
    name: its :data:`PROMPTS_PER_CALL` (80) prompts in one call, the mean of the rows,
    L2-normalized, written at once into one preallocated ``[Q, D]`` output. Nothing else is kept
    from a call and no graph is built, so peak memory is one call's activations plus the output,
    whatever Q (docs/RELIABILITY.md, "Bounded memory"). ``progress``: a bar over names on stderr
    (None: only when stderr is a terminal; False: never).
    """
    from tqdm.auto import tqdm

    if not names:
        raise UserError("no class names to encode")
    bar = tqdm(names, desc="text queries", unit="name", file=sys.stderr, leave=False,
               delay=_PROGRESS_DELAY_S, disable=None if progress is None else not progress)
    out = None
    for i, name in enumerate(bar):
        row = F.normalize(encode_text([t.format(name) for t in TEMPLATES]).float().mean(dim=0), dim=-1)
        if out is None:
            out = torch.empty(len(names), row.shape[0], dtype=torch.float32, device=row.device)
        out[i] = row
        del row
    return out


def cache_key(bb, lines: list[str]) -> str | None:
    """Disk cache key: hash of the backbone name, weights id, tokenizer path and class text.

    None (no disk caching) for unknown or random weights.
    """
    from ..backbones.text import has_random_weights, weights_id

    wid = weights_id(bb)
    if not wid or has_random_weights(bb):
        return None
    parts = [str(getattr(bb, "name", "")), str(wid), str(getattr(bb, "tokenizer_path", None) or ""),
             TEMPLATES_SHA256, *lines]
    return hashlib.sha256("\n".join(parts).encode("utf-8")).hexdigest()[:32]


def _cached(path: Path, count: int) -> torch.Tensor | None:
    """The cached queries ``[count, D]`` of ``path``; ``None`` (recomputed and rewritten) for a
    file that is damaged, expands beyond its size or holds anything else."""
    from ..backbones.weights import torch_load

    try:
        queries = torch_load(str(path))
    except Exception:  # noqa: BLE001 - any damage: the cache is rebuilt
        return None
    if (not isinstance(queries, torch.Tensor) or queries.dim() != 2 or queries.shape[0] != count
            or not queries.is_floating_point() or not bool(torch.isfinite(queries).all())):
        return None
    return queries


def text_queries(bb, classes, device=None, cache_dir: str | os.PathLike | None = None,
                 tokenizer=None, progress: bool | None = None):
    """Queries of ``classes`` for backbone ``bb``.

    ``tokenizer``: a local tokenizer path for ``bb`` (``bb.set_tokenizer``; kept for later calls).
    Returns ``(queries [Q, D] fp32 unit-norm, query_to_class int64 [Q], lines list[str])`` on
    ``device`` (default: the device of the backbone's parameters).
    """
    lines = parse_classes(classes)
    if tokenizer is not None:
        bb.set_tokenizer(tokenizer)
    if device is None:
        device = next(iter(bb.parameters())).device if hasattr(bb, "parameters") else "cpu"
    device = torch.device(device)
    per_bb = _memory.setdefault(bb, OrderedDict())
    key = (tuple(lines), getattr(bb, "tokenizer_path", None), str(device))
    if key in per_bb:
        per_bb.move_to_end(key)
    else:
        names, q2c = class_names(lines)
        key_hash = cache_key(bb, lines) if cache_dir is not None else None
        path = Path(cache_dir) / f"{key_hash}.pt" if key_hash is not None else None
        queries = None
        if path is not None and path.is_file():
            queries = _cached(path, len(names))
        if queries is None:
            queries = embed_names(bb.encode_text, names, progress).cpu()
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
                atomic_write_with(str(path), lambda tmp: torch.save(queries, tmp))
        per_bb[key] = (queries.to(device), q2c.to(device))
        while len(per_bb) > MEMORY_ENTRIES:
            per_bb.popitem(last=False)
    queries, q2c = per_bb[key]
    return queries, q2c, lines

