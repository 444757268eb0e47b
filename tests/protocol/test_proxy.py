"""PROXY protocol v1 and v2 headers: valid, partial, malformed; arbitrary bytes never
crash; whole and byte-by-byte feeding agree; the trusted-networks check."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.proxy import (
    MAX_HEADER,
    MAX_V2_BODY,
    V2_SIGNATURE,
    Header,
    ProxyError,
    is_trusted,
    parse_networks,
    split_header,
)

# --- version 1 -------------------------------------------------------------------------


def test_tcp4_header_and_the_rest() -> None:
    data = b"PROXY TCP4 192.0.2.1 198.51.100.7 56324 7000\r\n/nick bob\n"
    assert split_header(data) == (Header(1, "192.0.2.1:56324"), b"/nick bob\n")


def test_tcp6_header() -> None:
    assert split_header(b"PROXY TCP6 2001:db8::1 2001:db8::2 1 2\r\n") == (Header(1, "2001:db8::1:1"), b"")


def test_unknown_source() -> None:
    assert split_header(b"PROXY UNKNOWN\r\nhi\n") == (Header(1, None), b"hi\n")


@pytest.mark.parametrize("partial", [b"", b"PRO", b"PROXY TCP4 192.0.2.1", b"\r\n\r\n\x00", V2_SIGNATURE])
def test_partial_header_needs_more(partial: bytes) -> None:
    assert split_header(partial) is None


@pytest.mark.parametrize(
    "data",
    [
        b"hello\r\n",
        b"GET / HTTP/1.1\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n",
        b"PROXY TCP4 2001:db8::1 5.6.7.8 1 2\r\n",
        b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n",
        b"PROXY TCP4 1.2.3.999 5.6.7.8 1 2\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 99999 2\r\n",
        b"PROXY TCP4 \xff.2.3.4 5.6.7.8 1 2\r\n",
        b"PROXY " + b"x" * 120,
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2" + b" " * 90 + b"\r\n",
    ],
)
def test_malformed_v1_headers_are_refused(data: bytes) -> None:
    with pytest.raises(ProxyError):
        split_header(data)


# --- version 2 -------------------------------------------------------------------------


def v2(command: int = 1, family: int = 0x11, body: bytes = b"", version: int = 2, length: int | None = None) -> bytes:
    size = len(body) if length is None else length
    return V2_SIGNATURE + bytes([version << 4 | command, family]) + size.to_bytes(2, "big") + body


def inet(src: str, dst: str, sport: int, dport: int) -> bytes:
    return (ipaddress.ip_address(src).packed + ipaddress.ip_address(dst).packed
            + sport.to_bytes(2, "big") + dport.to_bytes(2, "big"))


def tlv(kind: int, value: bytes) -> bytes:
    return bytes([kind]) + len(value).to_bytes(2, "big") + value


def test_v2_tcp4_header_and_the_rest() -> None:
    data = v2(body=inet("192.0.2.1", "198.51.100.7", 56324, 7000)) + b"/nick bob\n"
    assert split_header(data) == (Header(2, "192.0.2.1:56324"), b"/nick bob\n")


def test_v2_tcp6_header() -> None:
    data = v2(family=0x21, body=inet("2001:db8::1", "2001:db8::2", 1, 2))
    assert split_header(data) == (Header(2, "2001:db8::1:1"), b"")


def test_v2_ipv4_mapped_source_is_the_ipv4_address() -> None:
    data = v2(family=0x21, body=inet("::ffff:192.0.2.1", "::1", 5, 6))
    assert split_header(data) == (Header(2, "192.0.2.1:5"), b"")


def test_v2_tlvs_are_skipped() -> None:
    body = inet("192.0.2.1", "198.51.100.7", 1, 2) + tlv(0x01, b"chat") + tlv(0x04, b"") + tlv(0x05, b"id-1")
    assert split_header(v2(body=body) + b"x") == (Header(2, "192.0.2.1:1"), b"x")


def test_v2_local_is_a_health_check() -> None:
    assert split_header(v2(command=0, family=0x00) + b"rest") == (Header(2, None, local=True), b"rest")


def test_v2_local_ignores_its_addresses() -> None:
    data = v2(command=0, body=inet("192.0.2.1", "198.51.100.7", 1, 2))
    assert split_header(data) == (Header(2, None, local=True), b"")


@pytest.mark.parametrize("family", [0x00, 0x01, 0x02, 0x31])
def test_v2_without_a_usable_address_leaves_the_peer(family: int) -> None:
    body = b"\0" * 216 if family == 0x31 else b""
    assert split_header(v2(family=family, body=body)) == (Header(2, None), b"")


def test_v2_longest_accepted_header() -> None:
    body = inet("192.0.2.1", "198.51.100.7", 1, 2)
    body += tlv(0x04, b"\0" * (MAX_V2_BODY - len(body) - 3))
    assert len(v2(body=body)) == MAX_HEADER
    assert split_header(v2(body=body)) == (Header(2, "192.0.2.1:1"), b"")


@pytest.mark.parametrize(
    "data",
    [
        v2(version=1),  # a version we do not speak
        v2(command=2),  # an unknown command
        v2(family=0x41),  # an unknown family
        v2(family=0x12, body=inet("192.0.2.1", "198.51.100.7", 1, 2)),  # UDP over a TCP connection
        v2(family=0x11, body=b"\0" * 11),  # addresses cut short
        v2(family=0x21, body=b"\0" * 35),
        v2(body=inet("192.0.2.1", "198.51.100.7", 1, 2) + b"\x04\x00"),  # a TLV cut short
        v2(body=inet("192.0.2.1", "198.51.100.7", 1, 2) + b"\x04\x00\x05ab"),  # a TLV past the end
        v2(length=MAX_V2_BODY + 1),  # too long: refused before it is all there
        v2(length=0xFFFF),
        b"\r\n\r\nGET /",  # not the signature
        b"\r\n\r\n\x00\r\nQUIT\r",
    ],
)
def test_malformed_v2_headers_are_refused(data: bytes) -> None:
    with pytest.raises(ProxyError):
        split_header(data)


# --- any bytes at all ------------------------------------------------------------------


def byte_by_byte(data: bytes) -> tuple[Header, bytes] | str | None:
    """Feed the bytes one at a time as a reader would: the first answer, or the error."""
    for n in range(len(data) + 1):
        try:
            result = split_header(data[:n])
        except ProxyError:
            return "error"
        if result is not None:
            header, rest = result
            return header, rest + data[n:]
    return None


def whole(data: bytes) -> tuple[Header, bytes] | str | None:
    try:
        return split_header(data)
    except ProxyError:
        return "error"


headers = st.sampled_from([
    b"",
    b"PROXY ",
    b"PROXY TCP4 192.0.2.1 198.51.100.7 1 2\r\n",
    V2_SIGNATURE,
    v2(body=inet("192.0.2.1", "198.51.100.7", 1, 2)),
    v2(command=0, family=0x00),
    V2_SIGNATURE + b"\x21\x21\x00\x30",
])


@settings(max_examples=500)
@given(headers, st.binary(max_size=200))
def test_any_bytes_give_a_result_or_proxy_error(start: bytes, data: bytes) -> None:
    whole(start + data)  # the only error it may raise is ProxyError


@settings(max_examples=500)
@given(headers, st.binary(max_size=120))
def test_whole_and_byte_by_byte_agree(start: bytes, data: bytes) -> None:
    assert byte_by_byte(start + data) == whole(start + data)


# --- whom to believe -------------------------------------------------------------------


def test_trusted_networks() -> None:
    networks = parse_networks("127.0.0.0/8, 10.1.2.3,2001:db8::/32")
    assert is_trusted("127.0.0.1", networks)
    assert is_trusted("10.1.2.3", networks)
    assert not is_trusted("10.1.2.4", networks)
    assert is_trusted("::ffff:127.0.0.5", networks)  # an IPv4 peer on an IPv6 socket
    assert is_trusted("2001:db8::7", networks)
    assert not is_trusted("::1", networks)
    assert not is_trusted("?", networks)
    assert not is_trusted("", networks)


@pytest.mark.parametrize("text", ["", " , ", "10.0.0.0/33", "localhost", "1.2.3.4/8/1", "::1/129"])
def test_bad_networks_are_a_clear_error(text: str) -> None:
    with pytest.raises(ValueError, match="network"):
        parse_networks(text)


@given(st.text(max_size=40))
def test_any_peer_text_is_trusted_or_not(host: str) -> None:
    assert is_trusted(host, parse_networks("0.0.0.0/0,::/0")) in (True, False)
