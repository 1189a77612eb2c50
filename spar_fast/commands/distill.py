"""``spar-fast distill IMAGES --out RUN_DIR``: teacher features, then student training."""
from __future__ import annotations


def add_parser(subparsers) -> None:
    from ..train.options import add_training_options, parse_pretrained

    p = subparsers.add_parser(
        "distill", help="extract teacher features and train a student (the whole SPAR job)",
        description="Compute sliding-window teacher features of every image (stored in "
                    "RUN_DIR/store, reused when present), then train the single-pass student. "
                    "Rerun the same command to resume after an interruption.")
    p.add_argument("images", metavar="IMAGES", help="image folder or a text file listing image paths")
    p.add_argument("--out", required=True, metavar="RUN_DIR", help="run directory")
    p.add_argument("--backbone", default="siglip2-b16-512",
                   help="siglip2-b16-512, openclip-b16, dinov3txt-l16, siglip2-tiny, openclip-tiny, "
                        "dinov3txt-tiny (default: %(default)s)")
    p.add_argument("--pretrained", type=parse_pretrained, default=True,
                   help="teacher and student init: true (hub weights), a weights path, or false "
                        "(a seeded random init saved as RUN_DIR/init.safetensors)")
    p.add_argument("--stride", type=int, default=24, help="teacher window stride in pixels (default: %(default)s)")
    p.add_argument("--augment", default="default", choices=("default", "extended", "none"),
                   help="augmentation drawn once per image (SPEC §3) (default: %(default)s)")
    p.add_argument("--dtype", default="fp16", choices=("fp16", "bf16", "fp32"),
                   help="storage dtype of the teacher features (default: %(default)s)")
    add_training_options(p)
    p.set_defaults(run=run)


def run(args) -> int:
    from ..errors import UserError
    from ..train import distill
    from ..train.options import training_kwargs

    if args.stride < 1:
        raise UserError(f"--stride must be >= 1, got {args.stride}")
    path = distill(args.images, args.out, backbone=args.backbone, pretrained=args.pretrained,
                   stride=args.stride, augment=args.augment, dtype=args.dtype, **training_kwargs(args))
    print(f"final weights: {path}")
    return 0
