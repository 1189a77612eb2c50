"""The distillation loop (SPEC §4): student initialized from the teacher, MSE to stored targets.

Defaults are the reference recipe: AdamW (lr 2e-5, weight decay 1e-4), constant lr, 10 epochs,
unfreeze ``blk_-1,blk_-2``, one image per step per process. Improvements are options: packing
several images per forward under a token budget (the step loss stays the MEAN of per-image MSEs,
so one image per step is exactly the reference loss), gradient accumulation, lr warmup / cosine.
Precision: ``auto`` = bf16 autocast on CUDA, fp32 on CPU; ``fp16`` = fp16 autocast + GradScaler
(the reference's choice); ``bf16``; ``fp32``. Targets are upcast to fp32 for the loss.
"""
from __future__ import annotations

import math
import os
import time

import torch
import torch.distributed
import torch.nn.functional as F

from ..errors import UserError
from ..runtime import Weights, autocast, check_output_dir, resolve_precision
from . import checkpoint as ckpt
from .config import TrainConfig, make_config
from .dist import barrier, init_from_env, sum_gradients, sum_scalar
from .loader import StoreDataset, make_loader
from .report import MetricsLog, plot_loss
from .sampler import PackingSampler
from .unfreeze import apply_unfreeze

def lr_at(cfg: TrainConfig, step: int, total: int) -> float:
    """Learning rate of 0-based ``step`` out of ``total``: constant, linear warmup, cosine decay."""
    factor = min(1.0, (step + 1) / cfg.warmup_steps) if cfg.warmup_steps else 1.0
    if cfg.schedule == "cosine":
        factor *= 0.5 * (1.0 + math.cos(math.pi * min(step, total) / max(total, 1)))
    return cfg.lr * factor


def _resume_state(run_dir: str, key: dict, resume: bool) -> dict | None:
    state = ckpt.load_checkpoint(run_dir) if resume else None
    if state is None:
        return None
    saved = dict(state["config"])
    ignore = {"epochs"} if key["schedule"] == "constant" else set()
    diff = [k for k in key if k not in ignore and saved.get(k) != key[k]]
    if diff:
        details = ", ".join(f"{k}: {saved.get(k)!r} -> {key[k]!r}" for k in diff)
        raise UserError(f"{run_dir} holds a run with other settings ({details}); "
                        "use another output directory, or disable resuming to start over")
    return state


def step_loss(bb, images, targets, first_block: int, n_global: int, device, precision) -> torch.Tensor:
    """Sum over the chunk of per-image MSE (fp32, over all elements) divided by ``n_global``.

    ``images``: list of ``[3,Hi,Wi]``; ``targets``: list of ``[hi,wi,C]``."""
    with autocast(device, precision):
        feats = bb.forward_packed([im.to(device, non_blocking=True) for im in images],
                                  grad_from_block=first_block)
    losses = [F.mse_loss(f.float(), t.to(device, non_blocking=True).float()) for f, t in zip(feats, targets)]
    return torch.stack(losses).sum() / n_global


def train(store: str, out_dir: str, config: TrainConfig | None = None, **overrides) -> str:
    """Distill the store's teacher features into a student; returns the final weights path.

    ``store``: a feature store directory (its config names the backbone and weights, which
    ``config.backbone`` / ``config.weights`` override). ``config``: a :class:`TrainConfig`
    (default: the reference recipe); keyword ``overrides`` replace its fields, e.g.
    ``train(store, out, epochs=2, weights="random:0")``. Writes ``out_dir/{final.safetensors,
    trainer_state.pt, metrics.jsonl, loss.png}``. Under torchrun every process runs this; each
    takes ``accumulate`` chunks of every global step."""
    cfg = make_config(config, **overrides)
    if not os.path.isdir(store):
        raise UserError(f"feature store {store} does not exist")
    check_output_dir(out_dir)
    rank, world, device, created = init_from_env(cfg.device)
    try:
        with ckpt.run_lock(out_dir, writer=rank == 0):
            return _run(rank, world, device, store, out_dir, cfg)
    finally:
        if created:
            torch.distributed.destroy_process_group()


def _store_weights(store: str, store_cfg: dict) -> str:
    """The teacher weights a store records, canonical (new ``weights`` strings and the older
    ``pretrained`` True / False / None / path forms)."""
    recorded = store_cfg["weights"] if "weights" in store_cfg else store_cfg.get("pretrained")
    try:
        return str(Weights.of(recorded))
    except UserError as exc:
        raise UserError(f"the store {store} records teacher weights that cannot be used ({exc}); "
                        "pass --weights hub|random[:SEED]|PATH") from None


