"""Options shared by ``eval --sweep`` and ``timing``: resolutions, mode lists, the models of a
comparison (the first ``--weights`` in every mode, later ones as students) and the sweep's run."""
from __future__ import annotations

import argparse
import os

from ..errors import UserError

MODES = ("single", "slide")


def parse_type(parse, name: str):
    def convert(text: str):
        try:
            return parse(text)
        except UserError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    convert.__name__ = name  # argparse names the type in its messages
    return convert


def _resolutions(text):
    from ..segmentation.resolution import parse_resolutions
    return parse_resolutions(text)


def _resolution(text):
    from ..segmentation.resolution import parse_resolution
    return parse_resolution(text)


def _modes(text: str) -> tuple[str, ...]:
    modes = tuple(m.strip() for m in text.split(","))
    bad = [m for m in modes if m not in MODES]
    if bad or len(set(modes)) != len(modes):
        raise UserError(f"mode must be single, slide or single,slide, got {text!r}")
    return modes


RESOLUTIONS = parse_type(_resolutions, "resolutions")
RESOLUTION = parse_type(_resolution, "resolution")
MODE_LIST = parse_type(_modes, "modes")


def _int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise UserError(f"expected comma-separated whole numbers, got {text!r}") from None
    if min(values) < 1:
        raise UserError(f"expected positive numbers, got {text!r}")
    return values


STRIDES = parse_type(_int_list, "strides")


def model_rows(weights: list, modes, strides) -> list:
    """``[(SweepRow, Weights)]``: the first weights in each mode (sliding window once per
    stride), every later one as a student (single pass)."""
    from ..jobs.sweep import SweepRow

    first, *students = weights
    rows = []
    for mode in modes:
        if mode == "single":
            rows.append((SweepRow("single pass", str(first), "single"), first))
        else:
            rows += [(SweepRow(f"sliding window s={s}", str(first), "slide", s), first) for s in strides]
    for i, w in enumerate(students, 1):
        label = "student" if len(students) == 1 else f"student {i}"
        rows.append((SweepRow(label, str(w), "single"), w))
    return rows


def loaded(args, rows) -> list:
    """``[(row, backbone)]``, each distinct weights loaded once (``args.backbone``, ``--device``,
    ``--tokenizer``)."""
    from .model_args import load_model
    from .text_args import apply_tokenizer

    models = {}
    for _, w in rows:
        if str(w) not in models:
            models[str(w)] = load_model(args, weights=w)
            apply_tokenizer(models[str(w)], args)
    return [(row, models[str(w)]) for row, w in rows]


def weights_list(args) -> list:
    """``--weights`` as given (repeatable), or the default ``hub``."""
    from ..runtime import Weights
    return list(args.weights) if args.weights else [Weights.parse("hub")]


def plot_path(args) -> str | None:
    """``--plot``, else ``--out`` with ``.png`` for ``.json``, else None (no plot)."""
    if args.plot:
        return args.plot
    return os.path.splitext(args.out)[0] + ".png" if args.out else None


def add_output_args(parser, what: str) -> None:
    parser.add_argument("--out", default=None, help=f"write the {what} to this JSON file")
    parser.add_argument("--plot", default=None, metavar="PNG",
                        help="write the plot here (default: beside --out, as .png; needs matplotlib)")


def write_outputs(args, report: dict, plot) -> None:
    """``report`` to ``--out`` (atomic JSON) and ``plot(path, report)`` to the plot path (``plot``
    None: no plot)."""
    import json

    from ..atomic import atomic_write

    if args.out:
        atomic_write(args.out, (json.dumps(report, indent=2) + "\n").encode())
        print(f"wrote {args.out}")
    path = plot_path(args) if plot is not None else None
    if path:
        print(f"wrote {path}" if plot(path, report) else "matplotlib is not installed: no plot")


def check_outputs(args) -> None:
    from ..runtime import check_output_file

    if args.out:
        check_output_file(args.out, (".json",))
    if plot_path(args):
        check_output_file(plot_path(args), (".png",))


def run_sweep(args, queries, lposs) -> int:
    """``spar-fast eval --sweep``: every model at every resolution, a table, JSON and a plot."""
    from ..jobs.sweep import combine, format_table, plot_sweep, sweep
    from ..segmentation.queries import default_cache_dir

    if args.all:
        raise UserError("--sweep evaluates one dataset; use it with --dataset")
    check_outputs(args)
    for path in args.include or ():  # checked before the work
        _check_include(_read_sweep(path), args, path)
    rows = model_rows(weights_list(args), args.mode, (args.stride,))
    report = sweep(loaded(args, rows), args.dataset, args.root, args.sweep, log=print,
                   limit=args.limit, logit_scale=args.logit_scale, prob_thd=args.prob_thd,
                   area_thd=args.area_thd, batch_size=args.batch_size,
                   cache_dir=default_cache_dir(), queries=queries, classes=args.classes,
                   split=args.split, refine=args.refine, lposs=lposs)
    report.update(backbone=args.backbone, refine=args.refine, device=device_name(args.device))
    if args.include:
        report = combine(report, [_read_sweep(path) for path in args.include])
    print(format_table(report))
    for row in report["rows"]:
        print(f"  {row['label']}: --weights {row['weights']}")
    write_outputs(args, report, plot_sweep)
    return 0


def _read_sweep(path: str) -> dict:
    """An earlier ``eval --sweep --out`` report (one-line error when it is not one)."""
    import json

    try:
        with open(path, encoding="utf-8") as f:
            report = json.load(f)
    except (OSError, ValueError) as exc:
        raise UserError(f"--include {path}: cannot read a sweep report ({exc})") from None
    if not isinstance(report, dict) or not {"dataset", "sweep", "rows"} <= set(report):
        raise UserError(f"--include {path}: not a sweep report (written by eval --sweep --out)")
    return report


def _check_include(report: dict, args, path: str) -> None:
    values = [r.value for r in args.sweep]
    if report["dataset"] != args.dataset or report["sweep"] != {"kind": args.sweep[0].kind, "values": values}:
        raise UserError(f"--include {path} sweeps {report['dataset']} at {report['sweep']}; this run sweeps "
                        f"{args.dataset} at {args.sweep[0].kind} {values}")


def device_name(device) -> str:
    """The device in words, for a report: the GPU's name, or "cpu (N threads)"."""
    import torch

    from ..runtime import resolve_device

    device = resolve_device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    n = torch.get_num_threads()
    return f"cpu ({n} thread{'' if n == 1 else 's'})"
