"""chat-stack's private run directories, and the sweep of those left behind.

Each stack makes `chat-stack-<pid>-XXXXXXXX` in the temporary directory (the
broker's ipc:// endpoints, and the embedded Valkey's data unless
--data-dir) and writes an `owner` marker into it: its PID and the kernel's
start time of that PID, so that a later process that got the same PID is
not taken for the owner. A stack killed with `kill -9` cannot remove its
directory; the next stack that starts removes every such directory whose
owner is gone. A directory whose owner cannot be read is left alone unless
the PID in its name is dead: never remove what a live stack is using.
Other processes use the same scheme under a prefix of their own
(`chat-worker`'s metric files: `chat-worker-metrics-`).
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path

PREFIX = "chat-stack-"
MARKER = "owner"


def _name_re(prefix: str) -> re.Pattern[str]:
    return re.compile(rf"{re.escape(prefix)}(\d{{1,10}})-\w+")


def start_time(pid: int) -> str:
    """The kernel's start time of `pid` (clock ticks since boot), '' if unknown or gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    fields = stat.rsplit(")", 1)[-1].split()  # the name in () may hold spaces
    return fields[19] if len(fields) > 19 else ""


def pid_alive(pid: int) -> bool:
    """Is a process of this PID running (ours or not)?"""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def owner_alive(pid: int, started: str) -> bool:
    """Is the process that wrote a marker (pid, start time) still running?"""
    if not pid_alive(pid):
        return False
    now = start_time(pid)
    return not (started and now and now != started)


def make_run_dir(parent: Path | None = None, prefix: str = PREFIX) -> Path:
    """A fresh private directory owned by this process, with its marker."""
    pid = os.getpid()
    path = Path(tempfile.mkdtemp(prefix=f"{prefix}{pid}-", dir=parent))
    (path / MARKER).write_text(f"{pid} {start_time(pid)}\n")
    return path


def _is_stale(path: Path, prefix: str) -> bool:
    match = _name_re(prefix).fullmatch(path.name)
    if not match or path.is_symlink() or not path.is_dir() or path.stat().st_uid != os.getuid():
        return False
    name_pid = int(match.group(1))
    try:
        pid_text, _, started = (path / MARKER).read_text().strip().partition(" ")
        pid = int(pid_text)
    except (OSError, ValueError):
        return not pid_alive(name_pid)  # killed before it wrote the marker, or the marker is damaged
    return pid == name_pid and not owner_alive(pid, started)


def sweep_stale_run_dirs(parent: Path | None = None, prefix: str = PREFIX) -> list[Path]:
    """Remove the run directories of stacks (or `prefix`) that are gone -> what was removed."""
    root = parent or Path(tempfile.gettempdir())
    removed = []
    try:
        entries = [p for p in root.iterdir() if p.name.startswith(prefix)]
    except OSError:
        return []
    for path in entries:
        try:
            stale = _is_stale(path, prefix)
        except OSError:  # it vanished meanwhile, or is not ours to read
            continue
        if stale:
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed
