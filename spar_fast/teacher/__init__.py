"""Sliding-window teacher: window plan, stitched features, and the reference execution."""
from .features import teacher_features  # noqa: F401
from .reference import teacher_features_reference  # noqa: F401
from .window_plan import WindowPlan, plan_windows, upsample_factor, window_origins  # noqa: F401
