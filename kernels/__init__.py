"""Triton kernels of spar_fast, one op per file (imported lazily as ``spar_fast.kernels.<op>``).

Each module holds private ``@triton.jit`` kernels and host launchers; the torch reference and
the dispatch live in ``spar_fast.ops``. Modules here may use only relative imports.
"""
