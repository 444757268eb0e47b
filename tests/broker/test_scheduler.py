"""Tests for broker.scheduler: the worker queue as pure code.

Frames are opaque to the scheduler; here a frame is b"<cid>|<seq>" so that
what was dispatched can be read back.
"""

from __future__ import annotations

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from broker.scheduler import Scheduler

Key = tuple[str, int]


def frame(cid: str, seq: int) -> tuple[bytes]:
    return (f"{cid}|{seq}".encode(),)


def key_of(data: bytes) -> Key:
    cid, _, seq = data.decode().rpartition("|")
    return cid, int(seq)


def keys(batch: list[bytes]) -> list[Key]:
    return [key_of(f) for f in batch]


def submit(s: Scheduler, cid: str, seq: int) -> bool:
    return s.submit(cid, seq, frame(cid, seq))


def dispatched(s: Scheduler) -> list[tuple[bytes, list[Key]]]:
    return [(worker, keys(batch)) for worker, batch in s.dispatch()]


# --- one event per connection in flight ---------------------------------------------


def test_one_event_per_connection_in_flight() -> None:
    s = Scheduler()
    s.ready(b"w1", 10)
    for seq in (1, 2, 3):
        assert submit(s, "gw:1", seq)
    assert dispatched(s) == [(b"w1", [("gw:1", 1)])]
    assert dispatched(s) == []  # the next waits for the answer
    assert s.queued == 2
    s.done(b"w1", [("gw:1", 1)])
    assert dispatched(s) == [(b"w1", [("gw:1", 2)])]
    s.done(b"w1", [("gw:1", 2)])
    assert dispatched(s) == [(b"w1", [("gw:1", 3)])]
    s.done(b"w1", [("gw:1", 3)])
    assert dispatched(s) == []
    assert s.queued == 0
    assert s.in_flight(b"w1") == 0


def test_next_event_of_a_connection_can_go_to_another_worker() -> None:
    s = Scheduler()
    s.ready(b"w1", 1)
    s.ready(b"w2", 1)
    submit(s, "gw:1", 1)
    submit(s, "gw:1", 2)
    assert dispatched(s) == [(b"w1", [("gw:1", 1)])]
    s.done(b"w1", [("gw:1", 1)])
    # w1 just answered: it is now the most recently used one
    assert dispatched(s) == [(b"w2", [("gw:1", 2)])]


def test_events_of_different_connections_go_out_together() -> None:
    s = Scheduler()
    s.ready(b"w1", 10)
    for cid in ("gw:1", "gw:2", "gw:3"):
        submit(s, cid, 1)
        submit(s, cid, 2)
    assert dispatched(s) == [(b"w1", [("gw:1", 1), ("gw:2", 1), ("gw:3", 1)])]


def test_nothing_goes_out_without_workers() -> None:
    s = Scheduler()
    submit(s, "gw:1", 1)
    assert s.dispatch() == []
    s.ready(b"w1", 0)
    assert s.dispatch() == []
    s.ready(b"w2", -3)  # a negative credit counts as none
    assert s.dispatch() == []
    assert s.queued == 1
    s.ready(b"w3", 1)
    assert dispatched(s) == [(b"w3", [("gw:1", 1)])]


# --- LRU with credit ----------------------------------------------------------------


def test_least_recently_used_worker_first() -> None:
    s = Scheduler()
    for w in (b"w1", b"w2", b"w3"):
        s.ready(w, 1)
    assert s.workers == [b"w1", b"w2", b"w3"]
    submit(s, "gw:1", 1)
    assert dispatched(s) == [(b"w1", [("gw:1", 1)])]
    submit(s, "gw:2", 1)
    assert dispatched(s) == [(b"w2", [("gw:2", 1)])]
    s.done(b"w1", [("gw:1", 1)])  # w1 answers: it goes to the back of the line
    submit(s, "gw:3", 1)
    submit(s, "gw:4", 1)
    assert dispatched(s) == [(b"w3", [("gw:3", 1)]), (b"w1", [("gw:4", 1)])]


