"""``--refine lposs|lposs+`` and the ``--lposs-*`` settings, shared by ``segment`` and ``eval``.

One ``--lposs-<field>`` flag per field of :class:`spar_fast.segmentation.lposs.LpossSettings`
(help text and range check come from the field; values are checked when the settings are built).
"""
from __future__ import annotations

import argparse
import dataclasses


def add_refine_args(parser: argparse.ArgumentParser) -> None:
    from ..segmentation.lposs import LpossSettings

    parser.add_argument("--refine", choices=("lposs", "lposs+"), default=None,
                        help="label propagation of the class scores: over patches (lposs) and "
                             "then over pixels (lposs+); default: off")
    group = parser.add_argument_group("LPOSS settings (with --refine)")
    for f in dataclasses.fields(LpossSettings):
        kind = f.metadata.get("kind") or type(f.default)
        group.add_argument(f"--lposs-{f.name.replace('_', '-')}", dest=f"lposs_{f.name}", type=kind,
                           default=f.default, choices=f.metadata.get("choices"),
                           help=f.metadata["help"] + ("" if f.default is None else f" (default: {f.default})"))


def lposs_from_args(args):
    """The :class:`LpossSettings` of the parsed ``--lposs-*`` flags (range-checked)."""
    from ..segmentation.lposs import LpossSettings

    return LpossSettings(**{f.name: getattr(args, f"lposs_{f.name}") for f in dataclasses.fields(LpossSettings)})
