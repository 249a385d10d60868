"""The viewer's web server: a Flask application over a :class:`~wsiheat.viewer.catalog.Catalog`.

Why Flask: openslide-python's own deep-zoom example is a Flask application;
the viewer's work per request is synchronous C code (OpenSlide, Pillow,
numpy) that releases the GIL, which a threaded WSGI server runs
concurrently; see ``docs/viewer.md``.

Security rules:

* it binds 127.0.0.1 unless told otherwise (the CLI warns for any other host);
* nothing in a request becomes a path: slides are looked up by key in the
  catalog, static assets in a table read from the package at start-up;
  anything else is 404 (no directory listing, no ``send_from_directory``);
* tile levels, columns and rows are checked against the pyramid (404 when out
  of range), colormap and threshold against their allowed values;
* stain-normalised slide tiles (``stain_files``) exist only for slides whose
  heatmap applied a fitted stain normalisation (404 otherwise); a tile the
  map fails on is served as it is, never as an error.
"""

from __future__ import annotations

import errno
import io
import ipaddress
import socket
import threading
from collections.abc import Callable
from importlib import resources
from typing import Self

import openslide
from flask import Flask, Response, abort, request

from wsiheat.cache import TileCache
from wsiheat.errors import WsiheatError
from wsiheat.viewer.catalog import Catalog, SlideEntry
from wsiheat.viewer.pages import render_index, render_slide, slide_data
from wsiheat.viewer.tiles import COLORMAPS, HeatmapLayer, SlideLayer, StainMap, TileNotFound, colormap_lut

#: content types of the static assets by suffix
_TYPES = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8", ".png": "image/png",
          ".txt": "text/plain; charset=utf-8", "": "text/plain; charset=utf-8"}
