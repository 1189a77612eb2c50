"""Options declared once: dataclass fields that carry their help text and range check, checked
in one place.

A config dataclass declares each option with :func:`option`; its ``__post_init__`` calls
:func:`check_fields`, so the API, the CLI and a resumed run all go through the same checks. The
commands turn the fields into flags (``spar_fast.commands.config_args``: ``add_options``,
``from_args``), and the range checks (:func:`at_least`, :func:`finite_above`, :func:`in_range`,
...) into argparse types (``arg_type``). Every failure is one line
(:class:`spar_fast.errors.UserError`; the CLI prints it and exits 2).
"""
from __future__ import annotations

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
