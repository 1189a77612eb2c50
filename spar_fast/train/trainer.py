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
from .schemes import ClassSimilarity, make_scheme
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
    fields = {"config": dict, "epoch": int, "step_in_epoch": int, "global_step": int}
    wrong = [k for k, kind in fields.items() if not isinstance(state.get(k), kind)]
    if wrong:
        raise UserError(f"{run_dir}: the saved trainer state lacks {', '.join(wrong)}; start the run "
                        "over in a new --out folder")
    saved = dict(state["config"])
    ignore = {"epochs"} if key["schedule"] == "constant" else set()
    diff = [k for k in key if k not in ignore and saved.get(k) != key[k]]
    if diff:
        details = ", ".join(f"{k}: {saved.get(k)!r} -> {key[k]!r}" for k in diff)
        raise UserError(f"{run_dir} holds a run with other settings ({details}); "
                        "use another output directory, or disable resuming to start over")
    return state


def train(store: str, out_dir: str, config: TrainConfig | None = None, *, queries=None, **overrides) -> str:
    """Distill the store's teacher features into a student; returns the final weights path.

    ``store``: a feature store directory (its config names the backbone and weights, which
    ``config.backbone`` / ``config.weights`` override). ``config``: a :class:`TrainConfig`
    (default: the reference recipe); keyword ``overrides`` replace its fields, e.g.
    ``train(store, out, epochs=2, weights="random:0")``. Writes ``out_dir/{final.safetensors,
    trainer_state.json, metrics.jsonl, loss.png, summary.json}``. Under torchrun every process
    runs this; each takes ``accumulate`` chunks of every global step. Data and loop options
    (``log_every``, ``skip_nonfinite``, ``decode``, ``loader_stage``): docs/DATAPATH.md.
    ``queries``: ``(queries [Q, D], query_to_class [Q])`` of ``scheme="class_sim"`` (the jobs
    ``spar_fast.distill`` / ``jobs.distill.train_run`` read them from ``class_queries``)."""
    cfg = make_config(config, **overrides)
    if not os.path.isdir(store):
        raise UserError(f"feature store {store} does not exist")
    check_output_dir(out_dir)
    rank, world, device, created = init_from_env(cfg.device)
    try:
        with ckpt.run_lock(out_dir, writer=rank == 0):
            return _run(rank, world, device, store, out_dir, cfg, queries)
    finally:
        if created:
            torch.distributed.destroy_process_group()


def _store_weights(store: str, store_cfg: StoreConfig) -> str:
    """The teacher weights a store records, canonical (new ``weights`` strings and the older
    ``pretrained`` True / False / None / path forms)."""
    try:
        if store_cfg.weights is None:  # a store of an older version: its pretrained record
            return str(Weights.from_pretrained_arg(store_cfg.extra.get("pretrained")))
        return str(Weights.parse(store_cfg.weights))
    except UserError as exc:
        raise UserError(f"the store {store} records teacher weights that cannot be used ({exc}); "
                        "pass --weights hub|random[:SEED]|PATH") from None


def _run(rank, world, device, store: str, out_dir: str, cfg: TrainConfig, queries=None) -> str:
    """:func:`train` in process ``rank`` of ``world`` on ``device``: settle the config against
    the store and a saved run, then train (or return the finished run's weights)."""
    from ..store import FeatureStore

    precision = resolve_precision(cfg.precision, device)
    if precision in ("bf16", "fp16") and device.type == "cpu":
        raise UserError(f"precision {precision} needs a CUDA device; use fp32 on CPU")
    store_cfg = FeatureStore(store, partial=cfg.allow_partial).config
    cfg = cfg.replace(backbone=cfg.backbone or store_cfg.backbone, precision=precision,
                      weights=cfg.weights or _store_weights(store, store_cfg))
    if cfg.scheme == "multires" or (cfg.scheme == "features" and store_cfg.teacher == "single"):
        make_scheme(cfg, store_cfg.patch_size, store_cfg.feature_dim, store_cfg.teacher, queries)  # refuse early
    os.makedirs(out_dir, exist_ok=True)
    state = _resume_state(out_dir, cfg.resume_key(world), cfg.resume)
    if state is not None and state.get("done") and state["epoch"] >= cfg.epochs:
        if rank == 0 and not os.path.isfile(os.path.join(out_dir, "summary.json")):
            write_summary(out_dir, {  # killed between the final weights and the summary
                "steps": state["global_step"], "steps_this_run": 0, "seconds_this_run": 0.0,
                "skipped_images": state.get("skipped_images", 0), "skip_nonfinite": cfg.skip_nonfinite,
                "decode": store_cfg.decode, "loader_stage": cfg.loader_stage})
        return state["weights"]
    run = _Run(rank, world, device, store, store_cfg, out_dir, cfg, queries)
    if state is not None:
        run.restore(state)
    return run.loop()


