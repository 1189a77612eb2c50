"""The HTTP side of ``spar-fast serve``: the standard library's threaded server, four routes.

``GET /`` the page, ``GET /api/config`` the choices and limits it offers, ``GET /api/example/NAME``
an example image, ``POST /api/segment`` a segmentation (JSON in, JSON out: overlay and label map
as base64 PNG, legend, timing). A bad request is answered with ``{"error": "<one line>"}`` and
4xx (413 for a body over the upload limit, refused from its ``Content-Length`` before it is
read; 503 when too many requests wait); the page shows that line. Requests are read in threads
but segment one at a time (:class:`Turns`) with one model in memory (:class:`ModelSlot`).
"""
from __future__ import annotations

import base64
import json
import mimetypes
import socket
import sys
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

from ...errors import UserError
from .examples import Examples, RequestError
from .model_slot import ModelSlot
from .options import ServeOptions
from .request import MODES, REFINES, parse_request
from .run import run_segment
from .turns import Turns

PAGE = Path(__file__).with_name("page.html")
LOOPBACK = ("127.0.0.1", "localhost", "::1")
# The page loads nothing from elsewhere; its images are data: (results) and blob: (the preview).
CSP = ("default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
       "img-src 'self' data: blob:; connect-src 'self'; form-action 'none'; base-uri 'none'")


class SegmentServer(ThreadingHTTPServer):
    """The server and the state its handlers share: options, examples, the model slot, the turns."""

    daemon_threads = True

    def __init__(self, options: ServeOptions, quiet: bool = False):
        self.options, self.quiet = options, quiet
        self.examples = Examples(options.examples)
        self.slot = ModelSlot(options.device, options.tokenizer)
        self.turns = Turns(options.max_waiting)
        self.page = PAGE.read_bytes()
        if ":" in options.host:
            self.address_family = socket.AF_INET6
        try:
            super().__init__((options.host, options.port), Handler)
        except OSError as exc:
            raise UserError(f"cannot listen on {options.host}:{options.port} ({exc.strerror or exc}); "
                            "choose another --port or --host") from None

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{f'[{host}]' if ':' in host else host}:{port}/"

    def config(self) -> dict:
        o = self.options
        return {"backbones": list(o.backbones), "weights": list(o.weights), "modes": list(MODES),
                "refines": list(REFINES), "max_pixels": o.max_pixels, "max_upload_bytes": o.max_upload_bytes,
                "examples": {kind: self.examples.names(kind) for kind in ("image", "class file", "query file")}}


class Handler(BaseHTTPRequestHandler):
    server: SegmentServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):  # noqa: A002 (the base class's name)
        if not self.server.quiet:
            super().log_message(format, *args)

    def _send(self, status: int, body: bytes, kind: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        if kind.startswith("text/html"):
            self.send_header("Content-Security-Policy", CSP)
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, value) -> None:
        self._send(status, json.dumps(value).encode("utf-8"), "application/json")

    def _error(self, exc: RequestError) -> None:
        self._json(exc.status, {"error": str(exc)})

    def _check_host(self) -> None:
        """A server on a loopback address answers only requests addressed to a loopback name: a
        web page elsewhere cannot reach it by pointing its own name at 127.0.0.1 (DNS rebinding)."""
        if self.server.options.host not in LOOPBACK:
            return
        name = urlsplit("//" + (self.headers.get("Host") or "")).hostname
        if name not in LOOPBACK:
            self.close_connection = True
            raise RequestError(f"this page answers only at {self.server.url} (Host: {name})", status=403)

    def do_GET(self):  # noqa: N802 (the base class's name)
        path = urlsplit(self.path).path
        try:
            self._check_host()
            if path in ("/", "/index.html"):
                self._send(200, self.server.page, "text/html; charset=utf-8")
            elif path == "/api/config":
                self._json(200, self.server.config())
            elif path.startswith("/api/example/"):
                file = self.server.examples.path("image", unquote(path[len("/api/example/"):]))
                kind = mimetypes.guess_type(file.name)[0] or "application/octet-stream"
                self._send(200, file.read_bytes(), kind)
            else:
                raise RequestError(f"no page at {path}", status=404)
        except RequestError as exc:
            self._error(exc)

    def do_POST(self):  # noqa: N802 (the base class's name)
        try:
            self._check_host()
            if urlsplit(self.path).path != "/api/segment":
                self.close_connection = True
                raise RequestError(f"no page at {self.path}", status=404)
            raw = self._body()
            req = parse_request(raw, self.server.options, self.server.examples)
            with self.server.turns.take() as waited:
                result = run_segment(self.server.slot, req, waited)
        except RequestError as exc:
            return self._error(exc)
        except UserError as exc:  # the model cannot be built or run with these choices
            return self._error(RequestError(str(exc)))
        except Exception as exc:  # a bug: one line for the page, the traceback on the console
            traceback.print_exc(file=sys.stderr)
            first = (str(exc).splitlines() or [""])[0]
            return self._json(500, {"error": f"internal error: {exc.__class__.__name__}: {first}"})
        self._json(200, {
            "image": req.image_name, "size": list(req.image.shape[:2]), "input_size": list(result.input_hw),
            "overlay": base64.b64encode(result.overlay_png).decode("ascii"),
            "labels": base64.b64encode(result.labels_png).decode("ascii"),
            "legend": result.legend, "timing": result.timing,
            "settings": {"backbone": req.backbone, "weights": req.weights, "mode": req.mode,
                         "stride": req.stride, "refine": req.refine or "none", "resize": req.resize}})

    def _body(self) -> bytes:
        """The request body, refused (413) from its declared length when over the limit."""
        limit = self.server.options.max_upload_bytes
        length = self.headers.get("Content-Length")
        if length is None or not length.strip().isdigit():
            self.close_connection = True
            raise RequestError("the request has no Content-Length", status=411)
        length = int(length)
        if length > limit:
            self.close_connection = True  # the body is not read: the connection cannot be reused
            raise RequestError(f"the upload of {length / 2**20:.1f} MB exceeds the limit of "
                               f"{limit / 2**20:.0f} MB (raise it with --max-upload-mb)", status=413)
        if "json" not in (self.headers.get("Content-Type") or ""):
            self.rfile.read(length)
            raise RequestError("the request must be application/json", status=415)
        raw = self.rfile.read(length)
        if len(raw) != length:
            self.close_connection = True
            raise RequestError("the request body ended early")
        return raw


def make_server(options: ServeOptions, quiet: bool = False) -> SegmentServer:
    """A bound, not yet serving :class:`SegmentServer` (``.url``; ``serve_forever()`` runs it)."""
    return SegmentServer(options, quiet)


def serve(options: ServeOptions) -> None:
    """Serve until interrupted (Ctrl-C): the one-line address first, a note when it is not local."""
    server = make_server(options)
    print(f"spar-fast serve: {server.url} (Ctrl-C to stop)", flush=True)
    if options.host not in LOOPBACK:
        print(f"note: listening on {options.host}: anyone who reaches this machine can use the page",
              file=sys.stderr)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("spar-fast serve: stopped", file=sys.stderr)
    finally:
        server.server_close()
        server.slot.release()
