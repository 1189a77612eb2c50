"""``spar-fast eval``: mIoU of a backbone on the open-vocabulary segmentation benchmarks."""
from __future__ import annotations

import os

from ..errors import UserError
from ..evaluation.datasets import BENCHMARKS, DATASETS

ALL = BENCHMARKS


def add_parser(subparsers) -> None:
    from .model_args import (AREA_THD, LOGIT_SCALE, POSITIVE_INT, PROB_THD, STRIDE,
                                         add_model_args)
    from .sweep_args import MODE_LIST, RESOLUTIONS, add_output_args

    p = subparsers.add_parser(
        "eval", help="mIoU on VOC / Context / Cityscapes / ADE20K",
        description="Open-vocabulary segmentation mIoU on the validation split of a dataset in "
                    "its standard MMSeg layout (or all six with --all, and their mean, Mean6). "
                    "Prints a table of percentages; --out writes the full results (the same "
                    "percentages) as JSON.")
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--dataset", choices=tuple(DATASETS),
                        help="one dataset; 'folder': any labelled folder ROOT/{images, labels, "
                             "classes.txt, splits/SPLIT.txt}, segmented at its stored size")
    target.add_argument("--all", action="store_true",
                        help="all six datasets, their folders found under --root by standard name")
    p.add_argument("--root", required=True,
                   help="dataset folder (e.g. VOCdevkit/VOC2012) or a data folder holding the "
                        "datasets under their standard names")
    from .text_args import add_queries_arg, add_tokenizer_arg
    add_model_args(p, multi_weights=True)
    add_tokenizer_arg(p)
    add_queries_arg(p)
    p.add_argument("--classes", default=None,
                   help="class file (one class line per label value) replacing the dataset's "
                        "classes (default for --dataset folder: ROOT/classes.txt)")
    p.add_argument("--split", default="val",
                   help="folder dataset: the split file splits/SPLIT.txt to use (without it, "
                        "every image under images/)")
    p.add_argument("--mode", type=MODE_LIST, default=("single",), metavar="single|slide",
                   help="single pass, or sliding window at --stride; with --sweep a list "
                        "(single,slide) for the first --weights (default: single)")
    p.add_argument("--stride", type=STRIDE, default=24, help="sliding-window stride in pixels (>= 1)")
    p.add_argument("--limit", type=POSITIVE_INT, default=None,
                   help="only the first N images per dataset (default: all)")
    p.add_argument("--batch-size", type=POSITIVE_INT, default=1,
                   help="images per packed forward (single mode)")
    p.add_argument("--logit-scale", type=LOGIT_SCALE, default=None,
                   help="override the per-dataset default logit scale")
    p.add_argument("--prob-thd", type=PROB_THD, default=None,
                   help="override the per-dataset default probability threshold (in [0, 1])")
    p.add_argument("--area-thd", type=AREA_THD, default=None,
                   help="override the per-dataset default area threshold (>= 0)")
    from .refine_args import add_refine_args
    add_refine_args(p)
    p.add_argument("--per-class", action="store_true", help="also print the per-class IoU")
    sweep = p.add_argument_group("resolution sweep (docs/SWEEP.md)")
    sweep.add_argument("--sweep", type=RESOLUTIONS, default=None, metavar="KIND:V1,V2,...",
                       help="evaluate at each resolution instead of the dataset's test resize: "
                            "short:256,512 (short side), long:1024,2048 (long side) or "
                            "area:512x1024,1024x2048 (pixels; HxW or a number); the first "
                            "--weights runs in each --mode, further --weights (students) in "
                            "single pass; prints mIoU and seconds per image per resolution")
    sweep.add_argument("--include", action="append", default=None, metavar="SWEEP.json",
                       help="add the rows of an earlier --sweep --out report (same dataset and "
                            "resolutions; e.g. another backbone's single pass) to the table and plot; "
                            "repeatable")
    add_output_args(p, "results")
    p.set_defaults(run=run)


