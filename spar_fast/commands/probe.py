"""``spar-fast probe``: feature-quality probes of a backbone or student on a labelled dataset
(linear probe, kNN retrieval, mask-oracle panoptic; docs/PROBES.md)."""
from __future__ import annotations

import argparse

from ..errors import UserError
from ..options import at_least, finite_above, in_range
from .config_args import arg_type

POSITIVE_INT = arg_type(int, at_least(1))
POSITIVE = arg_type(float, finite_above(0.0))
FRACTION = arg_type(float, in_range(1e-9, 1.0))


def _list_of(kind, what: str):
    def parse(text: str):
        try:
            values = tuple(kind(v) for v in text.split(",") if v.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a comma list of {what}, got {text!r}") from None
        if not values:
            raise argparse.ArgumentTypeError(f"expected a comma list of {what}, got {text!r}")
        return values
    return parse


def _resolution(text: str):
    if text == "native":
        return text
    try:
        side = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'native' or a side in pixels, got {text!r}") from None
    if side < 16:
        raise argparse.ArgumentTypeError(f"expected a side >= 16 pixels, got {side}")
    return side


def add_parser(subparsers) -> None:
    from ..probe.runner import PROBES
    from .model_args import add_model_args
    from .text_args import add_queries_arg, add_tokenizer_arg

    p = subparsers.add_parser(
        "probe", help="linear / kNN / mask-oracle panoptic probes of dense features",
        description="Feature-quality probes (paper Tables 7 and 8) of a backbone or a student: a "
                    "linear layer on frozen features (train split -> val mIoU, one head per "
                    "learning rate on one cached extraction), kNN retrieval segmentation from a "
                    "memory bank of train patches, and panoptic quality with ground-truth masks "
                    "classified by the text queries. Prints percentages.")
    from ..evaluation.datasets import DATASETS
    p.add_argument("--dataset", default="folder", choices=tuple(DATASETS),
                   help="dataset reader (default: folder, any labelled folder ROOT/{images, labels, "
                        "classes.txt, splits/SPLIT.txt}, the synthetic world's too; the benchmarks "
                        "use their train and val splits)")
    p.add_argument("--root", required=True, help="dataset folder")
    add_model_args(p)
    add_tokenizer_arg(p)
    add_queries_arg(p)
    p.add_argument("--classes", default=None, help="class file replacing ROOT/classes.txt")
    p.add_argument("--probes", type=_list_of(str, "probe names"), default=PROBES,
                   help=f"comma list of {', '.join(PROBES)} (default: all)")
    p.add_argument("--train-split", default="train", help="split file of the training images (default: train)")
    p.add_argument("--val-split", default="val", help="split file of the evaluated images (default: val)")
    p.add_argument("--limit-train", type=POSITIVE_INT, default=None, help="only the first N train images")
    p.add_argument("--limit-val", type=POSITIVE_INT, default=None, help="only the first N val images")
    p.add_argument("--resolution", type=_resolution, default="native",
                   help="'native' (each image at its stored size, default) or N: every image "
                        "stretched to NxN (the paper's repository resolution, 512 or 1024)")
    p.add_argument("--precision", choices=("fp32", "bf16", "fp16", "auto"), default="fp32",
                   help="feature extraction precision (default: fp32)")
    p.add_argument("--cache-dir", default=None,
                   help="feature cache folder (default: $SPAR_FAST_CACHE/probe or ~/.cache/spar_fast/probe)")
    p.add_argument("--no-cache", action="store_true", help="extract without reading or writing the cache")
    g = p.add_argument_group("linear probe")
    g.add_argument("--lrs", type=_list_of(float, "learning rates"), default=(1e-3, 1e-2, 1e-1),
                   help="one head per learning rate (default: 1e-3,1e-2,1e-1)")
    g.add_argument("--epochs", type=POSITIVE_INT, default=20, help="epochs per head (default: 20)")
    g = p.add_argument_group("kNN retrieval")
    g.add_argument("--k", type=POSITIVE_INT, default=30, help="neighbours per patch (default: 30)")
    g.add_argument("--temperature", type=POSITIVE, default=0.02, help="softmax temperature (default: 0.02)")
    g.add_argument("--sample-fraction", type=FRACTION, default=1.0,
                   help="fraction of each train image's patches put in the bank (default: 1)")
    g.add_argument("--bank-size", type=POSITIVE_INT, default=None, help="at most N bank patches (default: all)")
    g.add_argument("--chunk", type=POSITIVE_INT, default=65536,
                   help="bank rows compared per step; memory is 4096 x CHUNK floats (default: 65536)")
    g = p.add_argument_group("mask-oracle panoptic")
    g.add_argument("--instances", choices=("auto", "folder", "components"), default="auto",
                   help="folder instances: ROOT/instances/ PNGs, or connected components of the "
                        "labels (auto: the folder when present)")
    g.add_argument("--stuff", type=_list_of(int, "class indices"), default=(0,),
                   help="classes that are one segment per image, not instances (default: 0)")
    g.add_argument("--panoptic-layout", choices=("folder", "cityscapes", "ade20k"), default="folder",
                   help="panoptic ground truth: the folder's labels (+ instances), or the COCO-format "
                        "Cityscapes / ADE20K panoptic val set under --root (then use --probes panoptic)")
    p.add_argument("--out", default=None, help="write the results to this JSON file")
    p.set_defaults(run=run)


def _cache_dir(args):
    import os

    if args.no_cache:
        return None
    if args.cache_dir:
        return args.cache_dir
    base = os.environ.get("SPAR_FAST_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "spar_fast")
    return os.path.join(base, "probe")


def run(args) -> int:
    import json

    from ..probe.knn import KnnSettings
    from ..probe.linear import LinearSettings
    from ..probe.runner import ProbeOptions, run_probes
    from ..runtime import check_output_file
    from ..segmentation.query_file import load_query_set
    from .model_args import load_model
    from .text_args import apply_tokenizer

    if args.out:
        check_output_file(args.out, (".json",))
    options = ProbeOptions(
        probes=tuple(args.probes), train_split=args.train_split, val_split=args.val_split,
        limit_train=args.limit_train, limit_val=args.limit_val, resolution=args.resolution,
        linear=LinearSettings(lrs=tuple(args.lrs), epochs=args.epochs),
        knn=KnnSettings(k=args.k, temperature=args.temperature, sample_fraction=args.sample_fraction,
                        bank_size=args.bank_size, bank_chunk=args.chunk),
        instances=args.instances, stuff=tuple(args.stuff), panoptic_layout=args.panoptic_layout, cache_dir=_cache_dir(args),
        precision=args.precision, progress=True)
    options.check()
    queries = load_query_set(args.queries) if args.queries is not None else None
    bb = load_model(args)
    apply_tokenizer(bb, args)
    result = run_probes(bb, args.dataset, args.root, options, classes=args.classes, queries=queries)
    print(format_results(result))
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump({"backbone": args.backbone, "weights": str(args.weights), "units": "fraction",
                       **result}, f, indent=2)
        print(f"wrote {args.out}")
    return 0


def format_results(r: dict) -> str:
    """The printed table (percentages)."""
    lines = [f"resolution: {r['resolution']}" + (f"  train images: {r['num_train']}  val images: "
                                                 f"{r['num_val']}" if "num_train" in r else "")]
    for run in r.get("linear", {}).get("runs", []):
        lines.append(f"linear   lr {run['lr']:<8g} mIoU {100 * run['mIoU']:6.2f}  aAcc {100 * run['aAcc']:6.2f}")
    if "linear" in r:
        best = r["linear"]["best"]
        lines.append(f"linear   best (lr {best['lr']:g}) mIoU {100 * best['mIoU']:6.2f}")
    if "knn" in r:
        k = r["knn"]
        lines.append(f"kNN      mIoU {100 * k['mIoU']:6.2f}  aAcc {100 * k['aAcc']:6.2f}  bank {k['bank_size']} patches")
    if "panoptic" in r:
        pq = r["panoptic"]
        extra = (f"  PQ_th {100 * pq['PQ_things']:6.2f}  PQ_st {100 * pq['PQ_stuff']:6.2f}"
                 if "PQ_things" in pq else "")
        lines.append(f"panoptic PQ {100 * pq['PQ']:6.2f}  SQ {100 * pq['SQ']:6.2f}  RQ {100 * pq['RQ']:6.2f}"
                     f"{extra}  ({pq['num_images']} images, mask oracle)")
    if not any(key in r for key in ("linear", "knn", "panoptic")):
        raise UserError("no probe ran")
    return "\n".join(lines)
