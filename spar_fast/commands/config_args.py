"""Flags from declared options (``spar_fast.options``): one ``--field-name`` per CLI field of a
config dataclass (:func:`add_options`; ``cli=False`` fields are left to the command), the config
built back from the parsed arguments (:func:`from_args`), and range checks as argparse types
(:func:`arg_type`) for options that are not config fields."""
from __future__ import annotations

import argparse
import dataclasses


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