def run(args) -> int:
    import json

    from ..jobs.evaluate import evaluate_datasets
    from ..runtime import check_output_file
    from .model_args import load_model
    from ..segmentation.queries import default_cache_dir

    if args.queries is not None and args.all:
        raise UserError("--queries holds the classes of one dataset; use it with --dataset")
    from ..segmentation.query_file import load_query_set
    from .refine_args import lposs_from_args
    from .sweep_args import run_sweep, weights_list
    from .text_args import apply_tokenizer
    if args.sweep is not None:
        queries = load_query_set(args.queries) if args.queries is not None else None
        return run_sweep(args, queries, lposs_from_args(args))
    weights = weights_list(args)
    if len(weights) > 1 or len(args.mode) > 1:
        raise UserError("several --weights or modes need --sweep (one model, one mode per evaluation)")
    if args.plot or args.include:
        raise UserError("--plot and --include need --sweep")
    if args.out:
        check_output_file(args.out, (".json",))
    queries = load_query_set(args.queries) if args.queries is not None else None
    lposs = lposs_from_args(args)
    mode = args.mode[0]
    bb = load_model(args, weights=weights[0])
    apply_tokenizer(bb, args)
    names = ALL if args.all else (args.dataset,)
    runs = evaluate_datasets(
        bb, names, args.root, mode=mode, limit=args.limit, logit_scale=args.logit_scale,
        prob_thd=args.prob_thd, area_thd=args.area_thd, batch_size=args.batch_size,
        stride=args.stride, progress=True, cache_dir=default_cache_dir(), queries=queries,
        classes=args.classes, split=args.split, refine=args.refine, lposs=lposs,
        on_result=_print_per_class if args.per_class else None)
    results = runs["results"]
    summary = {"backbone": getattr(bb, "name", None) or args.backbone, "weights": str(weights[0]), "mode": mode,
               "refine": args.refine, "units": "percent", "queries": args.queries, **runs}
    if getattr(bb, "family", None) == "naflex":  # the patch budget decides the resolution the model saw
        summary["max_patches"] = "image" if bb.max_patches is None else bb.max_patches
    _print_table(results, summary.get("Mean6"))
    if args.out:
        _write_results(args.out, (json.dumps(summary, indent=2) + "\n").encode())
    return 0


def _write_results(path: str, data: bytes) -> None:
    """Write the results to ``path``; if that fails after the evaluation ran, keep them in a new
    file of the system's temporary folder and say where, in the one-line error."""
    import tempfile

    from ..atomic import atomic_write

    try:
        atomic_write(path, data)
    except UserError as exc:
        fd, kept = tempfile.mkstemp(prefix="spar_fast-eval-", suffix=".json")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        raise UserError(f"{exc}; the results were written to {kept} instead") from None
    print(f"wrote {path}")


def _print_table(results, mean6) -> None:
    print(f"{'dataset':<12}{'images':>8}{'mIoU':>8}{'mIoU(tm)':>10}{'mIoU(all)':>11}{'aAcc':>8}"
          f"   settings")
    for r in results:
        s = r["settings"]
        print(f"{r['dataset']:<12}{r['num_images']:>8}{r['mIoU']:>8.2f}"
              f"{r['mIoU_torchmetrics']:>10.2f}{r['mIoU_all_classes']:>11.2f}"
              f"{r['aAcc']:>8.2f}   scale {s['logit_scale']:g}, prob_thd {s['prob_thd']:g}, "
              f"area_thd {s['area_thd']}")
    if mean6 is not None:
        print(f"{'Mean6':<12}{'':>8}{mean6:>8.2f}")
    print("percentages; mIoU: MMSeg convention (mean over classes with non-empty union); mIoU(tm): "
          "torchmetrics JaccardIndex; mIoU(all): absent classes counted as 0")


def _print_per_class(result) -> None:
    print(f"{result['dataset']} per-class IoU (%):")
    for name, iou in result["per_class"].items():
        print(f"  {'   n/a' if iou is None else f'{iou:6.2f}'}  {name}")
