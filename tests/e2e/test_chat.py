"""The client protocol end to end, across two gateways."""

from __future__ import annotations

import json
import time

from tests.e2e.chatclient import ChatClient


def named(connect, gateway: int, nick: str) -> ChatClient:
    client = connect(gateway)
    client.send(f"/nick {nick}")
    client.expect(f"* you are now {nick}")
    return client


def test_greeting_names_a_guest_nick(connect) -> None:
    client = connect(0)
    assert client.greeting.startswith("* ")
    assert client.guest_nick.startswith("guest-") and client.guest_nick[6:].isdigit()


def test_private_message_crosses_gateways(connect, unique) -> None:
    alice = named(connect, 0, f"alice{unique}")
    bob = named(connect, 1, f"bob{unique}")
    alice.send(f"/msg bob{unique} hi")
    assert bob.expect(lambda line: line.startswith("*alice")) == f"*alice{unique}* hi"
    assert alice.sync() == []  # a text-mode sender does not get its own message back


def test_room_spans_gateways(connect, unique) -> None:
    room = f"#room{unique}"
    a = named(connect, 0, f"a{unique}")
    b = named(connect, 1, f"b{unique}")
    a.send(f"/join {room.upper()}")
    assert a.expect(lambda l: l.startswith("* you joined")).startswith(f"* you joined {room}")
    b.send(f"/join {room}")
    b.expect(lambda l: l.startswith("* you joined"))
    a.expect(f"* b{unique} joined {room}")
    a.send("hello there")
    b.expect(f"{room} <a{unique}> hello there")
    b.send("/me waves")
    a.expect(f"{room} * b{unique} waves")
    a.send(f"/msg {room} direct")
    b.expect(f"{room} <a{unique}> direct")
    a.send("//slash text")
    b.expect(f"{room} <a{unique}> /slash text")


def test_nick_is_unique_across_gateways_case_insensitively(connect, unique) -> None:
    named(connect, 0, f"Carol{unique}")
    other = connect(1)
    other.send(f"/nick carol{unique.upper()}")
    assert other.expect(lambda l: l.startswith("!")) == f"! nickname carol{unique.upper()} is taken"


def test_nick_change_is_seen_by_room_members(connect, unique) -> None:
    room = f"#n{unique}"
    a = named(connect, 0, f"old{unique}")
    b = named(connect, 1, f"watch{unique}")
    for c in (a, b):
        c.join(room)
    a.send(f"/nick new{unique}")
    a.expect(f"* you are now new{unique}")
    b.expect(f"* old{unique} is now known as new{unique}")
    # the old nick is free again
    c = connect(1)
    c.send(f"/nick old{unique}")
    c.expect(f"* you are now old{unique}")


def test_part_who_rooms_history(connect, unique) -> None:
    room = f"#h{unique}"
    a = named(connect, 0, f"ha{unique}")
    b = named(connect, 1, f"hb{unique}")
    for c in (a, b):
        c.join(room)
    a.send("first", "/me second")
    b.expect(f"{room} * ha{unique} second")
    b.send("/who")
    assert b.expect(lambda l: l.startswith(f"* {room}")) == f"* {room} (2): ha{unique}, hb{unique}"
    b.send("/rooms")
    assert f"{room} (2)" in b.expect(lambda l: l.startswith("* rooms:"))
    b.send(f"/history {room} 5")
    b.expect(f"* history of {room}: 2 messages")
    b.expect(f"{room} <ha{unique}> first")
    b.expect(f"{room} * ha{unique} second")
    b.send("/part")
    b.expect(f"* you left {room}")
    a.expect(f"* hb{unique} left {room}")
    b.send("no room now")
    b.expect("! join a room first: /join #name")


def test_json_mode(connect, unique) -> None:
    room = f"#j{unique}"
    a = named(connect, 0, f"ja{unique}")
    b = named(connect, 1, f"jb{unique}")
    b.send("/json")
    b.expect_json(lambda o: o["type"] == "info")
    for c in (a, b):
        c.send(f"/join {room}")
    a.expect(lambda l: l.startswith("* you joined"))
    b.expect_json(lambda o: o["type"] == "info" and o["text"].startswith("you joined"))
    b.send("mine")
    own = b.expect_json(lambda o: o["type"] == "message")
    assert own["from"] == f"jb{unique}" and own["room"] == room and own["text"] == "mine"
    assert own["id"] and isinstance(own["ts"], float)
    a.expect(f"{room} <jb{unique}> mine")
    a.send("/me jumps")
    act = b.expect_json(lambda o: o["type"] == "action")
    assert act["from"] == f"ja{unique}" and act["text"] == "jumps" and act["id"] != own["id"]
    a.send(f"/msg jb{unique} secret")
    priv = b.expect_json(lambda o: o["type"] == "private")
    assert (priv["from"], priv["to"], priv["text"]) == (f"ja{unique}", f"jb{unique}", "secret")
    b.send("/frob")
    err = b.expect_json(lambda o: o["type"] == "error")
    assert err["text"] == "unknown command /frob (try /help)"
    b.send("/quit done")
    b.expect_json(lambda o: o["type"] == "info" and o["text"] == "bye")
    b.wait_closed()
    a.expect(f"* jb{unique} quit (done)")


