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
import warnings
from dataclasses import asdict, dataclass

import torch
import torch.distributed

from ..data.decode import training_decode
from ..errors import UserError
from . import checkpoint as ckpt
from .dist import barrier, init_from_env
from .loader import StoreDataset, device_chunks, make_loader, prepare_chunk
from .report import MetricsLog, plot_loss, write_summary
from .sampler import PackingSampler
from .step import TrainStep, make_optimizer, weights_finite
from .unfreeze import apply_unfreeze

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
SCHEDULES = ("constant", "cosine")


@dataclass
class TrainConfig:
    """Settings of a run; all but the last group must match when a run is resumed."""

    backbone: str
    pretrained: object
    unfreeze: str = "blk_-1,blk_-2"
    tokens_per_step: int | None = None
    chunks_per_step: int = 1
    lr: float = 2e-5
    weight_decay: float = 1e-4
    schedule: str = "constant"
    warmup_steps: int = 0
    precision: str = "fp32"
    seed: int = 0
    epochs: int = 10  # may change on resume (longer training) unless the schedule is cosine


def _check(cfg: TrainConfig) -> None:
    if cfg.epochs < 1:
        raise UserError(f"epochs must be >= 1, got {cfg.epochs}")
    if not cfg.lr > 0:
        raise UserError(f"lr must be > 0, got {cfg.lr}")
    if cfg.weight_decay < 0:
        raise UserError(f"weight_decay must be >= 0, got {cfg.weight_decay}")
    if cfg.schedule not in SCHEDULES:
        raise UserError(f"schedule must be one of {', '.join(SCHEDULES)}, got {cfg.schedule!r}")
    if cfg.warmup_steps < 0:
        raise UserError(f"warmup_steps must be >= 0, got {cfg.warmup_steps}")


def lr_at(cfg: TrainConfig, step: int, total: int) -> float:
    """Learning rate of 0-based ``step`` out of ``total``: constant, linear warmup, cosine decay."""
    factor = min(1.0, (step + 1) / cfg.warmup_steps) if cfg.warmup_steps else 1.0
    if cfg.schedule == "cosine":
        factor *= 0.5 * (1.0 + math.cos(math.pi * min(step, total) / max(total, 1)))
    return cfg.lr * factor


def _resume_state(run_dir: str, cfg: TrainConfig, resume: bool) -> dict | None:
    state = ckpt.load_checkpoint(run_dir) if resume else None
    if state is None:
        return None
    saved = dict(state["config"])
    now = asdict(cfg)
    ignore = {"epochs"} if cfg.schedule == "constant" else set()
    diff = [k for k in now if k not in ignore and saved.get(k) != now[k]]
    if diff:
        details = ", ".join(f"{k}: {saved.get(k)!r} -> {now[k]!r}" for k in diff)
        raise UserError(f"{run_dir} holds a run with other settings ({details}); "
                        "use another output directory, or disable resuming to start over")
    return state


def train(store: str, out_dir: str, *, backbone: str | None = None, pretrained=None, epochs: int = 10,
          unfreeze: str = "blk_-1,blk_-2", tokens_per_step: int | None = None, accumulate: int = 1,
          lr: float = 2e-5, weight_decay: float = 1e-4, schedule: str = "constant", warmup_steps: int = 0,
          precision: str = "auto", device=None, seed: int = 0, num_workers: int | None = None,
          checkpoint_every: int = 0, resume: bool = True, progress: bool = True, log_every: int = 50,
          skip_nonfinite: bool = False, decode: str | None = None, loader_stage: str | None = None) -> str:
    """Distill the store's teacher features into a student; returns the final weights path.

    ``store``: a feature store directory (its config names the backbone and weights, which
    ``backbone`` / ``pretrained`` override). Writes ``out_dir/{final.safetensors,
    trainer_state.pt, metrics.jsonl, loss.png}``. Under torchrun every process runs this; each
    takes ``accumulate`` chunks of every global step. ``checkpoint_every``: steps between
    checkpoints (0: only at epoch ends). ``resume``: continue the run in ``out_dir`` if any.
    Data and loop options (docs/DATAPATH.md): ``log_every`` steps between reads of the loss from
    the device (the only host syncs of the loop; also at epoch ends and checkpoints);
    ``skip_nonfinite``: skip images whose target or loss is not finite (counted in
    ``summary.json``) instead of stopping with an error; ``decode``: image decode path (default:
    the one the store's targets were made with); ``loader_stage``: ``cpu`` or ``device`` (where
    images are decoded and augmented; default ``device`` on CUDA)."""
    opts = {k: v for k, v in locals().items() if k != "device"}
    if precision not in PRECISIONS:
        raise UserError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if not os.path.isdir(store):
        raise UserError(f"feature store {store} does not exist")
    rank, world, device, created = init_from_env(device)
    try:
        return _run(rank, world, device, **opts)
    finally:
        if created:
            torch.distributed.destroy_process_group()


