"""Options declared once: dataclass fields that carry their help text and range check, turned into
``argparse`` options and checked in one place.

A config dataclass declares each option with :func:`option`; its ``__post_init__`` calls
:func:`check_fields`, so the API, the CLI and a resumed run all go through the same checks.
:func:`add_options` adds one ``--field-name`` per field (``cli=False`` fields are left to the
command) and :func:`from_args` builds the config from the parsed arguments. The range checks
(:func:`at_least`, :func:`finite_above`, :func:`in_range`, ...) are also argparse types through
:func:`arg_type`, for options that are not config fields. Every failure is one line
(:class:`spar_fast.errors.UserError`; the CLI prints it and exits 2).
"""
from __future__ import annotations

import argparse
import dataclasses
import math

from .errors import UserError


def option(default, help: str, *, check=None, choices=None, kind=None, flag=None, cli: bool = True):
    """A dataclass field with its CLI spelling.

    ``check(value)`` returns a problem ("must be >= 1, got 0") or None; ``kind``
    parses the command-line text (default: the type of ``default``); ``flag`` names a boolean's
    CLI switch that stores the opposite of the default (``--no-resume`` for ``resume=True``)."""
    meta = {"help": help, "check": check, "choices": choices, "kind": kind, "flag": flag, "cli": cli}
    return dataclasses.field(default=default, metadata=meta)


def check_fields(config) -> None:
    """Run every field's ``check`` and ``choices`` test (``None`` passes: "not set")."""
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if value is None:
            continue
        choices = f.metadata.get("choices")
        if choices is not None and value not in choices:
            raise UserError(f"{f.name} must be one of {', '.join(map(str, choices))}, got {value!r}")
        check_value(f.name, value, f.metadata.get("check"))


def check_value(name: str, value, check) -> None:
    """``UserError("<name> <problem>")`` when ``check(value)`` names a problem."""
    problem = check(value) if check is not None else None
    if problem:
        raise UserError(f"{name} {problem}")


def _not_number(value) -> str | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"must be a number, got {value!r}"
    if not math.isfinite(value):
        return f"must be a finite number, got {value}"
    return None


def at_least(minimum: int):
    """Check: an integer >= ``minimum``."""
    def check(value):
        if isinstance(value, bool) or not isinstance(value, int):
            return f"must be an integer, got {value!r}"
        return f"must be >= {minimum}, got {value}" if value < minimum else None
    return check


def finite_above(low: float, inclusive: bool = False):
    """Check: a finite number > ``low`` (>= with ``inclusive``)."""
    def check(value):
        bad = _not_number(value)
        if bad or (value >= low if inclusive else value > low):
            return bad
        return f"must be {'>=' if inclusive else '>'} {low:g}, got {value}"
    return check


def in_range(low: float, high: float):
    """Check: a finite number in ``[low, high]``."""
    def check(value):
        bad = _not_number(value)
        if bad or low <= value <= high:
            return bad
        return f"must be in [{low:g}, {high:g}], got {value}"
    return check


def finite(value) -> str | None:
    """Check: any finite number."""
    return _not_number(value)


def arg_type(kind, check):
    """An argparse ``type``: ``kind(text)`` then ``check``; errors are argparse's one line."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {kind.__name__}, got {text!r}") from None
        problem = check(value)
        if problem:
            raise argparse.ArgumentTypeError(problem)
        return value
    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


def flag_name(field_name: str) -> str:
    return "--" + field_name.replace("_", "-")


def add_options(parser: argparse.ArgumentParser, config_cls, title: str) -> None:
    """One option per CLI field of ``config_cls``, defaults from the dataclass, in a group."""
    group = parser.add_argument_group(title)
    for f in dataclasses.fields(config_cls):
        meta = f.metadata
        if not meta.get("cli", False):
            continue
        if isinstance(f.default, bool):
            group.add_argument(meta.get("flag") or flag_name(f.name), dest=f.name,
                               action="store_false" if f.default else "store_true", help=meta["help"])
            continue
        kind = meta.get("kind") or type(f.default)
        group.add_argument(flag_name(f.name), dest=f.name, type=kind, default=f.default,
                           choices=meta.get("choices"), help=meta["help"])


def from_args(config_cls, args: argparse.Namespace, **extra):
    """``config_cls`` from the parsed options of :func:`add_options` plus ``extra`` fields."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(config_cls)
              if f.metadata.get("cli", False) and hasattr(args, f.name)}
    return config_cls(**values, **extra)
