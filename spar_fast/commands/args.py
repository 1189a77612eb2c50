"""Options shared by several commands, declared once: ``--weights``, ``--backbone``, ``--device``.

``--weights hub|random[:SEED]|PATH`` is parsed by :meth:`spar_fast.runtime.Weights.parse`. The
older spellings stay accepted as hidden aliases that print a one-line deprecation note:
``--pretrained true|false|PATH`` (train, distill), ``--checkpoint PATH`` and ``--random-init``
(segment, embed, pca, eval).
"""
from __future__ import annotations

import argparse
import sys

from ..errors import UserError


def _weights(text: str):
    from ..runtime import Weights
    try:
        return Weights.parse(text)
    except UserError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


_weights.__name__ = "weights"  # argparse names the type in its messages


def _old_pretrained(text: str):
    low = text.strip().lower()
    if low in ("true", "yes", "1"):
        return _weights("hub")
    if low in ("false", "no", "0", "none"):
        return _weights("random")
    return _weights(text)


class _Deprecated(argparse.Action):
    """A hidden older spelling of ``--weights``: notes the new one, stores into ``weights``."""

    def __init__(self, option_strings, dest, convert=None, append=False, **kwargs):
        self.convert, self.append = convert, append
        super().__init__(option_strings, dest, help=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        value = self.convert(values)
        print(f"note: {option_string} is deprecated; use --weights {value}", file=sys.stderr)
        if self.append:
            value = (getattr(namespace, self.dest) or []) + [value]
        setattr(namespace, self.dest, value)


def add_weights(parser, default: str | None, help_default: str, repeatable: bool = False,
                legacy: str = "checkpoint") -> None:
    """``--weights`` (``repeatable``: once per model) and its hidden older spellings:
    ``legacy="checkpoint"`` adds ``--checkpoint PATH`` / ``--random-init``, ``"pretrained"`` adds
    ``--pretrained true|false|PATH``."""
    parser.add_argument("--weights", type=_weights, action="append" if repeatable else "store",
                        default=None if repeatable else (default and _weights(default)),
                        metavar="hub|random[:SEED]|PATH|ORG/NAME",
                        help="weights: the published ones (hub), a seeded random init (random, "
                             "random:SEED), a weights file (open_clip, SPAR .ckpt, spar_fast "
                             ".safetensors, full or delta), a saved model folder or a Hugging Face "
                             f"hub id{'; repeat for several models' if repeatable else ''} "
                             f"(default: {help_default})")
    if legacy == "pretrained":
        parser.add_argument("--pretrained", dest="weights", convert=_old_pretrained, action=_Deprecated)
    else:
        parser.add_argument("--checkpoint", dest="weights", convert=_weights, append=repeatable,
                            action=_Deprecated)
        parser.add_argument("--random-init", dest="weights", nargs=0, action=_Deprecated,
                            convert=lambda _: _weights("random"), append=repeatable)


def add_base_weights(parser) -> None:
    """``--base-weights``: the base a delta student is applied over, when not the recorded one."""
    parser.add_argument("--base-weights", dest="base_weights", default=None, metavar="hub|random[:SEED]|PATH",
                        help="base weights of a delta student (default: the ones it records; "
                             "e.g. the base file moved)")


def add_backbone(parser, default: str | None, help_default: str | None = None) -> None:
    """``--backbone NAME``: a registry name or an open_clip model name (checked when loaded)."""
    from ..backbones.registry import KNOWN
    parser.add_argument("--backbone", default=default, metavar="NAME",
                        help=f"backbone: {', '.join(KNOWN)} or an open_clip model name; a delta "
                             "student or model folder given as weights names its own "
                             f"(default: {help_default or default})")


def add_device(parser, help_default: str = "cuda when available, else cpu") -> None:
    parser.add_argument("--device", default=None, metavar="auto|cpu|cuda|cuda:N",
                        help=f"device (default: {help_default})")
