"""Text side: the tokenizer of a backbone (offline-first) and L2-normalized text embeddings.

Where the tokenizer comes from, in order:

1. ``path`` (``--tokenizer``): a local tokenizer. Models whose open_clip config names a Hugging
   Face tokenizer (SigLIP2) take a tokenizer folder (as saved by ``save_pretrained`` or as in the
   model's hub repository) or the ``tokenizer.json`` inside one; CLIP-BPE models (OpenCLIP, the
   tiny configs) take a gzipped BPE merges file like open_clip's ``bpe_simple_vocab_16e6.txt.gz``.
2. open_clip's own tokenizer. CLIP-BPE tokenizers ship with open_clip. Hugging Face tokenizers
   are read from the Hugging Face cache first; the hub is asked only when ``HF_HUB_OFFLINE`` is
   not set and one short connection attempt reaches it (no retry loops).
3. For random weights only: :class:`StandInTokenizer`, announced on stderr. Real weights never
   get it: they get a one-line ``UserError`` naming ``--tokenizer``, ``--queries`` and the cache.
"""
from __future__ import annotations

import functools
import os
import socket
import sys
from urllib.parse import urlparse

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import UserError

# One TCP connect to the hub: a cluster node without a route refuses or times out within it.
_HUB_TIMEOUT_S = 3.0
_TRUE = {"1", "ON", "YES", "TRUE"}

# Texts per text-tower forward (tokenized per batch too): one class name's 80 prompt templates
# (``spar_fast.segmentation.queries.TEMPLATES``), so a long list never becomes one batch and
# memory does not grow with the number of texts (docs/RELIABILITY.md, "Bounded memory").
TEXT_BATCH = 80

# open_clip's defaults when a text config leaves them out.
_DEFAULT_VOCAB, _DEFAULT_CONTEXT = 49408, 77


