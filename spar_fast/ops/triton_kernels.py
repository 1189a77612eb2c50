"""Loading the Triton kernels (``kernels/<op>.py``) as ``spar_fast.kernels.<op>``, on first use."""
from __future__ import annotations

import importlib
import os
import sys


def _ensure_kernels_package() -> None:
    """Make ``spar_fast.kernels`` importable.

    An installed wheel has it at ``spar_fast/kernels/`` (``package_dir`` in setup.py); a source
    checkout (editable install, tests run from the repository) has the top-level ``kernels/``
    folder next to ``spar_fast/``, registered here under the package name.
    """
    import importlib.util

    if "spar_fast.kernels" in sys.modules:
        return
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # spar_fast/
    if os.path.isdir(os.path.join(package, "kernels")):
        return
    init = os.path.join(os.path.dirname(package), "kernels", "__init__.py")
    if not os.path.isfile(init):
        raise ImportError("spar_fast.kernels not found (neither installed nor in a source checkout)")
    spec = importlib.util.spec_from_file_location(
        "spar_fast.kernels", init, submodule_search_locations=[os.path.dirname(init)])
    module = importlib.util.module_from_spec(spec)
    sys.modules["spar_fast.kernels"] = module
    spec.loader.exec_module(module)


def triton_kernels(name: str):
    """Import ``spar_fast.kernels.<name>`` (the Triton kernels in the top-level ``kernels/``)."""
    _ensure_kernels_package()
    return importlib.import_module(f"spar_fast.kernels.{name}")
