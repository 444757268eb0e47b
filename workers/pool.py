"""`chat-worker -n N`: N worker processes, supervised.

Children get the configuration (URLs, not clients) and build their own
ZeroMQ context and Redis client after the fork, as rq and the ZeroMQ guide
advise. A child that dies is started again after a backoff that grows
while children keep dying young. SIGTERM or SIGINT stops every child with
SIGTERM, waits `grace` seconds, then kills what is left. A child whose
pool dies (even by `kill -9`) gets SIGTERM from the kernel (Linux).

Metrics (`workers.metrics`): with a metrics directory, the pool owns
PROMETHEUS_MULTIPROC_DIR: `multiprocess_dir` makes the directory (with an
owner marker, as chat-stack's run directories) and sets
the variable before any child is spawned (a child reads it when it imports
prometheus_client), and removes both on exit; a child that exits is retired
there (`ChildMetrics.retire`): its live gauges go, its totals stay. Without
one, the variable is removed, so no child writes metric files anywhere.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from multiprocessing.process import BaseProcess
from pathlib import Path

from stack.children import die_with_parent
from stack.process import Stopping, setup_logging
from stack.rundir import make_run_dir, sweep_stale_run_dirs
from workers.metrics import ChildMetrics, PoolMetrics
from workers.worker import WorkerConfig, run_worker

log = logging.getLogger("chat.pool")

BACKOFF_MIN = 0.5
BACKOFF_MAX = 10.0
HEALTHY_AFTER = 10.0  # a child that lived this long resets the backoff


MULTIPROC_ENV = ("PROMETHEUS_MULTIPROC_DIR", "prometheus_multiproc_dir")
METRICS_DIR_PREFIX = "chat-worker-metrics-"


@contextmanager
def multiprocess_dir(enabled: bool, parent: Path | None = None) -> Iterator[str | None]:
    """A private directory for the children's metric files, named in their environment
    (None, and no such variable, when metrics are off); removed on exit. One that a pool
    killed with `kill -9` left behind is removed by the next pool on the host."""
    for name in MULTIPROC_ENV:
        os.environ.pop(name, None)
    for left in sweep_stale_run_dirs(parent, METRICS_DIR_PREFIX):
        log.info("removed %s, left by a pool that is gone", left)
    if not enabled:
        yield None
        return
    path = str(make_run_dir(parent, METRICS_DIR_PREFIX))
    os.environ[MULTIPROC_ENV[0]] = path
    try:
        yield path
    finally:
        os.environ.pop(MULTIPROC_ENV[0], None)
        shutil.rmtree(path, ignore_errors=True)


def _child_main(config: WorkerConfig, log_level: str, log_format: str, pool_pid: int) -> None:
    if not die_with_parent(pool_pid):
        return  # the pool died while this child was starting
    setup_logging("chat-worker", log_level, log_format)
    try:
        run_worker(config)
    except Exception:  # the child's one guard: its death goes to the log, in the log's format
        log.exception("worker crashed")
        raise SystemExit(1) from None


class Pool:
    def __init__(self, config: WorkerConfig, size: int, log_level: str = "info", log_format: str = "text",
                 children: ChildMetrics | None = None, metrics: PoolMetrics | None = None) -> None:
        self.config = config
        self.size = size
        self.log_level = log_level
        self.log_format = log_format
        self.children = children  # the children's metric files, or None when metrics are off
        self.metrics = PoolMetrics() if metrics is None else metrics
        self._ctx = multiprocessing.get_context("spawn")
        self._children: list[BaseProcess | None] = [None] * size
        self._started: list[float] = [0.0] * size
        self._ever_started: list[bool] = [False] * size
        self._not_before: list[float] = [0.0] * size
        self._backoff: list[float] = [BACKOFF_MIN] * size

    def _start(self, slot: int) -> None:
        child = self._ctx.Process(
            target=_child_main, args=(self.config, self.log_level, self.log_format, os.getpid()),
            name=f"chat-worker-{slot}", daemon=False,
        )
        child.start()
        self._children[slot] = child
        self._started[slot] = time.monotonic()
        if self._ever_started[slot]:
            self.metrics.restarts += 1
        self._ever_started[slot] = True
        log.info("worker %d started as pid %s", slot, child.pid)

    def _exited(self, slot: int, child: BaseProcess) -> None:
        if self.children is not None and child.pid is not None:
            self.children.retire(child.pid)
        child.close()
        self._children[slot] = None

    def _check(self, slot: int, now: float) -> None:
        child = self._children[slot]
        if child is not None and child.is_alive():
            return
        if child is not None:
            lived = now - self._started[slot]
            log.warning("worker %d (pid %s) exited with %s after %.1fs", slot, child.pid, child.exitcode, lived)
            self._exited(slot, child)
            if lived >= HEALTHY_AFTER:
                self._backoff[slot] = BACKOFF_MIN
            self._not_before[slot] = now + self._backoff[slot]
            self._backoff[slot] = min(self._backoff[slot] * 2, BACKOFF_MAX)
        if now >= self._not_before[slot]:
            self._start(slot)

    def run(self, stopping: Stopping, tick: float = 0.2) -> None:
        """Keep N children alive until stopped."""
        try:
            while not stopping.requested:
                now = time.monotonic()
                for slot in range(self.size):
                    self._check(slot, now)
                self.metrics.alive = sum(1 for c in self._children if c is not None and c.is_alive())
                time.sleep(tick)  # a supervisor's poll interval, not synchronisation
        finally:
            self.stop()

    def stop(self, grace: float = 5.0) -> None:
        alive = [c for c in self._children if c is not None and c.is_alive()]
        for child in alive:
            child.terminate()  # SIGTERM: the worker finishes its batch and exits
        deadline = time.monotonic() + grace
        for child in alive:
            child.join(max(0.0, deadline - time.monotonic()))
            if child.is_alive():
                log.warning("worker pid %s did not stop in %.0fs: killing it", child.pid, grace)
                child.kill()
                child.join(1.0)
