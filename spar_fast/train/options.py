"""Command-line options shared by ``spar-fast train`` and ``spar-fast distill``."""
from __future__ import annotations

import argparse

from ..errors import UserError
from .trainer import PRECISIONS, SCHEDULES
from .unfreeze import VALID_FORMS


def parse_pretrained(value: str):
    """``true`` / ``false`` / a weights path -> True / False / the path."""
    low = value.strip().lower()
    if low in ("true", "yes", "1"):
        return True
    if low in ("false", "no", "0", "none"):
        return False
    return value


def add_training_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("training (defaults: the reference recipe, SPEC §4)")
    g.add_argument("--epochs", type=int, default=10, help="passes over the stored images (default: %(default)s)")
    g.add_argument("--unfreeze", default="blk_-1,blk_-2",
                   help=f"trainable parameters, a comma list of: {VALID_FORMS} (default: %(default)s)")
    g.add_argument("--tokens-per-step", type=int, default=0,
                   help="pack images into one forward pass up to this many patch tokens per device; "
                        "0 = one image per step per device, the reference (default: %(default)s)")
    g.add_argument("--accumulate", type=int, default=1,
                   help="packed chunks per device per optimizer step (gradient accumulation; "
                        "1 process with --accumulate k = k processes with 1) (default: %(default)s)")
    g.add_argument("--lr", type=float, default=2e-5, help="AdamW learning rate (default: %(default)s)")
    g.add_argument("--weight-decay", type=float, default=1e-4, help="AdamW weight decay (default: %(default)s)")
    g.add_argument("--schedule", choices=SCHEDULES, default="constant",
                   help="learning-rate schedule after warmup (default: %(default)s)")
    g.add_argument("--warmup-steps", type=int, default=0, help="linear lr warmup steps (default: %(default)s)")
    g.add_argument("--precision", choices=PRECISIONS, default="auto",
                   help="auto = bf16 autocast on CUDA, fp32 on CPU; fp16 uses a grad scaler (default: %(default)s)")
    g.add_argument("--workers", type=int, default=None,
                   help="data-loading worker processes (default: min(4, cpus) on GPU, 0 on CPU)")
    g.add_argument("--checkpoint-every", type=int, default=0,
                   help="also checkpoint every N steps (default: %(default)s = only at epoch ends)")
    g.add_argument("--no-resume", action="store_true",
                   help="start over even if the output directory holds a checkpoint")
    g.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda if available)")
    g.add_argument("--seed", type=int, default=0, help="seed of the image order (and augmentation) (default: %(default)s)")
    g.add_argument("--quiet", action="store_true", help="no progress bar")


def training_kwargs(args) -> dict:
    """Keyword arguments of :func:`spar_fast.train.train` from parsed options."""
    for name in ("epochs", "accumulate"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name} must be >= 1, got {getattr(args, name)}")
    for name in ("tokens_per_step", "warmup_steps", "checkpoint_every"):
        if getattr(args, name) < 0:
            raise UserError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(args, name)}")
    if args.workers is not None and args.workers < 0:
        raise UserError(f"--workers must be >= 0, got {args.workers}")
    return dict(epochs=args.epochs, unfreeze=args.unfreeze, tokens_per_step=args.tokens_per_step or None,
                accumulate=args.accumulate, lr=args.lr, weight_decay=args.weight_decay,
                schedule=args.schedule, warmup_steps=args.warmup_steps, precision=args.precision,
                device=args.device, seed=args.seed, num_workers=args.workers,
                checkpoint_every=args.checkpoint_every, resume=not args.no_resume, progress=not args.quiet)
