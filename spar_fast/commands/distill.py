"""``spar-fast distill IMAGES --out RUN_DIR``: teacher features, then student training."""
from __future__ import annotations


def add_parser(subparsers) -> None:
    from ..options import at_least
    from .config_args import add_options, arg_type
    from ..store.codec import TARGET_DTYPES
    from ..train.config import TrainConfig
    from .args import add_backbone, add_weights
    from .train import TRAINING

    p = subparsers.add_parser(
        "distill", help="extract teacher features and train a student (the whole SPAR job)",
        description="Compute sliding-window teacher features of every image (stored in "
                    "RUN_DIR/store, reused when present), then train the single-pass student. "
                    "Rerun the same command to resume after an interruption.")
    p.add_argument("images", metavar="IMAGES", nargs="+",
                   help="image folder, a text file listing image paths, or .tar shards read in place")
    p.add_argument("--out", required=True, metavar="RUN_DIR", help="run directory")
    add_backbone(p, "siglip2-b16-512")
    add_weights(p, "hub", "hub; random[:SEED] gives teacher and student the same seeded init",
                legacy="pretrained")
    p.add_argument("--stride", type=arg_type(int, at_least(1)), default=24,
                   help="teacher window stride in pixels")
    p.add_argument("--augment", default="default", choices=("default", "extended", "none"),
                   help="augmentation drawn once per image (SPEC §3)")
    p.add_argument("--dtype", default="fp16", choices=tuple(TARGET_DTYPES),
                   help="storage dtype of the teacher features")
    p.add_argument("--teacher", default=None, choices=("sliding", "single"),
                   help="targets: the sliding window (SPAR) or one single pass (default: single for "
                        "--scheme multires, else sliding; docs/SCHEMES.md)")
    add_options(p, TrainConfig, TRAINING)
    p.set_defaults(run=run)


def run(args) -> int:
    from ..jobs.distill import distill
    from .train import config_from_args

    images = args.images[0] if len(args.images) == 1 else list(args.images)
    cfg = config_from_args(args)
    teacher = args.teacher or ("single" if cfg.scheme == "multires" else "sliding")
    path = distill(images, args.out, backbone=args.backbone, weights=args.weights,
                   stride=args.stride, augment=args.augment, dtype=args.dtype, config=cfg, teacher=teacher)
    print(f"final weights: {path}")
    return 0
