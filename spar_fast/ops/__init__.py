"""Low-level ops, each with a torch reference (``<op>_reference``) beside the dispatching function."""
from .. import _backend
from .compiled import register_fakes
from .varlen_attention import varlen_attention, varlen_attention_reference  # noqa: F401
from .stitch import (stitch_finalize, stitch_finalize_reference, stitch_reference,  # noqa: F401
                     upsample_stitch_, upsample_stitch_reference)
from .seg_head import seg_head, seg_head_reference  # noqa: F401
from .lab_affinity import (lab_affinity, lab_affinity_degree, lab_affinity_matrix,  # noqa: F401
                           lab_affinity_reference)

_backend.on_extension_load(register_fakes)


def table() -> dict[str, _backend.Op]:
    """Every op of the table (``spar_fast._backend``) with its registered implementations."""
    return _backend.OPS