def _run(rank, world, device, *, store, out_dir, backbone, pretrained, epochs, unfreeze, tokens_per_step,
         accumulate, lr, weight_decay, schedule, warmup_steps, precision, seed, num_workers,
         checkpoint_every, resume, progress, log_every, skip_nonfinite, decode, loader_stage) -> str:
    """The loop of :func:`train` in process ``rank`` of ``world`` on ``device``."""
    from ..backbones import Backbone
    from ..store import FeatureStore

    if precision == "auto":
        precision = "bf16" if device.type == "cuda" else "fp32"
    if precision in ("bf16", "fp16") and device.type == "cpu":
        raise UserError(f"precision {precision} needs a CUDA device; use fp32 on CPU")
    store_cfg = FeatureStore(store).config
    cfg = TrainConfig(backbone=backbone or store_cfg["backbone"],
                      pretrained=store_cfg["pretrained"] if pretrained is None else pretrained,
                      unfreeze=unfreeze, tokens_per_step=tokens_per_step or None,
                      chunks_per_step=world * accumulate, lr=lr, weight_decay=weight_decay,
                      schedule=schedule, warmup_steps=warmup_steps, precision=precision, seed=seed,
                      epochs=epochs)
    _check(cfg)
    if cfg.pretrained is False or cfg.pretrained is None:
        raise UserError(f"the store {store} records no teacher weights (random init), so the student "
                        "cannot start from them; pass the teacher's weights file as pretrained, or "
                        "use distill(), which saves a random init for both")
    os.makedirs(out_dir, exist_ok=True)
    state = _resume_state(out_dir, cfg, resume)
    if state is not None and state.get("done") and state["epoch"] >= cfg.epochs:
        return state["weights"]

    if not isinstance(log_every, int) or log_every < 1:
        raise UserError(f"log_every must be an integer >= 1, got {log_every!r}")
    bb = Backbone.from_pretrained(cfg.backbone, pretrained=cfg.pretrained)
    trainable = apply_unfreeze(cfg.unfreeze, bb)
    bb.to(device).train()
    named = dict(bb.model.named_parameters())
    params = [named[n] for n in trainable.names]
    optimizer = make_optimizer(params, cfg.lr, cfg.weight_decay)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    run_step = TrainStep(bb, params, optimizer, scaler, trainable.first_block, precision, world, skip_nonfinite)

    stage = loader_stage or ("device" if device.type == "cuda" else "cpu")
    dataset = StoreDataset(store, bb.mean, bb.std, decode=training_decode(store_cfg, decode, device), stage=stage)
    sampler = PackingSampler(dataset.tokens(), cfg.tokens_per_step, seed=cfg.seed, world_size=world,
                             accumulate=accumulate)
    plans = [sampler.epoch_plan(e) for e in range(cfg.epochs)]
    total = sum(len(p) for p in plans)
    epoch, start, global_step, skipped = 0, 0, 0, 0
    if state is not None:
        ckpt.load_weights(bb.model, state["weights"])
        optimizer.load_state_dict(state["optimizer"])
        for group in optimizer.param_groups:  # a run saved by an older, unfused optimizer
            group.update(fused=True, foreach=None)
        scaler.load_state_dict(state["scaler"])
        ckpt.set_rng_state(state["rng"])
        epoch, start, global_step = state["epoch"], state["step_in_epoch"], state["global_step"]
        skipped = state.get("skipped_images", 0)

    log = MetricsLog(out_dir, resume_step=global_step) if rank == 0 else None
    pending: list[dict] = []  # host-side facts of the steps whose device values are not read yet
    window_start = time.perf_counter()
    bar = None
    if progress and rank == 0:
        from tqdm import tqdm

        bar = tqdm(total=total, initial=global_step, desc="train", unit="step", dynamic_ncols=True)

    def flush():
        """Read the pending steps' losses and flags (one device sync) and log them; stop at the
        first non-finite step (the steps before it are logged)."""
        nonlocal skipped, window_start
        losses, bad, dropped = run_step.read()
        skipped += dropped
        first_bad = bad.index(True) if True in bad else len(bad)
        rate = sum(r["images"] for r in pending) / max(time.perf_counter() - window_start, 1e-9)
        if log is not None:
            log.write_many([{"step": r["step"], "epoch": r["epoch"], "lr": r["lr"], "tokens": r["tokens"],
                             "loss": loss if math.isfinite(loss) else None, "images_per_s": rate}
                            for r, loss in zip(pending[:first_bad], losses)])
        if first_bad < len(bad):
            rec, ids = pending[first_bad], pending[first_bad]["ids"]
            shown = ", ".join(ids[:5]) + (f" and {len(ids) - 5} more" if len(ids) > 5 else "")
            raise UserError(f"non-finite loss or gradient at step {rec['step']} (images {shown}); the "
                            f"weights were not updated and the last good checkpoint in {out_dir} is "
                            "kept; skip_nonfinite (--skip-nonfinite) skips such images instead")
        if bar is not None and losses:
            bar.set_postfix(loss=f"{losses[-1]:.4g}", img_s=f"{rate:.1f}")
        pending.clear()
        window_start = time.perf_counter()

    def snapshot(final=False):
        flush()
        if not weights_finite(params):
            raise UserError(f"non-finite weights after step {global_step}; not saved, the last good "
                            f"checkpoint in {out_dir} is kept (check lr and weight_decay)")
        if rank == 0:
            ckpt.save_checkpoint(out_dir, bb.model, {
                "config": asdict(cfg), "epoch": epoch, "step_in_epoch": start, "global_step": global_step,
                "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(), "done": final,
                "skipped_images": skipped}, final=final)
        barrier(world)

    run_start, steps_run = time.perf_counter(), 0
    while epoch < cfg.epochs:
        plan = plans[epoch]
        loader = make_loader(dataset, sampler.rank_batches(epoch, rank, start_step=start), num_workers,
                             pin_memory=device.type == "cuda")
        chunks = device_chunks(loader, lambda c: prepare_chunk(c, bb.mean, bb.std, device), device)
        while start < len(plan):
            step = plan[start]
            n_global = sum(len(c) for c in step)
            lr_now = lr_at(cfg, global_step, total)
            mine = sampler.rank_chunks(step, rank)
            run_step((next(chunks)[:2] for _ in mine), n_global, lr_now)
            pending.append({"step": global_step + 1, "epoch": epoch, "lr": lr_now, "images": n_global,
                            "tokens": sum(sampler.tokens[i] for c in step for i in c),
                            "ids": dataset.image_ids(i for c in step for i in c)})
            start += 1
            global_step += 1
            steps_run += 1
            if start == len(plan):
                epoch, start = epoch + 1, 0
            if bar is not None:
                bar.update(1)
            if len(pending) >= log_every:
                flush()
            if start == 0 or (checkpoint_every and global_step % checkpoint_every == 0):
                snapshot(final=epoch >= cfg.epochs)
                if rank == 0 and start == 0:
                    plot_loss(out_dir)
            if start == 0:
                break
    if bar is not None:
        bar.close()
    if rank == 0:
        seconds = time.perf_counter() - run_start
        write_summary(out_dir, {"steps": global_step, "steps_this_run": steps_run, "seconds_this_run": seconds,
                                "skipped_images": skipped, "skip_nonfinite": skip_nonfinite,
                                "decode": dataset.decode, "loader_stage": stage})
    if skipped:
        warnings.warn(f"{skipped} image(s) with non-finite targets or loss were skipped "
                      f"(see {os.path.join(out_dir, 'summary.json')})", stacklevel=2)
    return os.path.join(out_dir, ckpt.FINAL_WEIGHTS)
