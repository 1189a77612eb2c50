"""``spar-fast features``: compute the teacher's stitched features for a folder of images."""
from __future__ import annotations

import argparse

from ..data.decode import DECODES, LEGACY_DECODE
from ..data.images import DEFAULT_MAX_PIXELS
from ..store.codec import TARGET_DTYPES
from ..errors import UserError

_SHOW_SKIPPED = 20  # skipped images listed one per line in the summary; the rest are counted


def _int_at_least(minimum: int, what: str):
    """An argparse type: an integer >= ``minimum``, else a one-line error naming ``what``."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected {what}, got {value}")
        return value
    return parse


_positive = _int_at_least(1, "a positive integer")
_non_negative = _int_at_least(0, "an integer >= 0")


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "features", help="compute sliding-window teacher targets into a feature store",
        description="Augment every image once (SPAR §3), run the stride-24 sliding-window teacher "
                    "on it and store the stitched features as safetensors shards. Rerunning the "
                    "same command resumes: finished shards are kept, the rest is recomputed. "
                    "Under torchrun each rank processes every WORLD_SIZE-th image.")
    p.add_argument("images", metavar="IMAGES", nargs="+",
                   help="a folder (searched recursively), a text file with one image path per "
                        "line (optionally 'path<TAB>id'; relative to the list file), or uncompressed "
                        ".tar archives (SA-1B shards; several, or a folder of them) read in place, "
                        "images in archive order")
    p.add_argument("--out", required=True, metavar="STORE", help="feature store folder to create or resume")
    p.add_argument("--backbone", default="siglip2-b16-512",
                   help="teacher backbone name (default: %(default)s)")
    p.add_argument("--weights", default="hub", metavar="hub|random[:SEED]|PATH",
                   help="teacher weights: the published ones (hub), a seeded random init, or a "
                        "weights file; recorded in the store so `train` rebuilds the same teacher "
                        "(default: %(default)s)")
    p.add_argument("--stride", type=_positive, default=24,
                   help="window stride in pixels, at most the window, a multiple of patch/4 "
                        "(default: %(default)s)")
    p.add_argument("--augment", choices=("default", "extended", "none"), default="default",
                   help="SPAR augmentation: default (scale 2048x1024, rho in [0.5,1]), extended "
                        "(2560x2560, rho in [0.2,1]) or none (only resized to multiples of 16, "
                        "short side >= 512)")
    from ..options import in_range
    from .config_args import arg_type
    p.add_argument("--augment-scale", type=arg_type(float, in_range(0.0625, 4.0)), default=1.0,
                   help="multiply the augmentation's sizes (its scale and the 512 px minimum side), "
                        "e.g. 0.5 for the synthetic world's 128 px window (default: %(default)s, the SPEC)")
    p.add_argument("--teacher", choices=("sliding", "single"), default="sliding",
                   help="sliding: the stitched sliding window at --stride (SPAR); single: one single "
                        "pass of the backbone, the targets of multi-resolution distillation "
                        "(`train --scheme multires`; docs/SCHEMES.md) (default: %(default)s)")
    p.add_argument("--dtype", choices=tuple(TARGET_DTYPES), default="fp16",
                   help="stored target precision (default: fp16)")
    p.add_argument("--device", default=None,
                   help="cpu, cuda or cuda:N (default: cuda:LOCAL_RANK if available, else cpu)")
    p.add_argument("--seed", type=_non_negative, default=0,
                   help="augmentation seed; each image's draw depends only on it and the image id")
    p.add_argument("--shard-size", type=_positive, default=32, dest="shard_size",
                   help="images per shard file (default: 32)")
    p.add_argument("--limit", type=_positive, default=None, help="process only the first N images (of tars: in archive order)")
    p.add_argument("--decode", choices=DECODES, default=LEGACY_DECODE,
                   help="image decode path, recorded in the store so training decodes the same pixels "
                        "(nvjpeg: on the GPU; docs/DATAPATH.md)")
    p.add_argument("--max-pixels", type=_positive, default=DEFAULT_MAX_PIXELS, dest="max_pixels",
                   help="skip images whose source or augmented size exceeds N pixels, checked "
                        "from the file header before decoding (default: %(default)s)")
    p.add_argument("--no-progress", action="store_false", dest="progress",
                   help="no progress bar")
    p.set_defaults(run=run)


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n} B"
        n /= 1024
    return f"{n:.1f} TiB"


def format_summary(s: dict) -> str:
    """Human-readable lines for an :func:`extract_features` summary."""
    rate = s["computed"] / s["seconds"] if s["seconds"] > 0 else 0.0
    lines = [f"images: {s['images']}  ok: {s['ok']}  skipped: {len(s['skipped'])}  "
             f"computed: {s['computed']}  resumed: {s['resumed']}  ranks: {s['world_size']}",
             f"time: {s['seconds']:.1f} s ({rate:.2f} images/s computed)  "
             f"store: {s['store']} ({_size(s['store_bytes'])})"]
    for image_id, reason in s["skipped"][:_SHOW_SKIPPED]:
        lines.append(f"  skipped {image_id}: {reason}")
    if len(s["skipped"]) > _SHOW_SKIPPED:
        lines.append(f"  ... and {len(s['skipped']) - _SHOW_SKIPPED} more skipped (see the shard indexes)")
    return "\n".join(lines)


def run(args) -> int:
    from ..jobs.extract import extract_features
    from ..jobs.extract_dist import dist_env

    if not args.out:
        raise UserError("--out must name a folder")
    images = args.images[0] if len(args.images) == 1 else list(args.images)
    summary = extract_features(images, args.out, backbone=args.backbone, weights=args.weights,
                               stride=args.stride, augment=args.augment, dtype=args.dtype,
                               device=args.device, seed=args.seed, shard_size=args.shard_size,
                               limit=args.limit, max_pixels=args.max_pixels, progress=args.progress,
                               decode=args.decode, augment_scale=args.augment_scale,
                               teacher=args.teacher)
    if dist_env()[0] == 0:
        print(format_summary(summary))
    return 0
