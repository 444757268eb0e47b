"""Start the chat's processes as children, wait for them to say they're ready,
and stop them by PID: used by `chat-stack` and by the end-to-end tests.

Each command prints one line to stdout when it is ready (logs go to
stderr), e.g. `chat-broker ready frontend=tcp://127.0.0.1:40123 ...`:
`start` waits for that line, with a deadline, and returns it.
"""

from __future__ import annotations

import ctypes
import os
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

PR_SET_PDEATHSIG = 1


def die_with_parent(parent_pid: int) -> bool:
    """Linux: this process gets SIGTERM when its parent dies (even by kill -9).

    -> False if the parent `parent_pid` is already gone (it died before the
    request was made, so no signal will ever come): the caller must exit.
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass
    return os.getppid() == parent_pid


def die_with_parent_hook(parent_pid: int) -> Callable[[], None]:
    """A `preexec_fn`: between fork and exec, so the program itself needs no change."""
    def hook() -> None:
        if not die_with_parent(parent_pid):
            os._exit(1)
    return hook


@dataclass
class Child:
    name: str
    proc: subprocess.Popen[bytes]
    ready_line: str = ""

    @property
    def pid(self) -> int:
        return self.proc.pid


class ChildFailed(RuntimeError):
    pass


def start(name: str, argv: list[str], ready_prefix: str, timeout: float = 20.0,
          env: dict[str, str] | None = None, stderr: int | None = None,
          die_with_parent: bool = False) -> Child:
    """Start `argv`, wait for a stdout line starting with `ready_prefix`.

    `die_with_parent` (Linux) runs a hook between fork and exec: only for a
    parent with no other threads, such as chat-stack.
    """
    hook = die_with_parent_hook(os.getpid()) if die_with_parent else None
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=stderr, stdin=subprocess.DEVNULL,
        env=env, start_new_session=True, preexec_fn=hook,  # noqa: PLW1509 - see die_with_parent
    )
    child = Child(name, proc)
    try:
        child.ready_line = _read_ready_line(proc, ready_prefix, timeout)
    except BaseException:
        stop(child)
        raise
    return child


def _read_ready_line(proc: subprocess.Popen[bytes], prefix: str, timeout: float) -> str:
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    buffered = b""
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        while time.monotonic() < deadline:
            if not sel.select(max(0.0, deadline - time.monotonic())):
                continue
            chunk = os.read(proc.stdout.fileno(), 4096)
            if not chunk:
                raise ChildFailed(f"{proc.args!r} exited with {proc.wait()} before it was ready")
            buffered += chunk
            for line in buffered.decode(errors="replace").splitlines():
                if line.startswith(prefix):
                    return line
    raise ChildFailed(f"{proc.args!r} not ready after {timeout:.0f}s")


def python_module(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


def stop(child: Child, grace: float = 8.0) -> int | None:
    """SIGTERM, wait up to `grace`, then SIGKILL. -> the exit code."""
    proc = child.proc
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    if proc.stdout is not None:
        proc.stdout.close()
    return proc.returncode
