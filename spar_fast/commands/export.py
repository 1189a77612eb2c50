"""``spar-fast export``: a student (delta, full file, folder or hub id) as a standalone full
``.safetensors`` file or a model folder in the Hugging Face layout (docs/CHECKPOINTS.md)."""
from __future__ import annotations


def add_parser(subparsers) -> None:
    from .args import add_backbone, add_base_weights

    p = subparsers.add_parser(
        "export", help="write a student as a full .safetensors file or a Hugging Face model folder",
        description="Loads WEIGHTS (a delta student is applied over its rebuilt base) and writes "
                    "OUT: a path ending in .safetensors gets the full open_clip state dict "
                    "(standalone); any other path a model folder with config.json, "
                    "model.safetensors and a README.md model card, ready for huggingface-cli upload.")
    p.add_argument("weights", metavar="WEIGHTS", help="a delta or full weights file, a model folder or a hub id")
    p.add_argument("--out", required=True, metavar="OUT", help="a .safetensors file or a folder")
    add_backbone(p, None, "the one the weights record")
    add_base_weights(p)
    p.add_argument("--full", action="store_true",
                   help="folder output: store the full state dict instead of a delta over the base")
    p.add_argument("--dtype", choices=("fp32", "fp16", "bf16"), default=None,
                   help="cast the stored floating tensors, e.g. fp16 to halve a shared file (default: as trained)")
    p.add_argument("--metrics", metavar="EVAL_JSON", default=None,
                   help="folder output: put the numbers of a `spar-fast eval --out` summary in the model card")
    p.set_defaults(run=run)


def run(args) -> int:
    import os

    from ..backbones import export_weights
    from ..backbones.pretrained import eval_metrics

    metrics = eval_metrics(args.metrics) if args.metrics else None
    out = export_weights(args.weights, args.out, name=args.backbone, base=args.base_weights,
                         full=args.full, dtype=args.dtype, metrics=metrics)
    size = os.path.getsize(out) if os.path.isfile(out) else os.path.getsize(os.path.join(out, "model.safetensors"))
    print(f"wrote {out} ({size / 1e6:.1f} MB of weights)")
    return 0