def test_an_idle_worker_comes_before_a_busy_one_with_credit() -> None:
    """A worker that just answered is the most recently used, but it is idle: the next event goes
    to it, not into the inbox of a worker still busy with an earlier dispatch."""
    s = Scheduler()
    s.ready(b"w1", 16)
    s.ready(b"w2", 16)
    submit(s, "gw:1", 1)
    assert dispatched(s) == [(b"w1", [("gw:1", 1)])]
    submit(s, "gw:2", 1)
    assert dispatched(s) == [(b"w2", [("gw:2", 1)])]
    s.done(b"w2", [("gw:2", 1)])  # w2 is idle again; w1 still works (and has credit left)
    submit(s, "gw:3", 1)
    assert dispatched(s) == [(b"w2", [("gw:3", 1)])]
    submit(s, "gw:4", 1)  # nobody idle: the least recently used with credit, as before
    assert dispatched(s) == [(b"w1", [("gw:4", 1)])]


def test_credit_limits_events_in_flight_per_worker() -> None:
    s = Scheduler()
    s.ready(b"w1", 2)
    s.ready(b"w2", 1)
    for n in range(5):
        submit(s, f"gw:{n}", 1)
    out = dispatched(s)
    assert out == [(b"w1", [("gw:0", 1), ("gw:1", 1)]), (b"w2", [("gw:2", 1)])]
    assert s.in_flight(b"w1") == 2 and s.in_flight(b"w2") == 1
    assert s.queued == 2
    assert s.dispatch() == []  # no credit left anywhere
    s.done(b"w2", [("gw:2", 1)])  # one credit back
    assert dispatched(s) == [(b"w2", [("gw:3", 1)])]


def test_ready_again_sets_the_credit() -> None:
    s = Scheduler()
    s.ready(b"w1", 0)
    submit(s, "gw:1", 1)
    assert s.dispatch() == []
    s.ready(b"w1", 1)
    assert s.workers == [b"w1"]
    assert dispatched(s) == [(b"w1", [("gw:1", 1)])]


# --- batching ------------------------------------------------------------------------


def test_batches_hold_at_most_max_batch_events() -> None:
    s = Scheduler(max_batch=3)
    s.ready(b"w1", 100)
    for n in range(7):
        submit(s, f"gw:{n}", 1)
    out = dispatched(s)
    assert [len(batch) for _, batch in out] == [3, 3, 1]
    assert all(worker == b"w1" for worker, _ in out)
    assert [k for _, batch in out for k in batch] == [(f"gw:{n}", 1) for n in range(7)]


def test_batches_are_spread_over_workers_in_lru_order() -> None:
    s = Scheduler(max_batch=2)
    s.ready(b"w1", 10)
    s.ready(b"w2", 10)
    for n in range(5):
        submit(s, f"gw:{n}", 1)
    out = dispatched(s)
    assert [w for w, _ in out] == [b"w1", b"w2", b"w1"]
    assert [len(b) for _, b in out] == [2, 2, 1]


def test_batch_is_cut_by_credit() -> None:
    s = Scheduler(max_batch=64)
    s.ready(b"w1", 2)
    for n in range(5):
        submit(s, f"gw:{n}", 1)
    assert [len(b) for _, b in dispatched(s)] == [2]
    assert s.queued == 3


# --- done() ignores what is not the worker's -------------------------------------------


def test_done_for_unknown_event_is_ignored() -> None:
    s = Scheduler()
    s.ready(b"w1", 1)
    submit(s, "gw:1", 1)
    submit(s, "gw:1", 2)
    dispatched(s)
    s.done(b"w1", [("gw:9", 1), ("gw:1", 7)])  # unknown connection, unknown seq
    assert s.in_flight(b"w1") == 1
    assert s.dispatch() == []  # no credit came back, gw:1's event 1 still in flight
    s.done(b"nobody", [("gw:1", 1)])  # an unknown worker
    assert s.in_flight(b"w1") == 1
    assert s.dispatch() == []


