"""`chat-worker -n N`: N worker processes, supervised.

Children get the configuration (URLs, not clients) and build their own
ZeroMQ context and Redis client after the fork, as rq and the ZeroMQ guide
advise. A child that dies is started again after a backoff that grows
while children keep dying young. SIGTERM or SIGINT stops every child with
SIGTERM, waits `grace` seconds, then kills what is left. A child whose
pool dies (even by `kill -9`) gets SIGTERM from the kernel (Linux).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import time
from multiprocessing.process import BaseProcess

from stack.children import die_with_parent
from stack.process import Stopping
from workers.worker import WorkerConfig, run_worker

log = logging.getLogger("chat.pool")

BACKOFF_MIN = 0.5
BACKOFF_MAX = 10.0
HEALTHY_AFTER = 10.0  # a child that lived this long resets the backoff


def _child_main(config: WorkerConfig, log_level: int, pool_pid: int) -> None:
    if not die_with_parent(pool_pid):
        return  # the pool died while this child was starting
    logging.basicConfig(level=log_level, format="%(asctime)s worker %(process)d %(levelname)s %(message)s")
    run_worker(config)


class Pool:
    def __init__(self, config: WorkerConfig, size: int, log_level: int = logging.INFO) -> None:
        self.config = config
        self.size = size
        self.log_level = log_level
        self._ctx = multiprocessing.get_context("spawn")
        self._children: list[BaseProcess | None] = [None] * size
        self._started: list[float] = [0.0] * size
        self._not_before: list[float] = [0.0] * size
        self._backoff: list[float] = [BACKOFF_MIN] * size

    def _start(self, slot: int) -> None:
        child = self._ctx.Process(target=_child_main, args=(self.config, self.log_level, os.getpid()),
                                  name=f"chat-worker-{slot}", daemon=False)
        child.start()
        self._children[slot] = child
        self._started[slot] = time.monotonic()
        log.info("worker %d started as pid %s", slot, child.pid)

    def _check(self, slot: int, now: float) -> None:
        child = self._children[slot]
        if child is not None and child.is_alive():
            return
        if child is not None:
            lived = now - self._started[slot]
            log.warning("worker %d (pid %s) exited with %s after %.1fs", slot, child.pid, child.exitcode, lived)
            child.close()
            self._children[slot] = None
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
