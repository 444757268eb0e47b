"""The PROXY protocol, version 1 (HAProxy's `send-proxy`): the client's real
address, sent by a layer-4 balancer before the client's first byte.

    PROXY TCP4 192.0.2.1 198.51.100.7 56324 7000\\r\\n
    PROXY TCP6 2001:db8::1 2001:db8::2 56324 7000\\r\\n
    PROXY UNKNOWN\\r\\n

`split_header(data)` takes the first bytes of a connection and returns the
source address and the bytes after the header; it raises `ProxyError` for
anything else. The header is at most 107 bytes (the specification's limit).
"""

from __future__ import annotations

import ipaddress

from protocol.errors import ProtocolError

MAX_HEADER = 107


class ProxyError(ProtocolError):
    """Not a valid PROXY v1 header."""


def split_header(data: bytes) -> tuple[str | None, bytes] | None:
    """-> (source "host:port" or None for UNKNOWN, the rest), or None if more bytes are needed."""
    end = data.find(b"\r\n")
    if end < 0:
        if len(data) >= MAX_HEADER or not b"PROXY ".startswith(data[:6]):
            raise ProxyError("no PROXY header")
        return None
    if end + 2 > MAX_HEADER:
        raise ProxyError("PROXY header too long")
    return _source(data[:end]), data[end + 2:]


def _source(line: bytes) -> str | None:
    try:
        words = line.decode("ascii").split(" ")
    except UnicodeDecodeError:
        raise ProxyError("PROXY header is not ASCII") from None
    if words[:2] == ["PROXY", "UNKNOWN"]:
        return None
    if len(words) != 6 or words[0] != "PROXY" or words[1] not in ("TCP4", "TCP6"):
        raise ProxyError("malformed PROXY header")
    _, family, src, _dst, sport, _dport = words
    try:
        address = ipaddress.ip_address(src)
    except ValueError:
        raise ProxyError("bad source address in PROXY header") from None
    if (address.version == 4) != (family == "TCP4") or not sport.isdigit() or int(sport) > 65535:
        raise ProxyError("malformed PROXY header")
    return f"{address}:{int(sport)}"
