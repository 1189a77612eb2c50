"""``spar-fast queries``: precompute the text queries of a class list for offline inference."""
from __future__ import annotations


def add_parser(subparsers) -> None:
    from ..segmentation.classes import BUILTIN
    from .model_args import add_model_args
    from .text_args import add_class_args, add_tokenizer_arg

    p = subparsers.add_parser(
        "queries", help="precompute text queries for segment / eval --queries",
        description="Encode class lines with a backbone's text tower (80 prompt templates per "
                    "name) and write the queries, the query->class map, the class lines and "
                    "provenance (backbone, weights, templates hash) as one .safetensors file. "
                    "`segment` and `eval` then take --queries FILE and need no tokenizer.")
    group = p.add_mutually_exclusive_group(required=True)
    add_class_args(group)
    group.add_argument("--dataset", choices=tuple(BUILTIN), help="the built-in class list of a dataset")
    add_model_args(p)
    add_tokenizer_arg(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar while encoding")
    p.add_argument("-o", "--output", required=True, help="output .safetensors file")
    p.set_defaults(run=run)


def run(args) -> int:
    from ..segmentation.classes import BUILTIN
    from ..runtime import check_output_file
    from .model_args import load_model
    from ..segmentation.query_file import compute_query_set, save_query_set
    from .text_args import apply_tokenizer, classes_or_queries

    check_output_file(args.output, (".safetensors",))
    lines = list(BUILTIN[args.dataset]) if args.dataset else classes_or_queries(args)[0]
    bb = load_model(args)
    apply_tokenizer(bb, args)
    qs = compute_query_set(bb, lines, progress=False if args.no_progress else None)
    save_query_set(qs, args.output)
    print(f"wrote {args.output}: {len(qs.lines)} classes, {qs.queries.shape[0]} queries x "
          f"{qs.feature_dim} (backbone {qs.backbone}, weights {qs.weights_id or 'unknown'}, "
          f"tokenizer {qs.tokenizer})")
    return 0