def test_done_from_the_wrong_worker_is_ignored() -> None:
    s = Scheduler()
    s.ready(b"w1", 1)
    s.ready(b"w2", 1)
    submit(s, "gw:1", 1)
    submit(s, "gw:1", 2)
    assert dispatched(s) == [(b"w1", [("gw:1", 1)])]
    s.done(b"w2", [("gw:1", 1)])
    assert s.in_flight(b"w1") == 1
    assert s.dispatch() == []  # event 2 still waits for w1's answer
    s.done(b"w1", [("gw:1", 1)])
    assert dispatched(s) == [(b"w2", [("gw:1", 2)])]


def test_late_answer_from_a_lost_worker_is_ignored() -> None:
    s = Scheduler()
    s.ready(b"w1", 1)
    s.ready(b"w2", 1)
    submit(s, "gw:1", 1)
    submit(s, "gw:1", 2)
    assert dispatched(s) == [(b"w1", [("gw:1", 1)])]
    assert s.lose_worker(b"w1") == 1
    assert dispatched(s) == [(b"w2", [("gw:1", 1)])]
    s.done(b"w1", [("gw:1", 1)])  # the lost one answers after all: too late
    assert s.in_flight(b"w2") == 1
    assert s.dispatch() == []
    s.done(b"w2", [("gw:1", 1)])
    assert dispatched(s) == [(b"w2", [("gw:1", 2)])]


def test_done_twice_is_ignored_the_second_time() -> None:
    s = Scheduler()
    s.ready(b"w1", 1)
    submit(s, "gw:1", 1)
    dispatched(s)
    s.done(b"w1", [("gw:1", 1)])
    s.done(b"w1", [("gw:1", 1)])
    submit(s, "gw:2", 1)
    submit(s, "gw:3", 1)
    # credit 1, not 2: the second answer gave nothing back
    assert dispatched(s) == [(b"w1", [("gw:2", 1)])]


# --- lose_worker() -----------------------------------------------------------------------


def test_lose_unknown_worker() -> None:
    s = Scheduler()
    assert s.lose_worker(b"w1") == 0


def test_lost_worker_events_go_out_again_first_and_in_order() -> None:
    s = Scheduler()
    s.ready(b"w1", 10)
    for cid in ("gw:1", "gw:2"):
        for seq in (1, 2, 3):
            submit(s, cid, seq)
    assert dispatched(s) == [(b"w1", [("gw:1", 1), ("gw:2", 1)])]
    submit(s, "gw:3", 1)  # a newcomer, queued after the lost events
    assert s.lose_worker(b"w1") == 2
    assert s.workers == []
    assert s.in_flight(b"w1") == 0
    assert s.queued == 7
    s.ready(b"w2", 10)
    out = dispatched(s)
    assert len(out) == 1 and out[0][0] == b"w2"
    batch = out[0][1]
    assert sorted(batch[:2]) == [("gw:1", 1), ("gw:2", 1)]  # the lost ones first
    assert batch[2:] == [("gw:3", 1)]
    for seq in (1, 2, 3):  # then each connection goes on in order
        s.done(b"w2", [("gw:1", seq), ("gw:2", seq), ("gw:3", seq)])
        again = [k for _, b in dispatched(s) for k in b]
        assert sorted(again) == ([("gw:1", seq + 1), ("gw:2", seq + 1)] if seq < 3 else [])
    assert s.queued == 0


def test_lost_event_frame_is_sent_unchanged() -> None:
    s = Scheduler()
    s.ready(b"w1", 1)
    s.submit("gw:1", 1, (b"key", b"payload"))
    assert s.dispatch() == [(b"w1", [b"key", b"payload"])]
    s.lose_worker(b"w1")
    s.ready(b"w2", 1)
    assert s.dispatch() == [(b"w2", [b"key", b"payload"])]


def test_a_batch_holds_max_batch_events_whatever_their_frames() -> None:
    s = Scheduler(max_batch=2)
    s.ready(b"w1", 5)
    for n in range(3):
        s.submit(f"gw:{n}", 1, (b"key", b"payload"))
    assert [len(frames) for _, frames in s.dispatch()] == [4, 2]


