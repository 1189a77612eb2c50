"""torchrun support for the features job: rank / world from the environment, a gloo group.

The job needs no collective on tensors: each rank writes its own shard files. A process group is
created only when ``WORLD_SIZE > 1``, only for the store-lock agreement, the final barrier and
the exchange of the small per-rank summaries, always with gloo (CPU objects, works on every
machine and across nodes), and with a long timeout because ranks may finish hours apart on unbalanced image sizes.
"""
from __future__ import annotations

import os
from datetime import timedelta

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


def join_group(world: int) -> bool:
    """Join the torchrun process group when ``world > 1``; True when this call created it."""
    if world <= 1 or dist.is_initialized():
        return False
    dist.init_process_group("gloo", timeout=_TIMEOUT)
    return True


def all_agree(ok: bool, world: int) -> bool:
    """True when ``ok`` holds on every rank (a barrier when ``world > 1``)."""
    if world <= 1:
        return ok
    flags: list = [None] * world
    dist.all_gather_object(flags, bool(ok))
    return all(flags)


def gather_summaries(summary: dict, world: int) -> list[dict]:
    """Barrier, then every rank's summary (rank order) on every rank."""
    if world <= 1:
        return [summary]
    out: list = [None] * world
    dist.all_gather_object(out, summary)
    return out
