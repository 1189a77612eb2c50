"""Low-level ops, each with a torch reference (``<op>_reference``) beside the dispatching function."""
from .varlen_attention import varlen_attention, varlen_attention_reference  # noqa: F401