#: longest side of the index thumbnails
THUMB_PIXELS = 240
#: most slides kept open at once
OPEN_SLIDES = 32
_CSP = ("default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


def static_assets() -> dict[str, tuple[bytes, str]]:
    """The viewer's static files, read once from the package: ``{relative path: (bytes, content type)}``."""
    out: dict[str, tuple[bytes, str]] = {}
    root = resources.files("wsiheat.viewer") / "static"

    def walk(node, prefix: str) -> None:
        for child in node.iterdir():
            rel = f"{prefix}{child.name}"
            if child.is_dir():
                walk(child, rel + "/")
            else:
                suffix = "." + child.name.rsplit(".", 1)[1] if "." in child.name else ""
                out[rel] = (child.read_bytes(), _TYPES.get(suffix, "application/octet-stream"))

    walk(root, "")
    return out


def is_loopback(host: str) -> bool:
    """True when ``host`` only accepts connections from this machine."""
    if host in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class Layers:
    """Open slides and heatmap layers, each opened once; at most ``OPEN_SLIDES`` slides kept open."""

    def __init__(self, catalog: Catalog, max_open: int = OPEN_SLIDES) -> None:
        self.catalog = catalog
        self.max_open = max_open
        self._slides: dict[str, SlideLayer] = {}
        self._heatmaps: dict[str, HeatmapLayer] = {}
        self._stains: dict[str, StainMap | None] = {}
        self._thumbs: dict[str, bytes] = {}
        self._lock = threading.Lock()
        self._opening: dict[str, threading.Lock] = {}

    def _key_lock(self, key: str) -> threading.Lock:
        with self._lock:
            return self._opening.setdefault(key, threading.Lock())

    def slide(self, entry: SlideEntry) -> SlideLayer:
        """The slide layer of an entry that can be shown."""
        layer = self._slides.get(entry.key)
        if layer is not None:
            return layer
        with self._key_lock(entry.key):
            layer = self._slides.get(entry.key)
            if layer is None:
                layer = SlideLayer(entry.slide_path)
                layer.warm()  # once per slide, with its page: then no tile waits for it
                with self._lock:
                    while len(self._slides) >= self.max_open:
                        self._slides.pop(next(iter(self._slides))).close()
                    self._slides[entry.key] = layer
        return layer

    def heatmap(self, entry: SlideEntry) -> HeatmapLayer:
        """The heatmap layer of an entry."""
        layer = self._heatmaps.get(entry.key)
        if layer is None:
            with self._key_lock(entry.key):
                layer = self._heatmaps.get(entry.key)
                if layer is None:
                    hm = entry.heatmap()
                    layer = self._heatmaps[entry.key] = HeatmapLayer(hm.probabilities, hm.tissue, hm.cell_size,
                                                                     hm.origin)
        return layer

    def stain(self, entry: SlideEntry) -> StainMap | None:
        """The stain normalisation the heatmap applied to an entry's slide, None when it applied none."""
        if entry.key not in self._stains:
            with self._key_lock(entry.key):
                if entry.key not in self._stains:
                    self._stains[entry.key] = StainMap.from_summary(entry.summary, entry.name)
        return self._stains[entry.key]

    def thumbnail(self, entry: SlideEntry) -> bytes | None:
        """PNG thumbnail of the heatmap over the slide (from ``NAME_overlay.png``), None without one."""
        data = self._thumbs.get(entry.key)
        if data is None:
            path = entry.path_of("_overlay.png")
            if not path.is_file():
                return None
            from PIL import Image

            try:
                with Image.open(path) as img:
                    img = img.convert("RGB")
                    img.thumbnail((THUMB_PIXELS, THUMB_PIXELS))
                    buf = io.BytesIO()
                    img.save(buf, "PNG")
            except OSError:
                return None
            data = self._thumbs[entry.key] = buf.getvalue()
        return data

    def close(self) -> None:
        """Close every open slide."""
        with self._lock:
            for layer in self._slides.values():
                layer.close()
            self._slides.clear()


def _threshold(text: str | None) -> float:
    if text is None or text == "":
        return 0.0
    try:
        v = float(text)
    except ValueError:
        raise TileNotFound(f"threshold {text!r} is not a number") from None
    if not 0.0 <= v <= 1.0:
        raise TileNotFound(f"threshold {v} outside [0, 1]")
    return round(v, 2)


def create_app(catalog: Catalog, cache_bytes: int = 256 << 20) -> Flask:
    """The Flask application serving one catalog.

    Parameters
    ----------
    catalog : Catalog
        The slides it serves, and only those.
    cache_bytes : int
        Size of the LRU cache of encoded tiles.

    Returns
    -------
    flask.Flask
        With ``app.extensions["wsiheat"]`` holding the catalog, the layers and the cache.
    """
    app = Flask("wsiheat.viewer", static_folder=None)
    app.url_map.strict_slashes = True
    assets = static_assets()
    layers = Layers(catalog)
    cache = TileCache(cache_bytes)
    for name in COLORMAPS:  # build the colormap tables now, not on the first tile
        colormap_lut(name)
    app.extensions["wsiheat"] = {"catalog": catalog, "layers": layers, "cache": cache}

    def entry_or_404(key: str, viewable: bool = True) -> SlideEntry:
        entry = catalog.get(key)
        if entry is None or (viewable and entry.problem is not None):
            abort(404)
        return entry

    def cached(key: tuple, make: Callable[[], bytes], mimetype: str) -> Response:
        data = cache.get(key)
        if data is None:
            try:
                data = make()
            except TileNotFound:
                abort(404)
            except (OSError, WsiheatError, openslide.OpenSlideError):
                abort(500)  # an unreadable part of the slide: an error status, not a traceback page
            cache.put(key, data)
        resp = Response(data, mimetype=mimetype)
        resp.headers["Cache-Control"] = "private, max-age=600"
        return resp

    @app.errorhandler(WsiheatError)
    def user_error(exc: WsiheatError) -> Response:
        # a slide or heatmap that became unreadable while serving: one line, no traceback
        return Response(f"{exc}\n", status=404, content_type="text/plain; charset=utf-8")

    @app.errorhandler(openslide.OpenSlideError)
    def slide_error(exc: Exception) -> Response:
        return Response(f"cannot read the slide ({exc})\n", status=500, content_type="text/plain; charset=utf-8")

    @app.after_request
    def headers(resp: Response) -> Response:
        resp.headers["X-Content-Type-Options"] = "nosniff"
        resp.headers["Content-Security-Policy"] = _CSP
        resp.headers["Referrer-Policy"] = "no-referrer"
        return resp

    @app.get("/")
    @app.get("/index.html")
    def index() -> Response:
        return Response(render_index(catalog, live=True), mimetype="text/html")

    @app.get("/slides/<key>.html")
    def slide_page(key: str) -> Response:
        entry = entry_or_404(key, viewable=False)
        data = None
        if entry.problem is None:
            try:
                data = slide_data(catalog, entry, layers.slide(entry), layers.heatmap(entry), live=True,
                                  stain=layers.stain(entry))
            except WsiheatError as exc:
                entry.problem = str(exc)
        return Response(render_slide(catalog, entry, data, live=True), mimetype="text/html")

    @app.get("/slides/<key>/thumb.png")
    def thumb(key: str) -> Response:
        data = layers.thumbnail(entry_or_404(key, viewable=False))
        if data is None:
            abort(404)
        return Response(data, mimetype="image/png")

    @app.get("/slides/<key>/slide.dzi")
    def slide_dzi(key: str) -> Response:
        return Response(layers.slide(entry_or_404(key)).dzi(), mimetype="application/xml")

    @app.get("/slides/<key>/slide_files/<int:level>/<int:col>_<int:row>.jpeg")
    def slide_tile(key: str, level: int, col: int, row: int) -> Response:
        layer = layers.slide(entry_or_404(key))
        return cached((key, "s", level, col, row), lambda: layer.tile(level, col, row), "image/jpeg")

    @app.get("/slides/<key>/stain_files/<int:level>/<int:col>_<int:row>.jpeg")
    def stain_tile(key: str, level: int, col: int, row: int) -> Response:
        # the slide as the model saw it: the same normaliser, target and per-slide source as the heatmap
        entry = entry_or_404(key)
        stain = layers.stain(entry)
        if stain is None:
            abort(404)
        layer = layers.slide(entry)
        return cached((key, "n", level, col, row), lambda: layer.tile(level, col, row, stain), "image/jpeg")

    @app.get("/slides/<key>/heatmap_files/<int:level>/<int:col>_<int:row>.png")
    def heatmap_tile(key: str, level: int, col: int, row: int) -> Response:
        layer = layers.heatmap(entry_or_404(key))
        cmap = request.args.get("cmap", COLORMAPS[0])
        if cmap not in COLORMAPS:
            abort(404)
        try:
            thr = _threshold(request.args.get("thr"))
        except TileNotFound:
            abort(404)
        return cached((key, "h", level, col, row, cmap, thr),
                      lambda: layer.tile(level, col, row, cmap, thr), "image/png")

    @app.get("/static/<path:name>")
    def static_asset(name: str) -> Response:
        item = assets.get(name)  # a table look-up: the request never reaches the filesystem
        if item is None:
            abort(404)
        resp = Response(item[0], content_type=item[1])
        resp.headers["Cache-Control"] = "private, max-age=3600"
        return resp

    return app


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (port 0: any free port).

    Raises
    ------
    WsiheatError
        The port is in use (names it, suggests ``--port``), or the host cannot be bound.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host.strip("[]"), int(port)), family=family, backlog=128)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise WsiheatError(f"port {port} on {host} is already in use (another wsiheat view?); "
                               f"choose another with --port, e.g. --port {int(port) + 1}") from None
        if exc.errno in (errno.EACCES, errno.EPERM):
            raise WsiheatError(f"port {port} on {host}: permission denied; choose a port above 1023 "
                               f"with --port") from None
        raise WsiheatError(f"cannot listen on {host}:{port} ({exc.strerror or exc})") from None


