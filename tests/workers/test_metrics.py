"""The worker's metrics: what each event, line and failure adds, always under fixed labels.

Real Valkey (one prefix per test) and a Redis that is not there; time as a value."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from protocol import codec
from protocol.hops import WORKER_HOPS
from protocol.messages import Connected, Disconnected, GatewayLost, Heartbeat, Lines, WorkItem
from tests.e2e.load import wait_until
from tests.workers.test_logic import GW_A, GW_B, connected
from workers.handler import Breaker, Handler
from workers.logic import Chat, ChatLimits
from workers.metrics import (
    FLUSH_MAX,
    ChildMetrics,
    EventKind,
    PoolMetrics,
    RedisCause,
    RefusedCause,
    WorkerMetrics,
    pool_registry,
    redis_cause,
)
from workers.pool import BACKOFF_MIN, METRICS_DIR_PREFIX, MULTIPROC_ENV, Pool, multiprocess_dir
from workers.redis_client import open_redis
from workers.store import Store
from workers.worker import WorkerConfig


def _frames(*events: WorkItem) -> list[bytes]:
    """A dispatch as the broker sends it: its heartbeat, then each event's key and body."""
    return [codec.encode(Heartbeat("broker.x")), *(f for e in events for f in codec.event_frames(e))]


def value(metrics: WorkerMetrics, name: str, **labels: str) -> float:
    got = metrics.registry.get_sample_value(name, labels)
    assert got is not None, f"no sample {name}{labels}"
    return got


@pytest.fixture
def metrics() -> WorkerMetrics:
    return WorkerMetrics()


@pytest.fixture
def dead_redis(tmp_path: Path) -> Iterator[redis.Redis]:
    conn = open_redis(f"unix://{tmp_path / 'nobody.sock'}", timeout=0.2)
    yield conn
    conn.close()


def test_every_label_value_is_there_from_the_start_at_zero(metrics: WorkerMetrics) -> None:
    for kind in EventKind:
        assert value(metrics, "chat_worker_events_total", kind=kind.value) == 0
    for cause in RedisCause:
        assert value(metrics, "chat_worker_redis_errors_total", cause=cause.value) == 0
    for refused in RefusedCause:
        assert value(metrics, "chat_worker_lines_refused_total", cause=refused.value) == 0
    for name in ("chat_worker_lines_total", "chat_worker_dispatches_total", "chat_worker_internal_errors_total",
                 "chat_worker_breaker_open", "chat_worker_redis_round_trip_seconds_count"):
        assert value(metrics, name) == 0


def test_events_lines_dispatches_and_round_trips_are_counted(store: Store, metrics: WorkerMetrics) -> None:
    chat = Chat(Store(store._client, store._p, on_round_trip=metrics.redis_round_trip.observe), metrics=metrics)
    a = connected(chat, f"{GW_A}:1", "alice", "#r")  # one connect, two events of one line: not through a Handler
    handler = Handler(chat, Breaker(1.0))
    handler.frames(_frames(Lines(a.cid, a.seq, ("hi", "/who", "")), Connected(f"{GW_A}:2", 0, "x"),
                           Disconnected(f"{GW_A}:2", 1, "bye")), 5.0, 0.0)
    handler.frames(_frames(GatewayLost(GW_B)), 5.0, 0.0)
    handler.frames([], 5.0, 0.0)  # a heartbeat-only pass is no dispatch
    assert value(metrics, "chat_worker_dispatches_total") == 2
    assert value(metrics, "chat_worker_events_total", kind="lines") == 1
    assert value(metrics, "chat_worker_events_total", kind="connect") == 1
    assert value(metrics, "chat_worker_events_total", kind="disconnect") == 1
    assert value(metrics, "chat_worker_events_total", kind="gateway_lost") == 1
    assert value(metrics, "chat_worker_lines_total") == 3  # the empty line came in too
    assert value(metrics, "chat_worker_redis_round_trip_seconds_count") >= 5  # 3 for alice, one a dispatch
    assert value(metrics, "chat_worker_redis_errors_total", cause="connection") == 0
    assert value(metrics, "chat_worker_breaker_open") == 0


