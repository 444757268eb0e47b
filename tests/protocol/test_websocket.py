"""The WebSocket door's pure state machine, driven by wsproto as the client."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    Pong,
    Request,
    TextMessage,
)
from wsproto.frame_protocol import FrameProtocol

from gateway.web import load_static
from protocol.messages import ChatEvent, EventType
from protocol.webhttp import CSP, origin_allowed
from protocol.websocket import (
    Feed,
    Phase,
    StaticFile,
    WebConfig,
    WebConnection,
    frame_text,
    render_event,
)

HOST = "127.0.0.1:8080"
STATIC = {"/": StaticFile("text/html; charset=utf-8", b"<!doctype html><p>hi</p>")}
CONFIG = WebConfig(static=STATIC, origins=frozenset({"https://chat.example"}), max_message=1024, max_line=64)


def upgrade_request(origin: str | None = f"http://{HOST}", target: str = "/ws") -> tuple[WSConnection, bytes]:
    client = WSConnection(ConnectionType.CLIENT)
    headers = [] if origin is None else [(b"Origin", origin.encode())]
    return client, client.send(Request(host=HOST, target=target, extra_headers=headers))


def opened(config: WebConfig = CONFIG) -> tuple[WSConnection, WebConnection]:
    client, request = upgrade_request()
    server = WebConnection(config)
    feed = server.feed(request)
    assert feed.opened and feed.close is None
    client.receive_data(feed.out)
    assert isinstance(next(client.events()), AcceptConnection)
    return client, server


def server_events(client: WSConnection, out: bytes) -> list[object]:
    client.receive_data(out)
    return list(client.events())


def status_of(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


def feed_bytewise(server: WebConnection, data: bytes) -> list[Feed]:
    return [server.feed(data[i : i + 1]) for i in range(len(data))]


# --- HTTP ---------------------------------------------------------------------------


def test_upgrade_same_host_is_accepted() -> None:
    _client, server = opened()
    assert server.is_open


@pytest.mark.parametrize("origin", [None, "https://chat.example", "HTTP://127.0.0.1:8080"])
def test_allowed_origins(origin: str | None) -> None:
    _, request = upgrade_request(origin)
    assert WebConnection(CONFIG).feed(request).opened


@pytest.mark.parametrize("origin", ["http://evil.example", "null", "http://127.0.0.1:8081", "127.0.0.1:8080", "file://127.0.0.1:8080"])
def test_wrong_origin_gets_403(origin: str) -> None:
    _, request = upgrade_request(origin)
    server = WebConnection(CONFIG)
    feed = server.feed(request)
    assert status_of(feed.out) == 403 and feed.close and not feed.opened
    assert server.phase is Phase.DONE
    assert server.feed(b"more").out == b""


def test_origin_allowed_pure() -> None:
    assert origin_allowed(b"http://a:1", b"A:1", frozenset())
    assert not origin_allowed(b"http://a:1", None, frozenset())
    assert not origin_allowed(b"ftp://a:1", b"a:1", frozenset())
    assert origin_allowed(b"https://Chat.Example", b"other", frozenset({"https://chat.example/"}))


def test_static_page_has_type_cache_and_csp() -> None:
    feed = WebConnection(CONFIG).feed(b"GET /?x=1 HTTP/1.1\r\nHost: h\r\n\r\n")
    head, _, body = feed.out.partition(b"\r\n\r\n")
    assert status_of(feed.out) == 200 and body == STATIC["/"].body
    assert b"Content-Type: text/html; charset=utf-8" in head
    assert b"Cache-Control: no-cache" in head
    assert f"Content-Security-Policy: {CSP}".encode() in head
    assert f"Content-Length: {len(body)}".encode() in head
    assert feed.close


def test_head_request_has_no_body() -> None:
    feed = WebConnection(CONFIG).feed(b"HEAD / HTTP/1.1\r\nHost: h\r\n\r\n")
    assert status_of(feed.out) == 200 and feed.out.endswith(b"\r\n\r\n")


def test_the_shipped_web_client_is_served() -> None:
    static = load_static()
    config = WebConfig(static=static)
    for path, kind in [("/", b"text/html"), ("/app.js", b"text/javascript"), ("/app.css", b"text/css")]:
        feed = WebConnection(config).feed(f"GET {path} HTTP/1.1\r\nHost: h\r\n\r\n".encode())
        assert status_of(feed.out) == 200 and b"Content-Type: " + kind in feed.out
    assert b"innerHTML" not in static["/app.js"].body


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"GET /nope HTTP/1.1\r\nHost: h\r\n\r\n", 404),
        (b"GET /../etc/passwd HTTP/1.1\r\nHost: h\r\n\r\n", 404),
        (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n", 405),
        (b"GET / HTTP/1.1\r\n\r\n", 400),  # HTTP/1.1 without Host
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", 400),  # TLS on the plain port
        (b"hello\r\n\r\n", 400),
        (b"GET /ws HTTP/1.1\r\nHost: h\r\n\r\n", 400),  # /ws without an upgrade
        (b"GET /ws HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 8\r\nSec-WebSocket-Key: x\r\n\r\n", 426),
    ],
)
def test_bad_requests(request_bytes: bytes, status: int) -> None:
    feed = WebConnection(CONFIG).feed(request_bytes)
    assert status_of(feed.out) == status and feed.close and not feed.opened


def test_request_head_is_bounded() -> None:
    server = WebConnection(CONFIG)
    assert server.feed(b"GET / HTTP/1.1\r\n").out == b""
    feed = server.feed(b"X-Pad: " + b"a" * 9000)
    assert status_of(feed.out) == 431 and feed.close
    # a complete head that is too long is refused too
    feed = WebConnection(CONFIG).feed(b"GET / HTTP/1.1\r\nX: " + b"a" * 9000 + b"\r\n\r\n")
    assert status_of(feed.out) == 431


def test_handshake_byte_by_byte_then_frames_in_the_same_read() -> None:
    _client, request = upgrade_request()
    frames = FrameProtocol(client=True, extensions=[]).send_data("hello", True)  # sent before the 101 arrives
    server = WebConnection(CONFIG)
    feeds = feed_bytewise(server, request + frames)
    assert [f.opened for f in feeds].count(True) == 1
    assert [line for f in feeds for line in f.lines] == ["hello"]


# --- frames -------------------------------------------------------------------------


def test_text_frames_are_lines() -> None:
    client, server = opened()
    feed = server.feed(client.send(TextMessage(data="/join #a\r\nhi\n\nthere")))
    assert feed.lines == ("/join #a", "hi", "there") and feed.out == b"" and feed.close is None


def test_fragmented_message_and_bytewise_feed_give_the_same_lines() -> None:
    client, server = opened()
    data = client.send(TextMessage(data="one\ntw", message_finished=False))
    data += client.send(TextMessage(data="o ünï\n", message_finished=True))
    whole = server.feed(data).lines
    client2, server2 = opened()
    data2 = client2.send(TextMessage(data="one\ntw", message_finished=False))
    data2 += client2.send(TextMessage(data="o ünï\n", message_finished=True))
    bytewise = [line for f in feed_bytewise(server2, data2) for line in f.lines]
    assert whole == ("one", "two ünï") and bytewise == list(whole)


def test_line_over_the_limit_gets_the_line_protocol_error() -> None:
    client, server = opened()
    feed = server.feed(client.send(TextMessage(data="ok\n" + "x" * 65 + "\n" + "é" * 40)))
    assert feed.lines == ("ok",) and feed.close is None
    errors = [json.loads(e.data) for e in server_events(client, feed.out) if isinstance(e, TextMessage)]
    assert errors == [{"type": "error", "text": "line too long (max 64 bytes)"}] * 2
    assert server.feed(client.send(TextMessage(data="x" * 64))).lines == ("x" * 64,)


def test_message_over_the_limit_closes_1009() -> None:
    client, server = opened()
    feed = server.feed(client.send(TextMessage(data="a\n" * 600)))
    assert feed.lines == () and feed.close == "message too big"
    (close,) = server_events(client, feed.out)
    assert isinstance(close, CloseConnection) and close.code == 1009
    late = FrameProtocol(client=True, extensions=[]).send_data("late", True)
    assert server.feed(late).lines == ()


def test_message_limit_counts_fragments() -> None:
    client, server = opened()
    for _ in range(4):
        assert server.feed(client.send(TextMessage(data="a" * 250, message_finished=False))).close is None
    feed = server.feed(client.send(TextMessage(data="a" * 250, message_finished=False)))
    assert feed.close == "message too big"


def test_binary_is_refused_with_1003() -> None:
    client, server = opened()
    feed = server.feed(client.send(BytesMessage(data=b"\x00\x01")))
    assert feed.close == "binary frame" and not feed.lines
    (close,) = server_events(client, feed.out)
    assert isinstance(close, CloseConnection) and close.code == 1003


def test_ping_is_answered_and_counted() -> None:
    client, server = opened()
    feed = server.feed(client.send(Ping(payload=b"p1")) + client.send(Ping(payload=b"p2")))
    assert feed.frames == 2 and feed.close is None
    assert server_events(client, feed.out) == [Pong(payload=b"p1"), Pong(payload=b"p2")]


def test_client_close_is_answered() -> None:
    client, server = opened()
    feed = server.feed(client.send(CloseConnection(code=1000, reason="bye")))
    assert feed.close and server.phase is Phase.DONE
    (close,) = server_events(client, feed.out)
    assert isinstance(close, CloseConnection) and close.code == 1000


def test_invalid_utf8_closes_1007() -> None:
    client, server = opened()
    frame = bytes([0x81, 0x82, 0, 0, 0, 0, 0xC3, 0x28])  # masked with zeros, invalid UTF-8
    feed = server.feed(frame)
    (close,) = server_events(client, feed.out)
    assert isinstance(close, CloseConnection) and close.code == 1007 and feed.close


def test_unmasked_client_frame_closes_1002() -> None:
    client, server = opened()
    feed = server.feed(frame_text(b"hi"))
    (close,) = server_events(client, feed.out)
    assert isinstance(close, CloseConnection) and close.code == 1002


def test_server_close_and_render() -> None:
    client, server = opened()
    event = ChatEvent(EventType.MESSAGE, "hi \u202e\x1b[2J", room="#a", sender="bob", id="x/1", ts=1.5)
    out = server.render(event) + server.close("x" * 300, 1001)
    message, close = server_events(client, out)
    assert isinstance(message, TextMessage)
    assert json.loads(message.data) == {"type": "message", "room": "#a", "from": "bob", "text": "hi \u202e\x1b[2J", "id": "x/1", "ts": 1.5}
    assert "\u202e" not in message.data  # escaped on the wire
    assert isinstance(close, CloseConnection) and close.code == 1001
    assert server.render(event) == b"" and server.close("again") == b""


@pytest.mark.parametrize("size", [0, 125, 126, 65535, 65536])
def test_frame_lengths(size: int) -> None:
    client, _ = opened()
    (message,) = server_events(client, frame_text(b"a" * size))
    assert isinstance(message, TextMessage) and len(message.data) == size


def test_render_event_is_per_event() -> None:
    event = ChatEvent(EventType.INFO, "hello")
    assert render_event(event) == frame_text(b'{"type": "info", "text": "hello"}')


# --- anything at all ---------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=300), max_size=8))
def test_arbitrary_bytes_before_the_upgrade_never_raise(chunks: list[bytes]) -> None:
    server = WebConnection(CONFIG)
    for chunk in chunks:
        assert isinstance(server.feed(chunk), Feed)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=300), max_size=8))
def test_arbitrary_bytes_after_the_upgrade_never_raise(chunks: list[bytes]) -> None:
    _, server = opened()
    for chunk in chunks:
        feed = server.feed(chunk)
        assert sum(len(line.encode("utf-8", "surrogatepass")) for line in feed.lines) <= CONFIG.max_message


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from([b"GET /ws HTTP/1.1\r\n", f"Host: {HOST}\r\n".encode(), b"Connection: Upgrade\r\n",
                                 b"Upgrade: websocket\r\n", b"Sec-WebSocket-Version: 13\r\n", b"Origin: \xff\xfe\r\n",
                                 b"Host: \xc3\x28\r\n", b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n", b"\r\n",
                                 b"Sec-WebSocket-Extensions: permessage-deflate\r\n", b"Transfer-Encoding: chunked\r\n"]),
                max_size=12))
def test_arbitrary_header_mixes_never_raise(parts: list[bytes]) -> None:
    server = WebConnection(CONFIG)
    assert isinstance(server.feed(b"".join(parts) + b"\r\n\r\n"), Feed)


def test_a_frame_that_claims_a_huge_length_is_cut_at_the_message_limit() -> None:
    client, server = opened()
    header = bytes([0x81, 0xFF]) + (1 << 40).to_bytes(8, "big") + b"\0\0\0\0"  # 1 TiB, masked with zeros
    assert server.feed(header).close is None
    feeds = [server.feed(b"a" * 100) for _ in range(11)]
    assert [f.close for f in feeds].count("message too big") == 1 and not any(f.lines for f in feeds)
    closes = [e for f in feeds for e in server_events(client, f.out)]
    assert len(closes) == 1 and isinstance(closes[0], CloseConnection) and closes[0].code == 1009


def test_a_message_at_the_limit_is_accepted() -> None:
    client, server = opened()
    text = ("b" * 63 + "\n") * 16  # 1024 bytes, 16 lines of 63
    feed = server.feed(client.send(TextMessage(data=text)))
    assert feed.close is None and len(feed.lines) == 16
