"""Micro-benchmark of the per-item Python cost of the vocabulary between processes.

    python -m bench.codec_micro [--number 20000] [--repeat 7]

Times the exact hot calls, each on realistic values, in CPU time of the
thread (the machine may be shared), best of `--repeat` runs:

- constructing a `ChatEvent` as a worker does (keywords), a `RoomEvent`, a `Deliver`;
- a gateway decoding a pub-out batch: a `Mark` then 16 `RoomEvent`s of 40-byte
  messages (W1's shape; reported per room event), a `Mark` and a `Deliver` to 50 cids;
- a worker encoding a batch (`encode_batches`): the W1 one above, and W4's
  `Mark` + a private message delivered to two cids;
- a worker decoding a `Lines` event and parsing `/msg bob hello` and a plain line.

Prints microseconds per call. It runs against the tree it is started from, so
the same file run with an older checkout first on PYTHONPATH gives the before
figures.
"""

from __future__ import annotations

import argparse
import time
import timeit
from collections.abc import Callable

from protocol import codec
from protocol.commands import parse_line
from protocol.messages import Batch, BatchItem, ChatEvent, Deliver, EventType, Lines, Mark, RoomEvent

TEXT = "the quick brown fox jumps over the lazy d"[:40]  # 40 bytes
ROOM_EVENTS = 16


def _message(n: int) -> ChatEvent:
    return ChatEvent(EventType.MESSAGE, TEXT, room="#room3", sender="user17", id=f"gw0:17/{n}", ts=1.7e9 + n,
                     origin="gw0:17")


def _room_batch() -> tuple[BatchItem, ...]:
    return (Mark("gw0:17", 40), *(RoomEvent("#room3", 900 + n, _message(n)) for n in range(ROOM_EVENTS)))


def _private_batch() -> tuple[BatchItem, ...]:
    event = ChatEvent(EventType.PRIVATE, "hello", sender="alice", to="bob", id="gw0:3/41", ts=1.7e9, origin="gw0:3")
    return (Mark("gw0:3", 41), Deliver(("gw0:8", "gw0:3"), event))


def cases() -> list[tuple[str, Callable[[], object], int]]:
    """(name, call, items per call) of every timed call."""
    event = _message(1)
    cids = tuple(f"gw0:{n}" for n in range(50))
    room_batch, private_batch = _room_batch(), _private_batch()
    room_frame = codec.encode(Batch(room_batch))
    deliver_frame = codec.encode(Batch((Mark("gw0:17", 40), Deliver(cids, event))))
    lines_frame = codec.encode(Lines("gw0:3", 41, ("/msg bob hello",)))
    return [
        ("ChatEvent(...) as a worker makes it", lambda: ChatEvent(
            EventType.MESSAGE, TEXT, room="#room3", sender="user17", id="gw0:17/1", ts=1.7e9, origin="gw0:17"), 1),
        ("RoomEvent(room, seq, event)", lambda: RoomEvent("#room3", 901, event), 1),
        ("Deliver(cids, event)", lambda: Deliver(cids, event), 1),
        (f"decode Mark + {ROOM_EVENTS} RoomEvent, per event", lambda: codec.decode(room_frame), ROOM_EVENTS),
        ("decode Mark + Deliver to 50", lambda: codec.decode(deliver_frame), 1),
        (f"encode_batches Mark + {ROOM_EVENTS} RoomEvent, per event",
         lambda: codec.encode_batches((("gw0", room_batch),)), ROOM_EVENTS),
        ("encode_batches Mark + private Deliver", lambda: codec.encode_batches((("gw0", private_batch),)), 1),
        ("decode Lines('/msg bob hello')", lambda: codec.decode(lines_frame), 1),
        ("parse_line('/msg bob hello')", lambda: parse_line("/msg bob hello"), 1),
        ("parse_line(a plain 40-byte line)", lambda: parse_line(TEXT), 1),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--number", type=int, default=20_000, help="calls per run")
    parser.add_argument("--repeat", type=int, default=7, help="runs; the best counts")
    args = parser.parse_args()
    for name, call, items in cases():
        number = max(args.number // items, 1)
        best = min(timeit.repeat(call, timer=time.thread_time, number=number, repeat=args.repeat))
        print(f"{name:50s} {best / number / items * 1e6:7.3f} us")


if __name__ == "__main__":
    main()
