"""the protocol's guarantees (README, "The protocol in brief") under concurrent load, checked through JSON-mode ids.

3 senders x 200 messages into one room whose members sit on both
gateways: every receiver gets every message exactly once, each sender's
messages in the order sent, and all receivers see one and the same order.
"""

from __future__ import annotations

import json
import threading
import time

from tests.e2e.chatclient import ChatClient

SENDERS = 3
MESSAGES = 200


def _join_json(client: ChatClient, nick: str, room: str) -> None:
    client.send(f"/nick {nick}", "/json", f"/join {room}")
    client.expect_json(lambda o: o["type"] == "info" and o["text"].startswith("you joined"))


def _collect(client: ChatClient, room: str, want: int, out: list[dict], deadline: float) -> None:
    while len(out) < want:
        line = client.read_line(deadline)
        if line is None:
            return
        obj = json.loads(line)
        if obj.get("type") == "message" and obj.get("room") == room:
            out.append(obj)


def test_fifo_one_order_no_loss_no_duplicates(connect, unique) -> None:
    room = f"#load{unique}"
    senders = [connect(i % 2) for i in range(SENDERS)]
    listeners = [connect(i % 2) for i in range(4)]
    for i, c in enumerate(senders):
        _join_json(c, f"s{i}{unique}", room)
    for i, c in enumerate(listeners):
        _join_json(c, f"l{i}{unique}", room)
    receivers = senders + listeners
    total = SENDERS * MESSAGES
    got: list[list[dict]] = [[] for _ in receivers]
    deadline = time.monotonic() + 60
    readers = [
        threading.Thread(target=_collect, args=(c, room, total, got[i], deadline))
        for i, c in enumerate(receivers)
    ]
    for t in readers:
        t.start()
    payload = {i: [f"{i} {n}" for n in range(MESSAGES)] for i in range(SENDERS)}
    writers = [threading.Thread(target=c.send, args=tuple(payload[i])) for i, c in enumerate(senders)]
    for t in writers:
        t.start()
    for t in writers + readers:
        t.join(timeout=max(0.0, deadline - time.monotonic()) + 5)

    reference = [m["id"] for m in got[0]]
    for i, messages in enumerate(got):
        ids = [m["id"] for m in messages]
        assert len(messages) == total, f"receiver {i} got {len(messages)} of {total}"
        assert len(set(ids)) == total, f"receiver {i} got duplicates"
        assert ids == reference, f"receiver {i} saw another order"
        for s in range(SENDERS):
            numbers = [int(m["text"].split()[1]) for m in messages if m["from"] == f"s{s}{unique}"]
            assert numbers == list(range(MESSAGES)), f"receiver {i}: sender {s} out of order"
