"""Open-vocabulary segmentation: text queries, single-pass and sliding-window inference."""
from .classes import BUILTIN  # noqa: F401
from .infer import segment, segment_batch  # noqa: F401
from .lposs import LpossSettings  # noqa: F401
from .preprocess import keep_ratio_hw, prepare_image  # noqa: F401
from .queries import TEMPLATES, parse_classes, text_queries  # noqa: F401

