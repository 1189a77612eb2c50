"""One optimizer step of distillation, without host synchronization.

:class:`TrainStep` is the step the trainer runs and ``benchmarks/bench_train_step.py`` times:
set the lr, forward each chunk packed (frozen prefix without activations), MSE to the targets
(or a Table 9 scheme's loss, ``train/schemes.py``),
backward (scaled for fp16), sum gradients over processes, AdamW. Nothing in it waits for the
device: the loss and the non-finite flags stay on the device and are read by the caller every
few steps (:meth:`TrainStep.read`).

Loss (SPEC §4): the mean over the step's images of each image's MSE over all its elements. A
chunk contributes ``sum_i mse_i / n_global`` with ``n_global`` the step's image count over all
chunks and processes, so packing, accumulation and processes change nothing: one image per step
is exactly the reference loss, and a packed step's loss and gradient are the mean of the
batch-1 ones.

Non-finite values. The optimizer is AdamW with ``fused=True`` so that its step takes a device-side
``found_inf`` flag and leaves weights, moments and step counts untouched when it is set — a bad
step is skipped on the device, without a sync. The flag is set when any gradient or the loss is
non-finite (fp16: the grad scaler sets it for gradient overflow, which is routine there and only
lowers the scale). With ``skip_nonfinite`` an image whose target or loss is non-finite is also
masked out of the loss (its target replaced by the detached features: zero loss, zero gradient),
so the other images of its step still train; such images and skipped steps are counted.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F

from ..runtime import autocast
from .dist import sum_gradients


def make_optimizer(params: list[torch.nn.Parameter], lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW (the reference's optimizer) in its fused form, which can skip a step on a device flag."""
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=True)


def image_losses(features: list[torch.Tensor], targets: list[torch.Tensor], skip_nonfinite: bool,
                 loss_fn=None):
    """Per-image MSE over all elements (fp32) ``[N]`` and the mask ``[N]`` of images kept.

    ``features``: ``[hi, wi, C]`` student outputs; ``targets``: the same shapes (any float dtype).
    ``loss_fn(feature, target)``: a scheme's per-image loss (``train/schemes.py``) instead of the
    MSE; its bad targets become zeros (finite gradients) and the caller masks their loss out."""
    losses, kept = [], []
    for f, t in zip(features, targets):
        f, t = f.float(), t.float()
        if skip_nonfinite:
            good = torch.isfinite(t).all()
            if loss_fn is None:
                t = torch.where(good, t, f.detach())  # a bad target gives zero loss and zero gradient
            else:
                t = torch.where(good, t, torch.zeros_like(t))
            kept.append(good)
        losses.append(F.mse_loss(f, t) if loss_fn is None else loss_fn(f, t))
    losses = torch.stack(losses)
    kept = torch.stack(kept) & torch.isfinite(losses) if skip_nonfinite else torch.isfinite(losses)
    return losses, kept


def chunk_loss(bb, images, targets, first_block: int, n_global: int, precision: str,
               skip_nonfinite: bool = False, loss_fn=None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(sum of the chunk's per-image MSEs / n_global, mask [N] of finite images)``.

    ``images``: normalized ``[3, Hi, Wi]`` on the model's device; ``targets``: ``[hi, wi, C]``;
    ``loss_fn``: a scheme's per-image loss (default: the MSE)."""
    device = images[0].device
    with autocast(device, precision):
        feats = bb.forward_packed(images, grad_from_block=first_block)
    losses, kept = image_losses(feats, targets, skip_nonfinite, loss_fn)
    if skip_nonfinite:
        losses = torch.where(kept, losses, torch.zeros_like(losses))
    return losses.sum() / n_global, kept


def nonfinite(tensors: list[torch.Tensor]) -> torch.Tensor:
    """Device flag (fp32 0-dim, 1.0 = true) telling whether any element of ``tensors`` is not finite.
    One fused norm per tensor group (a NaN or inf anywhere makes its norm non-finite)."""
    if not tensors:
        return torch.zeros(())
    norms = torch._foreach_norm(tensors)
    return (~torch.isfinite(torch.stack(norms)).all()).float()


class TrainStep:
    """The training step of one process; ``__call__(chunks, n_global, lr)`` runs it.

    ``chunks``: this process's ``(images, targets)`` pairs of the step (device tensors);
    ``n_global``: images in the whole step. Device-side totals since construction: ``loss`` of
    each step (list), ``bad_steps``, ``skipped_images``; read them with :meth:`read`.
    """

    def __init__(self, bb, params, optimizer, scaler, first_block: int, precision: str, world: int = 1,
                 skip_nonfinite: bool = False, loss_fn=None):
        self.bb, self.params, self.optimizer, self.scaler = bb, params, optimizer, scaler
        self.first_block, self.precision, self.world = first_block, precision, world
        self.skip_nonfinite, self.loss_fn = skip_nonfinite, loss_fn
        self.losses: list[torch.Tensor] = []
        self.bad: list[torch.Tensor] = []
        self.skipped: list[torch.Tensor] = []

    def __call__(self, chunks, n_global: int, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.zero_grad(set_to_none=True)
        device = self.params[0].device
        loss = torch.zeros((), device=device)
        dropped = torch.zeros((), device=device)
        for images, targets in chunks:
            part, kept = chunk_loss(self.bb, images, targets, self.first_block, n_global, self.precision,
                                    self.skip_nonfinite, self.loss_fn)
            self.scaler.scale(part).backward()
            loss += part.detach()
            dropped += (~kept).sum()
        sum_gradients(self.params, self.world)
        if self.world > 1:
            both = torch.stack([loss, dropped])
            dist.all_reduce(both)  # enqueued on the device; no host wait
            loss, dropped = both[0], both[1]
        bad_loss = (~torch.isfinite(loss)).float()
        if self.skip_nonfinite:  # a step left without images is skipped, not run on zero gradients
            bad_loss = torch.maximum(bad_loss, (dropped >= n_global).float())
        grads = [p.grad for p in self.params if p.grad is not None]
        if self.scaler.is_enabled():
            # gradient overflow is the scaler's business (skip + lower the scale); a step to skip for
            # our own reasons gets a NaN in one gradient element, so the scaler skips it as well
            found = bad_loss
            if grads:
                grads[0].view(-1)[:1].add_(torch.where(found > 0, torch.nan, 0.0))
        else:
            found = torch.maximum(bad_loss, nonfinite(grads).to(device))
            self.optimizer.grad_scale, self.optimizer.found_inf = None, found
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.losses.append(loss)
        self.bad.append(found if not self.skip_nonfinite else torch.zeros_like(found))
        self.skipped.append(dropped + found * (n_global - dropped) if self.skip_nonfinite else dropped * 0)

    def read(self) -> tuple[list[float], list[bool], int]:
        """``(loss per step, non-finite flag per step, images skipped)`` for the steps since the last
        read, in one device-to-host transfer; clears them."""
        if not self.losses:
            return [], [], 0
        values = torch.stack([torch.stack(self.losses).double(), torch.stack(self.bad).double(),
                              torch.stack(self.skipped).double()]).cpu()
        self.losses, self.bad, self.skipped = [], [], []
        return values[0].tolist(), [v > 0 for v in values[1].tolist()], int(values[2].sum())


def weights_finite(params: list[torch.Tensor]) -> bool:
    """Whether every parameter is finite (one host sync; run before a checkpoint is written)."""
    return not bool(nonfinite([p.detach() for p in params]))
