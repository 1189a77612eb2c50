"""``ServeOptions``: what the segmentation page offers and the bounds of its input."""
from __future__ import annotations

from dataclasses import dataclass

from ...errors import UserError
from ...options import at_least, check_fields, option
from ...runtime import Weights

# Pixel limit of an uploaded or picked image: 16.8 M pixels (a 4096x4096 photo). The test resize
# brings it to at most 2048x672 before the model; without the resize the model sees all of it.
MAX_PIXELS = 1 << 24
MAX_UPLOAD_MB = 32  # one request body (the image, and a query file, base64-encoded in JSON)


def _port(value) -> str | None:
    """Check: a TCP port number (0: the system picks a free one)."""
    problem = at_least(0)(value)
    return problem or (f"must be <= 65535, got {value}" if value > 65535 else None)


@dataclass(frozen=True)
class ServeOptions:
    """Settings of ``spar-fast serve`` (:func:`spar_fast.jobs.serve.make_server`).

    ``backbones`` / ``weights``: the choices the page offers (every pair can be asked for; a
    student's weights fail to load on a backbone they were not trained from, with one line).
    ``examples``: a folder whose images (``.png``, ``.jpg``, ...), class files (``.txt``) and query
    files (``.safetensors``) the page offers by name; nothing else on the disk is reachable.
    """

    host: str = option("127.0.0.1", "address to listen on (another machine reaches the page only "
                                    "if this is not 127.0.0.1)")
    port: int = option(7860, "port to listen on (0: a free port)", check=_port)
    examples: str | None = option(None, "folder of images, class files (.txt) and query files "
                                        "(.safetensors) offered by name on the page", kind=str)
    max_pixels: int = option(MAX_PIXELS, "largest image accepted, in pixels (its header is read "
                                         "before any decoding)", check=at_least(1))
    max_upload_mb: int = option(MAX_UPLOAD_MB, "largest request accepted, in MB (an upload is sent "
                                               "base64-encoded: 3/4 of this for the files)",
                                check=at_least(1))
    max_waiting: int = option(8, "requests that may wait for the model; more are refused as busy",
                              check=at_least(1))
    backbones: tuple[str, ...] = option(("siglip2-b16-512",), "backbones offered", cli=False)
    weights: tuple[str, ...] = option(("hub",), "weights offered (hub | random[:SEED] | PATH)", cli=False)
    device: str | None = option(None, "device of the model", cli=False)
    tokenizer: str | None = option(None, "local tokenizer path", cli=False)

    def __post_init__(self):
        check_fields(self)
        if not self.backbones or not self.weights:
            raise UserError("serve needs at least one backbone and one weights choice")
        object.__setattr__(self, "weights", tuple(str(Weights.parse(str(w))) for w in self.weights))

    @property
    def max_upload_bytes(self) -> int:
        return self.max_upload_mb << 20
