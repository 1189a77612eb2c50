"""``spar-fast`` command line: dispatches to the subcommand modules in ``spar_fast.commands``.

Errors a user can fix (bad paths, bad options, unreadable inputs) are reported as one line on
stderr with exit code 2; they are raised anywhere below as :class:`spar_fast.errors.UserError`,
and argparse's own usage errors are shortened to the same one line. Every ``--help`` shows the
defaults.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from .commands import COMMANDS
from .errors import UserError


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Adds "(default: X)" to every option that has a value default (not to flags, not to
    options whose help already states its default)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "(default" in text or isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)) \
                or action.default is None:
            return text
        return super()._get_help_string(action)


class Parser(argparse.ArgumentParser):
    """Defaults shown in every ``--help``; a usage error is one line on stderr, exit 2."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message):
        raise UsageError(f"{self.prog}: error: {message}")


class UsageError(UserError):
    """A malformed command line (the message is the whole line, program name included)."""


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="spar-fast",
        description="SPAR: distill a sliding-window ViT teacher into a single-pass student, "
                    "and run open-vocabulary segmentation with it.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
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
    try:
        args = parser.parse_args(argv)
    except UsageError as exc:
        print(exc, file=sys.stderr)
        return 2
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
