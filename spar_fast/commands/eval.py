"""``spar-fast eval``: mIoU of a backbone on the open-vocabulary segmentation benchmarks."""
from __future__ import annotations

ALL = ("voc21", "context60", "cityscapes", "ade20k", "voc20", "context59")


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "eval", help="mIoU on VOC / Context / Cityscapes / ADE20K",
        description="Open-vocabulary segmentation mIoU on the validation split of a dataset in "
                    "its standard MMSeg layout (or all six with --all, and their mean, Mean6). "
                    "Prints a table; --out writes the full results as JSON.")
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--dataset", choices=ALL, help="one dataset")
    target.add_argument("--all", action="store_true",
                        help="all six datasets, their folders found under --root by standard name")
    p.add_argument("--root", required=True,
                   help="dataset folder (e.g. VOCdevkit/VOC2012) or a data folder holding the "
                        "datasets under their standard names")
    from ..segmentation.cli_args import add_model_args
    from ..segmentation.text_args import add_queries_arg, add_tokenizer_arg
    add_model_args(p)
    add_tokenizer_arg(p)
    add_queries_arg(p)
    p.add_argument("--mode", choices=("single", "slide"), default="single",
                   help="single pass, or sliding window at --stride")
    p.add_argument("--stride", type=int, default=24, help="sliding-window stride in pixels")
    p.add_argument("--limit", type=int, default=None, help="only the first N images per dataset")
    p.add_argument("--batch-size", type=int, default=1,
                   help="images per packed forward (single mode)")
    p.add_argument("--logit-scale", type=float, default=None,
                   help="override the per-dataset default logit scale")
    p.add_argument("--prob-thd", type=float, default=None,
                   help="override the per-dataset default probability threshold")
    p.add_argument("--area-thd", type=float, default=None,
                   help="override the per-dataset default area threshold")
    p.add_argument("--per-class", action="store_true", help="also print the per-class IoU")
    p.add_argument("--out", default=None, help="write the results to this JSON file")
    p.set_defaults(run=run)


def run(args) -> int:
    import json
    import os

    from ..errors import UserError
    from ..evaluation import evaluate
    from ..segmentation.cli_args import load_model
    from ..segmentation.queries import default_cache_dir

    if args.out and not os.path.isdir(os.path.dirname(os.path.abspath(args.out))):
        raise UserError(f"output folder of {args.out} does not exist")
    if args.limit is not None and args.limit < 1:
        raise UserError(f"--limit must be >= 1, got {args.limit}")
    from ..segmentation.query_file import load_query_set
    from ..segmentation.text_args import apply_tokenizer
    if args.queries is not None and args.all:
        raise UserError("--queries holds the classes of one dataset; use it with --dataset")
    queries = load_query_set(args.queries) if args.queries is not None else None
    bb = load_model(args)
    apply_tokenizer(bb, args)
    names = ALL if args.all else (args.dataset,)
    results = []
    for name in names:
        results.append(evaluate(
            bb, name, args.root, mode=args.mode, limit=args.limit, logit_scale=args.logit_scale,
            prob_thd=args.prob_thd, area_thd=args.area_thd, batch_size=args.batch_size,
            stride=args.stride, progress=True, cache_dir=default_cache_dir(), queries=queries))
        if args.per_class:
            _print_per_class(results[-1])
    summary = {"backbone": args.backbone, "checkpoint": args.checkpoint, "mode": args.mode,
               "queries": args.queries, "results": results}
    if args.all:
        summary["Mean6"] = sum(r["mIoU"] for r in results) / len(results)
    _print_table(results, summary.get("Mean6"))
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump(summary, f, indent=2)
        print(f"wrote {args.out}")
    return 0


def _print_table(results, mean6) -> None:
    print(f"{'dataset':<12}{'images':>8}{'mIoU':>8}{'mIoU(tm)':>10}{'mIoU(all)':>11}{'aAcc':>8}"
          f"   settings")
    for r in results:
        s = r["settings"]
        print(f"{r['dataset']:<12}{r['num_images']:>8}{100 * r['mIoU']:>8.2f}"
              f"{100 * r['mIoU_torchmetrics']:>10.2f}{100 * r['mIoU_all_classes']:>11.2f}"
              f"{100 * r['aAcc']:>8.2f}   scale {s['logit_scale']:g}, prob_thd {s['prob_thd']:g}, "
              f"area_thd {s['area_thd']}")
    if mean6 is not None:
        print(f"{'Mean6':<12}{'':>8}{100 * mean6:>8.2f}")
    print("mIoU: MMSeg convention (mean over classes with non-empty union); mIoU(tm): torchmetrics "
          "JaccardIndex; mIoU(all): absent classes counted as 0")


def _print_per_class(result) -> None:
    from ..segmentation.classes import display_name
    print(f"{result['dataset']} per-class IoU:")
    for line, iou in zip(result["classes"], result["IoU"]):
        value = "   n/a" if iou is None else f"{100 * iou:6.2f}"
        print(f"  {value}  {display_name(line)}")
