"""Multi-process helpers (torchrun): process group setup and exact gradient summation.

Gradients are summed explicitly instead of wrapping the model in DDP: the loss of every process
is already divided by the GLOBAL image count of the step, so the sum of the processes' gradients
is the gradient of the global mean loss, whatever number of images each process packed (DDP would
divide by the world size). Parameters that received no gradient on any process keep ``grad=None``
(AdamW then skips them, exactly as in one process); a process without images in the last step
contributes zeros.
"""
from __future__ import annotations

import os

import torch
import torch.distributed as dist

from ..runtime import resolve_device


def init_from_env(device: torch.device | str | None) -> tuple[int, int, torch.device, bool]:
    """Join the torchrun process group when ``WORLD_SIZE > 1``.

    Returns ``(rank, world, device, created)``; ``created`` tells whether this call created the
    group (the caller then destroys it). Backend: nccl for CUDA, gloo for CPU; the device follows
    :func:`spar_fast.runtime.resolve_device` (a bare ``cuda`` is ``cuda:LOCAL_RANK``)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    device = resolve_device(device, int(os.environ.get("LOCAL_RANK", "0")) if world > 1 else None)
    if world <= 1:
        return 0, 1, device, False
    if device.type == "cuda":
        torch.cuda.set_device(device)
    created = not dist.is_initialized()
    if created:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return dist.get_rank(), dist.get_world_size(), device, created


def sum_gradients(params: list[torch.nn.Parameter], world: int) -> None:
    """Replace every ``p.grad`` by its sum over processes (in place, one flat all-reduce)."""
    if world <= 1:
        return
    device = params[0].device
    has = torch.tensor([p.grad is not None for p in params], dtype=torch.float32, device=device)
    dist.all_reduce(has)
    grads = []
    for p, flag in zip(params, has.tolist()):
        if flag == 0:
            p.grad = None
            continue
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        grads.append(p.grad)
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


def sum_scalar(value: torch.Tensor, world: int) -> float:
    """Sum over processes of a 0-dim tensor, as a Python float."""
    if world > 1:
        value = value.clone()
        dist.all_reduce(value)
    return float(value.item())


def barrier(world: int) -> None:
    if world > 1:
        dist.barrier()
