"""``spar-fast pca``: dense features of one or more models shown as RGB on one shared PCA basis."""
from __future__ import annotations


def add_parser(subparsers) -> None:
    from .model_args import add_model_args, add_resize_arg

    p = subparsers.add_parser(
        "pca", help="PCA (3 components -> RGB) of dense features of one or more models",
        description="Projects the dense features of each model (one per --weights) on ONE shared "
                    "3-component PCA basis (fit on the features of all models together) and writes "
                    "the input image followed by one RGB panel per model, each titled with its weights.")
    p.add_argument("image", help="input image file")
    add_model_args(p, multi_weights=True)
    add_resize_arg(p)
    p.add_argument("-o", "--output", required=True, help="output .png")
    p.set_defaults(run=run)


def run(args) -> int:
    from ..backbones import dense_features
    from ..runtime import Weights, check_output_file
    from ..segmentation.preprocess import as_rgb, model_input
    from .model_args import load_model
    from ..segmentation.pca import pca_rgb, save_panels

    check_output_file(args.output, (".png",))
    image = as_rgb(args.image)
    feats, titles = [], []
    for weights in args.weights or [Weights("hub")]:
        bb = load_model(args, weights=weights)
        feats.append(dense_features(bb, model_input(image, bb, resize=None if args.no_resize else "test"), "auto").float().cpu())
        titles.append(_title(weights))
        del bb
    save_panels([image] + pca_rgb(feats), ["image"] + titles, args.output)
    print(f"wrote {args.output}: {len(feats)} model(s), grid {tuple(feats[0].shape[:2])}")
    return 0


def _title(weights) -> str:
    import os
    return os.path.basename(weights.path) if weights.kind == "file" else str(weights)
