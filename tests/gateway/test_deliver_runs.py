"""A batch's room messages as the gateway shows them (gateway.deliver): one push per client per run.

A real `Gateway` (its ZeroMQ links connect to `inproc://` endpoints nobody
binds) and real `Client`s on socketpairs: pub-out batches are handed to
`_on_batch` as its SUB pump would, `_flush` ends the burst, and the test
reads what each client's socket received.
"""

from __future__ import annotations

import itertools
import json
import socket
from collections.abc import Awaitable, Callable

import trio
import zmq

from gateway.client import Client, ClientHooks, ClientLimits
from gateway.metrics import Drop
from gateway.server import Gateway, GatewayConfig
from protocol import codec
from protocol.doors import Door, IrcDoor, LineDoor
from protocol.irc import IrcSettings
from protocol.messages import (
    Batch,
    BatchItem,
    ChatEvent,
    Close,
    Deliver,
    EventType,
    Mark,
    RoomEvent,
    SetMode,
    topic_of,
)

ROOM = "#r"
_endpoints = itertools.count(1)


class Room:
    """A gateway whose clients (socketpairs) joined one room, fed numbered pub-out batches."""

    def __init__(self, gateway: Gateway, nursery: trio.Nursery) -> None:
        self.gateway = gateway
        self.nursery = nursery
        self.numbered = 0
        self.seq = 0  # the room's
        self.theirs: dict[str, socket.socket] = {}

    def join(self, name: str, door: Door | None = None, limits: ClientLimits | None = None) -> str:
        gateway = self.gateway
        cid = f"{gateway.instance}:{name}"
        ours, theirs = socket.socketpair()
        ours.setblocking(False)
        theirs.setblocking(False)
        self.theirs[cid] = theirs
        hooks = ClientHooks(limits or gateway.config.limits, self.nursery.start_soon, gateway._on_lines,
                            None, None, None)
        gateway.clients[cid] = Client(cid, ours, door or LineDoor(4096), "test", hooks)
        self.seq += 1
        self.batch(RoomEvent(ROOM, self.seq, ChatEvent(EventType.JOIN, f"{name} joined", room=ROOM), cid, 1))
        for each in self.theirs:  # joins are not what the tests look at
            self.received(each)
        return cid

    def batch(self, *items: BatchItem) -> None:
        self.numbered += 1
        numbering = (0).to_bytes(8, "big") + self.numbered.to_bytes(8, "big")
        self.gateway._on_batch([topic_of(self.gateway.instance), numbering, codec.encode(Batch(items))])
        self.gateway._flush()

    def said(self, sender: str, *texts: str) -> list[BatchItem]:
        return [RoomEvent(ROOM, self.seq, ChatEvent(EventType.MESSAGE, text, room=ROOM, sender=sender.split(":")[1],
                                                    origin=sender)) for text in texts]

    def received(self, cid: str) -> bytes:
        out = b""
        try:
            while chunk := self.theirs[cid].recv(1 << 20):
                out += chunk
        except BlockingIOError:
            pass
        return out

    def close(self) -> None:
        for sock in self.theirs.values():
            sock.close()
        for client in self.gateway.clients.values():
            client.sock.close()


def in_room(ctx: zmq.Context[zmq.Socket[bytes]], test: Callable[[Room], Awaitable[None]]) -> None:
    n = next(_endpoints)
    config = GatewayConfig(frontend=f"inproc://runs-front-{n}", pub_out=f"inproc://runs-pub-{n}")

    async def main() -> None:
        gateway = Gateway(config, ctx)
        gateway.acceptors = []  # not serving: no listeners to open or close
        room: Room | None = None
        try:
            async with trio.open_nursery() as nursery:
                room = Room(gateway, nursery)
                await test(room)
                nursery.cancel_scope.cancel()
        finally:
            if room is not None:
                room.close()
            gateway.close()

    trio.run(main)