def test_refused_lines_by_cause(store: Store, metrics: WorkerMetrics) -> None:
    chat = Chat(store, ChatLimits(max_line=16, max_event_lines=3), metrics)
    a = connected(chat, f"{GW_A}:1")
    handler = Handler(chat, Breaker(1.0))
    handler.frames(_frames(Lines(a.cid, a.seq, ("x" * 17, "é" * 9, "ok", "4", "5", "6", "7"))), 5.0, 0.0)
    assert value(metrics, "chat_worker_lines_refused_total", cause="too_long") == 2
    assert value(metrics, "chat_worker_lines_refused_total", cause="too_many_lines") == 4
    assert value(metrics, "chat_worker_lines_refused_total", cause="unavailable") == 0


def test_redis_down_counts_the_failure_the_refusals_and_the_open_breaker(
        dead_redis: redis.Redis, prefix: str, metrics: WorkerMetrics) -> None:
    handler = Handler(Chat(Store(dead_redis, prefix, on_round_trip=metrics.redis_round_trip.observe),
                           metrics=metrics), Breaker(1.0))
    cid = f"{GW_A}:1"
    handler.frames(_frames(Lines(cid, 1, ("a", "b"))), 5.0, 10.0)
    assert value(metrics, "chat_worker_redis_errors_total", cause="connection") == 1
    assert value(metrics, "chat_worker_lines_refused_total", cause="unavailable") == 2
    assert value(metrics, "chat_worker_breaker_open") == 1
    assert value(metrics, "chat_worker_redis_round_trip_seconds_count") == 1  # the failed one is timed too
    handler.frames(_frames(Lines(cid, 3, ("c",))), 5.0, 10.5)  # fails fast: no round trip
    assert value(metrics, "chat_worker_redis_errors_total", cause="breaker_open") == 1
    assert value(metrics, "chat_worker_redis_round_trip_seconds_count") == 1
    assert value(metrics, "chat_worker_lines_refused_total", cause="unavailable") == 3
    handler.chat = Chat(Store(dead_redis, prefix), metrics=metrics)
    handler.frames([], 5.0, 11.0)  # the cooldown is over: no longer failing fast
    assert value(metrics, "chat_worker_breaker_open") == 0


@pytest.mark.parametrize(("exc", "cause"), [
    (redis.TimeoutError("Timeout reading from socket"), RedisCause.TIMEOUT),
    (redis.ConnectionError("Error 111 connecting"), RedisCause.CONNECTION),
    (redis.exceptions.BusyLoadingError("loading"), RedisCause.CONNECTION),
    (redis.ResponseError("OOM command not allowed"), RedisCause.RESPONSE),
    (redis.exceptions.InvalidResponse("Protocol error"), RedisCause.RESPONSE),
    (redis.RedisError("anything else"), RedisCause.RESPONSE),
])
def test_redis_causes_are_fixed(exc: redis.RedisError, cause: RedisCause) -> None:
    assert redis_cause(exc) is cause


def test_a_per_call_error_from_redis_is_a_response_error(store: Store, client: redis.Redis,
                                                         metrics: WorkerMetrics) -> None:
    chat = Chat(store, metrics=metrics)
    a = connected(chat, f"{GW_A}:1", "alice", "#r")
    client.set(f"{store._p}room:#r:members", "not a set")  # the script's call on it fails: WRONGTYPE
    a.send("/who")
    assert value(metrics, "chat_worker_redis_errors_total", cause="response") == 1
    assert value(metrics, "chat_worker_lines_refused_total", cause="unavailable") == 1


def test_no_label_value_comes_from_input(store: Store, metrics: WorkerMetrics) -> None:
    chat = Chat(store, ChatLimits(max_line=32), metrics)
    handler = Handler(chat, Breaker(1.0))
    hostile = ('kind="x"', "\x00\n}", "/frob", "x" * 40, "/nick " + "é" * 40, "\u202e#room")
    handler.frames([*_frames(Connected(f"{GW_A}:7", 0, 'evil"}addr'), Lines(f"{GW_A}:7", 1, hostile)),
                    b"\xff\x00garbage"], 5.0, 0.0)
    allowed = {"kind": {k.value for k in EventKind},
               "cause": {c.value for c in RedisCause} | {c.value for c in RefusedCause},
               "hop": {h.value for h in WORKER_HOPS},
               "le": None}
    for family in metrics.registry.collect():
        assert family.name.startswith("chat_worker_")
        for sample in family.samples:
            for label, val in sample.labels.items():
                assert label in allowed, sample
                assert allowed[label] is None or val in allowed[label], sample  # type: ignore[operator]


