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

import torch
import torch.distributed

from ..data.decode import training_decode
from ..errors import UserError
from ..runtime import Weights, check_output_dir, resolve_precision
from ..store.records import StoreConfig
from . import checkpoint as ckpt
from .config import TrainConfig, make_config
from .dist import barrier, init_from_env
from .loader import StoreDataset, device_chunks, make_loader, prepare_chunk
from .report import MetricsLog, plot_loss, write_summary
from .sampler import PackingSampler
from .step import TrainStep, make_optimizer, weights_finite
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


def train(store: str, out_dir: str, config: TrainConfig | None = None, **overrides) -> str:
    """Distill the store's teacher features into a student; returns the final weights path.

    ``store``: a feature store directory (its config names the backbone and weights, which
    ``config.backbone`` / ``config.weights`` override). ``config``: a :class:`TrainConfig`
    (default: the reference recipe); keyword ``overrides`` replace its fields, e.g.
    ``train(store, out, epochs=2, weights="random:0")``. Writes ``out_dir/{final.safetensors,
    trainer_state.json, metrics.jsonl, loss.png, summary.json}``. Under torchrun every process
    runs this; each takes ``accumulate`` chunks of every global step. Data and loop options
    (``log_every``, ``skip_nonfinite``, ``decode``, ``loader_stage``): docs/DATAPATH.md."""
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


def _store_weights(store: str, store_cfg: StoreConfig) -> str:
    """The teacher weights a store records, canonical (new ``weights`` strings and the older
    ``pretrained`` True / False / None / path forms)."""
    recorded = store_cfg.extra.get("pretrained") if store_cfg.weights is None else store_cfg.weights
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
    store_cfg = FeatureStore(store, partial=cfg.allow_partial).config
    cfg = cfg.replace(backbone=cfg.backbone or store_cfg.backbone, precision=precision,
                      weights=cfg.weights or _store_weights(store, store_cfg))
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
    optimizer = make_optimizer(params, cfg.lr, cfg.weight_decay)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    run_step = TrainStep(bb, params, optimizer, scaler, trainable.first_block, precision, world,
                         cfg.skip_nonfinite)

    stage = cfg.loader_stage or ("device" if device.type == "cuda" else "cpu")
    dataset = StoreDataset(store, bb.mean, bb.std, decode=training_decode(store_cfg.decode, cfg.decode, device,
                                                                  store_cfg.decode_version),
                           stage=stage, partial=cfg.allow_partial)
    sampler = PackingSampler(dataset.tokens(), cfg.tokens_per_step or None, seed=cfg.seed, world_size=world,
                             accumulate=cfg.accumulate)
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
    if cfg.progress and rank == 0:
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
                "config": resume_key, "epoch": epoch, "step_in_epoch": start, "global_step": global_step,
                "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(), "done": final,
                "skipped_images": skipped}, final=final)
        barrier(world)

    run_start, steps_run = time.perf_counter(), 0
    while epoch < cfg.epochs:
        plan = plans[epoch]
        loader = make_loader(dataset, sampler.rank_batches(epoch, rank, start_step=start), cfg.workers,
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
            if len(pending) >= cfg.log_every:
                flush()
            if start == 0 or (cfg.checkpoint_every and global_step % cfg.checkpoint_every == 0):
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
                                "skipped_images": skipped, "skip_nonfinite": cfg.skip_nonfinite,
                                "decode": dataset.decode, "loader_stage": stage})
    if skipped:
        warnings.warn(f"{skipped} image(s) with non-finite targets or loss were skipped "
                      f"(see {os.path.join(out_dir, 'summary.json')})", stacklevel=2)
    return os.path.join(out_dir, ckpt.FINAL_WEIGHTS)