def test_a_senders_messages_in_one_batch_reach_every_member_in_order_in_one_push(ctx) -> None:  # type: ignore[no-untyped-def]
    async def test(room: Room) -> None:
        alice, bob, carol = room.join("alice"), room.join("bob"), room.join("carol")
        pushed: list[int] = []
        clients = room.gateway.clients
        flush, settle = room.gateway._flush, room.gateway._settle
        room.gateway._flush = lambda: (settle(), pushed.extend(len(c._pending or ()) for c in clients.values()),
                                       flush())[2]
        room.batch(Mark("elsewhere:1", 1), *room.said(alice, "one", "two", "three"), *room.said(bob, "four"))
        assert pushed == [1, 1, 1]  # per client, one push for the batch's four messages
        assert room.received(carol) == b"#r <alice> one\n#r <alice> two\n#r <alice> three\n#r <bob> four\n"
        assert room.received(alice) == b"#r <bob> four\n"  # text mode: not its own
        assert room.received(bob) == b"#r <alice> one\n#r <alice> two\n#r <alice> three\n"
        assert room.gateway.metrics.deliveries == 4 + 1 + 3 + 3  # the joins: bob saw carol's, alice both

    in_room(ctx, test)


def test_a_mode_change_between_messages_applies_from_there(ctx) -> None:  # type: ignore[no-untyped-def]
    async def test(room: Room) -> None:
        alice, bob = room.join("alice"), room.join("bob")
        room.batch(*room.said(alice, "before"), SetMode(bob, True), *room.said(alice, "after"))
        text, as_json = room.received(bob).split(b"\n", 1)
        assert text == b"#r <alice> before"
        assert json.loads(as_json)["text"] == "after"

    in_room(ctx, test)


def test_messages_before_a_close_in_the_batch_go_out_and_none_after(ctx) -> None:  # type: ignore[no-untyped-def]
    async def test(room: Room) -> None:
        alice, bob = room.join("alice"), room.join("bob")
        room.batch(*room.said(alice, "one", "two"), Close(bob, "bye"), *room.said(alice, "three"))
        assert room.received(bob) == b"#r <alice> one\n#r <alice> two\n"

    in_room(ctx, test)


def test_a_run_counts_its_lines_against_the_queue_bound(ctx) -> None:  # type: ignore[no-untyped-def]
    """A client that takes no more than 10 lines now is cut by a batch of 16 messages, as it was by
    16 pushes (then after the 10 that fit; now the run goes whole or not at all, before the notice);
    one that takes 16 is not, and the others get everything."""
    async def test(room: Room) -> None:
        alice = room.join("alice")
        tight = room.join("tight", limits=ClientLimits(max_queue_lines=10))
        enough = room.join("enough", limits=ClientLimits(max_queue_lines=16))
        texts = [f"m{n}" for n in range(16)]
        room.batch(*room.said(alice, *texts))
        assert room.gateway.clients[tight].closing == "output queue full: you are not reading"
        assert room.received(tight) == b"! output queue full: you are not reading; disconnecting\n"
        assert room.gateway.clients[enough].closing is None
        assert room.received(enough) == b"".join(f"#r <alice> {text}\n".encode() for text in texts)

    in_room(ctx, test)


def test_irc_and_line_clients_share_a_run_each_in_its_own_rendering(ctx) -> None:  # type: ignore[no-untyped-def]
    async def test(room: Room) -> None:
        alice = room.join("alice")
        irc = IrcDoor(IrcSettings("irc.test"))
        irc.conn.registered, irc.conn.nick = True, "ircy"
        ircy = room.join("ircy", irc)
        json_client = room.join("jason")
        room.batch(SetMode(json_client, True))
        room.batch(*room.said(alice, "one", "two"), *room.said(json_client, "three"))
        lines = room.received(ircy).splitlines()
        assert [line.split(b" :", 1)[1] for line in lines] == [b"one", b"two", b"three"]
        assert all(b"PRIVMSG #r" in line for line in lines)
        shown = [json.loads(line)["text"] for line in room.received(json_client).splitlines()]
        assert shown == ["one", "two", "three"]  # JSON mode gets its own back

    in_room(ctx, test)