def test_an_internal_error_is_counted_per_event(chat: Chat) -> None:
    def broken(items: object, now: float) -> list[object]:
        raise RuntimeError("a bug of the dispatch")

    chat.handle_batch = broken  # type: ignore[assignment,method-assign]
    Handler(chat, Breaker(1.0)).frames(_frames(Lines(f"{GW_A}:1", 1, ("hi",)), Connected(f"{GW_A}:2", 0, "")),
                                       5.0, 0.0)
    assert value(chat.metrics, "chat_worker_internal_errors_total") == 2


def test_pool_metrics_report_what_the_pool_keeps() -> None:
    pool = PoolMetrics()
    pool.alive, pool.restarts = 3, 2
    families = {f.name: f.samples[0].value for f in pool.collect()}
    assert families == {"chat_worker_processes_alive": 3, "chat_worker_restarts": 2}


def test_a_metrics_dir_left_by_a_killed_pool_is_swept(tmp_path: Path) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True, timeout=30)
    left = tmp_path / f"{METRICS_DIR_PREFIX}{int(dead.stdout)}-abcd1234"
    left.mkdir()
    (left / "owner").write_text(f"{int(dead.stdout)} 1\n")
    (left / "counter_1.db").write_bytes(b"")
    stranger = tmp_path / "chat-worker-metrics-notapid"  # not ours by its name: left alone
    stranger.mkdir()
    with multiprocess_dir(True, tmp_path) as path:
        assert path is not None and Path(path).parent == tmp_path
        assert not left.exists() and stranger.exists()
        assert sorted(os.listdir(path)) == ["owner"]
        assert pool_registry(ChildMetrics(path), PoolMetrics()).get_sample_value("chat_worker_restarts_total") == 0
    assert not os.path.exists(path)


def test_multiprocess_dir_is_private_named_for_children_and_removed() -> None:
    with multiprocess_dir(True) as path:
        assert path is not None and os.path.isdir(path)
        assert os.environ[MULTIPROC_ENV[0]] == path
    assert not os.path.exists(path)
    assert MULTIPROC_ENV[0] not in os.environ
    os.environ[MULTIPROC_ENV[1]] = "/nonexistent"  # someone else's: the children must not write there
    with multiprocess_dir(False) as none:
        assert none is None and not any(name in os.environ for name in MULTIPROC_ENV)


CHILD = """
import os
from workers.metrics import WorkerMetrics
from protocol.messages import Lines
m = WorkerMetrics()
m.took([Lines("gw.x:1", 1, ("a",) * {n})])
m.redis_round_trip.observe({n} / 1000)
m.breaker(True)
print(os.getpid())
"""


def run_child(n: int) -> int:
    """A process that counts `n` lines and exits -> its pid."""
    done = subprocess.run([sys.executable, "-c", CHILD.format(n=n)], check=True, timeout=30, capture_output=True,
                          text=True)
    return int(done.stdout)


def test_the_pool_registry_adds_up_the_children_and_its_own() -> None:
    pool = PoolMetrics()
    pool.alive, pool.restarts = 2, 1
    with multiprocess_dir(True) as path:
        assert path is not None
        for n in (3, 4):  # two processes that have exited: their counters stay
            run_child(n)
        registry = pool_registry(ChildMetrics(path), pool)
        assert registry.get_sample_value("chat_worker_lines_total") == 7
        assert registry.get_sample_value("chat_worker_events_total", {"kind": "lines"}) == 2
        assert registry.get_sample_value("chat_worker_processes_alive") == 2
        assert registry.get_sample_value("chat_worker_restarts_total") == 1


