"""Bad input gets a clear '! ' error; the connection stays usable; no one else notices."""

from __future__ import annotations

import socket

import pytest
import zmq

from tests.e2e.cluster import gateway_instance
from tests.e2e.test_chat import named


@pytest.mark.parametrize(
    ("line", "error"),
    [
        ("/frob", "! unknown command /frob (try /help)"),
        ("/nick 9lives", "! invalid nickname '9lives': 1-32 letters, digits, _ or -, starting with a letter"),
        ("/nick " + "a" * 33, "! invalid nickname '" + "a" * 33 + "': 1-32 letters, digits, _ or -, starting with a letter"),
        ("/join nohash", "! invalid room name 'nohash': # then 1-64 letters, digits, _, - or ."),
        ("/join #bad!room", "! invalid room name '#bad!room': # then 1-64 letters, digits, _, - or ."),
        ("text without a room", "! join a room first: /join #name"),
        ("/msg nobody-here-xyz hi", "! no such nick: nobody-here-xyz"),
        ("/msg #not-a-member hi", "! you are not in #not-a-member: /join #not-a-member first"),
        ("/msg", "! usage: /msg TARGET TEXT"),
        ("/history 1000", "! usage: /history [#ROOM] [N]  (N from 1 to 100)"),
        ("/part", "! you are in no room"),
    ],
)
def test_command_errors(connect, line: str, error: str) -> None:
    c = connect(0)
    c.send(line)
    assert c.expect(lambda l: l.startswith("!")) == error
    c.send("/ping")
    c.expect("* pong")


def test_line_too_long_is_dropped_whole(connect) -> None:
    c = connect(1)
    c.send_raw(b"x" * 5000 + b"\n/ping\n")
    assert c.expect(lambda l: l.startswith("!")) == "! line too long (max 4096 bytes)"
    c.expect("* pong")


def test_invalid_utf8_and_telnet_negotiation(connect, unique) -> None:
    room = f"#u{unique}"
    a = named(connect, 0, f"ua{unique}")
    b = named(connect, 1, f"ub{unique}")
    for c in (a, b):
        c.join(room)
    a.send_raw(b"bad \xc3\x28 bytes\r\n")
    assert a.expect(lambda l: l.startswith("!")) == "! invalid UTF-8"
    # telnet: IAC DO ECHO, IAC WILL SGA, a sub-negotiation, then text with CRLF
    a.send_raw(b"\xff\xfd\x01\xff\xfb\x03\xff\xfa\x18\x01\xff\xf0he\xff\xf1llo\r\n")
    b.expect(f"{room} <ua{unique}> hello")


def test_binary_garbage_and_half_lines_disturb_no_one(cluster, connect, unique) -> None:
    room = f"#g{unique}"
    a = named(connect, 0, f"ga{unique}")
    b = named(connect, 1, f"gb{unique}")
    for c in (a, b):
        c.join(room)
    junk = bytes(range(256)) * 64
    for port in cluster.ports:
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.sendall(junk + b"half a line with no end")
        silent = socket.create_connection(("127.0.0.1", port))  # connects and never sends
        silent.close()
    a.send("still here")
    b.expect(f"{room} <ga{unique}> still here")


def test_malformed_envelopes_crash_nothing(cluster, connect, unique) -> None:
    ctx = zmq.Context()
    try:
        dealer = ctx.socket(zmq.DEALER)
        dealer.setsockopt(zmq.LINGER, 1000)
        dealer.connect(cluster.endpoints["frontend"])
        worker = ctx.socket(zmq.DEALER)
        worker.setsockopt(zmq.LINGER, 1000)
        worker.connect(cluster.endpoints["backend"])
        pub = ctx.socket(zmq.PUB)
        pub.setsockopt(zmq.LINGER, 1000)
        pub.connect(cluster.endpoints["pub-in"])
        garbage = [b"", b"\xc1", b"\x93\x01\x02\x03", b"\x92\x07\x01", b"not msgpack at all" * 10]
        for frame in garbage:
            dealer.send(frame)
            dealer.send_multipart([frame, frame])
            worker.send(frame)
            for name in ("gw1", "gw2"):
                topic = gateway_instance(cluster.children[name]).encode() + b":"
                pub.send_multipart([topic, frame])
                pub.send_multipart([topic])
        dealer.close()
        worker.close()
        pub.close()
    finally:
        ctx.term()
    a = named(connect, 0, f"ma{unique}")
    b = named(connect, 1, f"mb{unique}")
    a.send(f"/msg mb{unique} alive")
    b.expect(f"*ma{unique}* alive")
    for name, child in cluster.children.items():
        assert child.proc.poll() is None, f"{name} died"
