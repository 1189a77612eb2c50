"""Which backends a test parametrizes: all it knows, or only the one CI forces.

.ci/run runs the op-dependent test files once per ``SPAR_FAST_BACKEND`` value; in those runs each
backend-parametrized test keeps only the forced backend (none when the op lacks it), so a run
exercises that backend everywhere instead of repeating the others.
"""
import os



def backend_params(*params):
    """``params``: backend names or ``pytest.param(name, marks=...)``; filtered by the global
    ``SPAR_FAST_BACKEND`` when it is set (and not ``auto``)."""
    forced = os.environ.get("SPAR_FAST_BACKEND", "").strip().lower()
    if forced in ("", "auto"):
        return list(params)
    return [p for p in params if (p.values[0] if hasattr(p, "values") else p) == forced]
