"""Fan-out at the gateways: joins, parts and messages from many connections, on both gateways, at once.

A worker sends a room message once to each gateway with members in the
room; the gateway shows it to its members, as its table of the room's joins
and parts says. The race it must win: a join committed before a message can
reach a gateway after the message (two workers publish in either order).
Each joiner sends `/join` and a marker line in one write, so the marker is
committed after its join: every message the room's history (Redis's commit
order) holds after the marker must reach it, once; and every two members
see the messages they share in one order.
"""

from __future__ import annotations

import json
import threading
import time

import redis

from tests.e2e.chatclient import ChatClient
from workers.store import history_entry

TALKERS = 4
SAID = 15  # messages a talker says (the room's history keeps 100: all of a round fits)
JOINERS = 10
CHURNERS = 2  # members that part and join again, in one write, while the others talk
ROUNDS = 3


def _json_mode(client: ChatClient, nick: str) -> None:
    client.send(f"/nick {nick}", "/json")
    client.expect_json(lambda o: o.get("text") == "json mode on")


def _messages(client: ChatClient, room: str) -> list[dict]:
    out = []
    for line in client.seen:
        if line.startswith("{"):
            obj = json.loads(line)
            if obj.get("type") == "message" and obj.get("room") == room:
                out.append(obj)
    return out


def _until_end(client: ChatClient, deadline: float) -> None:
    while not any(line.startswith("{") and json.loads(line).get("text") == "end" for line in client.seen[-1:]):
        if client.read_line(deadline) is None:
            return


def _round(connect, cluster, room: str, tag: str) -> None:
    talkers = [connect(i % 2) for i in range(TALKERS)]
    joiners = [connect(i % 2) for i in range(JOINERS)]
    churners = [connect(i % 2) for i in range(CHURNERS)]
    for i, c in enumerate(talkers + churners):
        _json_mode(c, f"m{i}{tag}")
        c.send(f"/join {room}")
        c.expect_json(lambda o: o.get("text", "").startswith("you joined"))
    for i, c in enumerate(joiners):
        _json_mode(c, f"j{i}{tag}")
    said = [threading.Event() for _ in range(SAID)]  # talker 0 has said n messages
    deadline = time.monotonic() + 60

    def talk(i: int, c: ChatClient) -> None:
        for n in range(SAID):
            text = f"t{i} {n}"
            c.send(text)
            c.expect_json(lambda o, text=text: o.get("text") == text, timeout=max(0.1, deadline - time.monotonic()))
            if i == 0:
                said[n].set()

    def join(i: int, c: ChatClient) -> None:
        said[i * SAID // (JOINERS + 1)].wait(max(0.0, deadline - time.monotonic()))
        c.send(f"/join {room}", f"mark j{i}")

    def churn(i: int, c: ChatClient) -> None:
        said[(2 * i + 3) % SAID].wait(max(0.0, deadline - time.monotonic()))
        c.send(f"/part {room}", f"/join {room}", f"mark c{i}")

    threads = [threading.Thread(target=talk, args=(i, c)) for i, c in enumerate(talkers)]
    threads += [threading.Thread(target=join, args=(i, c)) for i, c in enumerate(joiners)]
    threads += [threading.Thread(target=churn, args=(i, c)) for i, c in enumerate(churners)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=max(0.0, deadline - time.monotonic()) + 5)
    talkers[0].send("end")  # committed after every other message: each was echoed to its sender first
    members = talkers + joiners + churners
    for c in members:
        _until_end(c, deadline)

    history = redis.Redis.from_url(cluster.redis_url, decode_responses=True).xrange(f"chat:room:{room}:history")
    order = [history_entry(fields)["text"] for _, fields in history]
    assert len(order) == TALKERS * SAID + JOINERS + CHURNERS + 1, "the history kept every message of the round"
    got = {id(c): [m["text"] for m in _messages(c, room)] for c in members}
    for c in members:
        texts = got[id(c)]
        assert len(texts) == len(set(texts)), f"shown twice: {texts}"
    for c in talkers:
        assert set(got[id(c)]) == set(order), "a member from the start missed something"
    for i, c in enumerate(joiners):
        owed = order[order.index(f"mark j{i}") + 1:]
        assert set(owed) <= set(got[id(c)]), f"joiner {i} missed {set(owed) - set(got[id(c)])}"
    for i, c in enumerate(churners):
        owed = order[order.index(f"mark c{i}") + 1:]
        assert set(owed) <= set(got[id(c)]), f"churner {i} missed {set(owed) - set(got[id(c)])}"
    for a in members:
        for b in members:
            shared = set(got[id(a)]) & set(got[id(b)])
            seen_a = [t for t in got[id(a)] if t in shared]
            seen_b = [t for t in got[id(b)] if t in shared]
            assert seen_a == seen_b, f"two orders: {members.index(a)} {seen_a} / {members.index(b)} {seen_b}"


def test_joins_parts_and_messages_from_both_gateways_reach_every_member_once_in_one_order(
        connect, cluster, unique) -> None:
    for n in range(ROUNDS):
        _round(connect, cluster, f"#fan{unique}r{n}", f"{unique}r{n}")
