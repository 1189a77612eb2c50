"""The files of ``--examples`` the page offers by name: images, class files and query files.

The folder is listed once at start; a request names a file of that list, never a path, so nothing
else on the disk can be read through the page. An unknown name is a one-line :class:`RequestError`
naming what is offered.
"""
from __future__ import annotations

import os
from pathlib import Path

from ...data.images import IMAGE_EXTENSIONS
from ...errors import UserError

CLASS_EXTENSIONS = (".txt",)
QUERY_EXTENSIONS = (".safetensors",)
KINDS = {"image": IMAGE_EXTENSIONS, "class file": CLASS_EXTENSIONS, "query file": QUERY_EXTENSIONS}


class RequestError(UserError):
    """A request the page sent that cannot be served: one line, HTTP ``status`` (400 by default)."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


class Examples:
    """``{kind: {name: path}}`` of the regular files directly in ``folder`` (None: nothing)."""

    def __init__(self, folder: str | os.PathLike | None):
        self.files: dict[str, dict[str, Path]] = {kind: {} for kind in KINDS}
        if folder is None:
            return
        root = Path(folder)
        if not root.is_dir():
            raise UserError(f"examples folder not found: {root}")
        for path in sorted(root.iterdir()):
            kind = next((k for k, ext in KINDS.items() if path.suffix.lower() in ext), None)
            if kind is not None and path.is_file():
                self.files[kind][path.name] = path

    def names(self, kind: str) -> list[str]:
        return list(self.files[kind])

    def path(self, kind: str, name) -> Path:
        """The file ``name`` of ``kind``; anything else is a ``RequestError`` (404)."""
        offered = self.files[kind]
        if not isinstance(name, str) or name not in offered:
            listed = ", ".join(offered) or "none"
            raise RequestError(f"unknown {kind} {name!r} (offered: {listed})", status=404)
        return offered[name]