def hub_offline() -> bool:
    """True when ``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE`` is set or the hub does not answer."""
    if any(os.environ.get(k, "").strip().upper() in _TRUE for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")):
        return True
    return not _hub_reachable(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")


@functools.lru_cache(maxsize=None)
def _hub_reachable(endpoint: str) -> bool:
    """One connection attempt per endpoint and process."""
    url = urlparse(endpoint)
    port = url.port or (80 if url.scheme == "http" else 443)
    try:
        socket.create_connection((url.hostname, port), timeout=_HUB_TIMEOUT_S).close()
        return True
    except (OSError, TypeError):
        return False


def weights_id(bb) -> str | None:
    """``bb.weights_id`` (set by ``Backbone.from_pretrained``); None: unknown weights (a wrapped
    model or a stand-in object), which never get the stand-in tokenizer or the disk cache."""
    return getattr(bb, "weights_id", None)


def has_random_weights(bb) -> bool:
    """Whether ``bb`` holds random weights: its weights id starts with "random"."""
    return str(weights_id(bb) or "").startswith("random")


def _text_config(open_clip_name: str) -> dict:
    import open_clip
    return (open_clip.get_model_config(open_clip_name) or {}).get("text_cfg", {})


def check_tokenizer_path(path) -> str:
    """Absolute path of an existing local tokenizer file or folder (one-line UserError otherwise)."""
    full = os.path.abspath(os.path.expanduser(os.fspath(path)))
    if not os.path.exists(full):
        raise UserError(f"tokenizer not found: {path} (--tokenizer takes a local tokenizer folder or file)")
    return full


def load_tokenizer(open_clip_name: str, path: str | None = None, random_weights: bool = False):
    """The tokenizer of open_clip config ``open_clip_name``: ``list[str] -> LongTensor [N, L]``.

    ``path``: a local tokenizer (see the module docstring). ``random_weights``: allow the
    stand-in tokenizer when the real one cannot be loaded. Raises a one-line ``UserError``.
    """
    cfg = _text_config(open_clip_name)
    if path is not None:
        return _local_tokenizer(open_clip_name, cfg, check_tokenizer_path(path))
    try:
        return _default_tokenizer(open_clip_name, "hf_tokenizer_name" in cfg)
    except Exception as exc:
        reason = _one_line(exc)
        if random_weights:
            tokenizer = StandInTokenizer(cfg.get("vocab_size", _DEFAULT_VOCAB),
                                         cfg.get("context_length", _DEFAULT_CONTEXT))
            print(f"NOTICE: the text tokenizer of {open_clip_name!r} is not available ({reason}); the "
                  f"weights are random, so a stand-in byte tokenizer is used ({tokenizer.vocab_size} "
                  f"ids, context {tokenizer.context_length}): text queries only exercise the pipeline",
                  file=sys.stderr)
            return tokenizer
        raise UserError(f"cannot load the text tokenizer of {open_clip_name!r} ({reason}); offline "
                        "(HF_HUB_OFFLINE or no route to the hub) it must be in the Hugging Face cache: "
                        "pass --tokenizer PATH (a local tokenizer folder or file) or --queries FILE "
                        "(made by `spar-fast queries` where the tokenizer is available)") from exc


def _one_line(exc: Exception) -> str:
    """``"ErrorType: first line of the message"``."""
    text = str(exc).strip()
    return f"{exc.__class__.__name__}: {text.splitlines()[0] if text else 'no details'}"


def _default_tokenizer(open_clip_name: str, hugging_face: bool):
    """open_clip's tokenizer; a Hugging Face one from the cache, the hub only when reachable."""
    import open_clip

    if not hugging_face:
        return open_clip.get_tokenizer(open_clip_name)
    try:
        return open_clip.get_tokenizer(open_clip_name, local_files_only=True)
    except Exception:
        if hub_offline():
            raise
    return open_clip.get_tokenizer(open_clip_name)


def _local_tokenizer(open_clip_name: str, cfg: dict, path: str):
    """A tokenizer read from ``path`` with the config's context length and tokenizer options."""
    kwargs = dict(cfg.get("tokenizer_kwargs", {}), context_length=cfg.get("context_length", _DEFAULT_CONTEXT))
    if "hf_tokenizer_name" in cfg:
        from open_clip.tokenizer import HFTokenizer
        folder = os.path.dirname(path) if os.path.isfile(path) else path
        try:
            return HFTokenizer(folder, local_files_only=True, **kwargs)
        except Exception as exc:
            raise UserError(f"--tokenizer {path}: not a Hugging Face tokenizer folder for {open_clip_name!r} "
                            f"({_one_line(exc)})") from exc
    from open_clip.tokenizer import SimpleTokenizer
    try:
        return SimpleTokenizer(bpe_path=path, **kwargs)
    except Exception as exc:
        raise UserError(f"--tokenizer {path}: {open_clip_name!r} takes a gzipped CLIP BPE merges file "
                        f"such as open_clip's bpe_simple_vocab_16e6.txt.gz ({exc.__class__.__name__})") from exc


class StandInTokenizer:
    """Deterministic byte tokenizer for random-weight pipeline checks: ``list[str] -> [N, L]``.

    Each UTF-8 byte ``b`` becomes id ``1 + b % (vocab_size - 2)``, then an end id
    ``vocab_size - 1`` (the largest, so argmax pooling finds it), zero padding to
    ``context_length`` (truncated texts keep their end id).
    """

    def __init__(self, vocab_size: int, context_length: int):
        if vocab_size < 3 or context_length < 1:
            raise UserError(f"stand-in tokenizer needs a vocabulary of >= 3 ids and a context >= 1, "
                            f"got {vocab_size} and {context_length}")
        self.vocab_size = int(vocab_size)
        self.context_length = int(context_length)

    def __call__(self, texts) -> torch.Tensor:
        texts = [texts] if isinstance(texts, str) else list(texts)
        out = torch.zeros(len(texts), self.context_length, dtype=torch.long)
        for i, text in enumerate(texts):
            ids = [1 + b % (self.vocab_size - 2) for b in text.encode("utf-8")][:self.context_length - 1]
            ids.append(self.vocab_size - 1)
            out[i, :len(ids)] = torch.tensor(ids, dtype=torch.long)
        return out


def encode_text(model: nn.Module, tokenizer, texts: list[str], batch: int | None = None) -> torch.Tensor:
    """``texts`` (N strings) -> ``[N, D]`` fp32, L2-normalized, through ``model.encode_text``.

    At most ``batch`` texts (default :data:`TEXT_BATCH`) are tokenized and run per forward, under
    ``no_grad`` (no graph is kept), each result written into one preallocated ``[N, D]`` output:
    peak memory is one batch's activations plus the output, whatever N.
    """
    texts = [texts] if isinstance(texts, str) else list(texts)
    batch = TEXT_BATCH if batch is None else int(batch)
    if batch < 1:
        raise UserError(f"text batch must be >= 1, got {batch}")
    if not texts:
        raise UserError("no texts to encode")
    device = next(model.parameters()).device
    out = None
    with torch.no_grad():
        for start in range(0, len(texts), batch):
            chunk = texts[start:start + batch]
            rows = F.normalize(model.encode_text(tokenizer(chunk).to(device)).float(), dim=-1)
            if out is None:
                out = torch.empty(len(texts), rows.shape[1], dtype=torch.float32, device=rows.device)
            out[start:start + len(chunk)] = rows
    return out