class ViewerServer:
    """A threaded HTTP server running the viewer application.

    Parameters
    ----------
    app : flask.Flask
        From :func:`create_app`.
    host : str
        Address to listen on (127.0.0.1 by default: this machine only).
    port : int
        Port; 0 picks a free one (see :attr:`port`).

    Raises
    ------
    WsiheatError
        The port is in use or the host cannot be bound.
    """

    def __init__(self, app: Flask, host: str = "127.0.0.1", port: int = 8000) -> None:
        from werkzeug.serving import ThreadedWSGIServer, WSGIRequestHandler

        class QuietHandler(WSGIRequestHandler):
            def log(self, type: str, message: str, *args) -> None:
                pass

        sock = bind_socket(host, port)
        try:
            self._server = ThreadedWSGIServer(host.strip("[]"), sock.getsockname()[1], app,
                                              handler=QuietHandler, fd=sock.fileno())
        finally:
            sock.close()  # the server holds its own duplicate of the socket
        self._server.daemon_threads = True
        self.app = app
        self.host = host
        self.port = int(self._server.socket.getsockname()[1])
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """The index page's URL."""
        h = f"[{self.host.strip('[]')}]" if ":" in self.host else self.host
        return f"http://{h}:{self.port}/"

    def serve_forever(self) -> None:
        """Serve until :meth:`shutdown` (or Ctrl-C in the calling thread)."""
        self._server.serve_forever(poll_interval=0.2)

    def start(self) -> ViewerServer:
        """Serve in a background thread; returns self."""
        self._thread = threading.Thread(target=self.serve_forever, name="wsiheat-viewer", daemon=True)
        self._thread.start()
        return self

    def shutdown(self) -> None:
        """Stop serving and close the slides."""
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join()
            self._thread = None
        self._server.server_close()
        self.app.extensions["wsiheat"]["layers"].close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.shutdown()
