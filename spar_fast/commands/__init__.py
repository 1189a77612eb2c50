"""Subcommands of the ``spar-fast`` CLI: one module each, exposing ``add_parser(subparsers)``
(registers the subcommand and its options) and ``run(args) -> int`` (the exit code)."""

# Order in which subcommands appear in ``spar-fast --help``.
COMMANDS = ("features", "verify", "train", "distill", "demo", "segment", "embed", "pca", "eval", "timing",
            "queries", "world", "probe", "serve", "export")
