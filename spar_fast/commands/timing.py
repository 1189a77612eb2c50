"""``spar-fast timing``: the paper's timing protocol and Fig. 1's data (docs/SWEEP.md)."""
from __future__ import annotations

from ..errors import UserError


def _size(text: str) -> tuple[int, int]:
    parts = text.lower().split("x")
    try:
        hw = tuple(int(p) for p in parts)
    except ValueError:
        hw = ()
    if len(hw) != 2 or min(hw) < 1:
        raise UserError(f"size must be HxW in pixels (e.g. 1024x2048), got {text!r}")
    return hw


def add_parser(subparsers) -> None:
    from ..evaluation.datasets import DATASETS
    from ..options import at_least
    from .config_args import arg_type
    from .model_args import add_model_args
    from .sweep_args import RESOLUTION, STRIDES, parse_type, add_output_args
    from .text_args import add_queries_arg, add_tokenizer_arg

    p = subparsers.add_parser(
        "timing", help="the paper's timing protocol: Fig. 1 (mIoU against time per image)",
        description="Times one image (default 1024x2048) by the paper's protocol: forward passes "
                    "only, sliding windows in sub-batches of 60 whose times are summed, 10 "
                    "warm-up passes and the 11th timed (CUDA events on a GPU, perf_counter on "
                    "the CPU), for the single pass and the teacher at each stride of the first "
                    "--weights and for each further --weights (students); beside it, the same "
                    "work through spar_fast's own paths. With --dataset, also each row's mIoU.")
    add_model_args(p, multi_weights=True)
    add_tokenizer_arg(p)
    p.add_argument("--size", type=parse_type(_size, "size"), default=(1024, 2048), metavar="HxW",
                   help="the timed image's size (default: 1024x2048)")
    p.add_argument("--strides", type=STRIDES, default=(24, 48, 64, 128), metavar="S1,S2,...",
                   help="teacher strides in pixels (default: 24,48,64,128)")
    p.add_argument("--warmup", type=arg_type(int, at_least(0)), default=10,
                   help="untimed passes before the timed one")
    p.add_argument("--repeats", type=arg_type(int, at_least(1)), default=1,
                   help="timed passes after the warm-up, their median reported (the protocol: 1; "
                        "more for a noisy shared machine)")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16", "fp16"), default="auto",
                   help="autocast of every timed forward (auto: bf16 on GPU, fp32 on CPU)")
    p.add_argument("--no-fast", action="store_true", help="skip spar_fast's own paths (protocol only)")
    p.add_argument("--num-queries", type=arg_type(int, at_least(1)), default=19,
                   help="classes of the timed head of the fast single pass (19: Cityscapes)")
    ev = p.add_argument_group("mIoU of each row (optional; without --dataset: time only)")
    ev.add_argument("--dataset", choices=tuple(DATASETS), default=None, help="dataset to score")
    ev.add_argument("--root", default=None, help="its folder (as for eval)")
    ev.add_argument("--split", default="val", help="folder dataset: the split file to use")
    ev.add_argument("--limit", type=arg_type(int, at_least(1)), default=None,
                    help="only the first N images (default: all)")
    ev.add_argument("--resolution", type=RESOLUTION, default=None, metavar="KIND:VALUE",
                    help="evaluate at this resolution (short:1024, area:1024x2048; default: the "
                         "dataset's test resize)")
    ev.add_argument("--classes", default=None, help="class file replacing the dataset's classes")
    add_queries_arg(ev)
    add_output_args(p, "report")
    p.set_defaults(run=run)


def run(args) -> int:
    from ..jobs.fig1 import fig1, format_table, plot_fig1
    from ..segmentation.queries import default_cache_dir
    from ..segmentation.query_file import load_query_set
    from .sweep_args import check_outputs, device_name, loaded, model_rows, weights_list, write_outputs

    if (args.dataset is None) != (args.root is None):
        raise UserError("--dataset and --root go together (neither: time only)")
    check_outputs(args)
    rows = model_rows(weights_list(args), ("single", "slide"), args.strides)
    models = loaded(args, rows)
    eval_options = {}
    if args.dataset is not None:
        eval_options = dict(split=args.split, limit=args.limit, resolution=args.resolution,
                            classes=args.classes, cache_dir=default_cache_dir(),
                            queries=load_query_set(args.queries) if args.queries else None)
    report = fig1(models, args.size, warmup=args.warmup, precision=args.precision,
                  fast=not args.no_fast, num_queries=args.num_queries, repeats=args.repeats, dataset=args.dataset,
                  root=args.root, log=print, **eval_options)
    report.update(backbone=args.backbone, device=device_name(args.device))
    print(format_table(report))
    print(f"device: {report['device']}; precision {args.precision}")
    write_outputs(args, report, plot_fig1 if args.dataset is not None else None)
    return 0
