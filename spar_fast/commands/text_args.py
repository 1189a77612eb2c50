"""Text options of the segment / eval / queries commands: classes, ``--tokenizer``, ``--queries``."""
from __future__ import annotations

import argparse


def add_class_args(group) -> None:
    """``--classes`` and ``--class-file`` on a (mutually exclusive) group."""
    group.add_argument("--classes", help='classes separated by ";", synonyms by ", " '
                                         '(e.g. "road, street; car; sky")')
    group.add_argument("--class-file", help="text file with one class per line (synonyms "
                                            'separated by ", ", kept as written)')


def add_tokenizer_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tokenizer", default=None, metavar="PATH",
                        help="local tokenizer for offline use: a Hugging Face tokenizer folder (or "
                             "its tokenizer.json) for SigLIP2, a CLIP BPE merges file "
                             "(bpe_simple_vocab_16e6.txt.gz) for OpenCLIP (default: the model's "
                             "own tokenizer, from the Hugging Face cache when offline)")


def add_queries_arg(parser) -> None:
    """``--queries`` on a parser or a mutually exclusive group."""
    parser.add_argument("--queries", default=None, metavar="FILE",
                        help="precomputed text queries from `spar-fast queries` (.safetensors): "
                             "no tokenizer and no text encoding needed")


def apply_tokenizer(bb, args) -> None:
    """Give ``bb`` the ``--tokenizer`` of ``args`` (when set)."""
    if getattr(args, "tokenizer", None) is not None:
        bb.set_tokenizer(args.tokenizer)


def classes_or_queries(args):
    """``(class lines, QuerySet or None)`` from ``--classes``, ``--class-file`` or ``--queries``."""
    from ..segmentation.queries import parse_classes, read_class_file
    from ..segmentation.query_file import load_query_set

    if getattr(args, "queries", None) is not None:
        queries = load_query_set(args.queries)
        return list(queries.lines), queries
    if args.class_file is not None:
        return parse_classes(read_class_file(args.class_file)), None
    return parse_classes(args.classes), None
