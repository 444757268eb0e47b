"""The load generator's WebSocket framing, checked against wsproto as the server side."""

from __future__ import annotations

import json

from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, CloseConnection, Ping, Request, TextMessage

from bench.wsframe import MAX_HEAD, WsClient, accept_for, client_frame, mask, parsed_line, to_line
from protocol.messages import ChatEvent, EventType
from protocol.render import render_json


def open_pair() -> tuple[WsClient, WSConnection, bytes]:
    """A client and a wsproto server past the upgrade -> (client, server, the 101 response bytes)."""
    client = WsClient("127.0.0.1:8080")
    server = WSConnection(ConnectionType.SERVER)
    server.receive_data(client.request())
    (request,) = list(server.events())
    assert isinstance(request, Request) and request.target == "/ws" and request.host == "127.0.0.1:8080"
    return client, server, server.send(AcceptConnection())


def server_text(server: WSConnection, obj: dict) -> bytes:
    return server.send(TextMessage(json.dumps(obj)))


def test_accept_value_is_the_rfc_example() -> None:
    assert accept_for(b"dGhlIHNhbXBsZSBub25jZQ==") == b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


def test_mask_is_its_own_inverse_and_a_frame_reads_back() -> None:
    payload = "0 17 123456789 é\n".encode()
    assert mask(mask(payload, b"\x01\x02\x03\x04"), b"\x01\x02\x03\x04") == payload
    assert mask(b"", b"abcd") == b""
    for size in (0, 5, 125, 126, 70_000):
        _, server, _ = open_pair()
        server.receive_data(client_frame(b"x" * size))
        (event,) = list(server.events())
        assert isinstance(event, TextMessage) and event.data == "x" * size


def test_server_frames_become_lines_whole_and_byte_by_byte() -> None:
    client, server, head = open_pair()
    data = head + b"".join(server_text(server, obj) for obj in (
        {"type": "info", "text": "welcome! you are guest-1"},
        {"type": "message", "room": "#r", "from": "a", "text": "0 1 2", "id": "x", "ts": 1.5},
        {"type": "private", "from": "b", "to": "a", "text": "3 4 5"},
        {"type": "error", "text": "no such nick"},
    ))
    expected = [b"* welcome! you are guest-1", b"message - 0 1 2", b"private - 3 4 5", b"! no such nick"]
    whole = client.feed(data)
    assert whole.lines == expected and whole.close is None
    other, _, _ = open_pair()
    other.key = client.key
    lines = [line for i in range(len(data)) for line in other.feed(data[i:i + 1]).lines]
    assert lines == expected


def test_the_fast_path_reads_what_the_json_parser_reads() -> None:
    """Rendered by the server's own code: the fast path's text is the parser's, escapes go to the parser."""
    for kind, text in ((EventType.MESSAGE, "0 17 123456789"), (EventType.PRIVATE, "1 2 3"),
                       (EventType.MESSAGE, 'say "hi" 4 5 6'), (EventType.MESSAGE, "é ü 7 8 9"),
                       (EventType.ACTION, "waves 1 2 3")):
        payload = render_json(ChatEvent(kind, text, room="#r", sender="a", to="b", id="x:1/1", ts=1.5))[:-1]
        assert to_line(payload).rsplit(b" ", 3)[1:] == parsed_line(payload).rsplit(b" ", 3)[1:], payload
        assert to_line(payload).endswith(text.encode()), payload


def test_a_ping_is_answered_and_a_close_ends_the_connection() -> None:
    client, server, head = open_pair()
    client.feed(head)
    reading = client.feed(server.send(Ping(b"hi")))
    server.receive_data(reading.reply)
    assert [type(e).__name__ for e in server.events()] == ["Pong"]
    reading = client.feed(server.send(CloseConnection(1000)))
    assert reading.close == "closed by the server"
    client, server, head = open_pair()
    assert "1009" in (client.feed(head + server.send(CloseConnection(1009, "too big"))).close or "")


def test_a_refused_or_forged_upgrade_closes() -> None:
    assert "403" in (WsClient("h:1").feed(b"HTTP/1.1 403 Forbidden\r\n\r\n").close or "")
    forged = b"HTTP/1.1 101 Switching Protocols\r\nSec-WebSocket-Accept: AAAA\r\n\r\n"
    assert "wrong Sec-WebSocket-Accept" in (WsClient("h:1").feed(forged).close or "")
    assert WsClient("h:1").feed(b"H" * (MAX_HEAD + 1)).close == "upgrade response too long"


def test_bad_server_frames_close_with_a_reason() -> None:
    client, _, head = open_pair()
    assert "masked" in (client.feed(head + client_frame(b"x")).close or "")
    client, _, head = open_pair()
    assert "bytes" in (client.feed(head + b"\x81\x7f" + (1 << 40).to_bytes(8, "big")).close or "")
    assert to_line(b"not json").startswith(b"! not a JSON object")
    assert to_line(b"[1, 2]").startswith(b"! not a JSON object")