def test_lose_worker_leaves_other_workers_events_alone() -> None:
    s = Scheduler()
    s.ready(b"w1", 1)
    s.ready(b"w2", 1)
    submit(s, "gw:1", 1)
    submit(s, "gw:2", 1)
    assert dispatched(s) == [(b"w1", [("gw:1", 1)]), (b"w2", [("gw:2", 1)])]
    assert s.lose_worker(b"w1") == 1
    assert s.in_flight(b"w2") == 1
    assert s.dispatch() == []  # w2 has no credit; gw:1 waits
    s.done(b"w2", [("gw:2", 1)])
    assert dispatched(s) == [(b"w2", [("gw:1", 1)])]


def test_lost_worker_that_comes_back_starts_afresh() -> None:
    s = Scheduler()
    s.ready(b"w1", 1)
    submit(s, "gw:1", 1)
    dispatched(s)
    s.lose_worker(b"w1")
    s.ready(b"w1", 1)
    assert dispatched(s) == [(b"w1", [("gw:1", 1)])]
    s.done(b"w1", [("gw:1", 1)])
    assert s.in_flight(b"w1") == 0


# --- submit() refuses duplicates -------------------------------------------------------


def test_submit_refuses_a_queued_duplicate() -> None:
    s = Scheduler()
    assert submit(s, "gw:1", 1)
    assert not submit(s, "gw:1", 1)
    assert s.queued == 1


def test_submit_refuses_an_in_flight_duplicate() -> None:
    s = Scheduler()
    s.ready(b"w1", 5)
    assert submit(s, "gw:1", 1)
    assert submit(s, "gw:1", 2)
    dispatched(s)
    assert not submit(s, "gw:1", 1)  # in flight
    assert not submit(s, "gw:1", 2)  # waiting
    assert s.queued == 1
    s.done(b"w1", [("gw:1", 1)])
    assert dispatched(s) == [(b"w1", [("gw:1", 2)])]
    s.done(b"w1", [("gw:1", 2)])
    assert dispatched(s) == []


def test_submit_accepts_an_event_again_once_it_is_done() -> None:
    # A gateway that missed the answer sends the event again: the workers replay it.
    s = Scheduler()
    s.ready(b"w1", 5)
    submit(s, "gw:1", 1)
    dispatched(s)
    s.done(b"w1", [("gw:1", 1)])
    assert submit(s, "gw:1", 1)
    assert dispatched(s) == [(b"w1", [("gw:1", 1)])]


def test_same_seq_on_other_connections_is_no_duplicate() -> None:
    s = Scheduler()
    assert submit(s, "gw:1", 1)
    assert submit(s, "gw:2", 1)
    assert submit(s, "!gw", 0)  # a gateway's loss
    assert s.queued == 3


# --- random interleavings -----------------------------------------------------------------

CIDS = ("a:1", "a:2", "b:1")
WORKERS = (b"w1", b"w2", b"w3")


