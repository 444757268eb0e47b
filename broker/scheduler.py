"""The worker queue as pure code: which event goes to which worker, when.

Two rules give the ordering guarantees of the protocol (README, "The protocol in brief"):
- one event per connection in flight: a connection's next event waits
  until the worker answered the previous one (`Done`), so a connection's
  events are handled in order even when consecutive ones land on
  different workers;
- workers are served least recently used first, each up to the credit
  it announced (ZeroMQ guide: the load-balancing broker); an idle worker
  (nothing in flight) comes before a busy one with credit left, so that an
  event never waits in a busy worker's inbox while another worker idles.

A worker that is lost gives its events back to the front of their
connections' queues, to go out again in order. Everything here is plain
data in, assignments out; the broker's poll loop does the I/O.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass, field

Key = tuple[str, int]  # (cid, seq): an event's unique ID
Frames = tuple[bytes, ...]  # an event as the broker got it (opaque here), dispatched as is


@dataclass(slots=True)
class _Conn:
    waiting: deque[tuple[int, Frames]] = field(default_factory=deque)
    in_flight: tuple[int, Frames, bytes] | None = None  # (seq, frames, worker)


@dataclass(slots=True)
class _Worker:
    credit: int
    events: set[Key] = field(default_factory=set)


class Scheduler:
    def __init__(self, max_batch: int = 64) -> None:
        self.max_batch = max_batch
        self._conns: dict[str, _Conn] = {}
        self._runnable: deque[str] = deque()  # conns with waiting events and none in flight
        self._workers: OrderedDict[bytes, _Worker] = OrderedDict()  # LRU first
        self.queued = 0

    # --- inputs -------------------------------------------------------------

    def submit(self, cid: str, seq: int, frames: Frames) -> bool:
        """Queue an event -> False if that very event is queued or in flight already."""
        conn = self._conns.get(cid)
        if conn is None:
            conn = self._conns[cid] = _Conn()
        elif (conn.in_flight is not None and conn.in_flight[0] == seq) or any(
            s == seq for s, _ in conn.waiting
        ):
            return False  # a gateway sent it again while we still had it
        conn.waiting.append((seq, frames))
        self.queued += 1
        if conn.in_flight is None and len(conn.waiting) == 1:
            self._runnable.append(cid)
        return True

    def ready(self, worker: bytes, credit: int) -> None:
        """A worker (new or reconnected) can take `credit` events at once."""
        if worker in self._workers:
            self._workers[worker].credit = max(credit, 0)
        else:
            self._workers[worker] = _Worker(max(credit, 0))

    def done(self, worker: bytes, keys: list[Key]) -> None:
        state = self._workers.get(worker)
        for cid, seq in keys:
            conn = self._conns.get(cid)
            if conn is None or conn.in_flight is None or conn.in_flight[0] != seq:
                continue  # not ours: a late answer for an event given to another worker
            if conn.in_flight[2] != worker:
                continue
            conn.in_flight = None
            if state is not None:
                state.events.discard((cid, seq))
                state.credit += 1
            self._after_done(cid, conn)
        if state is not None:
            self._workers.move_to_end(worker)

    def _after_done(self, cid: str, conn: _Conn) -> None:
        if conn.waiting:
            self._runnable.append(cid)
        else:
            del self._conns[cid]

    def lose_worker(self, worker: bytes) -> int:
        """Forget a dead worker; its events go out again first. -> how many."""
        state = self._workers.pop(worker, None)
        if state is None:
            return 0
        for cid, seq in state.events:
            conn = self._conns[cid]
            assert conn.in_flight is not None
            _, frames, _ = conn.in_flight
            conn.in_flight = None
            conn.waiting.appendleft((seq, frames))
            self.queued += 1
            self._runnable.appendleft(cid)
        return len(state.events)

    # --- outputs ------------------------------------------------------------

    def dispatch(self) -> list[tuple[bytes, list[bytes]]]:
        """Assign what can go now -> [(worker, the frames of its events, one after another)]."""
        out: list[tuple[bytes, list[bytes]]] = []
        while self._runnable:
            worker = self._next_worker()
            if worker is None:
                break
            out.append((worker, self._fill(worker)))
        return out

    def _next_worker(self) -> bytes | None:
        """The least recently used idle worker, else the least recently used one with credit."""
        busy = None
        for worker, state in self._workers.items():
            if state.credit > 0:
                if not state.events:
                    return worker
                busy = busy or worker
        return busy

    def _fill(self, worker: bytes) -> list[bytes]:
        state = self._workers[worker]
        frames: list[bytes] = []
        for _ in range(self.max_batch):
            if not self._runnable or state.credit <= 0:
                break
            cid = self._runnable.popleft()
            conn = self._conns[cid]
            seq, event = conn.waiting.popleft()
            self.queued -= 1
            conn.in_flight = (seq, event, worker)
            state.events.add((cid, seq))
            state.credit -= 1
            frames += event
        self._workers.move_to_end(worker)
        return frames

    # --- introspection --------------------------------------------------------

    @property
    def workers(self) -> list[bytes]:
        return list(self._workers)

    @property
    def connections(self) -> int:
        """Connections with an event waiting or in flight."""
        return len(self._conns)

    def in_flight_total(self) -> int:
        """Events given to workers and not yet done: O(workers)."""
        return sum(len(state.events) for state in self._workers.values())

    def free_credit(self) -> int:
        """Events the workers can take now, in all: O(workers)."""
        return sum(state.credit for state in self._workers.values())

    def in_flight(self, worker: bytes) -> int:
        state = self._workers.get(worker)
        return len(state.events) if state else 0
