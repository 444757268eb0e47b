"""`chat-stack` killed with `kill -9`, and the embedded Valkey when it is full.

Real processes only: chat-stack and its whole tree, a real Valkey with a
small `maxmemory`, a real cluster and TCP clients.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest
import redis

from stack.children import Child, python_module, start, stop
from stack.rundir import MARKER, PREFIX, make_run_dir, sweep_stale_run_dirs
from stack.valkey import parse_memory, start_valkey
from tests.e2e.chatclient import ChatClient
from tests.e2e.cluster import Cluster, start_cluster, start_workers
from tests.e2e.test_stack import _free_port_pair

UNAVAILABLE = "! service temporarily unavailable"


def wait_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"not within {timeout}s: {what}"
        time.sleep(0.05)  # polling a condition, bounded by the deadline


def _start_stack(port: int, tmp: Path, workers: int = 2) -> Child:
    return start("stack", python_module(
        "stack.cli", "--port", str(port), "--host", "127.0.0.1", "--workers", str(workers), "--gateways", "1",
        "--irc-port", "off", "--web-port", "off"),  # the defaults 6667 and 8080 may be taken here
        "chat-stack ready", timeout=60, env={**os.environ, "TMPDIR": str(tmp)})


def _tree(pid: int) -> list[psutil.Process]:
    return psutil.Process(pid).children(recursive=True)


def _kill_tree(procs: list[psutil.Process]) -> None:
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()


def test_kill_9_of_the_stack_takes_its_whole_tree_and_the_next_start_sweeps(tmp_path: Path) -> None:
    port = _free_port_pair()
    first = _start_stack(port, tmp_path, workers=2)
    tree: list[psutil.Process] = []
    try:
        # the pool starts its workers after it says it started: wait for both
        wait_until(lambda: len(_tree(first.pid)) >= 5, 30, "valkey, broker, pool + 2 workers, gateway")
        with ChatClient(port) as c:
            c.send("/ping")
            c.expect("* pong")
            c.send("/nick killed9")
            c.expect("* you are now killed9")  # a worker served it: the whole tree is up
        tree = _tree(first.pid)
        names = " ".join(" ".join(p.cmdline()) for p in tree)
        assert "valkey-server" in names and "multiprocessing" in names, names  # grandchildren included
        left = [p for p in tmp_path.iterdir() if p.name.startswith(PREFIX)]
        assert len(left) == 1 and (left[0] / MARKER).read_text().split()[0] == str(first.pid)

        first.proc.send_signal(signal.SIGKILL)
        first.proc.wait(10)
        _, alive = psutil.wait_procs(tree, timeout=20)
        assert not alive, f"left running after kill -9 of chat-stack: {alive}"
        assert left[0].exists()  # nobody could remove it ...

        second = _start_stack(port, tmp_path, workers=1)  # the same port: the old gateway is gone
        try:
            assert not left[0].exists()  # ... until the next stack started
            with ChatClient(port) as c:
                c.send("/nick killed9")  # the old Valkey's data went with its directory
                c.expect("* you are now killed9")
            second.proc.send_signal(signal.SIGTERM)
            assert second.proc.wait(30) == 0
            assert not list(tmp_path.iterdir()), "temporary files left behind"
        finally:
            stop(second)
    finally:
        stop(first)
        _kill_tree(tree)


def test_kill_9_of_the_worker_pool_takes_its_workers(tmp_path: Path) -> None:
    pool = start_workers(2, "tcp://127.0.0.1:9", f"unix://{tmp_path}/nobody.sock")  # they need neither to start
    workers: list[psutil.Process] = []
    try:
        wait_until(lambda: len(_tree(pool.pid)) >= 2, 30, "the pool's two workers")
        workers = _tree(pool.pid)
        pool.proc.send_signal(signal.SIGKILL)
        pool.proc.wait(10)
        _, alive = psutil.wait_procs(workers, timeout=20)
        assert not alive, f"workers left running after kill -9 of their pool: {alive}"
    finally:
        stop(pool)
        _kill_tree(workers)


def test_sweep_leaves_live_owners_and_foreign_dirs_alone(tmp_path: Path) -> None:
    mine = make_run_dir(tmp_path)  # this process is alive
    dead = psutil.Popen(["true"])
    dead.wait()
    gone = tmp_path / f"{PREFIX}{dead.pid}-abcd1234"
    gone.mkdir()
    (gone / MARKER).write_text(f"{dead.pid} 1\n")
    reused = tmp_path / f"{PREFIX}{os.getpid()}-reused00"  # our PID, but another start time: a PID reused
    reused.mkdir()
    (reused / MARKER).write_text(f"{os.getpid()} 1\n")
    unmarked_dead = tmp_path / f"{PREFIX}{dead.pid}-nomarker"
    unmarked_dead.mkdir()
    unmarked_live = tmp_path / f"{PREFIX}{os.getpid()}-nomarker"
    unmarked_live.mkdir()
    foreign = tmp_path / f"{PREFIX}not-ours"
    foreign.mkdir()
    link = tmp_path / f"{PREFIX}{dead.pid}-symlink0"
    link.symlink_to(mine)

    removed = sweep_stale_run_dirs(tmp_path)

    assert sorted(removed) == sorted([gone, reused, unmarked_dead])
    assert mine.exists() and unmarked_live.exists() and foreign.exists() and link.is_symlink()


@pytest.mark.parametrize("text, size", [("256mb", 256 << 20), ("1gb", 1 << 30), ("2000000", 2_000_000),
                                        ("3M", 3_000_000), (" 64KB ", None), ("1mb", 1 << 20)])
def test_parse_memory(text: str, size: int | None) -> None:
    if size is None:
        with pytest.raises(ValueError, match="below the minimum"):
            parse_memory(text)
    else:
        assert parse_memory(text) == size


@pytest.mark.parametrize("text", ["", "mb", "-1mb", "1.5gb", "1tb", "12 mb", "9" * 20])
def test_parse_memory_refuses_malformed(text: str) -> None:
    with pytest.raises(ValueError):
        parse_memory(text)


def test_stack_refuses_a_bad_maxmemory_clearly(tmp_path: Path) -> None:
    out = subprocess.run(python_module("stack.cli", "--valkey-maxmemory", "lots"), check=False, capture_output=True,
                         text=True, timeout=60, env={**os.environ, "TMPDIR": str(tmp_path)})
    assert out.returncode == 2
    assert "invalid memory size 'lots'" in out.stderr


# --- Valkey full --------------------------------------------------------------------------

MAXMEMORY = 8 << 20


@pytest.fixture
def small_valkey(tmp_path: Path) -> Iterator[tuple[Child, str]]:
    valkey, url = start_valkey(tmp_path / "valkey", maxmemory=MAXMEMORY)
    yield valkey, url
    stop(valkey)


@pytest.fixture
def full_cluster(tmp_path: Path, small_valkey: tuple[Child, str]) -> Iterator[Cluster]:
    cluster = start_cluster(tmp_path / "unused", workers=2, gateways=2, redis_url=small_valkey[1])
    yield cluster
    cluster.stop()


def _fill(client: redis.Redis) -> None:
    """Fill Valkey with filler keys until it refuses even a small write (noeviction).

    Big values first, then small ones: a refused big SET leaves memory a
    query buffer below the limit, where a chat line would still fit.
    """
    for size in (65536, 512, 16):
        for i in range(20_000):  # bounded: 8 MB takes about 130 big ones
            try:
                client.set(f"filler:{size}:{i}", "x" * size)
            except redis.exceptions.OutOfMemoryError:
                break
        else:
            raise AssertionError("Valkey never said it was full")


def test_full_valkey_refuses_writes_clearly_serves_reads_and_recovers(
        full_cluster: Cluster, small_valkey: tuple[Child, str]) -> None:
    valkey, url = small_valkey
    admin = redis.Redis.from_url(url, decode_responses=True)
    ports = full_cluster.ports
    with ChatClient(ports[0]) as a, ChatClient(ports[1]) as b, ChatClient(ports[1]) as q:
        a.send("/nick fullA", "/join #full", "before it filled up")
        a.expect("* you joined #full (1 here: fullA)")
        b.send("/nick fullB", "/join #full")
        b.expect("* you joined #full (2 here: fullA, fullB)")
        q.send("/nick fullQ", "/join #full")
        q.expect("* you joined #full (3 here: fullA, fullB, fullQ)")
        a.sync()

        _fill(admin)
        assert admin.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}

        # writes: told, and nothing happened; one line alone and several in one event alike
        for _ in range(3):
            b.send("while it is full")
            b.expect(UNAVAILABLE)
        b.send("/nick fullC", "/join #other", "also while full")
        for _ in range(3):
            b.expect(UNAVAILABLE)
        # reads, private messages (nothing stored) and what needs no Redis still work
        b.send("/ping")
        b.expect("* pong")
        b.send("/who")
        b.expect("* #full (3): fullA, fullB, fullQ")
        b.send("/history 1")
        b.expect("#full <fullA> before it filled up")
        b.send("/rooms")
        b.expect("* rooms: #full (3)")
        b.send("/msg fullA psst")
        a.expect("*fullB* psst")
        # departures free memory: they are served
        q.send("/part")
        q.expect("* you left #full")
        a.expect("* fullQ left #full")
        q.send("/join #full")
        q.expect(UNAVAILABLE)  # a join grows the state: refused
        q.send("/quit")
        q.wait_closed()
        # a newcomer: its connect is left unanswered while full (the gateway sends it again),
        # so it gets no greeting yet and its lines wait behind the connect
        late = ChatClient(ports[0], greet=False)
        try:
            late.send("/nick late")
            assert late.read_line(time.monotonic() + 1.5) is None  # nothing yet: not a wrong answer
            shown = " ".join(a.sync())
            assert "while it is full" not in shown and "also while full" not in shown  # refused: not delivered
            used = int(admin.info("memory")["used_memory"])
            assert used < MAXMEMORY * 1.1, f"Valkey grew past its limit: {used}"

            # memory freed: it serves again, by itself
            admin.delete(*admin.keys("filler:*"))
            b.send("after it was freed")
            a.expect("#full <fullB> after it was freed")
            b.send("/nick fullC")
            b.expect("* you are now fullC")
            late.expect(lambda line: line.startswith("* welcome! you are guest-"))
            late.expect("* you are now late")
        finally:
            late.close()
    admin.close()
    for child in full_cluster.children.values():
        assert child.proc.poll() is None, f"{child.name} died"
    assert valkey.proc.poll() is None
