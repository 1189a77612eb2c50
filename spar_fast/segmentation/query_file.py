"""Precomputed text queries: one safetensors file, so inference needs no tokenizer and no text tower.

Tensors: ``queries`` fp32 ``[Q, D]`` (unit rows) and ``query_to_class`` int64 ``[Q]``. Metadata
(safetensors header strings): ``format``, ``backbone``, ``feature_dim``, ``weights_id``,
``tokenizer`` ("default", a local tokenizer path, or "stand-in"), ``templates_sha256`` and
``classes`` (the class lines as a JSON list). Written by ``spar-fast queries``.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass

import torch

from ..atomic import atomic_write_with
from ..errors import UserError
from ..jsonfile import parse_json
from .queries import TEMPLATES_SHA256, parse_classes, text_queries

FORMAT = "spar_fast.queries/1"


@dataclass(frozen=True)
class QuerySet:
    """Text queries of a list of class lines for one backbone (see the module docstring)."""

    queries: torch.Tensor
    query_to_class: torch.Tensor
    lines: tuple[str, ...]
    backbone: str
    weights_id: str
    tokenizer: str
    templates_sha256: str

    @property
    def feature_dim(self) -> int:
        return int(self.queries.shape[1])


def compute_query_set(bb, classes, tokenizer=None, progress: bool | None = None) -> QuerySet:
    """Encode ``classes`` with ``bb``'s text tower (``tokenizer``: a local tokenizer path)."""
    from ..backbones.text import StandInTokenizer, weights_id

    queries, q2c, lines = text_queries(bb, classes, device="cpu", tokenizer=tokenizer, progress=progress)
    if isinstance(bb.tokenizer, StandInTokenizer):
        source = "stand-in"
    else:
        source = getattr(bb, "tokenizer_path", None) or "default"
    return QuerySet(queries.float().contiguous(), q2c.contiguous(), tuple(lines), str(bb.name),
                    str(weights_id(bb) or ""), source, TEMPLATES_SHA256)


def save_query_set(qs: QuerySet, path) -> None:
    """Write ``qs`` to ``path`` (atomic)."""
    from safetensors.torch import save_file

    meta = {"format": FORMAT, "backbone": qs.backbone, "feature_dim": str(qs.feature_dim),
            "weights_id": qs.weights_id, "tokenizer": qs.tokenizer,
            "templates_sha256": qs.templates_sha256, "classes": json.dumps(list(qs.lines))}
    tensors = {"queries": qs.queries.cpu(), "query_to_class": qs.query_to_class.cpu()}
    atomic_write_with(os.fspath(path), lambda tmp: save_file(tensors, tmp, metadata=meta))


def load_query_set(path) -> QuerySet:
    """Read a query file (one-line ``UserError`` when missing or not a spar_fast query file)."""
    from safetensors import safe_open

    where = os.fspath(path)
    if not os.path.isfile(where):
        raise UserError(f"query file not found: {where}")
    try:
        with safe_open(where, framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("format") != FORMAT:
                raise UserError(f"{where} is not a spar_fast query file (made by `spar-fast queries`)")
            queries, q2c = f.get_tensor("queries"), f.get_tensor("query_to_class")
        lines = parse_json(meta["classes"].encode(), f"{where}: metadata 'classes'")
        if not isinstance(lines, list) or not all(isinstance(line, str) for line in lines):
            raise UserError(f"{where}: metadata 'classes' is not a list of class lines")
        lines = tuple(lines)
        qs = QuerySet(queries.float(), q2c.long(), lines, meta["backbone"], meta["weights_id"],
                      meta["tokenizer"], meta["templates_sha256"])
    except UserError:
        raise
    except Exception as exc:
        raise UserError(f"cannot read query file {where} ({exc.__class__.__name__})") from exc
    num_q = qs.queries.shape[0] if qs.queries.dim() else 0
    if (qs.queries.dim() != 2 or qs.query_to_class.shape != (num_q,) or num_q == 0
            or not bool(torch.isfinite(qs.queries).all())
            or sorted(set(qs.query_to_class.tolist())) != list(range(len(lines)))):
        raise UserError(f"query file {where} is inconsistent: {tuple(qs.queries.shape)} queries, "
                        f"{len(lines)} class lines")
    return qs


def check_query_set(qs: QuerySet, bb) -> None:
    """One-line ``UserError`` unless ``qs`` was made for ``bb``'s architecture (name and dim)."""
    name = getattr(bb, "name", None)
    if name is not None and qs.backbone != str(name):
        raise UserError(f"the query file was made for backbone {qs.backbone}, not {name}; "
                        f"rerun `spar-fast queries --backbone {name}`")
    if qs.feature_dim != bb.feature_dim:
        raise UserError(f"the query file holds {qs.feature_dim}-dim queries but backbone {name} "
                        f"has {bb.feature_dim}-dim features")


def as_query_set(queries, bb, classes=None):
    """A checked :class:`~spar_fast.segmentation.query_file.QuerySet` from a query file path or a
    QuerySet; ``classes``, when also given, must equal its class lines."""
    qs = queries if isinstance(queries, QuerySet) else load_query_set(queries)
    check_query_set(qs, bb)
    if classes is not None and parse_classes(classes) != list(qs.lines):
        raise UserError("the classes given differ from the class lines of the query file; give only one")
    return qs


def resolve_queries(bb, classes=None, queries=None, device=None, cache_dir=None, tokenizer=None,
                    progress: bool | None = None):
    """``(queries [Q, D], query_to_class [Q], lines)`` from class text or precomputed queries.

    ``queries``: a query file path or a ``QuerySet`` (see :func:`as_query_set`; no tokenizer and
    no text tower are used). Otherwise ``classes`` go through :func:`text_queries`.
    """
    if queries is None:
        if classes is None:
            raise UserError("give the classes (class lines or a class file) or precomputed queries")
        return text_queries(bb, classes, device=device, cache_dir=cache_dir, tokenizer=tokenizer,
                            progress=progress)
    qs = as_query_set(queries, bb, classes)
    if device is None:
        device = next(iter(bb.parameters())).device
    return qs.queries.to(device), qs.query_to_class.to(device), list(qs.lines)
