"""``spar-fast serve``: a local segmentation page (the standard library's HTTP server, no extra
dependency; docs/SERVE.md says why).

``options`` (:class:`ServeOptions`), ``examples`` (the files offered by name), ``request`` (the
JSON a page sends, checked), ``turns`` (one request at a time, a bounded queue), ``model_slot``
(one model in memory), ``run`` (segmentation, overlay, legend, label map, timing), ``server``
(routes) and ``page.html`` (the page: plain HTML and JavaScript, nothing fetched from elsewhere).
"""
from .options import ServeOptions
from .server import SegmentServer, make_server, serve

__all__ = ["ServeOptions", "SegmentServer", "make_server", "serve"]