def test_irc_clients_are_shown_a_shared_line_exactly_as_their_own_rendering(ctx) -> None:  # type: ignore[no-untyped-def]
    """A room message is rendered once per set of capabilities that change its line; what each IRC
    client receives is what rendering every event for it alone gives (tags, its own echo or not)."""
    async def test(room: Room) -> None:
        caps = {"plain": set(), "stamped": {"server-time", "message-tags"}, "echoing": {"echo-message"},
                "quiet": {"server-time"}}
        doors = {}
        for name, wanted in caps.items():
            doors[name] = IrcDoor(IrcSettings("irc.test"))
            doors[name].conn.registered, doors[name].conn.nick = True, name
            doors[name].conn.caps.update(wanted)
        cids = {name: room.join(name, door) for name, door in doors.items()}
        said = [ChatEvent(EventType.MESSAGE, f"m{n}", room=ROOM, sender=name, origin=cids[name], id=f"x:1/{n}",
                          ts=1.7e9 + n) for n, name in enumerate(("echoing", "quiet", "plain", "echoing"))]
        said.insert(2, ChatEvent(EventType.ACTION, "waves", room=ROOM, sender="echoing", origin=cids["echoing"]))
        said.append(ChatEvent(EventType.TOPIC, "new topic", room=ROOM, sender="plain", origin=cids["plain"]))
        room.batch(*(RoomEvent(ROOM, room.seq, event) for event in said))
        got = {name: room.received(cid) for name, cid in cids.items()}
        for name in doors:
            alone = IrcDoor(IrcSettings("irc.test"))
            alone.conn.registered, alone.conn.nick = True, name
            alone.conn.caps.update(caps[name])
            assert got[name] == b"".join(alone.render(event, cids[name]) for event in said), name
        assert b" :m1" not in got["quiet"] and b" :m1" in got["plain"]  # its own, not echoed
        assert got["echoing"].count(b"PRIVMSG") == 5  # its own three too
        assert got["stamped"].count(b"@time=") == 4  # the messages with a ts (not the action)
        assert not any(line.startswith(b"@") for line in got["plain"].splitlines())  # no tags

    in_room(ctx, test)


def test_an_outside_publishers_tangle_of_audiences_keeps_every_clients_order(ctx) -> None:  # type: ignore[no-untyped-def]
    """Deliveries that try to break the grouping: a cid twice, cids that are gone, audiences that
    overlap the room's, hundreds of them interleaved with room messages. Each client gets exactly
    its deliveries in order (a cid twice: twice in a row, as ever), and what was for nobody is counted."""
    async def test(room: Room) -> None:
        alice, bob, carol = room.join("alice"), room.join("bob"), room.join("carol")
        gone = f"{room.gateway.instance}:gone"
        audiences = [(bob, bob), (alice, gone, carol), (carol,), (bob, alice)]
        items: list[BatchItem] = []
        wanted: dict[str, list[bytes]] = {alice: [], bob: [], carol: []}
        for n in range(400):
            text = f"x{n}"
            if n % 3:
                to = audiences[n % len(audiences)]
                items.append(Deliver(to, ChatEvent(EventType.INFO, text)))
                line = f"* {text}\n".encode()
            else:
                to = (alice, bob, carol)
                items += room.said(f"{room.gateway.instance}:elsewhere", text)
                line = f"#r <elsewhere> {text}\n".encode()
            for cid in to:
                if cid != gone:
                    wanted[cid].append(line)
        room.batch(*items)
        for cid, lines in wanted.items():
            assert room.received(cid) == b"".join(lines), cid
        assert room.gateway.metrics.drops[Drop.DELIVERY_TO_CLOSED] == sum(
            1 for n in range(400) if n % 3 and gone in audiences[n % len(audiences)])

    in_room(ctx, test)