def _run(rank, world, device, store: str, out_dir: str, cfg: TrainConfig) -> str:
    """The loop of :func:`train` in process ``rank`` of ``world`` on ``device``."""
    from ..backbones import Backbone
    from ..store import FeatureStore

    precision = resolve_precision(cfg.precision, device)
    if precision in ("bf16", "fp16") and device.type == "cpu":
        raise UserError(f"precision {precision} needs a CUDA device; use fp32 on CPU")
    store_cfg = FeatureStore(store).config
    cfg = cfg.replace(backbone=cfg.backbone or store_cfg["backbone"], precision=precision,
                      weights=cfg.weights or _store_weights(store, store_cfg))
    accumulate = cfg.accumulate
    os.makedirs(out_dir, exist_ok=True)
    resume_key = cfg.resume_key(world)
    state = _resume_state(out_dir, resume_key, cfg.resume)
    if state is not None and state.get("done") and state["epoch"] >= cfg.epochs:
        return state["weights"]

    bb = Backbone.from_pretrained(cfg.backbone, weights=cfg.weights)
    trainable = apply_unfreeze(cfg.unfreeze, bb)
    bb.to(device).train()
    named = dict(bb.model.named_parameters())
    params = [named[n] for n in trainable.names]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")

    dataset = StoreDataset(store, bb.mean, bb.std)
    sampler = PackingSampler(dataset.tokens(), cfg.tokens_per_step or None, seed=cfg.seed, world_size=world,
                             accumulate=accumulate)
    plans = [sampler.epoch_plan(e) for e in range(cfg.epochs)]
    total = sum(len(p) for p in plans)
    epoch, start, global_step = 0, 0, 0
    if state is not None:
        ckpt.load_weights(bb.model, state["weights"])
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        ckpt.set_rng_state(state["rng"])
        epoch, start, global_step = state["epoch"], state["step_in_epoch"], state["global_step"]

    def snapshot(final=False):
        if rank == 0:
            ckpt.save_checkpoint(out_dir, bb.model, {
                "config": resume_key, "epoch": epoch, "step_in_epoch": start, "global_step": global_step,
                "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(), "done": final}, final=final)
        barrier(world)

    log = MetricsLog(out_dir, resume_step=global_step) if rank == 0 else None
    bar = None
    if cfg.progress and rank == 0:
        from tqdm import tqdm

        bar = tqdm(total=total, initial=global_step, desc="train", unit="step", dynamic_ncols=True)
    while epoch < cfg.epochs:
        plan = plans[epoch]
        batches = sampler.rank_batches(epoch, rank, start_step=start)
        batch_iter = iter(make_loader(dataset, batches, cfg.workers, pin_memory=device.type == "cuda"))
        while start < len(plan):
            t0 = time.perf_counter()
            step = plan[start]
            n_global = sum(len(c) for c in step)
            lr_now = lr_at(cfg, global_step, total)
            for group in optimizer.param_groups:
                group["lr"] = lr_now
            optimizer.zero_grad(set_to_none=True)
            loss_sum = torch.zeros((), dtype=torch.float64, device=device)  # no GPU sync per chunk
            for _ in sampler.rank_chunks(step, rank):
                images, targets, _idx = next(batch_iter)
                loss = step_loss(bb, images, targets, trainable.first_block, n_global, device, precision)
                scaler.scale(loss).backward()
                loss_sum += loss.detach()
            sum_gradients(params, world)
            loss_sum = sum_scalar(loss_sum, world)
            scaler.step(optimizer)
            scaler.update()
            start += 1
            global_step += 1
            if start == len(plan):
                epoch, start = epoch + 1, 0
            seconds = time.perf_counter() - t0
            if rank == 0:
                tokens = sum(sampler.tokens[i] for c in step for i in c)
                log.write({"step": global_step, "epoch": epoch if start else epoch - 1, "loss": loss_sum,
                           "lr": lr_now, "images_per_s": n_global / seconds, "tokens": tokens})
                if bar is not None:
                    bar.set_postfix(loss=f"{loss_sum:.4g}", img_s=f"{n_global / seconds:.1f}")
                    bar.update(1)
            if start == 0 or (cfg.checkpoint_every and global_step % cfg.checkpoint_every == 0):
                snapshot(final=epoch >= cfg.epochs)
                if rank == 0 and start == 0:
                    plot_loss(out_dir)
            if start == 0:
                break
    if bar is not None:
        bar.close()
    return os.path.join(out_dir, ckpt.FINAL_WEIGHTS)
