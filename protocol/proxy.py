"""The PROXY protocol, versions 1 and 2 (HAProxy's `send-proxy` and
`send-proxy-v2`): the client's real address, sent by a layer-4 balancer
before the client's first byte.

Version 1 is one text line of at most 107 bytes:

    PROXY TCP4 192.0.2.1 198.51.100.7 56324 7000\\r\\n
    PROXY TCP6 2001:db8::1 2001:db8::2 56324 7000\\r\\n
    PROXY UNKNOWN\\r\\n

Version 2 is binary, 16 bytes and then `length` bytes:

    12 bytes  signature  \\r\\n\\r\\n\\0\\r\\nQUIT\\n
    1 byte    version (high 4 bits, 2) and command (low 4 bits: 0 LOCAL, 1 PROXY)
    1 byte    family (high 4 bits: 0 UNSPEC, 1 INET, 2 INET6, 3 UNIX)
              and transport (low 4 bits: 0 UNSPEC, 1 STREAM, 2 DGRAM)
    2 bytes   length, big-endian: the addresses and the TLVs after them
    INET:     source 4, destination 4, source port 2, destination port 2
    INET6:    source 16, destination 16, source port 2, destination port 2
    UNIX:     source 108, destination 108
    TLVs:     type 1 byte, length 2 bytes big-endian, value; skipped, but they must
              fill the rest exactly

LOCAL is the balancer's own connection (HAProxy's `check-send-proxy` health
check): its addresses are ignored. UNSPEC and UNIX carry no address we can
use: the peer's address stands. A version 2 header is at most `MAX_HEADER`
bytes, a bound well above what HAProxy sends.

`split_header(data)` takes the first bytes of a connection, tells the version
by them, and returns the header and the bytes after it, or None while more
bytes are needed; anything else raises `ProxyError`, and only that.

`parse_networks` and `is_trusted` decide whom to believe: a header is taken
only from a peer inside the trusted balancers' networks.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from protocol.errors import ProtocolError

MAX_V1_HEADER = 107  # the specification's limit
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V2_FIXED = 16  # signature, version/command, family/transport, length
MAX_V2_BODY = 1024  # addresses and TLVs; HAProxy sends far less unless asked for TLS details
MAX_HEADER = V2_FIXED + MAX_V2_BODY

LOCAL, PROXY = 0, 1
UNSPEC, INET, INET6, UNIX = 0, 1, 2, 3
STREAM = 1
ADDRESS_SIZES = {UNSPEC: 0, INET: 12, INET6: 36, UNIX: 216}

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class ProxyError(ProtocolError):
    """Not a valid PROXY header."""


@dataclass(frozen=True, slots=True)
class Header:
    version: int  # 1 or 2
    source: str | None  # the client's "host:port"; None: the peer's address stands
    local: bool = False  # v2 LOCAL: the balancer's own connection, a health check


def split_header(data: bytes) -> tuple[Header, bytes] | None:
    """-> (the header, the bytes after it), or None if more bytes are needed."""
    if data[:1] == V2_SIGNATURE[:1]:
        return _split_v2(data)
    return _split_v1(data)


# --- version 1 -------------------------------------------------------------------


def _split_v1(data: bytes) -> tuple[Header, bytes] | None:
    end = data.find(b"\r\n")
    if end < 0:
        if len(data) >= MAX_V1_HEADER or not b"PROXY ".startswith(data[:6]):
            raise ProxyError("no PROXY header")
        return None
    if end + 2 > MAX_V1_HEADER:
        raise ProxyError("PROXY header too long")
    return Header(1, _v1_source(data[:end])), data[end + 2:]


def _v1_source(line: bytes) -> str | None:
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


# --- version 2 -------------------------------------------------------------------


def _split_v2(data: bytes) -> tuple[Header, bytes] | None:
    if not data.startswith(V2_SIGNATURE[:len(data)]):
        raise ProxyError("no PROXY header")
    if len(data) < V2_FIXED:
        return None
    version, command = data[12] >> 4, data[12] & 0x0F
    if version != 2 or command not in (LOCAL, PROXY):
        raise ProxyError("unsupported PROXY v2 version or command")
    length = int.from_bytes(data[14:16], "big")
    if length > MAX_V2_BODY:
        raise ProxyError(f"PROXY v2 header too long (over {MAX_HEADER} bytes)")
    end = V2_FIXED + length
    if len(data) < end:
        return None
    source = _v2_source(data[13], data[V2_FIXED:end])
    return Header(2, None if command == LOCAL else source, local=command == LOCAL), data[end:]


def _v2_source(family_byte: int, body: bytes) -> str | None:
    family, transport = family_byte >> 4, family_byte & 0x0F
    size = ADDRESS_SIZES.get(family)
    if size is None or len(body) < size:
        raise ProxyError("malformed PROXY v2 addresses")
    _check_tlvs(body[size:])
    if family in (INET, INET6):
        if transport != STREAM:
            raise ProxyError("PROXY v2 header for a transport other than TCP")
        half = (size - 4) // 2
        address = _plain(ipaddress.ip_address(body[:half]))
        return f"{address}:{int.from_bytes(body[size - 4:size - 2], 'big')}"
    return None  # UNSPEC, UNIX: no address of the client's we could use


def _check_tlvs(tlvs: bytes) -> None:
    """The TLVs must fill the rest exactly; their contents are not ours to use."""
    at = 0
    while at < len(tlvs):
        if at + 3 > len(tlvs):
            raise ProxyError("malformed PROXY v2 TLV")
        at += 3 + int.from_bytes(tlvs[at + 1:at + 3], "big")
    if at != len(tlvs):
        raise ProxyError("malformed PROXY v2 TLV")


# --- whom to believe --------------------------------------------------------------


def parse_networks(text: str) -> tuple[Network, ...]:
    """"CIDR[,CIDR...]" -> networks; a bare address is a network of one. ValueError if bad."""
    networks: list[Network] = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise ValueError(f"not an address or CIDR network: {item!r}") from None
    if not networks:
        raise ValueError("no networks given")
    return tuple(networks)


def is_trusted(host: str, networks: tuple[Network, ...]) -> bool:
    """Is this peer address inside one of the networks? IPv4-mapped IPv6 counts as IPv4."""
    try:
        address = ipaddress.ip_address(host.partition("%")[0])
    except ValueError:
        return False
    return any(_plain(address) in network for network in networks)


def _plain(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """An IPv4-mapped IPv6 address (::ffff:192.0.2.1) as the IPv4 address it is."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address
