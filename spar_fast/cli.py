"""``spar-fast`` command line: dispatches to the subcommand modules in ``spar_fast.commands``.

Errors a user can fix (bad paths, bad options, unreadable inputs) are reported as one line on
stderr with exit code 2; they are raised anywhere below as :class:`spar_fast.errors.UserError`,
and argparse's own usage errors are shortened to the same one line. Every ``--help`` shows the
defaults. SIGTERM and SIGHUP end a command like Ctrl-C (finished work kept, one line, exit
128 + the signal's number); warnings of the package or of the libraries it uses (torch, Pillow)
are printed as one line each, once per message.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import signal
import sys
import threading
import warnings

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


class Signalled(BaseException):
    """Raised in the main thread by SIGTERM / SIGHUP (like ``KeyboardInterrupt`` for SIGINT)."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _raise_signalled(signum, frame):
    raise Signalled(signum)


@contextlib.contextmanager
def _one_line_reporting(command: str):
    """Within a command: SIGTERM / SIGHUP raise :class:`Signalled` (where no other handler was
    set), and each distinct warning is one line ``spar-fast COMMAND: warning: ...`` on stderr."""
    seen = set()

    def show(message, category, filename, lineno, file=None, line=None):
        text = " ".join(str(message).split())[:300]
        if text not in seen:
            seen.add(text)
            print(f"spar-fast {command}: warning: {text}", file=sys.stderr)

    previous = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGHUP):
            if signal.getsignal(sig) is signal.SIG_DFL:
                previous[sig] = signal.signal(sig, _raise_signalled)
    try:
        with warnings.catch_warnings():
            warnings.showwarning = show
            yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


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
        with _one_line_reporting(args.command):
            return int(args.run(args) or 0)
    except UserError as exc:
        print(f"spar-fast {args.command}: error: {' '.join(str(exc).splitlines())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"spar-fast {args.command}: interrupted; finished work is kept, rerun to resume",
              file=sys.stderr)
        return 130
    except Signalled as exc:
        name = signal.Signals(exc.signum).name
        print(f"spar-fast {args.command}: stopped by {name}; finished work is kept, rerun to resume",
              file=sys.stderr)
        return 128 + exc.signum


if __name__ == "__main__":
    sys.exit(main())