def test_the_batches_of_one_pass_of_the_pump_reach_each_member_in_one_push_in_order(ctx) -> None:  # type: ignore[no-untyped-def]
    """Batches the SUB pump hands over back to back (one pass, `_settle` at its end) share their runs:
    one push per client for all of them, in the order they came; a join in the middle of the pass
    starts a new audience: the newcomer gets what came from its join on, the others everything."""
    async def test(room: Room) -> None:
        alice, bob = room.join("alice"), room.join("bob")
        gateway = room.gateway
        batches = [(Mark("elsewhere:1", n), *room.said(alice if n % 2 else bob, f"b{n}.1", f"b{n}.2"))
                   for n in range(1, 5)]
        for items in batches:
            room.numbered += 1
            numbering = (0).to_bytes(8, "big") + room.numbered.to_bytes(8, "big")
            gateway._on_batch([topic_of(gateway.instance), numbering, codec.encode(Batch(items))])
        assert all(client._pending is None for client in gateway.clients.values())  # open runs: nothing yet
        gateway._settle()
        assert [len(client._pending or ()) for client in gateway.clients.values()] == [1, 1]
        gateway._flush()
        assert room.received(alice) == b"#r <bob> b2.1\n#r <bob> b2.2\n#r <bob> b4.1\n#r <bob> b4.2\n"
        assert room.received(bob) == b"#r <alice> b1.1\n#r <alice> b1.2\n#r <alice> b3.1\n#r <alice> b3.2\n"
        assert gateway.metrics.deliveries == 1 + 8  # bob's join to alice, then the pass

    in_room(ctx, test)


def test_a_join_inside_a_pass_splits_the_runs_and_keeps_every_clients_order(ctx) -> None:  # type: ignore[no-untyped-def]
    async def test(room: Room) -> None:
        alice, bob = room.join("alice"), room.join("bob")
        gateway = room.gateway
        carol = f"{gateway.instance}:carol"
        ours, theirs = socket.socketpair()
        ours.setblocking(False)
        theirs.setblocking(False)
        room.theirs[carol] = theirs
        hooks = ClientHooks(gateway.config.limits, room.nursery.start_soon, gateway._on_lines, None, None, None)
        gateway.clients[carol] = Client(carol, ours, LineDoor(4096), "test", hooks)
        elsewhere = f"{gateway.instance}:elsewhere"
        before = room.said(elsewhere, "before")
        room.seq += 1
        join = RoomEvent(ROOM, room.seq, ChatEvent(EventType.JOIN, "carol joined", room=ROOM), carol, 1)
        after = room.said(elsewhere, "after")
        for items in ((Mark("elsewhere:1", 1), *before), (Mark("elsewhere:1", 2), join), (Mark("elsewhere:1", 3), *after)):
            room.numbered += 1
            numbering = (0).to_bytes(8, "big") + room.numbered.to_bytes(8, "big")
            gateway._on_batch([topic_of(gateway.instance), numbering, codec.encode(Batch(items))])
        gateway._settle()
        gateway._flush()
        both = b"#r <elsewhere> before\n* carol joined\n#r <elsewhere> after\n"
        assert room.received(alice) == both
        assert room.received(bob) == both
        assert room.received(carol) == b"#r <elsewhere> after\n"

    in_room(ctx, test)


def test_the_replies_of_an_event_to_its_sender_are_one_run_one_push(ctx) -> None:  # type: ignore[no-untyped-def]
    """A registration's replies (`you are now`, `you joined`) come as deliveries to equal audiences that
    are decoded apart: one run, so one rendering pass and one push, in order; equal audiences with
    another delivery to one of theirs between them still keep every client's order."""
    async def test(room: Room) -> None:
        alice, bob = room.join("alice"), room.join("bob")
        gateway = room.gateway
        room.numbered += 1
        items = (Mark(alice, 1), Deliver((alice,), ChatEvent(EventType.INFO, "you are now ann")),
                 Deliver((alice,), ChatEvent(EventType.INFO, "you joined #r")),
                 Deliver((alice, bob), ChatEvent(EventType.INFO, "both")),
                 Deliver((alice, bob), ChatEvent(EventType.INFO, "both again")),
                 Deliver((bob,), ChatEvent(EventType.INFO, "bob's")),
                 Deliver((alice, bob), ChatEvent(EventType.INFO, "both last")))
        numbering = (0).to_bytes(8, "big") + room.numbered.to_bytes(8, "big")
        gateway._on_batch([topic_of(gateway.instance), numbering, codec.encode(Batch(items))])
        gateway._settle()
        assert len(gateway.clients[alice]._pending or ()) == 3  # her replies, both + both again, both last
        assert len(gateway.clients[bob]._pending or ()) == 3
        gateway._flush()
        assert room.received(alice) == b"* you are now ann\n* you joined #r\n* both\n* both again\n* both last\n"
        assert room.received(bob) == b"* both\n* both again\n* bob's\n* both last\n"

    in_room(ctx, test)
