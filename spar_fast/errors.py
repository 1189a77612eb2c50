"""Exceptions whose message is meant for the user as one line (no traceback in the CLI)."""


class UserError(Exception):
    """Bad input a user can fix: a missing path, a malformed option, an unreadable file."""
