"""``spar-fast train STORE --out RUN_DIR``: distill stored teacher features into a student."""
from __future__ import annotations


def add_parser(subparsers) -> None:
    from ..train.options import add_training_options, parse_pretrained

    p = subparsers.add_parser(
        "train", help="train a student on a feature store",
        description="Train the student (initialized from the teacher weights) to regress the "
                    "stored teacher features. Run under torchrun for several GPUs. Resumes the "
                    "run in --out when it holds a checkpoint.")
    p.add_argument("store", metavar="STORE", help="feature store directory (from `spar-fast features`)")
    p.add_argument("--out", required=True, metavar="RUN_DIR",
                   help="run directory: final.safetensors, trainer_state.pt, metrics.jsonl, loss.png")
    p.add_argument("--backbone", default=None, help="backbone name (default: the store's)")
    p.add_argument("--pretrained", type=parse_pretrained, default=None,
                   help="student init: true (hub weights), false, or a weights path (default: the "
                        "teacher weights recorded in the store)")
    add_training_options(p)
    p.set_defaults(run=run)


def run(args) -> int:
    from ..train import train
    from ..train.options import training_kwargs

    path = train(args.store, args.out, backbone=args.backbone, pretrained=args.pretrained,
                 **training_kwargs(args))
    print(f"final weights: {path}")
    return 0