class SchedulerMachine(RuleBasedStateMachine):
    """A model of what must hold: per connection, a FIFO of events not answered yet,
    at most its head in flight, and each worker within its credit."""

    @initialize(max_batch=st.integers(1, 4))
    def setup(self, max_batch: int) -> None:
        self.s = Scheduler(max_batch=max_batch)
        self.max_batch = max_batch
        self.next_seq = dict.fromkeys(CIDS, 1)
        self.todo: dict[str, list[int]] = {cid: [] for cid in CIDS}  # submitted, not answered
        self.flying: dict[str, tuple[int, bytes] | None] = dict.fromkeys(CIDS)
        self.credit: dict[bytes, int] = {}  # announced credit of live workers
        self.answered: list[Key] = []
        self.submitted: list[Key] = []

    def _mine(self, worker: bytes) -> list[Key]:
        return [(c, f[0]) for c, f in self.flying.items() if f is not None and f[1] == worker]

    # inputs

    @rule(cid=st.sampled_from(CIDS))
    def submit_new(self, cid: str) -> None:
        seq = self.next_seq[cid]
        self.next_seq[cid] += 1
        assert submit(self.s, cid, seq)
        self.todo[cid].append(seq)
        self.submitted.append((cid, seq))

    @rule(cid=st.sampled_from(CIDS), data=st.data())
    def submit_again(self, cid: str, data: st.DataObject) -> None:
        """A gateway resends an event it still waits for: refused."""
        if not self.todo[cid]:
            return
        seq = data.draw(st.sampled_from(self.todo[cid]))
        assert not submit(self.s, cid, seq)

    @rule(worker=st.sampled_from(WORKERS), credit=st.integers(0, 3))
    def ready(self, worker: bytes, credit: int) -> None:
        if worker in self.credit:
            return  # only new (or lost and back) workers announce themselves
        self.s.ready(worker, credit)
        self.credit[worker] = credit

    @rule(worker=st.sampled_from(WORKERS), data=st.data())
    def answer(self, worker: bytes, data: st.DataObject) -> None:
        mine = self._mine(worker)
        chosen = data.draw(st.lists(st.sampled_from(mine), unique=True)) if mine else []
        self.s.done(worker, chosen)
        for cid, seq in chosen:
            assert self.todo[cid][0] == seq
            self.todo[cid].pop(0)
            self.flying[cid] = None
            self.answered.append((cid, seq))

    @rule(worker=st.sampled_from(WORKERS + (b"ghost",)), cid=st.sampled_from(CIDS),
          seq=st.integers(0, 6))
    def stray_answer(self, worker: bytes, cid: str, seq: int) -> None:
        """An answer for an event this worker does not hold: ignored."""
        if (cid, seq) in self._mine(worker):
            return
        before = self.s.in_flight(worker)
        self.s.done(worker, [(cid, seq)])
        assert self.s.in_flight(worker) == before

    @rule(worker=st.sampled_from(WORKERS))
    def lose(self, worker: bytes) -> None:
        mine = self._mine(worker)
        lost = self.s.lose_worker(worker)
        assert lost == (len(mine) if worker in self.credit else 0)
        for cid, _ in mine:
            self.flying[cid] = None
        self.credit.pop(worker, None)

    @rule()
    def dispatch(self) -> None:
        for worker, batch in self.s.dispatch():
            assert worker in self.credit
            assert 1 <= len(batch) <= self.max_batch
            for cid, seq in keys(batch):
                assert self.flying[cid] is None, f"two events of {cid} in flight"
                assert self.todo[cid] and self.todo[cid][0] == seq, f"{cid} out of order"
                self.flying[cid] = (seq, worker)
            assert len(self._mine(worker)) <= self.credit[worker]

    # what always holds

    @invariant()
    def counts_agree(self) -> None:
        if not hasattr(self, "s"):
            return
        waiting = sum(len(q) - (self.flying[c] is not None) for c, q in self.todo.items())
        assert self.s.queued == waiting
        for worker in self.credit:
            assert self.s.in_flight(worker) == len(self._mine(worker))

    def teardown(self) -> None:
        """Once workers answer, every event submitted goes out, and is answered, once more."""
        if not hasattr(self, "s"):
            return
        if not any(c > 0 for c in self.credit.values()):
            self.s.ready(b"rescuer", 2)
            self.credit[b"rescuer"] = 2
        for _ in range(100):
            self.dispatch()
            for worker in list(self.credit):
                mine = self._mine(worker)
                self.s.done(worker, mine)
                for cid, seq in mine:
                    assert self.todo[cid].pop(0) == seq
                    self.flying[cid] = None
                    self.answered.append((cid, seq))
            if not any(self.todo.values()):
                break
        assert not any(self.todo.values())
        assert self.s.queued == 0
        assert sorted(self.answered) == sorted(self.submitted)  # each answered exactly once
        for cid in CIDS:  # and in order
            assert [q for c, q in self.answered if c == cid] == list(range(1, self.next_seq[cid]))


SchedulerMachine.TestCase.settings = settings(
    max_examples=120, stateful_step_count=40, deadline=None, database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestSchedulerMachine = SchedulerMachine.TestCase
