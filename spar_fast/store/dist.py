"""torchrun support for the features job: rank / world from the environment, a gloo group.

The job needs no collective on tensors: each rank writes its own shard files. A process group is
created only when ``WORLD_SIZE > 1``, only for the final barrier and the exchange of the small
per-rank summaries, always with gloo (CPU objects, works on every machine and across nodes), and
with a long timeout because ranks may finish hours apart on unbalanced image sizes.
"""
from __future__ import annotations

import os
from datetime import timedelta

import torch
import torch.distributed as dist

from ..errors import UserError

_TIMEOUT = timedelta(days=2)


def dist_env() -> tuple[int, int, int]:
    """``(rank, world_size, local_rank)`` from the torchrun environment (``0, 1, 0`` without)."""
    try:
        rank = int(os.environ.get("RANK", "0"))
        world = int(os.environ.get("WORLD_SIZE", "1"))
        local = int(os.environ.get("LOCAL_RANK", "0"))
    except ValueError as exc:
        raise UserError(f"bad RANK / WORLD_SIZE / LOCAL_RANK environment ({exc})") from None
    if world < 1 or not 0 <= rank < world:
        raise UserError(f"RANK={rank} is not within WORLD_SIZE={world}")
    return rank, world, local


def resolve_device(device, local_rank: int, world: int) -> torch.device:
    """``None`` -> ``cuda:LOCAL_RANK`` when CUDA is available, else CPU. ``"cuda"`` under torchrun
    -> ``cuda:LOCAL_RANK``. Raises ``UserError`` for a malformed or unavailable device."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise UserError(f"bad device {device!r} ({exc}); use cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"device {device} requested but CUDA is not available")
        if device.index is None:
            device = torch.device("cuda", local_rank if world > 1 else torch.cuda.current_device())
        if device.index >= torch.cuda.device_count():
            raise UserError(f"device {device}: only {torch.cuda.device_count()} CUDA devices")
        torch.cuda.set_device(device)
    elif device.type != "cpu":
        raise UserError(f"unsupported device {device}; use cpu, cuda or cuda:N")
    return device


def join_group(world: int) -> bool:
    """Join the torchrun process group when ``world > 1``; True when this call created it."""
    if world <= 1 or dist.is_initialized():
        return False
    dist.init_process_group("gloo", timeout=_TIMEOUT)
    return True


def gather_summaries(summary: dict, world: int) -> list[dict]:
    """Barrier, then every rank's summary (rank order) on every rank."""
    if world <= 1:
        return [summary]
    out: list = [None] * world
    dist.all_gather_object(out, summary)
    return out