def test_quit_closes_and_frees_the_nick(connect, unique) -> None:
    a = named(connect, 0, f"q{unique}")
    a.send("/quit")
    assert a.wait_closed()[-1] == "* bye"
    b = connect(1)
    b.send(f"/nick q{unique}")
    b.expect(f"* you are now q{unique}")


def test_disconnect_is_seen_as_quit(connect, unique) -> None:
    room = f"#d{unique}"
    a = named(connect, 0, f"da{unique}")
    b = named(connect, 1, f"db{unique}")
    for c in (a, b):
        c.join(room)
    a.close()
    b.expect(lambda l: l.startswith(f"* da{unique} quit"))


def test_help_and_ping(connect) -> None:
    c = connect(0)
    c.send("/HELP")
    c.expect("* commands:")
    c.send("/Ping")
    c.expect("* pong")


def test_outside_publisher_reaches_a_client_through_pub_in(cluster, connect, unique) -> None:
    import zmq

    from protocol import codec
    from protocol.messages import Batch, ChatEvent, Deliver, EventType, gateway_of, topic_of

    room = f"#pub{unique}"
    c = named(connect, 1, f"pub{unique}")
    c.send("/json", f"/join {room}", "learn my id")
    own = c.expect_json(lambda o: o["type"] == "message")
    cid = own["id"].rpartition("/")[0]  # message ids are <connection id>/<line number>
    notice = Batch((Deliver((cid,), ChatEvent(EventType.INFO, "maintenance at noon")),))
    ctx = zmq.Context()
    pub = ctx.socket(zmq.PUB)
    pub.setsockopt(zmq.LINGER, 1000)
    pub.connect(cluster.endpoints["pub-in"])
    try:
        deadline = time.monotonic() + 10
        got = None
        while got is None and time.monotonic() < deadline:  # PUB drops until the broker's XSUB has subscribed
            pub.send_multipart([topic_of(gateway_of(cid)), codec.encode(notice)])
            line = c.read_line(time.monotonic() + 0.2)
            got = line if line and "maintenance" in line else None
        assert got is not None and json.loads(got) == {"type": "info", "text": "maintenance at noon"}
    finally:
        pub.close()
        ctx.term()


def test_an_outside_close_leaves_the_departure_to_the_gateway(cluster, connect, unique) -> None:
    """A Close that does not say the chat forgot the connection (here an outside publisher's)
    closes the client, and its gateway still sends the departure: the nick is freed."""
    import zmq

    from protocol import codec
    from protocol.messages import Batch, Close, gateway_of, topic_of

    nick = f"kick{unique}"
    c = named(connect, 1, nick)
    c.send("/json", f"/join #k{unique}", "learn my id")
    cid = c.expect_json(lambda o: o["type"] == "message")["id"].rpartition("/")[0]
    ctx = zmq.Context()
    pub = ctx.socket(zmq.PUB)
    pub.setsockopt(zmq.LINGER, 1000)
    pub.connect(cluster.endpoints["pub-in"])
    try:
        deadline = time.monotonic() + 10
        while not c.closed and time.monotonic() < deadline:  # PUB drops until the broker's XSUB has subscribed
            pub.send_multipart([topic_of(gateway_of(cid)), codec.encode(Batch((Close(cid, "kicked"),)))])
            c.read_line(time.monotonic() + 0.2)
        assert c.closed
    finally:
        pub.close()
        ctx.term()
    other = connect(0)
    deadline = time.monotonic() + 10
    while True:  # the departure is the gateway's, after the close: poll for the nick with a deadline
        other.send(f"/nick {nick}")
        line = other.expect(lambda text: text.startswith(("* you are now", "! nickname")))
        if line.startswith("* you are now"):
            break
        assert time.monotonic() < deadline, "the kicked client's nick was never freed"
