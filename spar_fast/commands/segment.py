"""``spar-fast segment``: open-vocabulary label map of one image, drawn as an overlay."""
from __future__ import annotations


def add_parser(subparsers) -> None:
    from .model_args import (AREA_THD, LOGIT_SCALE, PROB_THD, STRIDE, add_model_args,
                                         add_resize_arg)

    p = subparsers.add_parser(
        "segment", help="segment an image with free-text classes",
        description="Open-vocabulary segmentation of one image: a colored overlay with a legend "
                    "of the classes present, and optionally the raw label mask.")
    p.add_argument("image", help="input image file")
    group = p.add_mutually_exclusive_group(required=True)
    from .text_args import add_class_args, add_queries_arg, add_tokenizer_arg
    add_class_args(group)
    add_queries_arg(group)
    add_model_args(p)
    add_tokenizer_arg(p)
    add_resize_arg(p)
    p.add_argument("--mode", choices=("single", "slide"), default="single",
                   help="single pass, or sliding window at --stride")
    p.add_argument("--stride", type=STRIDE, default=24, help="sliding-window stride in pixels (>= 1)")
    p.add_argument("--logit-scale", type=LOGIT_SCALE, default=40.0, help="logit scale before softmax")
    p.add_argument("--prob-thd", type=PROB_THD, default=0.0,
                   help="pixels whose best probability is below this (in [0, 1]) become class 0")
    p.add_argument("--area-thd", type=AREA_THD, default=None,
                   help="drop classes 1.. whose area is at most this fraction of classes 1.. "
                        "(default: off)")
    from .refine_args import add_refine_args
    add_refine_args(p)
    p.add_argument("-o", "--output", required=True, help="overlay image (.png or .jpg)")
    p.add_argument("--save-mask", default=None, help="also write the label indices as a PNG")
    p.set_defaults(run=run)


def run(args) -> int:
    from ..runtime import check_output_file
    from ..segmentation.preprocess import as_rgb, model_input
    from .model_args import load_model
    from ..segmentation.infer import segment
    from ..segmentation.queries import default_cache_dir
    from .text_args import apply_tokenizer, classes_or_queries
    from ..segmentation.render import overlay, save_mask
    from .refine_args import lposs_from_args

    check_output_file(args.output, (".png", ".jpg", ".jpeg"))
    if args.save_mask:
        check_output_file(args.save_mask, (".png",))
    lines, queries = classes_or_queries(args)
    image = as_rgb(args.image)
    bb = load_model(args)
    apply_tokenizer(bb, args)
    x = model_input(image, bb, resize=None if args.no_resize else "test")
    labels = segment(bb, x, lines, mode=args.mode, logit_scale=args.logit_scale,
                     prob_thd=args.prob_thd, area_thd=args.area_thd, out_hw=image.shape[:2],
                     stride=args.stride, cache_dir=default_cache_dir(), queries=queries,
                     refine=args.refine, lposs=lposs_from_args(args)).cpu().numpy()
    from ..atomic import save_image
    save_image(overlay(image, labels, lines), args.output)
    if args.save_mask:
        save_mask(labels, len(lines), args.save_mask)
    print(f"wrote {args.output}" + (f" and {args.save_mask}" if args.save_mask else ""))
    return 0
