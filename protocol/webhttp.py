"""The little HTTP the WebSocket door speaks (protocol.websocket): complete
responses that close the connection, with the headers a browser needs to keep
the web client safe (a Content-Security-Policy that allows only this origin's
own script, style and WebSocket; no sniffing; no referrer), and the Origin
rule of the upgrade.
"""

from __future__ import annotations

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
REASONS = {
    200: "OK",
    400: "Bad Request",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    426: "Upgrade Required",
    431: "Request Header Fields Too Large",
}


def http_response(status: int, content_type: str, body: bytes, head_only: bool = False) -> bytes:
    """A complete HTTP/1.1 response that closes the connection."""
    head = (
        f"HTTP/1.1 {status} {REASONS.get(status, 'Error')}\r\n"
        f"Content-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Cache-Control: no-cache\r\n"
        f"Content-Security-Policy: {CSP}\r\n"
        "X-Content-Type-Options: nosniff\r\n"
        "Referrer-Policy: no-referrer\r\n"
        "Connection: close\r\n\r\n"
    ).encode("ascii")
    return head if head_only else head + body


def http_error(status: int, text: str) -> bytes:
    return http_response(status, "text/plain; charset=utf-8", f"{text}\n".encode())


def header(headers: list[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    for key, value in headers:
        if key.lower() == name:
            return value
    return None


def origin_allowed(origin: bytes | None, host: bytes | None, origins: frozenset[str]) -> bool:
    """No Origin (not a browser), this host's own, or one on the allow-list."""
    if origin is None:
        return True
    text = origin.decode("latin-1").strip().lower()
    if any(text == allowed.lower().rstrip("/") for allowed in origins):
        return True
    scheme, sep, netloc = text.partition("://")
    return bool(sep) and scheme in ("http", "https") and host is not None and netloc == host.decode("latin-1").lower()
