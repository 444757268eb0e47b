"""PROXY protocol v1 headers: valid, partial, malformed; arbitrary bytes never crash."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.proxy import ProxyError, split_header


def test_tcp4_header_and_the_rest() -> None:
    data = b"PROXY TCP4 192.0.2.1 198.51.100.7 56324 7000\r\n/nick bob\n"
    assert split_header(data) == ("192.0.2.1:56324", b"/nick bob\n")


def test_tcp6_header() -> None:
    assert split_header(b"PROXY TCP6 2001:db8::1 2001:db8::2 1 2\r\n") == ("2001:db8::1:1", b"")


def test_unknown_source() -> None:
    assert split_header(b"PROXY UNKNOWN\r\nhi\n") == (None, b"hi\n")


@pytest.mark.parametrize("partial", [b"", b"PRO", b"PROXY TCP4 192.0.2.1"])
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
def test_malformed_headers_are_refused(data: bytes) -> None:
    with pytest.raises(ProxyError):
        split_header(data)


@settings(max_examples=300)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_give_a_result_or_proxy_error(data: bytes) -> None:
    with contextlib.suppress(ProxyError):  # the only error it may raise
        split_header(data)
