"""Options and input handling shared by the segment / embed / pca / eval commands."""
from __future__ import annotations

import argparse
import os

from ..backbones.registry import KNOWN
from ..errors import UserError
from .preprocess import TEST_SCALE, prepare_image

BACKBONES = tuple(KNOWN)


def add_model_args(parser: argparse.ArgumentParser, multi_checkpoint: bool = False) -> None:
    parser.add_argument("--backbone", default="siglip2-b16-512", choices=BACKBONES,
                        help="backbone architecture (default: %(default)s)")
    if multi_checkpoint:
        parser.add_argument("--checkpoint", action="append", default=None, metavar="CKPT",
                            help="weights to load; repeat for several models (default: the "
                                 "pretrained weights)")
    else:
        parser.add_argument("--checkpoint", default=None, metavar="CKPT",
                            help="SPAR .ckpt, model.-prefixed state dict, open_clip checkpoint or "
                                 "spar_fast safetensors (default: the pretrained weights)")
    parser.add_argument("--random-init", action="store_true",
                        help="random weights instead of pretrained ones (checks a pipeline "
                             "without downloading weights)")
    parser.add_argument("--device", default="auto",
                        help="cpu, cuda or cuda:N (default: cuda when available)")


def add_resize_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--no-resize", action="store_true",
                        help="keep the image size (default: keep-ratio resize into "
                             f"{TEST_SCALE[0]}x{TEST_SCALE[1]} as in evaluation)")


def load_model(args, checkpoint=None):
    """The backbone named by ``args`` (``checkpoint`` overrides ``args.checkpoint``)."""
    from .model import load_backbone

    ckpt = checkpoint if checkpoint is not None else getattr(args, "checkpoint", None)
    if ckpt is not None and args.random_init:
        raise UserError("--random-init and --checkpoint exclude each other")
    return load_backbone(args.backbone, ckpt, device=args.device, random_init=args.random_init)


def read_image(path: str):
    """``uint8 [H, W, 3]`` of an image file (one-line ``UserError`` when unreadable)."""
    from ..data.images import load_image

    if not os.path.isfile(path):
        raise UserError(f"image not found: {path}")
    return load_image(path)


def model_input(image, bb, no_resize: bool):
    """Normalized ``[3, H', W']`` on the backbone's device (test resize unless ``no_resize``)."""
    device = next(iter(bb.parameters())).device
    return prepare_image(image, bb.mean, bb.std, None if no_resize else TEST_SCALE, device)


def check_output(path: str, suffixes: tuple[str, ...]) -> str:
    """Validate an output path: known suffix and an existing parent folder."""
    if not path.lower().endswith(suffixes):
        raise UserError(f"output {path} must end with one of {', '.join(suffixes)}")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise UserError(f"output folder {parent} does not exist")
    return path