def test_the_pool_marks_a_dead_child_and_counts_its_restart(tmp_path: Path) -> None:
    config = WorkerConfig(backend="tcp://127.0.0.1:1", redis_url=f"unix://{tmp_path / 'none.sock'}")
    with multiprocess_dir(True) as path:
        assert path is not None
        children = ChildMetrics(path)
        pool = Pool(config, 1, children=children)
        try:
            pool._start(0)
            child = pool._children[0]
            assert child is not None and child.pid is not None
            pid = child.pid
            live_gauge = Path(path) / f"gauge_livesum_{pid}.db"
            wait_until(live_gauge.exists, 20, "the child to make its metric files")
            os.kill(pid, signal.SIGKILL)
            child.join(10)
            now = time.monotonic()
            pool._check(0, now)  # seen dead; the backoff holds its restart
            assert not live_gauge.exists()  # its live gauge is gone ...
            assert not (Path(path) / f"counter_{pid}.db").exists()  # ... its counters folded into the archive
            assert (Path(path) / "counter_archive.db").exists()
            assert pool.metrics.restarts == 0
            pool._check(0, now + BACKOFF_MIN)
            assert pool.metrics.restarts == 1
        finally:
            pool.stop()


def test_retiring_children_keeps_every_total_and_bounds_the_files() -> None:
    with multiprocess_dir(True) as path:
        assert path is not None
        children = ChildMetrics(path)
        registry = pool_registry(children, PoolMetrics())
        pids = [run_child(n) for n in (1, 2, 3, 4)]
        before = {(s.name, tuple(sorted(s.labels.items()))): s.value
                  for f in registry.collect() for s in f.samples if f.name != "chat_worker_breaker_open"}
        assert registry.get_sample_value("chat_worker_breaker_open") == 4  # not marked dead yet
        for pid in pids:
            children.retire(pid)
        after = {(s.name, tuple(sorted(s.labels.items()))): s.value
                 for f in registry.collect() for s in f.samples if f.name != "chat_worker_breaker_open"}
        assert after.keys() == before.keys()
        # sums of seconds are floats added in another order once folded: equal up to rounding
        assert after == {key: pytest.approx(value) for key, value in before.items()}
        assert registry.get_sample_value("chat_worker_lines_total") == 10
        assert registry.get_sample_value("chat_worker_redis_round_trip_seconds_bucket", {"le": "0.0025"}) == 2
        assert registry.get_sample_value("chat_worker_breaker_open") in (None, 0)  # no live process
        assert sorted(os.listdir(path)) == ["counter_archive.db", "histogram_archive.db", "owner"]
        children.retire(pids[0])  # twice, or a pid with no files: nothing changes
        assert registry.get_sample_value("chat_worker_lines_total") == 10


def test_buffered_metrics_are_written_by_flush_and_never_grow_without_bound(store: Store) -> None:
    metrics = WorkerMetrics(buffered=True)
    chat = Chat(Store(store._client, store._p, on_round_trip=metrics.redis_observed), metrics=metrics)
    handler = Handler(chat, Breaker(1.0))
    cid = f"{GW_A}:1"
    handler.frames(_frames(Connected(cid, 0, "x")), 5.0, 0.0)
    handler.frames(_frames(Lines(cid, 1, ("/ping", "/ping"))), 5.0, 0.0)
    assert metrics.pending
    assert value(metrics, "chat_worker_dispatches_total") == 0  # kept until the worker loop flushes
    assert value(metrics, "chat_worker_redis_round_trip_seconds_count") == 0
    metrics.flush()
    assert not metrics.pending
    assert value(metrics, "chat_worker_dispatches_total") == 2
    assert value(metrics, "chat_worker_events_total", kind="connect") == 1
    assert value(metrics, "chat_worker_events_total", kind="lines") == 1
    assert value(metrics, "chat_worker_lines_total") == 2
    assert value(metrics, "chat_worker_redis_round_trip_seconds_count") == 1  # the pings need no Redis
    metrics.flush()  # nothing more: nothing counted twice
    assert value(metrics, "chat_worker_dispatches_total") == 2
    for _ in range(FLUSH_MAX):
        metrics.redis_observed(0.001)
    assert not metrics.pending  # written at once when that many wait: bounded without a flush
    assert value(metrics, "chat_worker_redis_round_trip_seconds_count") == 1 + FLUSH_MAX
