"""``spar-fast train STORE --out RUN_DIR``: distill stored teacher features into a student."""
from __future__ import annotations

TRAINING = "training (defaults: the reference recipe, SPEC §4)"


def add_parser(subparsers) -> None:
    from .config_args import add_options
    from ..train.config import TrainConfig
    from .args import add_backbone, add_weights

    p = subparsers.add_parser(
        "train", help="train a student on a feature store",
        description="Train the student (initialized from the teacher weights) to regress the "
                    "stored teacher features. Run under torchrun for several GPUs. Resumes the "
                    "run in --out when it holds a checkpoint.")
    p.add_argument("store", metavar="STORE", help="feature store directory (from `spar-fast features`)")
    p.add_argument("--out", required=True, metavar="RUN_DIR",
                   help="run directory: final.safetensors, trainer_state.pt, metrics.jsonl, loss.png")
    add_backbone(p, None, "the store's")
    add_weights(p, None, "the teacher weights recorded in the store", legacy="pretrained")
    add_options(p, TrainConfig, TRAINING)
    p.set_defaults(run=run)


def config_from_args(args, **fields):
    """The :class:`TrainConfig` of parsed ``train`` / ``distill`` options."""
    from .config_args import from_args
    from ..runtime import resolve_device
    from ..train.config import TrainConfig

    resolve_device(args.device)  # a bad device string or a missing GPU: one line, before any work
    return from_args(TrainConfig, args, **fields)


def run(args) -> int:
    from ..jobs.distill import train_run

    cfg = config_from_args(args, backbone=args.backbone, weights=args.weights and str(args.weights))
    path = train_run(args.store, args.out, cfg)
    print(f"final weights: {path}")
    return 0
