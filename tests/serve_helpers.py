"""A running ``spar-fast serve`` on a free port with the tiny SigLIP2 backbone (random init), an
examples folder, and the expected label map computed through the public API."""
from __future__ import annotations

import base64
import contextlib
import http.client
import io
import json
import threading

import numpy as np
from PIL import Image

from spar_fast.jobs.serve import ServeOptions, make_server

BACKBONE, WEIGHTS = "siglip2-tiny", ("random:0", "random:1")
CLASSES = ("sky", "tree, trees", "road, street")


def photo(seed: int, hw=(40, 56)) -> np.ndarray:
    """A random ``uint8 [H, W, 3]`` picture of smooth blobs (odd size, not a multiple of 16)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(small).resize(hw[::-1], Image.BILINEAR))


def write_examples(folder) -> dict:
    """An image, a class file and a query file (of ``BACKBONE`` / ``random:0``) in ``folder``."""
    from spar_fast.backbones import Backbone
    from spar_fast.segmentation.query_file import compute_query_set, save_query_set

    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(photo(1)).save(folder / "blobs.png")
    (folder / "outdoor.txt").write_text("\n".join(CLASSES) + "\n")
    bb = Backbone.from_pretrained(BACKBONE, weights=WEIGHTS[0])
    save_query_set(compute_query_set(bb, list(CLASSES), progress=False), folder / "outdoor.safetensors")
    (folder / "notes.md").write_text("not offered")
    return {"image": folder / "blobs.png", "classes": folder / "outdoor.txt",
            "queries": folder / "outdoor.safetensors"}


@contextlib.contextmanager
def running_server(**kwargs):
    """``make_server`` on 127.0.0.1, a free port, serving in a thread until the block ends."""
    options = ServeOptions(**{"port": 0, "backbones": (BACKBONE,), "weights": WEIGHTS, "device": "cpu",
                              **kwargs})
    server = make_server(options, quiet=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def png_b64(image: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def request(server, method: str, path: str, body: bytes | None = None, headers=None):
    """``(status, parsed JSON or raw bytes)`` of one request to ``server``."""
    host, port = server.server_address[:2]
    conn = http.client.HTTPConnection(host, port, timeout=300)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        data = resp.read()
        if "json" in (resp.getheader("Content-Type") or ""):
            return resp.status, json.loads(data)
        return resp.status, data
    finally:
        conn.close()


def post_segment(server, **fields):
    body = json.dumps(fields).encode("utf-8")
    return request(server, "POST", "/api/segment", body, {"Content-Type": "application/json"})


def decode_png(b64: str) -> np.ndarray:
    return np.array(Image.open(io.BytesIO(base64.b64decode(b64))))


def expected_labels(image: np.ndarray, classes=CLASSES, weights=WEIGHTS[0], **kwargs) -> np.ndarray:
    """The label map of ``image`` from ``spar_fast.segment`` (kept size), as the page should show."""
    import spar_fast as sf

    bb = sf.Backbone.from_pretrained(BACKBONE, weights=weights)
    x = sf.model_input(image, bb, resize=None)
    return sf.segment(bb, x, list(classes), out_hw=image.shape[:2], **kwargs).numpy()