def _delta_spec(bb, names: list[str], cfg: TrainConfig, store: str, store_cfg: StoreConfig) -> tuple:
    """``(names, BaseIdentity, metadata)`` for delta checkpoints: the base is the freshly built
    student init (checksummed before any step), the metadata the unfreeze string, the training
    settings and the store's identity (folder and store.json settings)."""
    import json

    from ..backbones.delta import BaseIdentity

    base = BaseIdentity.of(bb.model, names, cfg.backbone, cfg.weights)
    training = {k: v for k, v in cfg.resume_key(1).items() if k != "chunks_per_step"}
    store_id = dict(store_cfg.to_dict(), path=os.path.abspath(store))
    return list(names), base, {"unfreeze": cfg.unfreeze, "training": json.dumps(training, sort_keys=True),
                               "store": json.dumps(store_id, sort_keys=True, default=str)}


class _Run:
    """One training run of a process: the model and optimizer, the data, the position in the
    epoch plans, and the host-side record of steps whose device values are not read yet."""

    def __init__(self, rank, world, device, store: str, store_cfg: StoreConfig, out_dir: str,
                 cfg: TrainConfig, queries=None):
        from ..backbones import Backbone

        self.rank, self.world, self.device, self.out_dir, self.cfg = rank, world, device, out_dir, cfg
        self.resume_key = cfg.resume_key(world)
        self.bb = bb = Backbone.from_pretrained(cfg.backbone, weights=cfg.weights)
        if bb.max_patches is not None:  # NaFlex: each crop at its own resolution, as its [H/P, W/P] target
            bb.set_max_patches(None)
        trainable = apply_unfreeze(cfg.unfreeze, bb)
        self.delta = None if cfg.full_weights else _delta_spec(bb, trainable.names, cfg, store, store_cfg)
        bb.to(device).train()
        named = dict(bb.model.named_parameters())
        self.params = [named[n] for n in trainable.names]
        self.optimizer = make_optimizer(self.params, cfg.lr, cfg.weight_decay)
        self.scaler = torch.amp.GradScaler(device.type, enabled=cfg.precision == "fp16")
        self.scheme = scheme = make_scheme(cfg, int(bb.patch_size), int(bb.feature_dim), store_cfg.teacher, queries)
        if isinstance(scheme, ClassSimilarity):
            scheme.to(device)
        self.step_fn = TrainStep(bb, self.params, self.optimizer, self.scaler, trainable.first_block,
                                 cfg.precision, world, cfg.skip_nonfinite,
                                 scheme.loss if scheme is not None else None)
        self.stage = cfg.loader_stage or ("device" if device.type == "cuda" else "cpu")
        decode = training_decode(store_cfg.decode, cfg.decode, device, store_cfg.decode_version)
        self.dataset = StoreDataset(store, bb.mean, bb.std, decode=decode, stage=self.stage,
                                    partial=cfg.allow_partial)
        self.sampler = PackingSampler(self.dataset.tokens(), cfg.tokens_per_step or None, seed=cfg.seed,
                                      world_size=world, accumulate=cfg.accumulate)
        self.plans = [self.sampler.epoch_plan(e) for e in range(cfg.epochs)]
        self.total = sum(len(p) for p in self.plans)
        self.epoch = self.start = self.global_step = self.skipped = 0
        self.pending: list[dict] = []  # host-side facts of the steps not read back yet
        self.log = self.bar = None

    def restore(self, state: dict) -> None:
        """Continue from a saved checkpoint (weights, optimizer, scaler, RNG, position)."""
        ckpt.load_weights(self.bb.model, state["weights"])
        self.optimizer.load_state_dict(state["optimizer"])
        for group in self.optimizer.param_groups:  # a run saved by an older, unfused optimizer
            group.update(fused=True, foreach=None)
        self.scaler.load_state_dict(state["scaler"])
        ckpt.set_rng_state(state["rng"])
        self.epoch, self.start, self.global_step = state["epoch"], state["step_in_epoch"], state["global_step"]
        self.skipped = state.get("skipped_images", 0)

    def loop(self) -> str:
        """Every remaining step of every epoch; returns the final weights path."""
        cfg = self.cfg
        if self.rank == 0:
            self.log = MetricsLog(self.out_dir, resume_step=self.global_step)
            if cfg.progress:
                from tqdm import tqdm

                self.bar = tqdm(total=self.total, initial=self.global_step, desc="train", unit="step",
                                dynamic_ncols=True)
        self.window_start = run_start = time.perf_counter()
        steps_run = 0
        while self.epoch < cfg.epochs:
            steps_run += self._run_epoch()
        if self.bar is not None:
            self.bar.close()
        if self.rank == 0:
            write_summary(self.out_dir, {
                "steps": self.global_step, "steps_this_run": steps_run,
                "seconds_this_run": time.perf_counter() - run_start, "skipped_images": self.skipped,
                "skip_nonfinite": cfg.skip_nonfinite, "decode": self.dataset.decode,
                "loader_stage": self.stage, **cfg.scheme_record(),
                **({"class_count": self.scheme.num_classes} if cfg.scheme == "class_sim" else {})})
        if self.skipped:
            warnings.warn(f"{self.skipped} image(s) with non-finite targets or loss were skipped "
                          f"(see {os.path.join(self.out_dir, 'summary.json')})", stacklevel=3)
        return os.path.join(self.out_dir, ckpt.FINAL_WEIGHTS)

    def _run_epoch(self) -> int:
        """Run the rest of the current epoch, checkpointing as due; returns the steps run."""
        cfg, plan, bb = self.cfg, self.plans[self.epoch], self.bb
        loader = make_loader(self.dataset, self.sampler.rank_batches(self.epoch, self.rank, start_step=self.start),
                             cfg.workers, pin_memory=self.device.type == "cuda")
        chunks = device_chunks(loader, lambda c: prepare_chunk(c, bb.mean, bb.std, self.device), self.device)
        steps_run = 0
        while self.start < len(plan):
            step = plan[self.start]
            n_global = sum(len(c) for c in step)
            lr_now = lr_at(cfg, self.global_step, self.total)
            mine = self.sampler.rank_chunks(step, self.rank)
            if self.scheme is None:
                self.step_fn((next(chunks)[:2] for _ in mine), n_global, lr_now)
            else:
                self.step_fn((self.scheme.inputs(*next(chunks), self.epoch) for _ in mine), n_global, lr_now)
            self.pending.append({"step": self.global_step + 1, "epoch": self.epoch, "lr": lr_now,
                                 "images": n_global,
                                 "tokens": sum(self.sampler.tokens[i] for c in step for i in c),
                                 "ids": self.dataset.image_ids(i for c in step for i in c)})
            self.start += 1
            self.global_step += 1
            steps_run += 1
            epoch_done = self.start == len(plan)
            if epoch_done:
                self.epoch, self.start = self.epoch + 1, 0
            if self.bar is not None:
                self.bar.update(1)
            if len(self.pending) >= cfg.log_every:
                self._flush()
            if epoch_done or (cfg.checkpoint_every and self.global_step % cfg.checkpoint_every == 0):
                self._snapshot(final=self.epoch >= cfg.epochs)
                if self.rank == 0 and epoch_done:
                    plot_loss(self.out_dir)
            if epoch_done:
                break
        return steps_run

    def _flush(self) -> None:
        """Read the pending steps' losses and flags (one device sync) and log them; stop at the
        first non-finite step (the steps before it are logged)."""
        losses, bad, dropped = self.step_fn.read()
        self.skipped += dropped
        pending = self.pending
        first_bad = bad.index(True) if True in bad else len(bad)
        rate = sum(r["images"] for r in pending) / max(time.perf_counter() - self.window_start, 1e-9)
        if self.log is not None:
            self.log.write_many([{"step": r["step"], "epoch": r["epoch"], "lr": r["lr"], "tokens": r["tokens"],
                                  "loss": loss if math.isfinite(loss) else None, "images_per_s": rate}
                                 for r, loss in zip(pending[:first_bad], losses)])
        if first_bad < len(bad):
            rec, ids = pending[first_bad], pending[first_bad]["ids"]
            shown = ", ".join(ids[:5]) + (f" and {len(ids) - 5} more" if len(ids) > 5 else "")
            raise UserError(f"non-finite loss or gradient at step {rec['step']} (images {shown}); the "
                            f"weights were not updated and the last good checkpoint in {self.out_dir} is "
                            "kept; skip_nonfinite (--skip-nonfinite) skips such images instead")
        if self.bar is not None and losses:
            self.bar.set_postfix(loss=f"{losses[-1]:.4g}", img_s=f"{rate:.1f}")
        pending.clear()
        self.window_start = time.perf_counter()

    def _snapshot(self, final: bool = False) -> None:
        """Flush, check the weights, save the checkpoint (rank 0) and wait for every rank."""
        self._flush()
        if not weights_finite(self.params):
            raise UserError(f"non-finite weights after step {self.global_step}; not saved, the last good "
                            f"checkpoint in {self.out_dir} is kept (check lr and weight_decay)")
        if self.rank == 0:
            ckpt.save_checkpoint(self.out_dir, self.bb.model, {
                "config": self.resume_key, "epoch": self.epoch, "step_in_epoch": self.start,
                "global_step": self.global_step, "optimizer": self.optimizer.state_dict(),
                "scaler": self.scaler.state_dict(), "done": final, "skipped_images": self.skipped},
                final=final, delta=self.delta)
        barrier(self.world)
