"""Clients that try to hurt other clients' terminals, end to end across two gateways.

An attacker on one gateway puts each unsafe character (C0/C1 controls, line
separators, bidi controls, invisible format characters) into every path that
shows client text to someone: a room message, /me, /msg, a /quit reason, and
the errors that echo its input (/nick, /join, an unknown command). Two victims
on the other gateway, one in text and one in JSON mode, must receive the text
without it, and no line anyone receives may contain a raw unsafe character.
"""

from __future__ import annotations

import json
import time

import pytest

from tests.e2e.chatclient import ChatClient
from tests.protocol.test_commands import ATTACKS, CONTROL

CASES = {**ATTACKS, "all at once": "".join(ATTACKS.values())}
NICK_RULE = ": 1-32 letters, digits, _ or -, starting with a letter"
ROOM_RULE = ": # then 1-64 letters, digits, _, - or ."


def named(connect, gateway: int, nick: str, room: str = "", as_json: bool = False) -> ChatClient:
    """A client called `nick`, in `room` if one is given, once the server said so."""
    client = connect(gateway)
    client.send(f"/nick {nick}")
    client.expect(f"* you are now {nick}")
    if as_json:
        client.send("/json")
        client.expect_json(lambda o: o["text"] == "json mode on")
    if room:
        client.send(f"/join {room}")
        client.expect(lambda line: "you joined" in line)
    return client


def assert_all_safe(*clients: ChatClient) -> None:
    for client in clients:
        for line in client.seen:
            assert not CONTROL.search(line), line
            if line.startswith("{"):
                json.loads(line)


def test_the_issues_nel_nick_is_refused(connect, unique) -> None:
    eve = named(connect, 0, f"eve{unique}")
    eve.send(f"/nick evil{unique}\x85")
    assert eve.expect(lambda line: line.startswith("!")) == (
        f"! invalid nickname 'evil{unique}\\x85'{NICK_RULE}"
    )
    eve.send(f"/nick evil{unique}\u2028x")
    assert eve.expect(lambda line: line.startswith("!")).startswith(f"! invalid nickname 'evil{unique}\\u2028x'")
    eve.send(f"/msg evil{unique} are you there?")
    assert eve.expect(lambda line: line.startswith("!")) == f"! no such nick: evil{unique}"


@pytest.mark.parametrize("name", CASES)
def test_unsafe_characters_reach_nobody(connect, unique, name: str) -> None:
    c = CASES[name]
    room = f"#h{unique}"
    eve = named(connect, 0, f"eve{unique}", room)
    tom = named(connect, 1, f"tom{unique}", room)
    jay = named(connect, 1, f"jay{unique}", room, as_json=True)

    eve.send(f"hi{c} there{c}")
    tom.expect(f"{room} <eve{unique}> hi there")
    jay.expect_json(lambda o: o["type"] == "message" and o["text"] == "hi there")

    eve.send(f"/me wa{c}ves")
    tom.expect(f"{room} * eve{unique} waves")
    jay.expect_json(lambda o: o["type"] == "action" and o["text"] == "waves")

    eve.send(f"/msg tom{unique} ps{c}st", f"/msg jay{unique} {c}psst{c}")
    tom.expect(f"*eve{unique}* psst")
    jay.expect_json(lambda o: o["type"] == "private" and o["text"] == "psst")

    eve.send(f"/msg {room} di{c}rect")
    tom.expect(f"{room} <eve{unique}> direct")

    eve.send(f"/nick ad{c}min", f"/join #r{c}x", f"/frob{c}x")
    assert eve.expect(lambda line: line.startswith("!")) == f"! invalid nickname {f'ad{c}min'!r}{NICK_RULE}"
    assert eve.expect(lambda line: line.startswith("!")) == f"! invalid room name {f'#r{c}x'!r}{ROOM_RULE}"
    assert eve.expect(lambda line: line.startswith("!")) == "! unknown command /frobx (try /help)"
    assert tom.sync() == []  # no nick change or anything else reached the room

    eve.send(f"/quit bye{c} now")
    eve.wait_closed()
    tom.expect(f"* eve{unique} quit (bye now)")
    jay.expect_json(lambda o: o["type"] == "quit" and o["text"] == f"eve{unique} quit (bye now)")
    assert_all_safe(eve, tom, jay)


def test_the_8bit_csi_spoof_shows_harmless(connect, unique) -> None:
    room = f"#s{unique}"
    eve = named(connect, 0, f"eve{unique}", room)
    tom = named(connect, 1, f"tom{unique}", room)
    eve.send("\x9b2K\x9bG* alice is now known as admin")
    tom.expect(f"{room} <eve{unique}> 2KG* alice is now known as admin")
    assert_all_safe(tom)


def test_outside_events_are_rendered_safe(cluster, connect, unique) -> None:
    """An event from pub-in is not trusted: text mode drops, JSON mode escapes."""
    import zmq

    from protocol import codec
    from protocol.messages import Batch, ChatEvent, Deliver, EventType, gateway_of, topic_of

    tom = connect(1)  # connected just before jay on the same gateway: the previous connection number
    jay = connect(1)
    jay.send("/json", f"/nick jay{unique}", f"/join #o{unique}", "learn my id")
    jay_cid = jay.expect_json(lambda o: o["type"] == "message")["id"].rpartition("/")[0]
    gateway, _, number = jay_cid.rpartition(":")
    tom_cid = f"{gateway}:{int(number) - 1}"
    hostile = "".join(CASES.values())
    event = ChatEvent(EventType.MESSAGE, f"a{hostile}b", room=f"#o{hostile}", sender=f"x{hostile}")
    notice = Batch((Deliver((tom_cid, jay_cid), event),))
    ctx = zmq.Context()
    pub = ctx.socket(zmq.PUB)
    pub.setsockopt(zmq.LINGER, 1000)
    pub.connect(cluster.endpoints["pub-in"])
    try:
        deadline = time.monotonic() + 10
        got = None
        while got is None and time.monotonic() < deadline:  # PUB drops until the broker's XSUB has subscribed
            pub.send_multipart([topic_of(gateway_of(jay_cid)), codec.encode(notice)])
            line = jay.read_line(time.monotonic() + 0.2)
            got = line if line and line.startswith('{"type": "message", "room": "#o') else None
        assert got is not None
        assert json.loads(got)["text"] == f"a{hostile}b"  # JSON keeps the data, escaped
        tom.expect("#o <x> ab")
    finally:
        pub.close()
        ctx.term()
    assert_all_safe(tom, jay)
