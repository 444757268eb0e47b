"""The web client: one static page (HTML, CSS, JavaScript; no build step),
shipped as package data and served by the WebSocket door at `/`."""

from __future__ import annotations

from importlib.resources import files

from protocol.websocket import StaticFile

# URL path -> (file in this package, Content-Type)
PAGES = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/index.html": ("index.html", "text/html; charset=utf-8"),
    "/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/app.css": ("app.css", "text/css; charset=utf-8"),
}


def load_static() -> dict[str, StaticFile]:
    """Read the web client's files once -> `WebConfig.static`."""
    root = files(__name__)
    return {path: StaticFile(ctype, (root / name).read_bytes()) for path, (name, ctype) in PAGES.items()}
