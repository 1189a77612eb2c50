"""Target encodings of a feature store, and zero-copy reads of stored targets.

Encodings (the record's ``dtype``):

* ``fp32`` / ``fp16`` / ``bf16``: the target ``[h, w, C]`` cast to that dtype, one tensor ``key``.
* ``fp8_e4m3``: ``float8_e4m3fn`` data ``[h, w, C]`` under ``key`` and a per-channel fp32 scale
  ``[C]`` under ``key + SCALE_SUFFIX``; ``target ≈ data.float() * scale``. The scale maps each
  channel's largest magnitude to 448, e4m3's largest finite value, so nothing saturates and every
  channel keeps e4m3's 3-bit mantissa (relative rounding error <= 2^-4 per element). Half the
  bytes of fp16: an average augmented image's target is ≈1.6 MB instead of ≈3.3 MB.
  Per channel rather than per image: on measured features both give the same error (relative L2
  ≈2.7e-2, docs/DATAPATH.md), but a per-image scale would push channels more than ~10^4 times
  smaller than the largest into e4m3's subnormals, while the per-channel scale costs only 4 bytes
  per channel.

Reads: :func:`read_stored_target` memory-maps the shard (copy-on-write, so nothing can write to
the file) and returns views of the mapped bytes, so a target costs no copy until it is decoded on
its device (:meth:`StoredTarget.decode`) or moved to another process. The safetensors header is
parsed as JSON (no code runs from the file) and checked against the file size.
"""
from __future__ import annotations

import json
import mmap
import os
import struct
from functools import lru_cache
from typing import NamedTuple

import torch

from ..errors import UserError

FP8 = "fp8_e4m3"
TARGET_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32,
                 FP8: torch.float8_e4m3fn}
SCALE_SUFFIX = ".scale"
E4M3_MAX = 448.0  # largest finite float8_e4m3fn value
_E4M3_VALUES = torch.arange(256, dtype=torch.uint8).view(torch.float8_e4m3fn).float()  # code -> value
# safetensors dtype names -> torch dtypes (the ones a store can hold)
_SAFETENSORS_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
                       "F8_E4M3": torch.float8_e4m3fn}


class StoredTarget(NamedTuple):
    """A target as stored: ``data [h, w, C]`` in the stored dtype and, for fp8, ``scale [C]`` fp32."""
    data: torch.Tensor
    scale: torch.Tensor | None = None

    def to(self, device, non_blocking: bool = False) -> "StoredTarget":
        scale = None if self.scale is None else self.scale.to(device, non_blocking=non_blocking)
        return StoredTarget(self.data.to(device, non_blocking=non_blocking), scale)

    def decode(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The target ``[h, w, C]`` on the data's device: fp8 -> ``data * scale`` in fp32 (or
        ``dtype``); other encodings as stored (cast to ``dtype`` when given)."""
        if self.scale is None:
            return self.data if dtype is None else self.data.to(dtype)
        if self.data.device.type == "cpu":  # a 256-entry table: 4x faster than the CPU cast, same values
            codes = self.data.view(torch.uint8).reshape(-1).int()
            values = _E4M3_VALUES.index_select(0, codes).view(self.data.shape)
        else:
            values = self.data.float()
        return (values * self.scale.float()).to(dtype or torch.float32)


def encode_target(target: torch.Tensor, dtype: str) -> StoredTarget:
    """Encode a finite target ``[h, w, C]`` for storage as ``dtype`` (a ``TARGET_DTYPES`` name)."""
    if dtype not in TARGET_DTYPES:
        raise UserError(f"target dtype must be one of {', '.join(TARGET_DTYPES)}, got {dtype!r}")
    if dtype != FP8:
        return StoredTarget(target.to(TARGET_DTYPES[dtype]).contiguous())
    t = target.float()
    amax = t.abs().amax(dim=tuple(range(t.ndim - 1)))
    scale = torch.where(amax > 0, amax / E4M3_MAX, torch.ones_like(amax))
    return StoredTarget((t / scale).to(torch.float8_e4m3fn).contiguous(), scale.contiguous())


def tensor_key(image_id: str, index: int) -> str:
    """The shard entry name of an image's target: its id, or ``%<index>`` (unique, and never an
    id kept as a key) when the id is safetensors' reserved ``__metadata__``, ends with
    ``SCALE_SUFFIX`` (its scale entry could collide with another target), starts with ``%`` or
    is empty."""
    if (not image_id or image_id == "__metadata__" or image_id.endswith(SCALE_SUFFIX)
            or image_id.startswith("%")):
        return f"%{int(index)}"
    return image_id


def stored_tensors(key: str, stored: StoredTarget) -> dict[str, torch.Tensor]:
    """The shard entries of one target: ``{key: data}`` plus ``{key + SCALE_SUFFIX: scale}`` for fp8."""
    out = {key: stored.data}
    if stored.scale is not None:
        out[key + SCALE_SUFFIX] = stored.scale
    return out


class _Shard(NamedTuple):
    buffer: mmap.mmap
    entries: dict  # key -> (dtype, shape, start, end) in file offsets


@lru_cache(maxsize=8)  # open shards kept mapped; enough for sequential and shuffled chunk reads
def _open_shard(path: str, mtime_ns: int, size: int) -> _Shard:
    """Map ``path`` (copy-on-write) and parse its safetensors header. ``mtime_ns``/``size`` are
    part of the cache key, so a shard rewritten by a resumed extraction is mapped again."""
    with open(path, "rb") as f:
        # ACCESS_COPY: a private mapping whose buffer is writable for torch.frombuffer, while
        # writes (none are made) could never reach the file
        buffer = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
    try:
        (header_len,) = struct.unpack("<Q", buffer[:8])
        if not 0 < header_len <= size - 8:
            raise ValueError(f"header length {header_len}")
        header = json.loads(bytes(buffer[8:8 + header_len]))
        base = 8 + header_len
        entries = {}
        for key, info in header.items():
            if key == "__metadata__":
                continue
            start, end = (base + int(o) for o in info["data_offsets"])
            if not base <= start <= end <= size:
                raise ValueError(f"tensor {key!r} lies outside the file")
            entries[key] = (_SAFETENSORS_DTYPES[info["dtype"]], tuple(int(s) for s in info["shape"]), start, end)
    except (ValueError, KeyError, TypeError, struct.error) as exc:
        raise UserError(f"{path}: corrupt shard header ({exc})") from None
    return _Shard(buffer, entries)


def _view(shard: _Shard, path: str, key: str) -> torch.Tensor:
    try:
        dtype, shape, start, end = shard.entries[key]
    except KeyError:
        raise UserError(f"{path}: holds no tensor {key!r}") from None
    raw = torch.frombuffer(shard.buffer, dtype=torch.uint8, count=end - start, offset=start) \
        if end > start else torch.empty(0, dtype=torch.uint8)
    try:
        return raw.view(dtype).view(shape)
    except RuntimeError as exc:
        raise UserError(f"{path}: tensor {key!r} has {end - start} bytes for shape {list(shape)}") from exc


def read_stored_target(path: str, key: str) -> StoredTarget:
    """Target ``key`` of shard ``path`` as zero-copy views of the mapped file (fp8: with its scale)."""
    try:
        st = os.stat(path)
    except OSError as exc:
        raise UserError(f"{path}: cannot read shard ({exc.strerror})") from None
    shard = _open_shard(path, st.st_mtime_ns, st.st_size)
    data = _view(shard, path, key)
    scale_key = key + SCALE_SUFFIX
    scale = _view(shard, path, scale_key) if data.dtype == torch.float8_e4m3fn else None
    return StoredTarget(data, scale)
