"""``spar-fast serve``: a local page to segment an image with typed class names."""
from __future__ import annotations


def add_parser(subparsers) -> None:
    from ..jobs.serve.options import ServeOptions
    from .args import add_device, add_weights
    from .config_args import add_options
    from .text_args import add_tokenizer_arg

    p = subparsers.add_parser(
        "serve", help="local web page: upload an image, type classes, see the segmentation",
        description="A local segmentation page (http://127.0.0.1:7860/ by default): pick or upload "
                    "an image, type class names or load a class / query file, choose the model and "
                    "the inference (single pass, sliding window, LPOSS / LPOSS+), and see the overlay, "
                    "its legend and the time, with the label map to download. One request runs at a "
                    "time; one model is held in memory. See docs/SERVE.md.")
    p.add_argument("--backbone", action="append", default=None, metavar="NAME",
                   help="a backbone the page offers; repeat for several (default: siglip2-b16-512)")
    add_weights(p, None, "hub", repeatable=True)
    add_device(p)
    add_tokenizer_arg(p)
    add_options(p, ServeOptions, "page")
    p.set_defaults(run=run)


def run(args) -> int:
    from ..jobs.serve import ServeOptions, serve
    from .config_args import from_args

    options = from_args(ServeOptions, args, backbones=tuple(args.backbone or ("siglip2-b16-512",)),
                        weights=tuple(str(w) for w in (args.weights or ("hub",))), device=args.device,
                        tokenizer=args.tokenizer)
    serve(options)
    return 0
