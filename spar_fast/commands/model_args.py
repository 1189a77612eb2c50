"""Model and image options shared by the segment / embed / pca / eval / queries commands."""
from __future__ import annotations

import argparse

from ..options import at_least, finite, finite_above, in_range
from .config_args import arg_type
from ..segmentation.preprocess import TEST_SCALE
from .args import add_backbone, add_base_weights, add_device, add_weights

# argparse types for the inference options (checked at the edge: one line, exit 2)
STRIDE = arg_type(int, at_least(1))
POSITIVE_INT = arg_type(int, at_least(1))
LOGIT_SCALE = arg_type(float, finite)
PROB_THD = arg_type(float, in_range(0.0, 1.0))
AREA_THD = arg_type(float, finite_above(0.0, inclusive=True))


def _max_patches(text: str):
    """``--max-patches``: a whole number >= 1, or ``image`` (each image's own patch count)."""
    if text.strip().lower() == "image":
        return "image"
    return POSITIVE_INT(text)


_max_patches.__name__ = "max-patches"  # argparse names the type in its messages


def add_model_args(parser: argparse.ArgumentParser, multi_weights: bool = False) -> None:
    """``--backbone``, ``--weights`` (repeatable with ``multi_weights``), ``--base-weights``,
    ``--max-patches`` and ``--device``."""
    add_backbone(parser, None, "siglip2-b16-512")
    add_weights(parser, None if multi_weights else "hub", "hub", repeatable=multi_weights)
    add_base_weights(parser)
    parser.add_argument("--max-patches", type=_max_patches, default=None, metavar="N|image",
                        help="NaFlex backbones only: the patch budget each image is resized to, keeping its "
                             "ratio, or 'image' for its own patch count (default: the model's position "
                             "grid, 256 for siglip2-b16-naflex; docs/NAFLEX.md)")
    add_device(parser)


def add_resize_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--no-resize", action="store_true",
                        help="keep the image size (default: keep-ratio resize into "
                             f"{TEST_SCALE[0]}x{TEST_SCALE[1]} as in evaluation)")


def load_model(args, weights=None):
    """The backbone named by ``args`` (``weights`` overrides ``args.weights``; no ``--backbone``:
    the one a delta or model folder records, else siglip2-b16-512), eval mode, on ``args.device``."""
    from ..backbones import Backbone
    from ..runtime import resolve_device

    device = resolve_device(args.device)
    chosen = weights if weights is not None else args.weights
    budget = getattr(args, "max_patches", None)  # None: not given; "image": no fixed budget
    budget = "default" if budget is None else None if budget == "image" else budget
    bb = Backbone.from_pretrained(args.backbone, weights=chosen, base=getattr(args, "base_weights", None),
                                  max_patches=budget)
    return bb.to(device).eval()
