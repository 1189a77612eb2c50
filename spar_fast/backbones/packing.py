"""Images -> patch rows, and packing of per-image token runs into one sequence.

A ViT patch embedding is a stride-P convolution with kernel P, i.e. one matmul of the
flattened ``[3*P*P]`` patches with the kernel reshaped to ``[C, 3*P*P]``. Flattening every
image's patches into one ``[T, 3*P*P]`` matrix lets images of different sizes share that matmul.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


def patchify(images: torch.Tensor, patch: int) -> torch.Tensor:
    """``[B, 3, h*P, w*P] -> [B, h*w, 3*P*P]``, rows in raster order, columns ordered ``(c, py, px)``
    like a ``Conv2d`` weight ``[C, 3, P, P]`` flattened."""
    b, c, hp, wp = images.shape
    h, w = hp // patch, wp // patch
    x = images.reshape(b, c, h, patch, w, patch).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, h * w, c * patch * patch)


@dataclass
class Packing:
    """Segment layout of a packed token sequence.

    ``lengths[i]``: token count of image i (its patch tokens plus any prefix tokens);
    ``cu_seqlens``: int32 ``[B+1]`` cumulative lengths on the tokens' device;
    ``grids[i]``: the ``(h, w)`` patch grid of image i; ``max_seqlen``: the longest segment.
    """
    lengths: list[int]
    cu_seqlens: torch.Tensor
    grids: list[tuple[int, int]]
    max_seqlen: int

    @classmethod
    def build(cls, grids: list[tuple[int, int]], prefix: int, device: torch.device) -> "Packing":
        lengths = [prefix + h * w for h, w in grids]
        cu = [0]
        for n in lengths:
            cu.append(cu[-1] + n)
        cu_seqlens = torch.tensor(cu, dtype=torch.int32, device=device)
        return cls(lengths, cu_seqlens, list(grids), max(lengths))

    @property
    def total(self) -> int:
        return sum(self.lengths)


def unpack_grids(x: torch.Tensor, grids: list[tuple[int, int]]) -> list[torch.Tensor]:
    """Patch tokens ``[sum(h*w), C]`` (no prefix tokens) -> list of ``[h, w, C]`` views."""
    sizes = [h * w for h, w in grids]
    return [part.view(h, w, -1) for part, (h, w) in zip(x.split(sizes), grids)]
