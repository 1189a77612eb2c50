"""``spar-fast`` command line: dispatches to the subcommand modules in ``spar_fast.commands``.

Errors a user can fix (bad paths, bad options, unreadable inputs) are reported as one line on
stderr with exit code 2; they are raised anywhere below as :class:`spar_fast.errors.UserError`.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from .commands import COMMANDS
from .errors import UserError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="spar-fast",
        description="SPAR: distill a sliding-window ViT teacher into a single-pass student, "
                    "and run open-vocabulary segmentation with it.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"spar_fast.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"spar_fast.commands.{name}":
                raise
            continue
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    try:
        return int(args.run(args) or 0)
    except UserError as exc:
        print(f"spar-fast {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"spar-fast {args.command}: interrupted; finished work is kept, rerun to resume",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
